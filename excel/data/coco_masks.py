"""VOC-style COCO 2014 masks from the instance annotations (``tools/prepare_coco.py --annotations DIR``).

For every image of ``DIR/instances_{train,val}2014.json`` one single-channel index PNG,
``<root>/SegmentationClass/{train2014,val2014}/<image file stem>.png``, of the image's size:

- 0 is background;
- the 80 object categories take 1..80 in the standard order of COCO's category ids (1 -> 1, 18 -> 17, 90 -> 80;
  :data:`COCO_CATEGORY_IDS`), whatever subset of categories the JSON lists;
- crowd regions (``iscrowd: 1``) are 255 (ignore), except where a non-crowd object covers them;
- where objects overlap, the smaller one wins: objects are painted from the largest ``area`` to the smallest
  (equal areas: the lower annotation id first), so a person in front of a sofa keeps its pixels.

Images without any annotation get an all-background mask (tools/prepare_coco.py then leaves them out of the lists
unless ``--keep-empty``).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from tqdm import tqdm

from excel.data.voc import DatasetError
from excel.utils.io import atomic_save_png

log = logging.getLogger(__name__)

__all__ = ["COCO_CATEGORY_IDS", "category_index", "instance_mask", "write_coco_masks", "MaskWriting"]

# The 80 category ids of COCO 2014/2017 detection and segmentation, in their standard order: index + 1 = mask value.
COCO_CATEGORY_IDS: tuple[int, ...] = (
    *range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70, *range(72, 83), *range(84, 91))
assert len(COCO_CATEGORY_IDS) == 80
_INDEX = {cat: i + 1 for i, cat in enumerate(COCO_CATEGORY_IDS)}
IGNORE = 255
SUBSETS = ("train", "val")


def category_index(category_id: int) -> int:
    """The mask value 1..80 of a COCO category id (1 -> 1, 18 -> 17, 90 -> 80); ValueError for other ids."""
    try:
        return _INDEX[int(category_id)]
    except KeyError:
        raise ValueError(f"COCO category id {category_id} is not one of the 80 standard ids (1..90 with gaps)") \
            from None


def instance_mask(anns: Iterable[dict[str, Any]], height: int, width: int, decode) -> np.ndarray:
    """One image's (height, width) uint8 mask from its annotations (rules in the module docstring).

    Args:
        anns: the image's annotation dicts (``category_id``, ``iscrowd``, ``area``, ``id``, ``segmentation``).
        decode: ``ann -> (height, width) 0/1 array`` (``pycocotools.coco.COCO.annToMask``).
    """
    mask = np.zeros((height, width), np.uint8)
    objects = np.zeros((height, width), bool)
    crowd = np.zeros((height, width), bool)
    order = sorted(anns, key=lambda a: (-float(a.get("area", 0.0)), int(a.get("id", 0))))
    for ann in order:
        region = decode(ann).astype(bool)
        if region.shape != (height, width):
            raise DatasetError(f"annotation {ann.get('id')}: its mask is {region.shape[0]}x{region.shape[1]}, the "
                               f"image {height}x{width}")
        if ann.get("iscrowd", 0):
            crowd |= region
            continue
        mask[region] = category_index(ann["category_id"])
        objects |= region
    mask[crowd & ~objects] = IGNORE
    return mask


@dataclass
class MaskWriting:
    """What :func:`write_coco_masks` did for one subset."""

    subset: str
    folder: Path
    written: int = 0
    kept: int = 0
    without_objects: int = 0

    def note(self) -> str:
        return (f"{self.subset}: {self.written} masks written to {self.folder} from the annotations, {self.kept} "
                f"already there (kept), {self.without_objects} images without any annotated object")


def _load(path: Path):
    try:
        from pycocotools.coco import COCO
    except ImportError as err:
        raise DatasetError("pycocotools is not installed: pip install pycocotools (it reads the COCO "
                           "annotations)") from err
    with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints its progress
        try:
            return COCO(str(path))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DatasetError(f"cannot read the COCO annotations {path}: {err}") from err


def write_coco_masks(root: str | os.PathLike, annotations: str | os.PathLike,
                     label_dir: str = "SegmentationClass") -> list[MaskWriting]:
    """Write the masks of every subset whose ``instances_<subset>2014.json`` is in ``annotations``.

    Masks already present are kept (a rerun finishes an interrupted one). Raises DatasetError when neither JSON
    file exists, a file cannot be read, or an annotation names a category outside the standard 80.
    """
    annotations = Path(annotations)
    if not annotations.is_dir():
        raise DatasetError(f"COCO annotations folder not found: {annotations}")
    done = []
    for subset in SUBSETS:
        path = annotations / f"instances_{subset}2014.json"
        if not path.is_file():
            log.info("no %s: %s masks not made", path, subset)
            continue
        coco = _load(path)
        folder = Path(root) / label_dir / f"{subset}2014"
        folder.mkdir(parents=True, exist_ok=True)
        report = MaskWriting(subset, folder)
        for image_id in tqdm(sorted(coco.imgs), desc=f"COCO {subset} masks", unit="mask"):
            info = coco.imgs[image_id]
            target = folder / f"{Path(info['file_name']).stem}.png"
            anns = coco.imgToAnns.get(image_id, [])
            if not any(not a.get("iscrowd", 0) for a in anns):
                report.without_objects += 1
            if target.is_file():
                report.kept += 1
                continue
            try:
                mask = instance_mask(anns, int(info["height"]), int(info["width"]), coco.annToMask)
            except ValueError as err:
                raise DatasetError(f"{path}, image {info['file_name']}: {err}") from err
            atomic_save_png(mask, target)
            report.written += 1
        log.info(report.note())
        done.append(report)
    if not done:
        raise DatasetError(f"neither instances_train2014.json nor instances_val2014.json in {annotations}")
    return done
