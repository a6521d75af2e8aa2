"""Patch-text alignment maps by feature surgery (algorithm.md §1.7 and §4)."""
from __future__ import annotations

import torch
from torch import Tensor

NORMALIZE_AXES = ("tokens", "channels")


def normalize_tokens(tokens: Tensor, over: str = "tokens") -> Tensor:
    """L2-normalise the projected tokens Y (algorithm.md §1.7).

    Args:
        tokens: (B, N, D) projected tokens Y (CLS first).
        over: "tokens" (faithful, quirk 5): for each (b, channel) divide by the norm over the N tokens;
            "channels" (the fix): the usual per-token normalisation over D.
    Returns:
        (B, N, D). No epsilon, as in the reference.
    """
    if over not in NORMALIZE_AXES:
        raise ValueError(f"normalize_tokens: over must be one of {NORMALIZE_AXES}, got {over!r}")
    if tokens.dim() != 3:
        raise ValueError(f"tokens must be (B, N, D), got shape {tuple(tokens.shape)}")
    dim = 1 if over == "tokens" else 2
    return tokens / tokens.norm(dim=dim, keepdim=True)


def feature_surgery_lam(tokens_normed: Tensor, text: Tensor, num_fg: int, temperature: float = 2.0) -> Tensor:
    """The attribute map (LAM) from normalised tokens and the text bank (algorithm.md §4).

    p_b = softmax_k(t * Y[b, 0] . T_k); w_b = p_b / mean_k p_b;
    s[b, n, k] = w_bk (Y[b, n] . T_k) - (1/K) sum_k' w_bk' (Y[b, n] . T_k')   (a matrix product plus a rank-one
    correction; the [B, N, K, D] product of the reference is never formed);
    min-max over all N tokens (CLS included, no epsilon) per (b, k); keep patches 1..N-1 and the first num_fg
    columns.

    Args:
        tokens_normed: (B, N, D) output of ``normalize_tokens``.
        text: (K, D) text bank, foreground rows first.
        num_fg: C_fg, the number of foreground rows of ``text``.
        temperature: CLS softmax temperature (2 in the reference).
    Returns:
        (B, P, C_fg) in [0, 1] with P = N - 1.
    """
    if tokens_normed.dim() != 3 or text.dim() != 2 or tokens_normed.shape[-1] != text.shape[-1]:
        raise ValueError(f"feature_surgery_lam expects tokens (B, N, D) and text (K, D); got "
                         f"{tuple(tokens_normed.shape)} and {tuple(text.shape)}")
    if not 1 <= num_fg <= text.shape[0]:
        raise ValueError(f"num_fg={num_fg} must be in [1, K={text.shape[0]}]")
    sim = tokens_normed @ text.t()                                   # (B, N, K)
    prob = torch.softmax(temperature * sim[:, 0], dim=-1)            # (B, K)
    weight = prob / prob.mean(dim=-1, keepdim=True)                  # (B, K)
    # a row-wise sum, not a (B, N, K) @ (B, K, 1) product: its result must not depend on the batch size
    redundant = (sim * weight[:, None, :]).sum(dim=-1, keepdim=True) / text.shape[0]  # (B, N, 1)
    score = weight[:, None, :num_fg] * sim[..., :num_fg] - redundant  # (B, N, C_fg)
    low = score.amin(dim=1, keepdim=True)
    high = score.amax(dim=1, keepdim=True)
    lam = (score - low) / (high - low)
    return lam[:, 1:]
