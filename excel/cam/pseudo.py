"""Training-free pseudo labels (algorithm.md §5.1-5.5), batched over images with different label sets.

The classes of each image are gathered into a padded class axis of width M = max number of present classes in
the batch; padded slots are excluded from the background score and the argmax. PAR is linear and per channel,
so it runs once on B x (1 + M) x H x W without the padded slots changing anything.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from excel.cam.affinity import DEFAULT_AFFINITY_LAYERS, attention_affinity, transition_matrix
from excel.cam.boxes import box_masks
from excel.cam.par import PAR
from excel.cam.refine import normalize_and_upsample, refine_maps
from excel.utils.tensors import grid_side


def present_classes(cls_labels: Tensor) -> tuple[Tensor, Tensor]:
    """Present classes of every image, ascending, padded to the largest count in the batch.

    Args:
        cls_labels: B x C multi-hot labels (present where > 0).

    Returns:
        (index, valid): B x M int64 class indices (padded slots hold some absent class) and B x M bool,
        M = max number of present classes (one host sync).
    """
    b, c = cls_labels.shape
    present = cls_labels > 0
    order = torch.arange(c, device=cls_labels.device).expand(b, c)
    key = torch.where(present, order, order + c)  # present classes first, each group ascending
    m = int(present.sum(dim=1).max()) if b > 0 and c > 0 else 0
    index = key.argsort(dim=1)[:, :m]
    valid = torch.arange(m, device=cls_labels.device)[None, :] < present.sum(dim=1, keepdim=True)
    return index, valid


@torch.no_grad()
def pseudo_label_scores(
    lam: Tensor,
    attn: Tensor,
    cls_labels: Tensor,
    images: Tensor,
    out_size: Sequence[int],
    attn_pred: Optional[Tensor] = None,
    box_threshold: float = 0.79,
    par: Optional[PAR] = None,
    affinity_layers: Sequence[int] = DEFAULT_AFFINITY_LAYERS,
    sinkhorn_iters: int = 3,
    bg_power: float = 1.0,
    use_affinity: bool = True,
) -> tuple[Tensor, Tensor]:
    """Refined score stack of algorithm.md §5.1-5.5 (after PAR) before the argmax.

    Args:
        lam: B x P x C_fg LAM in [0, 1] (P = g * g).
        attn: L x B x N x N attention stack (N = 1 + P).
        cls_labels: B x C_fg multi-hot image labels.
        images: B x 3 x h x w image given to PAR as is (training: de-normalised, uint8-truncated / 255;
            evaluation: the normalised input, quirk 18). PAR resizes it to ``out_size``.
        out_size: (H, W) of the labels.
        attn_pred: optional B x P x P Q for the layer selection of algorithm.md §5.1.
        box_threshold: CAA threshold ϑ.
        par: a PAR module (default: ``PAR()`` with the reference settings).
        affinity_layers: attention layers used for the affinity.
        sinkhorn_iters: column/row normalisation rounds of the transition matrix.
        bg_power: background score exponent.
        use_affinity: False skips the affinity refinement (ablation): r_c = mask_c ⊙ lam_c, 𝒯 = identity.

    Returns:
        (scores, lut): B x (1 + M) x H x W scores [bg, present classes...] after PAR, padded slots -inf, and
        B x (1 + M) int64 label of each slot (0 for bg, c + 1 for class c); M = most present classes in the batch.
    """
    if lam.dim() != 3:
        raise ValueError(f"make_pseudo_labels: lam must be B x P x C_fg, got shape {tuple(lam.shape)}")
    b, p, c = lam.shape
    grid_side(p, "make_pseudo_labels: lam.shape[1]")
    if attn.dim() != 4 or attn.shape[1] != b or attn.shape[-1] != p + 1 or attn.shape[-2] != p + 1:
        raise ValueError(
            f"make_pseudo_labels: attn must be L x B x N x N with B = {b}, N = {p + 1}, got {tuple(attn.shape)}"
        )
    if cls_labels.shape != (b, c):
        raise ValueError(f"make_pseudo_labels: cls_labels must be B x C_fg = {(b, c)}, got {tuple(cls_labels.shape)}")
    if images.dim() != 4 or images.shape[0] != b:
        raise ValueError(f"make_pseudo_labels: images must be B x 3 x h x w with B = {b}, got {tuple(images.shape)}")
    height, width = (int(s) for s in out_size)

    index, valid = present_classes(cls_labels)
    m = index.shape[1]
    lut = torch.cat([index.new_zeros((b, 1)), index + 1], dim=1)  # B x (1 + M)
    if m == 0:
        return lam.new_ones((b, 1, height, width)), lut

    if use_affinity:
        trans = transition_matrix(attention_affinity(attn, affinity_layers, attn_pred), sinkhorn_iters)
    else:
        trans = torch.eye(p, dtype=lam.dtype, device=lam.device).expand(b, p, p)
    lam_sel = lam.gather(2, index[:, None, :].expand(b, p, m))  # B x P x M
    masks = box_masks(lam_sel, valid, box_threshold)
    refined = refine_maps(trans, lam_sel, masks, valid)
    stack = normalize_and_upsample(refined, valid, (height, width), bg_power)  # B x (1 + M) x H x W
    if par is None:
        par = PAR().to(lam.device)
    stack = par(images, stack, num_channels=1 + valid.sum(dim=1))  # padded class slots need no refinement
    stack[:, 1:].masked_fill_(~valid[:, :, None, None], float("-inf"))
    return stack, lut


@torch.no_grad()
def make_pseudo_labels(
    lam: Tensor,
    attn: Tensor,
    cls_labels: Tensor,
    images: Tensor,
    out_size: Sequence[int],
    attn_pred: Optional[Tensor] = None,
    box_threshold: float = 0.79,
    par: Optional[PAR] = None,
    affinity_layers: Sequence[int] = DEFAULT_AFFINITY_LAYERS,
    sinkhorn_iters: int = 3,
    bg_power: float = 1.0,
    use_affinity: bool = True,
) -> Tensor:
    """Pseudo labels from the LAM and the attention stack (algorithm.md §5.1-5.5).

    Arguments as :func:`pseudo_label_scores`.

    Returns:
        B x H x W int64 labels in {0} ∪ {c + 1 : c present}; no ignore value (quirk 15).
    """
    stack, lut = pseudo_label_scores(lam, attn, cls_labels, images, out_size, attn_pred, box_threshold, par,
                                     affinity_layers, sinkhorn_iters, bg_power, use_affinity)
    b, _, height, width = stack.shape
    # B x H x W index into [bg, present classes...]; argmax over a contiguous last axis is ~10x faster on CPU than
    # over the strided channel axis, with the same tie and NaN rules (first maximum)
    winner = stack.permute(0, 2, 3, 1).contiguous().argmax(dim=-1)
    return lut.gather(1, winner.view(b, -1)).view(b, height, width)
