"""A generated mini dataset in the VOC (and COCO) on-disk layout, for tests and the no-download demo.

Each image is a textured background (noise, stripes or a gradient, in dull colours) with 1-3 objects (ellipse,
polygon or rectangle). Every class has its own saturated base colour and preferred shape, so a model can learn
the classes. Masks are palette PNGs (0 = background, c + 1 = class c) with a 255 ignore band of about 2 px along
object boundaries, as in VOC. Everything is a function of ``seed``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from excel.data.palette import voc_palette
from excel.data.voc import multi_hot, save_cls_labels
from excel.utils.io import atomic_path, atomic_write_text

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")

Size = tuple[int, int] | tuple[tuple[int, int], tuple[int, int]]


def class_colours(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 distinct saturated colours: an n-level RGB grid without its greys, most saturated
    first (VOC: levels 40/140/240, so any two classes differ by >= 100 in some channel)."""
    n = 3
    while n ** 3 - n < num_classes:
        n += 1
    levels = np.linspace(40, 240, n).round().astype(int)
    grid = np.array([(r, g, b) for r in levels for g in levels for b in levels if not r == g == b])
    spread = grid.max(1) - grid.min(1)
    return grid[np.argsort(-spread, kind="stable")][:num_classes].astype(np.uint8)


def class_colour(c: int, num_classes: int) -> tuple[int, int, int]:
    """The base RGB colour of class ``c`` (see :func:`class_colours`)."""
    return tuple(int(v) for v in class_colours(num_classes)[c])  # type: ignore[return-value]


def _pick_size(rng: np.random.Generator, size: Size) -> tuple[int, int]:
    if isinstance(size[0], (tuple, list)):
        (h_lo, h_hi), (w_lo, w_hi) = size  # type: ignore[misc]
        return int(rng.integers(h_lo, h_hi + 1)), int(rng.integers(w_lo, w_hi + 1))
    return int(size[0]), int(size[1])  # type: ignore[arg-type]


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float32 dull texture in 0..255."""
    base = rng.uniform(60, 170, size=3)
    kind = rng.integers(3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:  # noise
        tex = rng.normal(0, 18, size=(h, w, 1))
    elif kind == 1:  # stripes
        period, angle = rng.uniform(6, 16), rng.uniform(0, np.pi)
        tex = 20 * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)[..., None]
    else:  # gradient
        tex = (40 * (xx / max(w - 1, 1)) - 20 * (yy / max(h - 1, 1)))[..., None]
    img = base[None, None, :] * 0.8 + np.mean(base) * 0.2 + tex + rng.normal(0, 4, size=(h, w, 3))
    return img.astype(np.float32)


def _shape_xy(rng: np.random.Generator, kind: int, h: int, w: int) -> tuple[str, list]:
    """A random shape of kind 0 (ellipse), 1 (polygon) or 2 (rectangle) covering 20-55% of the image side."""
    bh, bw = rng.uniform(0.25, 0.55) * h, rng.uniform(0.25, 0.55) * w
    y0, x0 = rng.uniform(0, h - bh), rng.uniform(0, w - bw)
    box = [x0, y0, x0 + bw, y0 + bh]
    if kind == 1:
        n = int(rng.integers(3, 7))
        ang = (np.arange(n) + rng.uniform(-0.3, 0.3, size=n)) * (2 * np.pi / n) + rng.uniform(0, 2 * np.pi)
        rad = rng.uniform(0.7, 1.0, size=n)
        cx, cy = x0 + bw / 2, y0 + bh / 2
        return "polygon", [(cx + r * bw / 2 * np.cos(a), cy + r * bh / 2 * np.sin(a)) for a, r in zip(ang, rad)]
    return ("ellipse" if kind == 0 else "rectangle"), box


def ignore_band(mask: np.ndarray, radius: int = 1, ignore_index: int = 255) -> np.ndarray:
    """Set to ``ignore_index`` every pixel with a differently labelled neighbour within Chebyshev ``radius``."""
    h, w = mask.shape
    padded = np.pad(mask, radius, mode="edge")
    edge = np.zeros((h, w), dtype=bool)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            edge |= padded[radius + dy:radius + dy + h, radius + dx:radius + dx + w] != mask
    out = mask.copy()
    out[edge] = ignore_index
    return out


def draw_sample(rng: np.random.Generator, h: int, w: int, num_classes: int,
                max_objects: int = 3, grey: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image and mask.

    Returns:
        image (h, w, 3) uint8 (or (h, w) when ``grey``), mask (h, w) uint8 in {0..num_classes} and 255.
    """
    image = Image.fromarray(np.clip(_background(rng, h, w), 0, 255).astype(np.uint8))
    mask = Image.new("L", (w, h), 0)
    draw_img, draw_mask = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    num_obj = int(rng.integers(1, max_objects + 1))
    classes = rng.choice(num_classes, size=num_obj, replace=num_obj > num_classes)
    for c in classes:
        kind = int(c) % 3 if rng.uniform() < 0.8 else int(rng.integers(3))
        method, xy = _shape_xy(rng, kind, h, w)
        colour = tuple(int(np.clip(v + rng.integers(-12, 13), 0, 255)) for v in class_colour(int(c), num_classes))
        getattr(draw_img, method)(xy, fill=colour)
        getattr(draw_mask, method)(xy, fill=int(c) + 1)
    img = np.asarray(image)
    if grey:
        img = np.asarray(image.convert("L"))
    return img, ignore_band(np.asarray(mask))


def _save_jpeg(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="JPEG", quality=92)


def _save_palette_png(mask: np.ndarray, path: Path) -> None:
    img = Image.fromarray(mask.astype(np.uint8))  # mode L; putpalette turns it into P
    img.putpalette(voc_palette())
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def _write_list(path: Path, names: Sequence[str]) -> None:
    atomic_write_text(path, "".join(f"{n}\n" for n in names))


def make_synthetic_voc(root: str | os.PathLike, num_train: int = 8, num_val: int = 4, num_test: int = 2,
                       size: Size = (96, 128), seed: int = 0, classes: Sequence[str] = VOC_CLASSES) -> Path:
    """Generate a VOC-layout mini dataset under ``root`` and return ``root``.

    Layout: ``JPEGImages/<id>.jpg``, ``SegmentationClassAug/<id>.png`` (train and val only, as in VOC),
    ``ImageSets/Segmentation/{train,val,test,trainval}.txt`` and ``lists/`` with train, train_aug (= train), val,
    test, trainval and ``cls_labels_onehot.npy`` (train and val ids).

    Args:
        size: (H, W), or ((H_lo, H_hi), (W_lo, W_hi)) for a random size per image.
        classes: foreground class names; only their number matters.
    """
    root = Path(root)
    num_classes = len(classes)
    if num_train < 0 or num_val < 0 or num_test < 0:
        raise ValueError(f"split sizes must be >= 0, got train={num_train} val={num_val} test={num_test}")
    splits = {"train": num_train, "val": num_val, "test": num_test}
    names: dict[str, list[str]] = {}
    cls_labels: dict[str, np.ndarray] = {}
    index = 0
    for split, count in splits.items():
        names[split] = []
        for _ in range(count):
            index += 1
            name = f"2007_{index:06d}"
            rng = np.random.default_rng([seed, index])
            h, w = _pick_size(rng, size)
            image, mask = draw_sample(rng, h, w, num_classes)
            _save_jpeg(image, root / "JPEGImages" / f"{name}.jpg")
            if split != "test":
                _save_palette_png(mask, root / "SegmentationClassAug" / f"{name}.png")
                cls_labels[name] = multi_hot(mask, num_classes)
            names[split].append(name)
    lists = {"train": names["train"], "train_aug": names["train"], "val": names["val"], "test": names["test"],
             "trainval": names["train"] + names["val"]}
    for list_name, items in lists.items():
        _write_list(root / "lists" / f"{list_name}.txt", items)
        if list_name != "train_aug":
            _write_list(root / "ImageSets" / "Segmentation" / f"{list_name}.txt", items)
    save_cls_labels(cls_labels, root / "lists" / "cls_labels_onehot.npy")
    return root


def make_synthetic_coco(root: str | os.PathLike, num_train: int = 6, num_val: int = 4, size: Size = (96, 128),
                        seed: int = 0, num_classes: int = 80, layout: str = "reference") -> Path:
    """Generate a COCO-2014-style mini dataset (labels 0..80, 255 ignore) and return ``root``.

    ``layout="reference"``: ``JPEGImages/{train,val}/COCO_{train,val}2014_<12 digits>.jpg`` and
    ``SegmentationClass/{train,val}/<12 digits>.png`` (spec 10.2). ``layout="readme"``: ``{train,val}2014/<name>.jpg``
    and ``SegmentationClass/{train,val}2014/<name>.png``. The second training image is greyscale.
    Lists ``lists/{train,val,val_part}.txt`` and ``lists/cls_labels_onehot.npy`` (keyed by full name).
    """
    if layout not in ("reference", "readme"):
        raise ValueError(f"layout must be 'reference' or 'readme', got {layout!r}")
    root = Path(root)
    names: dict[str, list[str]] = {"train": [], "val": []}
    cls_labels: dict[str, np.ndarray] = {}
    index = 0
    for subset, count in (("train", num_train), ("val", num_val)):
        for k in range(count):
            index += 1
            digits = f"{index * 9:012d}"
            name = f"COCO_{subset}2014_{digits}"
            rng = np.random.default_rng([seed, 1000 + index])
            h, w = _pick_size(rng, size)
            image, mask = draw_sample(rng, h, w, num_classes, grey=(subset == "train" and k == 1))
            if layout == "reference":
                img_path = root / "JPEGImages" / subset / f"{name}.jpg"
                lbl_path = root / "SegmentationClass" / subset / f"{digits}.png"
            else:
                img_path = root / f"{subset}2014" / f"{name}.jpg"
                lbl_path = root / "SegmentationClass" / f"{subset}2014" / f"{name}.png"
            _save_jpeg(image, img_path)
            _save_palette_png(mask, lbl_path)
            cls_labels[name] = multi_hot(mask, num_classes)
            names[subset].append(name)
    _write_list(root / "lists" / "train.txt", names["train"])
    _write_list(root / "lists" / "val.txt", names["val"])
    _write_list(root / "lists" / "val_part.txt", names["val"][:5000])
    save_cls_labels(cls_labels, root / "lists" / "cls_labels_onehot.npy")
    return root
