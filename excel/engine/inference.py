"""Segmentation inference math (algorithm.md §9.2, §9.3): square resizing, multi-scale + flip logits, logit sizes.

Loading a trained model is :func:`excel.engine.checkpoint.load_trained_model`.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from excel.model import ExCEL

__all__ = ["resize_square", "multiscale_logits", "logit_size", "upsample_logits"]


def resize_square(images: torch.Tensor, side: int) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of (B,3,h,w) to (B,3,side,side), the model's square input."""
    return F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False)


def logit_size(height: int, width: int, logit_scale: float | None) -> tuple[int, int]:
    """Size of the per-scale logits before averaging: (H, W), or (int(s H), int(s W)) (algorithm.md §9.3)."""
    if logit_scale is None:
        return int(height), int(width)
    if not 0 < float(logit_scale) <= 1:
        raise ValueError(f"infer.logit_scale={logit_scale}: expected null or a factor in (0, 1]")
    return max(1, int(float(logit_scale) * height)), max(1, int(float(logit_scale) * width))


def upsample_logits(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of (C, h, w) or (B, C, h, w) logits to ``size``; same rank back."""
    batched = logits.dim() == 4
    x = logits if batched else logits.unsqueeze(0)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)
    return x if batched else x[0]


@torch.no_grad()
def multiscale_logits(model: ExCEL, image: torch.Tensor, input_size: int, scales: Sequence[float],
                      flip_at_unit_scale: bool, out_size: Sequence[int]) -> torch.Tensor:
    """Average segmentation logits over scales and horizontal flips (algorithm.md §9.2, §9.3).

    For every scale s the image is resized to a square of side int(input_size * s) (bilinear,
    align_corners=False) and forwarded together with its mirror. The mirrored logits are flipped back and
    averaged with the plain ones, except at s = 1.0 when ``flip_at_unit_scale`` is false (VOC, quirk 19: only
    the plain logits count there, so the mirror is not even computed). Each scale's logits are resized to
    ``out_size`` (bilinear, align_corners=False) and the scales are averaged.

    Args:
        model: the ExCEL model in eval mode.
        image: (1, 3, h, w) normalised image.
        input_size: the base square side (model.input_size).
        scales: the factors (infer.scales).
        out_size: (H', W') of the returned logits (the image size for VOC, 0.2x for COCO).
    Returns:
        (C, H', W') float32 averaged logits.
    """
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"multiscale_logits expects one image (1, 3, h, w), got {tuple(image.shape)}")
    if not len(scales):
        raise ValueError("infer.scales is empty: give at least one scale factor")
    total = None
    for s in scales:
        side = int(input_size * float(s))
        x = F.interpolate(image, size=(side, side), mode="bilinear", align_corners=False)
        if float(s) == 1.0 and not flip_at_unit_scale:
            merged = model.segment(x).float()
        else:
            logits = model.segment(torch.cat([x, x.flip(-1)], dim=0)).float()
            merged = (logits[:1] + logits[1:].flip(-1)) / 2
        merged = upsample_logits(merged, out_size)[0]
        total = merged if total is None else total + merged
    assert total is not None
    return total / len(scales)
