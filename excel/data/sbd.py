"""SegmentationClassAug from the SBD download (``tools/prepare_voc.py --sbd-root``).

SBD (Hariharan et al., "Semantic contours from inverse detectors", the ``benchmark_RELEASE/dataset`` folder) stores
one MATLAB file per image, ``cls/<id>.mat``, whose ``GTcls.Segmentation`` is the (H, W) class-index mask (0 =
background, 1..20 the VOC classes, no ignore border). The usual 10,582-image ``SegmentationClassAug`` set is those
masks for SBD's ``train.txt`` + ``val.txt`` ids, with VOC 2012's own ``SegmentationClass`` mask (which carries the
255 ignore border) wherever VOC has one. :func:`convert_sbd` writes exactly that.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from excel.data.voc import DatasetError, read_list
from excel.utils.io import atomic_save_png

log = logging.getLogger(__name__)

__all__ = ["read_sbd_mask", "sbd_ids", "convert_sbd", "SBDConversion"]

VOC_MASK_DIR = "SegmentationClass"      # VOC 2012's own masks (palette PNGs with the 255 border)
AUG_MASK_DIR = "SegmentationClassAug"   # what the lists and the datasets read (configs/base.yaml data.label_dir)


def read_sbd_mask(path: str | os.PathLike) -> np.ndarray:
    """``GTcls.Segmentation`` of one SBD ``cls/<id>.mat`` file as an (H, W) uint8 array (values 0..20).

    Raises DatasetError naming the file when it cannot be read, has no ``GTcls.Segmentation`` or holds a value
    above 20."""
    from scipy.io import loadmat

    path = Path(path)
    try:
        mat = loadmat(path, squeeze_me=False, struct_as_record=False)  # keep 1 x N masks 2-D
    except (OSError, ValueError, TypeError, NotImplementedError) as err:
        raise DatasetError(f"cannot read the SBD file {path}: {err}") from err
    gt = mat.get("GTcls")
    if isinstance(gt, np.ndarray) and gt.size == 1 and gt.dtype == object:   # MATLAB's 1 x 1 struct array
        gt = gt.flat[0]
    seg = getattr(gt, "Segmentation", None)
    if seg is None or np.ndim(seg) != 2:
        raise DatasetError(f"{path} has no 2-D GTcls.Segmentation (expected SBD's cls/<id>.mat format)")
    seg = np.asarray(seg)
    if seg.size and (seg.min() < 0 or seg.max() > 20):
        raise DatasetError(f"{path}: GTcls.Segmentation holds values {int(seg.min())}..{int(seg.max())}; "
                           f"expected VOC class indices 0..20")
    return seg.astype(np.uint8)


def sbd_ids(sbd_root: Path) -> list[str]:
    """SBD's ``train.txt`` + ``val.txt`` ids, in that order, without repeats."""
    lists = [sbd_root / f"{s}.txt" for s in ("train", "val") if (sbd_root / f"{s}.txt").is_file()]
    if not lists:
        raise DatasetError(f"SBD root {sbd_root} has no train.txt / val.txt (expected benchmark_RELEASE/dataset)")
    return list(dict.fromkeys(n for p in lists for n in read_list(p)))


def _voc_mask(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.asarray(img).astype(np.uint8)   # a palette PNG: the indices, not the colours
    except (UnidentifiedImageError, OSError) as err:
        raise DatasetError(f"cannot read the VOC mask {path}: {err}") from err


@dataclass
class SBDConversion:
    """What :func:`convert_sbd` did: masks written from SBD, from VOC, and kept (already present)."""

    from_sbd: int = 0
    from_voc: int = 0
    kept: int = 0

    def note(self, out: Path) -> str:
        return (f"{out}: {self.from_sbd} masks converted from SBD's cls/*.mat, {self.from_voc} copied from VOC's "
                f"{VOC_MASK_DIR}, {self.kept} already there (kept)")


def convert_sbd(voc_root: str | os.PathLike, sbd_root: str | os.PathLike,
                out_dir: str | os.PathLike | None = None) -> SBDConversion:
    """Write ``<voc_root>/SegmentationClassAug/<id>.png`` (single-channel index PNGs) for every SBD train/val id and
    every VOC ``SegmentationClass`` mask: VOC's mask where it has one, else SBD's ``cls/<id>.mat``.

    Files already in the output folder are kept (a rerun finishes an interrupted one; a downloaded
    SegmentationClassAug is not overwritten). Raises DatasetError when an SBD id has neither a VOC mask nor a
    ``cls/<id>.mat`` file, or a file cannot be read.
    """
    voc_root, sbd_root = Path(voc_root), Path(sbd_root)
    out = Path(out_dir) if out_dir is not None else voc_root / AUG_MASK_DIR
    voc_masks = voc_root / VOC_MASK_DIR
    ids = sbd_ids(sbd_root)
    voc_ids = sorted(p.stem for p in voc_masks.glob("*.png")) if voc_masks.is_dir() else []
    cls = sbd_root / "cls"
    missing = [n for n in ids if not (cls / f"{n}.mat").is_file() and not (voc_masks / f"{n}.png").is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} SBD ids have neither {cls}/<id>.mat nor {voc_masks}/<id>.png "
                           f"(first: {', '.join(missing[:3])})")
    out.mkdir(parents=True, exist_ok=True)
    done = SBDConversion()
    for name in tqdm(list(dict.fromkeys(ids + voc_ids)), desc="SegmentationClassAug", unit="mask"):
        target = out / f"{name}.png"
        if target.is_file():
            done.kept += 1
            continue
        if (voc_masks / f"{name}.png").is_file():
            mask, done.from_voc = _voc_mask(voc_masks / f"{name}.png"), done.from_voc + 1
        else:
            mask, done.from_sbd = read_sbd_mask(cls / f"{name}.mat"), done.from_sbd + 1
        atomic_save_png(mask, target)
    log.info(done.note(out))
    return done
