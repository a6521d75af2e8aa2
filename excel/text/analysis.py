"""What TSE does to a text bank, in numbers (benchmarks/tse_geometry.py prints them; algorithm.md §3.3).

Pure tensor functions: the parts of TSE's attribute mix, mean pairwise cosines, and a rank AUC.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from excel.text.bank import num_masked


def tse_parts(fg: Tensor, centers: Tensor, top_k: float = 0.9) -> tuple[Tensor, Tensor, Tensor]:
    """The weights and the mix of TSE (algorithm.md §3.3 steps 1-5), split into its shared and class-specific parts.

    Args:
        fg: (C_fg, D) unit foreground texts; centers: (D, J) cluster bank; top_k: keep ratio.
    Returns:
        alpha (C_fg, J) softmax weights (masked clusters 0); mix (C_fg, D) = alpha @ A^T; shared (D,) = mean_c mix.
    """
    centers = centers.to(fg)
    logits = fg @ centers
    m = num_masked(logits.shape[1], top_k)
    if m > 0:
        drop = logits.argsort(dim=1, descending=True)[:, logits.shape[1] - m:]
        logits = logits.scatter(1, drop, float("-inf"))
    alpha = torch.softmax(logits, dim=1)
    mix = alpha @ centers.t()
    return alpha, mix, mix.mean(dim=0)


def mean_pairwise_cosine(a: Tensor, b: Tensor | None = None) -> float:
    """Mean cosine between the rows of ``a`` (R, D) and of ``b`` (S, D); with b None, between distinct rows of a."""
    a = F.normalize(a.double(), dim=-1)
    if b is None:
        if a.shape[0] < 2:
            raise ValueError("mean_pairwise_cosine needs at least two rows")
        sims = a @ a.t()
        return float((sims.sum() - sims.diagonal().sum()) / (a.shape[0] * (a.shape[0] - 1)))
    return float((a @ F.normalize(b.double(), dim=-1).t()).mean())


def rank_auc(scores: Tensor, positive: Tensor) -> float:
    """Area under the ROC curve: the chance that a random positive scores above a random negative (ties count 1/2).

    Args:
        scores: (n,) real; positive: (n,) bool. Both classes must be present.
    """
    scores, positive = scores.flatten().double(), positive.flatten().bool()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"rank_auc needs positives and negatives, got {n_pos} and {n_neg}")
    _, inverse, counts = torch.unique(scores, sorted=True, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()                     # a tie group spans ranks end - count + 1 .. end
    ranks = (ends - (counts.double() - 1) / 2)[inverse]  # every member gets the group's mean rank
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
