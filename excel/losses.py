"""Training losses (algorithm.md §7): balanced segmentation cross-entropy and the affinity ("diversity") loss.

Pure tensor functions; sums and counts run over the whole batch (not per image). The training step reads its loss
as data: :data:`LOSS_TERMS` maps a name to a function of :class:`LossInputs`, and the weight of term ``name`` is
the config key ``loss.<name>_weight`` (0 switches it off). The step, the metrics record (``<name>_loss``),
TensorBoard, the log line and ``curves.png`` all go over these terms; docs/extending.md adds one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from excel.config import ConfigError
from excel.utils.registry import registrar

__all__ = ["balanced_seg_loss", "affinity_labels", "affinity_loss", "LossInputs", "LOSS_TERMS", "loss_term",
           "loss_weights"]

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
    rows = torch.arange(gh, device=label_map.device).view(gh, 1).expand(gh, gw).reshape(-1)   # patch row, col
    cols = torch.arange(gw, device=label_map.device).view(1, gw).expand(gh, gw).reshape(-1)
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


# ----------------------------------------------------------------------------- the training step's terms
@dataclass
class LossInputs:
    """What a loss term reads at one training iteration.

    out: the model's ``ForwardOutput`` (``seg_logits`` B x C x g x g, ``attn_pred`` B x P x P, ``fused``, ``lam``,
    ``attn``, ``encoded``); logits: ``out.seg_logits`` as float32; pseudo: B x H x W int64 pseudo labels (no
    gradient); iteration: the 0-based iteration; cfg: the run's config.
    """

    out: Any
    logits: Tensor
    pseudo: Tensor
    iteration: int
    cfg: Any


LossTerm = Callable[[LossInputs], Tensor]
LOSS_TERMS: dict[str, LossTerm] = {}


loss_term = registrar(LOSS_TERMS, "loss term")
loss_term.__doc__ = """``@loss_term(name)``: register a function as the loss term ``name``, weighted by
``loss.<name>_weight`` (once per name)."""


def loss_weights(loss_cfg: Any) -> dict[str, float]:
    """``{name: weight}`` of every registered term, in registration order, from the config group ``loss``.

    Raises:
        ConfigError: a term without its ``loss.<name>_weight`` key (add it to configs/base.yaml).
    """
    missing = [n for n in LOSS_TERMS if f"{n}_weight" not in loss_cfg]
    if missing:
        raise ConfigError(f"loss terms {missing} have no weight: add loss.{missing[0]}_weight to configs/base.yaml")
    return {name: float(loss_cfg[f"{name}_weight"]) for name in LOSS_TERMS}


@loss_term("seg")
def seg_term(x: LossInputs) -> Tensor:
    """L_seg of the decoder logits against the pseudo labels (in range by construction: no label check)."""
    return balanced_seg_loss(x.logits, x.pseudo, check_labels=False)


@loss_term("aff")
def aff_term(x: LossInputs) -> Tensor:
    """L_aff of attn_pred against the affinity labels of the pseudo labels, or from ``train.aff_label_switch_iter``
    on of the decoder's own upsampled argmax (algorithm.md §7)."""
    switch = x.cfg.train.aff_label_switch_iter
    if switch is not None and x.iteration >= switch:
        up = F.interpolate(x.logits.detach(), size=x.pseudo.shape[-2:], mode="bilinear", align_corners=False)
        source = up.argmax(1)
    else:
        source = x.pseudo
    g = x.logits.shape[-1]
    return affinity_loss(x.out.attn_pred.float(), affinity_labels(source, grid=(g, g), radius=x.cfg.loss.aff_radius))
