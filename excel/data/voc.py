"""PASCAL VOC 2012 (+SBD) segmentation dataset in the reference layout (algorithm.md §10.1), and shared file checks.

An item is a dict: ``name`` (str), ``image`` (3, H, W) float32 ImageNet-normalised on the 0-255 scale,
``label`` (H, W) int64 with 255 = ignore, ``cls_label`` (C_fg,) float32 multi-hot. Stage ``val`` keeps the full
image; ``test`` has no mask and its label is a dummy: the image's first (red) channel as int64, as in the reference
(§10.1). Do not score it. Stage ``train`` applies the augmentation of algorithm.md §8.4 and ships what training
reads: ``name``, ``image`` (3, crop, crop) **uint8** (normalised on the device,
:func:`excel.data.transforms.normalize_on_device`) and ``cls_label``; the cropped mask only guides the crop.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from excel.data.transforms import AugmentConfig, eval_transform, train_transform
from excel.errors import ExcelError
from excel.utils.io import atomic_path

STAGES = ("train", "val", "test")


class DatasetError(ExcelError, ValueError):
    """A dataset file or folder is missing, unreadable or holds values the project does not expect."""


def read_list(path: str | os.PathLike) -> list[str]:
    """The ids of a split list (one per line, blank lines skipped; only the first field of a line is used)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"split list file not found: {path}")
    names = [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"split list {path} is empty; expected one image id per line")
    return names


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB (grey images are stacked to 3 channels)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DatasetError(f"cannot read image {path}: {err} (corrupt or not an image)") from err


def load_label(path: str | os.PathLike, num_classes: int, ignore_index: int = 255,
               size: tuple[int, int] | None = None) -> np.ndarray:
    """Read an index/palette PNG mask as (H, W) uint8 and check it.

    Args:
        num_classes: foreground classes C_fg; allowed values are 0..C_fg and ``ignore_index``.
        size: expected (H, W) (the image's), or None.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"label file not found: {path}")
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L", "I", "I;16"):
                raise DatasetError(f"label {path} has PIL mode {img.mode}; expected a single-channel index or "
                                   f"palette PNG")
            label = np.asarray(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        if isinstance(err, DatasetError):
            raise
        raise DatasetError(f"cannot read label {path}: {err} (truncated or corrupt PNG?)") from err
    if size is not None and tuple(label.shape) != tuple(size):
        raise DatasetError(f"label {path} is {label.shape[0]}x{label.shape[1]} (HxW) but its image is "
                           f"{size[0]}x{size[1]}")
    if label.size and (label.max() > num_classes or label.min() < 0):
        bad = np.unique(label[((label > num_classes) | (label < 0)) & (label != ignore_index)])
        if bad.size:
            raise DatasetError(f"label {path} holds values {bad[:10].tolist()} outside 0..{num_classes} "
                               f"({num_classes} foreground classes + background) and {ignore_index} (ignore)")
    return label.astype(np.uint8)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image from its header, without decoding the pixels. Raises DatasetError."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DatasetError(f"cannot read image {path}: {err} (corrupt or not an image)") from err


def load_cls_labels(path: str | os.PathLike, num_classes: int) -> dict[str, np.ndarray] | None:
    """Read a pickled ``{id: float32[C_fg]}`` dict (``cls_labels_onehot.npy``); None when the file is absent."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        obj = np.load(path, allow_pickle=True)
        table = obj.item() if isinstance(obj, np.ndarray) and obj.dtype == object else obj
    except (OSError, ValueError, EOFError) as err:
        raise DatasetError(f"cannot read class labels {path}: {err}") from err
    if not isinstance(table, dict):
        raise DatasetError(f"{path} must hold a pickled dict id -> float32[{num_classes}], got {type(table)}")
    out = {}
    for key, vec in table.items():
        vec = np.asarray(vec, dtype=np.float32).reshape(-1)
        if vec.shape[0] != num_classes:
            raise DatasetError(f"{path}: entry {key!r} has {vec.shape[0]} values, expected {num_classes}")
        out[str(key)] = vec
    return out


def save_cls_labels(labels: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write ``{name: float32[C_fg]}`` as a pickled dict (the reference ``cls_labels_onehot.npy`` format)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, dict(labels), allow_pickle=True)


def multi_hot(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """float32 (num_classes,) with 1 at c for each label c + 1 present in ``mask`` (0 and 255 skipped)."""
    out = np.zeros(num_classes, dtype=np.float32)
    values = np.unique(mask)
    values = values[(values >= 1) & (values <= num_classes)].astype(np.int64)
    out[values - 1] = 1.0
    return out



class VOCDataset(Dataset):
    """VOC-layout segmentation dataset: ``<root>/<image_dir>/<id>.jpg`` and ``<root>/<label_dir>/<id>.png``.

    Args:
        root: dataset folder.
        split: list name: ``<list_dir>/<split>.txt``.
        list_dir: folder of the lists and ``cls_labels_onehot.npy``; None = ``<root>/lists``.
        stage: ``train`` (augment), ``val`` (full image) or ``test`` (no mask; dummy label).
        augment: an :class:`AugmentConfig` or a ``data.augment`` mapping (normalisation is used in every stage).
        num_classes: foreground classes C_fg.
    """

    def __init__(self, root: str | os.PathLike, split: str, list_dir: str | os.PathLike | None = None,
                 stage: str = "train", augment: AugmentConfig | Mapping[str, Any] | None = None,
                 image_dir: str = "JPEGImages", label_dir: str = "SegmentationClassAug", num_classes: int = 20,
                 ignore_index: int = 255) -> None:
        if stage not in STAGES:
            raise DatasetError(f"stage must be one of {STAGES}, got {stage!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"dataset root folder not found: {self.root}")
        self.split, self.stage = split, stage
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)
        self.aug = augment if isinstance(augment, AugmentConfig) else AugmentConfig.from_mapping(
            augment, ignore_index=ignore_index)
        self.list_dir = Path(list_dir) if list_dir is not None else self.root / "lists"
        self.list_file = self.list_dir / f"{split}.txt"
        self.names = read_list(self.list_file)
        self.image_dir, self.label_dir = image_dir, label_dir
        self._check_folders()
        self.cls_labels = load_cls_labels(self.list_dir / "cls_labels_onehot.npy", self.num_classes)

    def _check_folders(self) -> None:
        folder = self.root / self.image_dir
        if not folder.is_dir():
            raise DatasetError(f"image folder not found: {folder} (data.image_dir={self.image_dir!r})")
        if self.stage != "test" and not (self.root / self.label_dir).is_dir():
            raise DatasetError(f"label folder not found: {self.root / self.label_dir} "
                               f"(data.label_dir={self.label_dir!r}); stage {self.stage!r} needs masks")

    def image_path(self, name: str) -> Path:
        return self.root / self.image_dir / f"{name}.jpg"

    def label_path(self, name: str) -> Path:
        return self.root / self.label_dir / f"{name}.png"

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, stage={self.stage!r}, n={len(self)})"

    def load_arrays(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw image (H, W, 3) uint8 and mask (H, W) uint8 (None in the test stage), checked."""
        path = self.image_path(name)
        if not path.is_file():
            raise DatasetError(f"id {name!r} is listed in {self.list_file} but its image {path} does not exist")
        image = load_image(path)
        if self.stage == "test":
            return image, None
        return image, load_label(self.label_path(name), self.num_classes, self.ignore_index, image.shape[:2])

    def check_item(self, name: str) -> None:
        """Check one listed id quickly: its image exists and its header reads, and (except in the test stage) its
        mask reads, has the image's size and holds only 0..C_fg and the ignore value. Raises DatasetError."""
        path = self.image_path(name)
        if not path.is_file():
            raise DatasetError(f"id {name!r} is listed in {self.list_file} but its image {path} does not exist")
        size = image_size(path)
        if self.stage != "test":
            load_label(self.label_path(name), self.num_classes, self.ignore_index, size)

    def class_label(self, name: str, mask: np.ndarray | None) -> np.ndarray:
        """Multi-hot (C_fg,) from ``cls_labels_onehot.npy`` when it has ``name``, else from the mask (or zeros)."""
        if self.cls_labels is not None and name in self.cls_labels:
            return self.cls_labels[name]
        if mask is None:
            return np.zeros(self.num_classes, dtype=np.float32)
        return multi_hot(mask, self.num_classes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        name = self.names[index]
        image, mask = self.load_arrays(name)
        cls_label = self.class_label(name, mask)
        if mask is None:  # test stage: the reference's dummy label is the image's first channel
            label = image[..., 0].astype(np.int64)
            img, _ = eval_transform(image, label, self.aug)
        elif self.stage == "train":
            img, _ = train_transform(image, mask, self.aug)
            return {"name": name, "image": torch.from_numpy(img),
                    "cls_label": torch.from_numpy(np.array(cls_label, dtype=np.float32))}
        else:
            img, label = eval_transform(image, mask, self.aug)
        return {"name": name, "image": torch.from_numpy(img), "label": torch.from_numpy(label),
                "cls_label": torch.from_numpy(np.array(cls_label, dtype=np.float32))}


def check_dataset(dataset: VOCDataset, raise_on_error: bool = True, max_report: int = 5, decode: bool = True,
                  indices: Sequence[int] | None = None, workers: int = 0, progress: bool = False) -> list[str]:
    """Read every listed image and mask of ``dataset`` and collect the problems.

    Args:
        decode: decode every image fully (``load_arrays``); False reads image headers only (``check_item``: the
            sizes, the masks and their values are still checked), which is many times faster.
        indices: the items to check (default all), e.g. one process's share.
        workers: threads reading files (0 = this thread).
        progress: show a tqdm bar.
    Returns:
        One message per bad id (empty when all is well), in list order.
    Raises:
        DatasetError: when problems are found and ``raise_on_error``; the message gives the count and the first few.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    names = [dataset.names[i] for i in (range(len(dataset)) if indices is None else indices)]

    def problem(name: str) -> str | None:
        try:
            dataset.load_arrays(name) if decode else dataset.check_item(name)
        except DatasetError as err:
            return str(err)
        return None

    bar = dict(total=len(names), desc=f"checking {dataset.split}", disable=not progress, dynamic_ncols=True)
    if workers > 0:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            found = list(tqdm(pool.map(problem, names), **bar))
    else:
        found = [problem(n) for n in tqdm(names, **bar)]
    problems = [p for p in found if p is not None]
    if problems and raise_on_error:
        shown = "\n  ".join(problems[:max_report])
        raise DatasetError(f"{len(problems)} of {len(names)} items of {dataset!r} are bad; first "
                           f"{min(len(problems), max_report)}:\n  {shown}")
    return problems
