"""The generated world written to disk in the VOC (or COCO 2014) layout, for tests, the demo and the organism.

Images are scenes of :class:`excel.organism.world.World` (20 classes with a colour, shape, pattern, size and habitat
each, on textured backgrounds named by the VOC background prompts). Masks are palette PNGs (0 = background,
c + 1 = class c) with a 255 ignore band of about 2 px along object boundaries, as in VOC. Everything is a function
of ``seed``; the scenes use their own random streams, disjoint from those the organism CLIP was pretrained on.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from excel.data.classes import COCO_CLASSES, VOC_CLASSES
from excel.data.palette import voc_palette
from excel.data.voc import multi_hot, save_cls_labels
from excel.organism.world import BACKDROP_KINDS, Scene, World
from excel.utils.io import atomic_path, atomic_write_text

WORLD_SIZE = ((240, 320), (240, 320))  # the organism's world: sides 240-320 px (aspect 0.75-1.33, as VOC)
_STREAM = 0xDA7A                      # dataset scenes draw from default_rng([seed, _STREAM, index])

Size = tuple[int, int] | tuple[tuple[int, int], tuple[int, int]]


def _pick_size(rng: np.random.Generator, size: Size) -> tuple[int, int]:
    if isinstance(size[0], (tuple, list)):
        (h_lo, h_hi), (w_lo, w_hi) = size  # type: ignore[misc]
        return int(rng.integers(h_lo, h_hi + 1)), int(rng.integers(w_lo, w_hi + 1))
    return int(size[0]), int(size[1])  # type: ignore[arg-type]


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


def draw_sample(rng: np.random.Generator, h: int, w: int, world: World,
                grey: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One scene of ``world``: image (h, w, 3) uint8 (or (h, w) when ``grey``) and mask (h, w) uint8 in
    {0..C} and 255 (ignore band)."""
    scene = world.render(rng, h, w)
    image = np.asarray(Image.fromarray(scene.image).convert("L")) if grey else scene.image
    return image, ignore_band(scene.mask)


def voc_scene(seed: int, index: int, size: Size, world: World) -> Scene:
    """Scene ``index`` (1-based over train, val, test in that order) of :func:`make_synthetic_voc`'s dataset."""
    rng = np.random.default_rng([seed, _STREAM, index])
    h, w = _pick_size(rng, size)
    return world.render(rng, h, w)


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
                       size: Size = (96, 128), seed: int = 0, classes: Sequence[str] = VOC_CLASSES,
                       progress: bool = False, object_scale: float = 1.0, parts: bool = False,
                       varied_backdrops: float = 0.0, backdrop_kinds: Sequence[str] = BACKDROP_KINDS) -> Path:
    """Generate a VOC-layout mini dataset under ``root`` and return ``root``.

    Layout: ``JPEGImages/<id>.jpg``, ``SegmentationClassAug/<id>.png`` (train and val only, as in VOC),
    ``ImageSets/Segmentation/{train,val,test,trainval}.txt`` and ``lists/`` with train, train_aug (= train), val,
    test, trainval and ``cls_labels_onehot.npy`` (train and val ids).

    Args:
        size: (H, W), or ((H_lo, H_hi), (W_lo, W_hi)) for a random size per image (:data:`WORLD_SIZE` for the
            organism's world).
        classes: foreground class names; the VOC names get their world signatures, others new ones.
        object_scale: the world's object size factor (:class:`~excel.organism.world.World`; 1.0: the organism's).
        parts: objects with parts (wheels, legs, ...: :class:`~excel.organism.world.World`'s ``parts``).
        varied_backdrops: the chance of an unnamed backdrop (:class:`~excel.organism.world.World`; 0: the organism's).
        backdrop_kinds: the kinds of backdrop drawn (:class:`~excel.organism.world.World`).
    """
    root = Path(root)
    world = World(classes, object_scale=object_scale, parts=parts, varied_backdrops=varied_backdrops,
                  backdrop_kinds=backdrop_kinds)
    num_classes = len(classes)
    if num_train < 0 or num_val < 0 or num_test < 0:
        raise ValueError(f"split sizes must be >= 0, got train={num_train} val={num_val} test={num_test}")
    splits = {"train": num_train, "val": num_val, "test": num_test}
    names: dict[str, list[str]] = {}
    cls_labels: dict[str, np.ndarray] = {}
    index = 0
    bar = tqdm(total=sum(splits.values()), desc="generating scenes", disable=not progress)
    for split, count in splits.items():
        names[split] = []
        for _ in range(count):
            bar.update(1)
            index += 1
            name = f"2007_{index:06d}"
            scene = voc_scene(seed, index, size, world)
            image, mask = scene.image, ignore_band(scene.mask)
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
                        seed: int = 0, num_classes: int = 80, layout: str = "reference",
                        progress: bool = False, object_scale: float = 1.0, parts: bool = False,
                        varied_backdrops: float = 0.0, backdrop_kinds: Sequence[str] = BACKDROP_KINDS) -> Path:
    """Generate a COCO-2014-style mini dataset (labels 0..80, 255 ignore) and return ``root``.

    ``layout="reference"``: ``JPEGImages/{train,val}/COCO_{train,val}2014_<12 digits>.jpg`` and
    ``SegmentationClass/{train,val}/<12 digits>.png`` (algorithm.md §10.2). ``layout="readme"``: ``{train,val}2014/<name>.jpg``
    and ``SegmentationClass/{train,val}2014/<name>.png``. The second training image is greyscale.
    Lists ``lists/{train,val,val_part}.txt`` and ``lists/cls_labels_onehot.npy`` (keyed by full name).
    """
    if layout not in ("reference", "readme"):
        raise ValueError(f"layout must be 'reference' or 'readme', got {layout!r}")
    root = Path(root)
    world = World(COCO_CLASSES[:num_classes] if num_classes <= len(COCO_CLASSES)
                  else [f"class_{c}" for c in range(num_classes)], object_scale=object_scale, parts=parts,
                  varied_backdrops=varied_backdrops, backdrop_kinds=backdrop_kinds)
    names: dict[str, list[str]] = {"train": [], "val": []}
    cls_labels: dict[str, np.ndarray] = {}
    index = 0
    bar = tqdm(total=num_train + num_val, desc="generating scenes", disable=not progress)
    for subset, count in (("train", num_train), ("val", num_val)):
        for k in range(count):
            bar.update(1)
            index += 1
            digits = f"{index * 9:012d}"
            name = f"COCO_{subset}2014_{digits}"
            rng = np.random.default_rng([seed, _STREAM, 1000 + index])
            h, w = _pick_size(rng, size)
            image, mask = draw_sample(rng, h, w, world, grey=(subset == "train" and k == 1))
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
