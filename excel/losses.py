"""Training losses (algorithm.md §7): balanced segmentation cross-entropy and the affinity ("diversity") loss.

Pure tensor functions; sums and counts run over the whole batch (not per image).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["balanced_seg_loss", "affinity_labels", "affinity_loss"]

_COUNT_EPS = 1e-6  # added to the pixel counts of the segmentation loss (algorithm.md §7)


def balanced_seg_loss(logits: Tensor, labels: Tensor, ignore_index: int = 255, check_labels: bool = True) -> Tensor:
    """L_seg = (L_bg + L_fg) / 2 with per-pixel cross-entropy against the pseudo labels.

    Args:
        logits: (B, C, h, w) class logits; bilinearly upsampled (align_corners=False) to the label size.
        labels: (B, H, W) integer labels in [0, C) or ``ignore_index``. 0 is background.
    Returns:
        Scalar L_bg = Σ_{y=0} ℓ / (n_bg + 1e-6), L_fg = Σ_{y∉{0,ignore}} ℓ / (n_fg + 1e-6), over the whole batch.
        A batch without foreground pixels gives L_fg = 0 (faithful: no special case).
    ``check_labels=False`` skips the range check (a host sync): for labels made by the pipeline itself.
    """
    if logits.dim() != 4 or labels.dim() != 3 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"balanced_seg_loss expects logits (B, C, h, w) and labels (B, H, W), "
                         f"got {tuple(logits.shape)} and {tuple(labels.shape)}")
    num_classes = logits.shape[1]
    labels = labels.long()
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes)) if check_labels else None
    if bad is not None and bool(bad.any()):
        raise ValueError(f"balanced_seg_loss: labels hold values outside [0, {num_classes}) and != {ignore_index}: "
                         f"{torch.unique(labels[bad]).tolist()[:10]}")
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    pixel_loss = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")  # (B, H, W)
    bg = labels == 0
    fg = (labels != 0) & (labels != ignore_index)
    loss_bg = (pixel_loss * bg).sum() / (bg.sum() + _COUNT_EPS)
    loss_fg = (pixel_loss * fg).sum() / (fg.sum() + _COUNT_EPS)
    return (loss_bg + loss_fg) / 2


def affinity_labels(label_map: Tensor, grid: tuple[int, int], radius: int = 8, ignore_index: int = 255) -> Tensor:
    """Pairwise patch labels for the affinity loss (algorithm.md §7, steps 2-5).

    Args:
        label_map: (B, H, W) integer label map (pseudo labels or the argmax of the upsampled logits).
        grid: (gh, gw) patch grid; patch (i, j) takes the label at pixel (s_h * i, s_w * j), s = H // gh,
            W // gw (nearest-neighbour downsampling).
        radius: Chebyshev window: pairs further apart than ``radius`` rows or columns are ignored.
    Returns:
        (B, P, P) uint8 with P = gh * gw (patches row-major): 1 same label, 0 different, ``ignore_index`` outside
        the window or where either label is ``ignore_index``. The diagonal is kept (= 1 unless ignored, quirk 12).
    """
    if label_map.dim() != 3:
        raise ValueError(f"affinity_labels expects a label map (B, H, W), got shape {tuple(label_map.shape)}")
    gh, gw = grid
    height, width = label_map.shape[-2:]
    if not (0 < gh <= height and 0 < gw <= width):
        raise ValueError(f"affinity_labels: grid {grid} does not fit a {height}x{width} label map")
    if not 0 <= ignore_index <= 255:
        raise ValueError(f"affinity_labels: ignore_index={ignore_index} does not fit the uint8 output")
    sh, sw = height // gh, width // gw
    small = label_map[:, : sh * gh : sh, : sw * gw : sw].reshape(label_map.shape[0], gh * gw)  # (B, P)
    same = (small.unsqueeze(2) == small.unsqueeze(1)).to(torch.uint8)  # (B, P, P)
    rows = torch.arange(gh, device=label_map.device).repeat_interleave(gw)
    cols = torch.arange(gw, device=label_map.device).repeat(gh)
    outside = ((rows[:, None] - rows[None, :]).abs() > radius) | ((cols[:, None] - cols[None, :]).abs() > radius)
    ignored = small == ignore_index
    drop = outside.unsqueeze(0) | ignored.unsqueeze(2) | ignored.unsqueeze(1)
    return same.masked_fill_(drop, ignore_index)


def affinity_loss(attn_pred: Tensor, aff_labels: Tensor) -> Tensor:
    """L_aff = 0.5 Σ_{R=1} (1 - P) / (n+ + 1) + 0.5 Σ_{R=0} P / (n- + 1), over the batch (algorithm.md §7 step 6).

    Args:
        attn_pred: (B, P, P) predicted affinity in (0, 1).
        aff_labels: (B, P, P) from :func:`affinity_labels` (1, 0, or ignored).
    Returns:
        Scalar loss; differentiable in ``attn_pred``.
    """
    if attn_pred.shape != aff_labels.shape:
        raise ValueError(f"affinity_loss: attn_pred {tuple(attn_pred.shape)} and affinity labels "
                         f"{tuple(aff_labels.shape)} must have the same (B, P, P) shape")
    pos = aff_labels == 1
    neg = aff_labels == 0
    loss_pos = ((1 - attn_pred) * pos).sum() / (pos.sum() + 1)
    loss_neg = (attn_pred * neg).sum() / (neg.sum() + 1)
    return 0.5 * loss_pos + 0.5 * loss_neg
