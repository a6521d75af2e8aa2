"""Refinement of the LAM by the transition matrix, background score and upsampling (algorithm.md §5.3, §5.4)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from excel.utils.tensors import grid_side

_NORM_EPS = 1e-7  # r / (1e-7 + max r) (algorithm.md §5.4 step 1)


def refine_maps(trans: Tensor, lam: Tensor, box_mask: Tensor, cls_labels: Tensor) -> Tensor:
    """r_c = 𝒯 @ (mask_c ⊙ lam_c) for every class (algorithm.md §5.3), zeros for absent classes.

    Args:
        trans: B x P x P transition matrix.
        lam: B x P x C LAM (row-major patches).
        box_mask: B x C x g x g box masks (P = g * g).
        cls_labels: B x C multi-hot labels (present where > 0).

    Returns:
        B x C x g x g refined maps.
    """
    b, p, c = lam.shape
    g = grid_side(p, "refine_maps: lam.shape[1]")
    if trans.shape != (b, p, p):
        raise ValueError(f"refine_maps: trans must be B x P x P = {(b, p, p)}, got {tuple(trans.shape)}")
    if box_mask.shape != (b, c, g, g):
        raise ValueError(f"refine_maps: box_mask must be B x C x g x g = {(b, c, g, g)}, got {tuple(box_mask.shape)}")
    if cls_labels.shape != (b, c):
        raise ValueError(f"refine_maps: cls_labels must be B x C = {(b, c)}, got {tuple(cls_labels.shape)}")
    seeds = box_mask.reshape(b, c, p).transpose(1, 2).to(lam.dtype) * lam  # B x P x C
    refined = torch.bmm(trans.to(lam.dtype), seeds).transpose(1, 2).reshape(b, c, g, g)
    return refined * (cls_labels > 0).to(refined.dtype)[:, :, None, None]


def normalize_and_upsample(
    refined: Tensor,
    cls_labels: Tensor,
    out_size: Sequence[int],
    bg_power: float = 1.0,
) -> Tensor:
    """Min-max normalise, upsample and prepend the background score (algorithm.md §5.4).

    Each r_c <- (r_c - min r_c) / (1e-7 + max(r_c - min r_c)) on the g x g grid, then bilinear upsampling with
    half-pixel centres (align_corners=False) to ``out_size``; bg = (1 - max_c r_c) ** bg_power where the max runs
    over the present classes only (bg = 1 where an image has none).

    Args:
        refined: B x C x g x g refined maps.
        cls_labels: B x C multi-hot labels (present where > 0).
        out_size: (H, W).
        bg_power: exponent of the background score.

    Returns:
        B x (1 + C) x H x W stack [bg, r_0, ..., r_{C-1}] with absent class channels set to 0.
    """
    if refined.dim() != 4:
        raise ValueError(f"normalize_and_upsample: refined must be B x C x g x g, got {tuple(refined.shape)}")
    if cls_labels.shape != refined.shape[:2]:
        raise ValueError(
            f"normalize_and_upsample: cls_labels must be B x C = {tuple(refined.shape[:2])}, "
            f"got {tuple(cls_labels.shape)}"
        )
    size = tuple(int(s) for s in out_size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"normalize_and_upsample: out_size must be (H, W) with positive sides, got {out_size}")
    r = refined - refined.amin(dim=(-2, -1), keepdim=True)
    r = r / (_NORM_EPS + r.amax(dim=(-2, -1), keepdim=True))
    r = F.interpolate(r, size=size, mode="bilinear", align_corners=False)
    r = r * (cls_labels > 0).to(r.dtype)[:, :, None, None]
    top = r.amax(dim=1, keepdim=True) if r.shape[1] > 0 else r.new_zeros((r.shape[0], 1) + size)
    bg = (1 - top).pow(bg_power)
    return torch.cat([bg, r], dim=1)
