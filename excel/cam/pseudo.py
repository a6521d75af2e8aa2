"""Training-free pseudo labels (algorithm.md §5.1-5.5), batched over images with different label sets.

The classes of each image are gathered into a padded class axis of width M = max number of present classes in
the batch; padded slots are excluded from the background score and the argmax. PAR is linear and per channel,
so it runs once on B x (1 + M) x H x W without the padded slots changing anything.

:func:`score_stack` is the pipeline with the affinity and PAR handed in; :func:`pseudo_label_scores` and
:func:`make_pseudo_labels` are its pure, attention-affinity form; :class:`excel.cam.PseudoLabeler` is the form the
runners use (built once from the config).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from excel.cam.affinity import DEFAULT_AFFINITY_LAYERS, attention_affinity, transition_matrix
from excel.cam.boxes import box_masks
from excel.cam.par import PAR
from excel.cam.refine import normalize_and_upsample, refine_maps
from excel.utils.tensors import grid_side


def present_classes(cls_labels: Tensor, max_classes: Optional[int] = None) -> tuple[Tensor, Tensor]:
    """Present classes of every image, ascending, padded to the largest count in the batch.

    Args:
        cls_labels: B x C multi-hot labels (present where > 0).
        max_classes: M when the caller knows it from host-side labels (the training loader counts it); None
            reads it from ``cls_labels`` (one host sync when they live on a GPU).

    Returns:
        (index, valid): B x M int64 class indices (padded slots hold some absent class) and B x M bool,
        M = max number of present classes.
    """
    b, c = cls_labels.shape
    present = cls_labels > 0
    order = torch.arange(c, device=cls_labels.device).expand(b, c)
    key = torch.where(present, order, order + c)  # present classes first, each group ascending
    if max_classes is not None:
        m = int(max_classes)
        if not 0 <= m <= c:
            raise ValueError(f"present_classes: max_classes={m} is not in 0..{c}")
    else:
        m = int(present.sum(dim=1).max()) if b > 0 and c > 0 else 0
    index = key.argsort(dim=1)[:, :m]
    valid = torch.arange(m, device=cls_labels.device)[None, :] < present.sum(dim=1, keepdim=True)
    return index, valid


@dataclass
class PseudoScores:
    """The score stack of a batch before the argmax.

    scores: B x (1 + M) x H x W [bg, present classes...], padded class slots -inf; lut: B x (1 + M) int64 label of
    each slot (0 for bg, c + 1 for class c); valid: B x M bool, the slots that hold a present class;
    after_par: whether PAR has refined ``scores``. M = most present classes in the batch.
    """

    scores: Tensor
    lut: Tensor
    valid: Tensor
    after_par: bool

    def labels(self) -> Tensor:
        """B x H x W int64 labels: the label of each pixel's highest slot (first maximum on ties)."""
        b, _, height, width = self.scores.shape
        # argmax over a contiguous last axis is ~10x faster on CPU than over the strided channel axis, with the
        # same tie and NaN rules (first maximum)
        winner = self.scores.permute(0, 2, 3, 1).contiguous().argmax(dim=-1)
        return self.lut.gather(1, winner.view(b, -1)).view(b, height, width)

    def refined(self, par: nn.Module, images: Tensor) -> "PseudoScores":
        """These scores after ``par`` (B x 3 x h x w ``images``, resized by PAR); padded slots stay -inf."""
        if self.after_par:
            raise ValueError("PseudoScores.refined: these scores are already after PAR")
        if self.valid.shape[1] == 0:
            return PseudoScores(self.scores, self.lut, self.valid, True)
        stack = self.scores.clone()
        stack[:, 1:].masked_fill_(~self.valid[:, :, None, None], 0.0)  # PAR sees the padded slots as score_stack makes them
        return _after_par(stack, self.lut, self.valid, par, images)


def _after_par(stack: Tensor, lut: Tensor, valid: Tensor, par: nn.Module, images: Tensor) -> PseudoScores:
    """PAR on an unmasked B x (1 + M) x H x W stack (padded slots 0), then the padded slots set to -inf."""
    stack = par(images, stack, num_channels=1 + valid.sum(dim=1))  # padded class slots need no refinement
    stack[:, 1:].masked_fill_(~valid[:, :, None, None], float("-inf"))
    return PseudoScores(stack, lut, valid, True)


def check_attention(attn: Tensor, batch: int, patches: int) -> None:
    """Raise ValueError unless ``attn`` is an L x B x N x N stack with B = ``batch`` and N = 1 + ``patches``."""
    n = patches + 1
    if attn.dim() != 4 or attn.shape[1] != batch or attn.shape[-1] != n or attn.shape[-2] != n:
        raise ValueError(f"pseudo labels: attn must be L x B x N x N with B = {batch}, N = {n}, "
                         f"got {tuple(attn.shape)}")


@torch.no_grad()
def score_stack(lam: Tensor, cls_labels: Tensor, images: Tensor, out_size: Sequence[int],
                affinity: Optional[Callable[[], Tensor]], par: Optional[nn.Module], box_threshold: float = 0.79,
                sinkhorn_iters: int = 3, bg_power: float = 1.0, max_classes: Optional[int] = None,
                box_method: str = "auto") -> PseudoScores:
    """Score stack of algorithm.md §5.1-5.5 with the affinity and PAR handed in.

    Args:
        lam: B x P x C_fg LAM in [0, 1] (P = g * g).
        cls_labels: B x C_fg multi-hot image labels.
        images: B x 3 x h x w image given to PAR as is (training: de-normalised, uint8-truncated / 255;
            evaluation: the normalised input, quirk 18). PAR resizes it to ``out_size``.
        out_size: (H, W) of the labels.
        affinity: called (only when some image has a class) for the B x P x P patch affinity that the transition
            matrix is made from; None skips the affinity refinement (ablation): r_c = mask_c ⊙ lam_c, 𝒯 = identity.
        par: the PAR module, or None for the scores before PAR.
        box_threshold: CAA threshold ϑ.
        sinkhorn_iters: column/row normalisation rounds of the transition matrix.
        bg_power: background score exponent.
        max_classes: the most present classes of an image, when known on the host (:func:`present_classes`).
        box_method: how the box masks' connected components stop (:func:`excel.cam.boxes.box_masks`).
    """
    if lam.dim() != 3:
        raise ValueError(f"pseudo labels: lam must be B x P x C_fg, got shape {tuple(lam.shape)}")
    b, p, c = lam.shape
    grid_side(p, "pseudo labels: lam.shape[1]")
    if cls_labels.shape != (b, c):
        raise ValueError(f"pseudo labels: cls_labels must be B x C_fg = {(b, c)}, got {tuple(cls_labels.shape)}")
    if images.dim() != 4 or images.shape[0] != b:
        raise ValueError(f"pseudo labels: images must be B x 3 x h x w with B = {b}, got {tuple(images.shape)}")
    height, width = (int(s) for s in out_size)

    index, valid = present_classes(cls_labels, max_classes)
    m = index.shape[1]
    lut = torch.cat([index.new_zeros((b, 1)), index + 1], dim=1)  # B x (1 + M)
    if m == 0:
        return PseudoScores(lam.new_ones((b, 1, height, width)), lut, valid, par is not None)

    if affinity is not None:
        trans = transition_matrix(affinity(), sinkhorn_iters)
    else:
        trans = torch.eye(p, dtype=lam.dtype, device=lam.device).expand(b, p, p)
    lam_sel = lam.gather(2, index[:, None, :].expand(b, p, m))  # B x P x M
    masks = box_masks(lam_sel, valid, box_threshold, method=box_method)
    refined = refine_maps(trans, lam_sel, masks, valid)
    stack = normalize_and_upsample(refined, valid, (height, width), bg_power)  # B x (1 + M) x H x W
    if par is not None:
        return _after_par(stack, lut, valid, par, images)
    stack[:, 1:].masked_fill_(~valid[:, :, None, None], float("-inf"))
    return PseudoScores(stack, lut, valid, False)


@torch.no_grad()
def pseudo_label_scores(
    lam: Tensor,
    attn: Tensor,
    cls_labels: Tensor,
    images: Tensor,
    out_size: Sequence[int],
    attn_pred: Optional[Tensor] = None,
    box_threshold: float = 0.79,
    par: Optional[nn.Module] = None,
    affinity_layers: Sequence[int] = DEFAULT_AFFINITY_LAYERS,
    sinkhorn_iters: int = 3,
    bg_power: float = 1.0,
    use_affinity: bool = True,
) -> tuple[Tensor, Tensor]:
    """Refined score stack of algorithm.md §5.1-5.5 (after PAR) before the argmax, affinity from the attention.

    Args:
        lam, cls_labels, images, out_size, box_threshold, sinkhorn_iters, bg_power: as in :func:`score_stack`.
        attn: L x B x N x N attention stack (N = 1 + P).
        attn_pred: optional B x P x P Q for the layer selection of algorithm.md §5.1.
        par: a PAR module (default: ``PAR()`` with the reference settings).
        affinity_layers: attention layers used for the affinity.
        use_affinity: False skips the affinity refinement (ablation): r_c = mask_c ⊙ lam_c, 𝒯 = identity.

    Returns:
        (scores, lut): see :class:`PseudoScores` (after PAR).
    """
    if lam.dim() == 3:  # score_stack checks the rest
        grid_side(lam.shape[1], "pseudo labels: lam.shape[1]")
        check_attention(attn, lam.shape[0], lam.shape[1])
    affinity = (lambda: attention_affinity(attn, affinity_layers, attn_pred)) if use_affinity else None
    stack = score_stack(lam, cls_labels, images, out_size, affinity, PAR().to(lam.device) if par is None else par,
                        box_threshold, sinkhorn_iters, bg_power)
    return stack.scores, stack.lut


@torch.no_grad()
def make_pseudo_labels(lam: Tensor, attn: Tensor, cls_labels: Tensor, images: Tensor, out_size: Sequence[int],
                       attn_pred: Optional[Tensor] = None, **settings: Any) -> Tensor:
    """Pseudo labels from the LAM and the attention stack (algorithm.md §5.1-5.5).

    Arguments as :func:`pseudo_label_scores` (``settings``: box_threshold, par, affinity_layers, sinkhorn_iters,
    bg_power, use_affinity).

    Returns:
        B x H x W int64 labels in {0} ∪ {c + 1 : c present}; no ignore value (quirk 15).
    """
    scores, lut = pseudo_label_scores(lam, attn, cls_labels, images, out_size, attn_pred, **settings)
    return PseudoScores(scores, lut, lut[:, 1:] >= 0, True).labels()
