"""MS COCO 2014 in VOC style (algorithm.md §10.2): labels 0..80 (0 = background), 255 = ignore, grey images ->
3 channels.

Two on-disk layouts are accepted and detected per subset (train / val, from the id's prefix):

- reference: ``<root>/<image_dir>/{train,val}/COCO_{train,val}2014_<id>.jpg`` and
  ``<root>/<label_dir>/{train,val}/<id>.png`` (the name without its first 15 / 13 characters);
- README: ``<root>/{train,val}2014/<name>.jpg`` (or ``<root>/<image_dir>/{train,val}2014/``) and
  ``<root>/<label_dir>/{train,val}2014/<name or id>.png``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from excel.data.transforms import AugmentConfig
from excel.data.voc import DatasetError, VOCDataset

PREFIXES = {"train": "COCO_train2014_", "val": "COCO_val2014_"}  # 15 and 13 characters


def coco_subset(name: str) -> str:
    """``train`` or ``val`` from a COCO 2014 file name."""
    for subset, prefix in PREFIXES.items():
        if name.startswith(prefix):
            return subset
    raise DatasetError(f"COCO id {name!r} does not start with {PREFIXES['train']!r} or {PREFIXES['val']!r}")


def find_coco_folders(root: Path, subset: str, image_dir: str = "JPEGImages",
                      label_dir: str = "SegmentationClass") -> tuple[Path | None, Path | None]:
    """The image and label folders of ``subset`` in either layout (None where not found)."""
    images = [root / image_dir / subset, root / image_dir / f"{subset}2014", root / f"{subset}2014"]
    labels = [root / label_dir / subset, root / label_dir / f"{subset}2014"]
    image_folder = next((p for p in images if p.is_dir()), None)
    label_folder = next((p for p in labels if p.is_dir()), None)
    return image_folder, label_folder


def coco_label_path(folder: Path, name: str) -> Path:
    """The mask of ``name`` in ``folder``: ``<id>.png`` (name without its prefix) or ``<name>.png``, whichever
    exists; when neither does, the form expected by the folder's layout (reference: ``<id>.png``)."""
    subset = coco_subset(name)
    short = folder / f"{name[len(PREFIXES[subset]):]}.png"
    full = folder / f"{name}.png"
    if folder.name == subset:  # reference layout: the stripped name first
        return short if short.is_file() or not full.is_file() else full
    return full if full.is_file() or not short.is_file() else short


class COCODataset(VOCDataset):
    """COCO 2014 segmentation in VOC style; same items and arguments as :class:`VOCDataset` (C_fg = 80)."""

    def __init__(self, root: str | os.PathLike, split: str, list_dir: str | os.PathLike | None = None,
                 stage: str = "train", augment: AugmentConfig | Mapping[str, Any] | None = None,
                 image_dir: str = "JPEGImages", label_dir: str = "SegmentationClass", num_classes: int = 80,
                 ignore_index: int = 255) -> None:
        super().__init__(root, split, list_dir=list_dir, stage=stage, augment=augment, image_dir=image_dir,
                         label_dir=label_dir, num_classes=num_classes, ignore_index=ignore_index)

    def _check_folders(self) -> None:
        self.folders: dict[str, tuple[Path | None, Path | None]] = {}
        for subset in sorted({coco_subset(n) for n in self.names}):
            image_folder, label_folder = find_coco_folders(self.root, subset, self.image_dir, self.label_dir)
            if image_folder is None:
                raise DatasetError(
                    f"no COCO {subset} image folder under {self.root}: expected {self.image_dir}/{subset}/ "
                    f"(reference layout) or {subset}2014/ (README layout)")
            if label_folder is None and self.stage != "test":
                raise DatasetError(
                    f"no COCO {subset} label folder under {self.root}: expected {self.label_dir}/{subset}/ or "
                    f"{self.label_dir}/{subset}2014/")
            self.folders[subset] = (image_folder, label_folder)

    def image_path(self, name: str) -> Path:
        return self.folders[coco_subset(name)][0] / f"{name}.jpg"  # type: ignore[operator]

    def label_path(self, name: str) -> Path:
        subset = coco_subset(name)
        folder = self.folders[subset][1]
        if folder is None:
            raise DatasetError(f"no label folder for COCO {subset} under {self.root}")
        return coco_label_path(folder, name)
