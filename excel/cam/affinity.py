"""Patch affinity from the attention stack and its transition matrix (algorithm.md §5.1).

Shapes: L attention layers, B images, N = 1 + P tokens (token 0 is CLS), P = g * g patches.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from excel.utils.tensors import device_table

DEFAULT_AFFINITY_LAYERS: tuple[int, ...] = (6, 7, 8, 9, 10, 11)
_SELECTION_EPS = 1e-5  # |S| + 1e-5 in the layer-selected average (algorithm.md §5.1 step 3)


def attention_affinity(
    attn: Tensor,
    layers: Sequence[int] = DEFAULT_AFFINITY_LAYERS,
    attn_pred: Optional[Tensor] = None,
) -> Tensor:
    """Patch-patch affinity Ā from the attention stack (algorithm.md §5.1 steps 1-3).

    Args:
        attn: L x B x N x N attention stack (head mean for plain blocks, head sum for the calibrated ones,
            quirk 3). Token 0 is CLS and is dropped.
        layers: indices into the L axis (default 6..11).
        attn_pred: optional B x P x P predicted affinity Q. Without it Ā is the mean of the chosen layers.
            With it, per image: d_l = sum_ij (Q - Ã_l)_ij, τ = mean_l d_l, S = {l : d_l <= τ},
            Ā = (sum_{l in S} Ã_l) / (|S| + 1e-5) ⊙ Q.

    Returns:
        B x P x P affinity.
    """
    if attn.dim() != 4 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"attention_affinity: attn must be L x B x N x N, got shape {tuple(attn.shape)}")
    num_layers = attn.shape[0]
    layers = [int(l) for l in layers]
    if not layers or any(not -num_layers <= l < num_layers for l in layers):
        raise ValueError(f"attention_affinity: layers {layers} must be non-empty indices into {num_layers} layers")
    index = device_table(tuple(l % num_layers for l in layers), attn.device)
    chosen = attn.index_select(0, index)[:, :, 1:, 1:]  # l x B x P x P
    if attn_pred is None:
        return chosen.mean(dim=0)
    if attn_pred.shape != chosen.shape[1:]:
        raise ValueError(
            f"attention_affinity: attn_pred must be B x P x P = {tuple(chosen.shape[1:])}, "
            f"got {tuple(attn_pred.shape)}"
        )
    q = attn_pred.to(chosen.dtype)
    dist = (q.unsqueeze(0) - chosen).sum(dim=(-2, -1))  # l x B
    tau = dist.mean(dim=0, keepdim=True)
    selected = (dist <= tau).to(chosen.dtype)  # l x B
    summed = (chosen * selected[:, :, None, None]).sum(dim=0)
    count = selected.sum(dim=0)[:, None, None]
    return summed / (count + _SELECTION_EPS) * q


def transition_matrix(aff: Tensor, iters: int = 3) -> Tensor:
    """Transition matrix 𝒯 from an affinity (algorithm.md §5.1 step 4).

    ``iters`` rounds of {divide every column by its sum, then every row by its sum}, then X <- (X + X^T) / 2
    and X <- X @ X. There is no epsilon: a zero column or row gives NaN, as in the reference.

    Args:
        aff: B x P x P non-negative affinity.
        iters: number of column/row normalisation rounds.

    Returns:
        B x P x P symmetric, non-negative matrix.
    """
    if aff.dim() != 3 or aff.shape[-1] != aff.shape[-2]:
        raise ValueError(f"transition_matrix: aff must be B x P x P, got shape {tuple(aff.shape)}")
    if iters < 0:
        raise ValueError(f"transition_matrix: iters must be >= 0, got {iters}")
    x = aff
    for _ in range(iters):
        x = x / x.sum(dim=-2, keepdim=True)
        x = x / x.sum(dim=-1, keepdim=True)
    x = (x + x.transpose(-2, -1)) / 2
    return x @ x
