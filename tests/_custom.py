"""A dataset as a researcher brings it: images and index masks only (not collected as tests)."""
from __future__ import annotations

import shutil
from pathlib import Path

from excel.organism.synthetic import make_synthetic_voc

CUSTOM_CLASSES = ("kiwi", "apple", "pear")


def user_dataset(root: Path, num_images: int = 12, size: tuple[int, int] = (48, 64), seed: int = 0) -> Path:
    """``<root>/JPEGImages/<id>.jpg`` and ``<root>/SegmentationClassAug/<id>.png`` (0 = background, 1..3 the
    classes of :data:`CUSTOM_CLASSES`, 255 = ignore) for ``num_images`` generated scenes; no lists, no ImageSets."""
    make_synthetic_voc(root, num_train=num_images, num_val=0, num_test=0, size=size, seed=seed,
                       classes=CUSTOM_CLASSES)
    shutil.rmtree(root / "ImageSets")
    shutil.rmtree(root / "lists")
    return root
