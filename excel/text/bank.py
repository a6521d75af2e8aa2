"""The text bank T (K x D): prompt encoding (algorithm.md §2.1) and TSE attribute aggregation (algorithm.md §3.3)."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@torch.no_grad()
def encode_prompts(clip_model: nn.Module, tokenizer: Callable[[list[str]], Tensor], names: Sequence[str],
                   templates: Sequence[str]) -> Tensor:
    """Prompt-ensemble text embeddings (algorithm.md §2.1).

    For each name: encode ``template.format(name)`` for every template, L2-normalise each, average over the
    templates, L2-normalise again. All prompts go through the text tower in one batch.

    Args:
        clip_model: an open_clip CLIP (``encode_text``).
        tokenizer: its tokenizer (list of str -> (S, 77) token ids).
        names: class or background names (synonyms allowed: ``"bird avian"``).
        templates: prompt templates with one ``{}`` each.
    Returns:
        (len(names), D) float32 with unit rows, on the model's device. (0, D) for no names.
    """
    if not templates:
        raise ValueError("text.templates is empty: at least one prompt template with '{}' is needed")
    for t in templates:
        if "{}" not in t:
            raise ValueError(f"text.templates entry {t!r} has no '{{}}' placeholder for the class name")
    device = next(clip_model.parameters()).device
    if not names:
        dim = clip_model.text_projection.shape[1]
        return torch.zeros(0, dim, device=device)
    texts = [t.format(name) for name in names for t in templates]
    emb = clip_model.encode_text(tokenizer(texts).to(device)).float()     # (len(names) * T, D)
    emb = F.normalize(emb, dim=-1).reshape(len(names), len(templates), -1)
    return F.normalize(emb.mean(dim=1), dim=-1)


TSE_MIXES = ("full", "class_specific", "shared")


def num_masked(num_clusters: int, top_k: float) -> int:
    """m = int((1 - top_k) * J) in Python floats: 11 for J = 112 and 22 for J = 224 at top_k = 0.9 (quirk 13)."""
    return int((1 - top_k) * num_clusters)


def tse_aggregate(fg: Tensor, centers: Tensor, top_k: float = 0.9, mix: str = "full") -> Tensor:
    """Enrich each foreground text with its attribute mix (algorithm.md §3.3 steps 1-5).

    Logits fg @ A; the m = int((1 - top_k) J) smallest logits of every class row are set to -inf; alpha =
    softmax over the J clusters; result = alpha @ A^T + fg (residual on the unit text, not normalised).

    Args:
        fg: (C_fg, D) unit foreground text rows.
        centers: (D, J) cluster bank A (KMeans centres, not re-normalised).
        top_k: keep ratio (0.9 in the reference).
        mix: which part of the attribute mix M = alpha @ A^T (C_fg, D) is added: "full" (the reference: all of
            it), "class_specific" (M minus its mean over the classes) or "shared" (that mean, the same vector for
            every class). full = class_specific + shared; the two parts are for analysing what TSE adds.
    Returns:
        (C_fg, D).
    """
    if fg.dim() != 2 or centers.dim() != 2 or fg.shape[1] != centers.shape[0]:
        raise ValueError(f"tse_aggregate expects fg (C_fg, D) and centers (D, J); got {tuple(fg.shape)} and "
                         f"{tuple(centers.shape)} (is the cluster bank built with the same CLIP text tower?)")
    centers = centers.to(device=fg.device, dtype=fg.dtype)
    logits = fg @ centers                                              # (C_fg, J)
    j = logits.shape[1]
    m = num_masked(j, top_k)
    if not 0 <= m < j:
        raise ValueError(f"tse.top_k={top_k} masks {m} of {j} clusters; it must leave at least one")
    if m > 0:
        order = logits.argsort(dim=1, descending=True)
        drop = order[:, j - m:]                                        # the m smallest logits of each row
        logits = logits.scatter(1, drop, float("-inf"))
    alpha = torch.softmax(logits, dim=1)
    attributes = alpha @ centers.t()                                   # (C_fg, D)
    if mix == "full":
        return attributes + fg
    shared = attributes.mean(dim=0, keepdim=True)
    if mix == "class_specific":
        return attributes - shared + fg
    if mix == "shared":
        return shared + fg
    raise ValueError(f"tse.mix={mix!r}: expected one of {TSE_MIXES}")


def build_text_bank(fg: Tensor, bg: Tensor, centers: Tensor | None = None, top_k: float = 0.9,
                    mix: str = "full") -> Tensor:
    """The text bank T (algorithm.md §3.3 step 6): rownorm(concat[fg rows (TSE-enriched when centers given), bg rows]).

    Args:
        fg: (C_fg, D) unit foreground prompt embeddings; bg: (K - C_fg, D) unit background ones.
        centers: (D, J) TSE cluster bank, or None for TSE off.
        top_k, mix: as in :func:`tse_aggregate`.
    Returns:
        (K, D) with unit rows, foreground rows first.
    """
    if bg.dim() != 2 or bg.shape[1] != fg.shape[1]:
        raise ValueError(f"background text must be (K_bg, {fg.shape[1]}), got {tuple(bg.shape)}")
    if centers is not None:
        fg = tse_aggregate(fg, centers, top_k, mix)
    return F.normalize(torch.cat([fg, bg.to(fg)], dim=0), dim=-1)
