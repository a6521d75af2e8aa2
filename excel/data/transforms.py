"""Training augmentation (algorithm.md §8.4) and ImageNet normalisation (quirk 7) on numpy arrays.

Training crops stay uint8 (:func:`train_transform`): the trainer normalises them on its device with
:func:`normalize_on_device`, the same float32 arithmetic as :func:`normalize`, so a crop gives the same input either
way and a quarter of the bytes cross the loader and the host-to-device copy.

Random draws follow the reference order and generators: python ``random`` for the rescale ratio, the flip and
the crop boxes; numpy's global generator for the paste offset of the padded canvas.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from PIL import Image

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass
class AugmentConfig:
    """``data.augment`` plus ``quirks.crop_without_gt`` (see configs/base.yaml for each key)."""

    crop_size: int = 320
    scale_range: tuple[float, float] | None = (0.5, 2.0)
    hflip: bool = True
    cat_max_ratio: float = 0.75
    crop_tries: int = 10
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_without_gt: bool = False
    ignore_index: int = 255

    @classmethod
    def from_mapping(cls, aug: Mapping[str, Any] | None, crop_without_gt: bool = False,
                     ignore_index: int = 255) -> "AugmentConfig":
        """Build from the ``data.augment`` config node (or any mapping); None gives the defaults."""
        aug = dict(aug or {})
        known = {"crop_size", "scale_range", "hflip", "cat_max_ratio", "crop_tries", "mean", "std"}
        unknown = set(aug) - known
        if unknown:
            raise ValueError(f"unknown data.augment keys {sorted(unknown)}; expected some of {sorted(known)}")
        out = cls(crop_without_gt=bool(crop_without_gt), ignore_index=int(ignore_index))
        if "crop_size" in aug:
            out.crop_size = int(aug["crop_size"])
        if "scale_range" in aug:
            sr = aug["scale_range"]
            out.scale_range = None if sr is None else (float(sr[0]), float(sr[1]))
        if "hflip" in aug:
            out.hflip = bool(aug["hflip"])
        if "cat_max_ratio" in aug:
            out.cat_max_ratio = float(aug["cat_max_ratio"])
        if "crop_tries" in aug:
            out.crop_tries = int(aug["crop_tries"])
        for key in ("mean", "std"):
            if key in aug:
                vals = tuple(float(v) for v in aug[key])
                if len(vals) != 3:
                    raise ValueError(f"data.augment.{key} needs 3 values (RGB), got {list(vals)}")
                setattr(out, key, vals)
        if out.crop_size <= 0 or out.crop_tries < 1:
            raise ValueError(f"data.augment.crop_size must be > 0 and crop_tries >= 1, got "
                             f"{out.crop_size} and {out.crop_tries}")
        return out


def random_scaling(image: np.ndarray, label: np.ndarray, scale_range: tuple[float, float]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Rescale by r ~ U(scale_range) (python ``random``): image PIL BILINEAR, label NEAREST, to (int(r w), int(r h)).

    Args: image (h, w, 3) uint8, label (h, w). Returns the resized pair.
    """
    ratio = random.uniform(scale_range[0], scale_range[1])
    h, w = label.shape
    new_size = (int(ratio * w), int(ratio * h))
    img = np.asarray(Image.fromarray(image).resize(new_size, resample=Image.BILINEAR))
    lbl = np.asarray(Image.fromarray(label.astype(np.uint8)).resize(new_size, resample=Image.NEAREST))
    return img, lbl


def random_hflip(image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip both left-right when ``random.random() > 0.5``."""
    if random.random() > 0.5:
        return image[:, ::-1], label[:, ::-1]
    return image, label


def pad_to_crop(image: np.ndarray, label: np.ndarray, crop_size: int, ignore_index: int = 255
                ) -> tuple[np.ndarray, np.ndarray]:
    """Paste onto a max(crop, h) x max(crop, w) canvas at a numpy-random offset; image fill 0, label fill ignore."""
    h, w = label.shape
    H, W = max(crop_size, h), max(crop_size, w)
    img = np.zeros((H, W, 3), dtype=image.dtype)
    lbl = np.full((H, W), ignore_index, dtype=label.dtype)
    top = int(np.random.randint(H - h + 1))
    left = int(np.random.randint(W - w + 1))
    img[top:top + h, left:left + w] = image
    lbl[top:top + h, left:left + w] = label
    return img, lbl


def crop_box(label: np.ndarray, crop_size: int, cat_max_ratio: float = 0.75, tries: int = 10,
             use_gt: bool = True, ignore_index: int = 255) -> tuple[int, int]:
    """Top-left corner of the crop box (python ``randrange``, rows first).

    With ``use_gt``: up to ``tries`` boxes; the first whose most frequent non-ignore label covers less than
    ``cat_max_ratio`` of the non-ignore pixels is taken, else the last box drawn (quirk 16). Without: the first box.
    """
    H, W = label.shape
    top = left = 0
    for _ in range(tries if use_gt else 1):
        top = random.randrange(0, H - crop_size + 1)
        left = random.randrange(0, W - crop_size + 1)
        if not use_gt:
            break
        window = label[top:top + crop_size, left:left + crop_size]
        counts = np.bincount(window.ravel().astype(np.intp, copy=False))  # one pass; labels are small integers
        if ignore_index < counts.size:
            counts[ignore_index] = 0
        total = counts.sum()
        if total and counts.max() / total < cat_max_ratio:
            break
    return top, left


def random_crop(image: np.ndarray, label: np.ndarray, cfg: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """Pad to at least the crop size, then cut a ``crop_size`` square chosen by :func:`crop_box`."""
    img, lbl = pad_to_crop(image, label, cfg.crop_size, cfg.ignore_index)
    top, left = crop_box(lbl, cfg.crop_size, cfg.cat_max_ratio, cfg.crop_tries, not cfg.crop_without_gt,
                         cfg.ignore_index)
    s = cfg.crop_size
    return img[top:top + s, left:left + s], lbl[top:top + s, left:left + s]


def normalize(image: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """(H, W, 3) 0..255 pixels -> (3, H, W) float32 ``(x - mean) / std`` (0-255 scale)."""
    img = (image.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def denormalize(image: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """Inverse of :func:`normalize`: (3, H, W) -> (H, W, 3) float32 on the 0-255 scale (not rounded)."""
    return image.transpose(1, 2, 0) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)


def to_uint8_rgb(image, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """A normalised (3, H, W) image (tensor or array) back to (H, W, 3) uint8 RGB, rounded: the original pixels."""
    array = image.detach().cpu().float().numpy() if hasattr(image, "detach") else np.asarray(image, np.float32)
    return np.clip(np.rint(denormalize(array, tuple(mean), tuple(std))), 0, 255).astype(np.uint8)


def train_transform(image: np.ndarray, label: np.ndarray, cfg: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """algorithm.md §8.4: rescale, flip, pad + crop; normalisation is left to the device (:func:`normalize_on_device`).

    Args: image (h, w, 3) uint8, label (h, w) uint8/int.
    Returns: image (3, crop, crop) uint8 (padding 0), label (crop, crop) as given (ignore outside the image).
    """
    if cfg.scale_range is not None:
        image, label = random_scaling(image, label, cfg.scale_range)
    if cfg.hflip:
        image, label = random_hflip(image, label)
    image, label = random_crop(image, label, cfg)
    return np.ascontiguousarray(image.transpose(2, 0, 1)), np.ascontiguousarray(label)


def normalize_on_device(pixels, mean, std):
    """B x 3 x H x W uint8 pixels -> float32 ``(x - mean) / std`` on their device, as :func:`normalize` computes it
    (float32 subtraction then division, so the values are the same bit for bit).

    Args:
        pixels: B x 3 x H x W uint8 tensor.
        mean, std: 1 x 3 x 1 x 1 float32 tensors on the pixels' device (made once, not per batch).
    """
    return (pixels.to(mean.dtype) - mean) / std


def eval_transform(image: np.ndarray, label: np.ndarray, cfg: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """No augmentation: the full image normalised (3, h, w) float32 and the label (h, w) int64."""
    return normalize(image, cfg.mean, cfg.std), np.ascontiguousarray(label, dtype=np.int64)
