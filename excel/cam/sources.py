"""Named sources of the patch affinity that the pseudo labels propagate along (algorithm.md §5.1).

A source is one function ``source(encoded, layers, attn_pred) -> B x P x P`` non-negative affinity, registered
under a name with :func:`affinity_source`; ``cam.affinity.source`` picks it. ``encoded`` is the model's
``EncodeOutput`` (``lam`` B x P x C_fg, ``attn`` L x B x N x N, ``features`` L x B x N x W, ``dense`` B x N x D
normalised tokens; N = 1 + P, token 0 is CLS); ``layers`` is ``cam.affinity_layers``; ``attn_pred`` is the
decoder's B x P x P Q once the run uses it (algorithm.md §5.7), else None. The transition matrix, box masks,
refinement and PAR that follow are the same for every source. docs/extending.md adds one.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from torch import Tensor

from excel.cam.affinity import attention_affinity
from excel.cam.pseudo import check_attention
from excel.config import ConfigError
from excel.utils.registry import registrar

AffinitySource = Callable[[Any, Sequence[int], Optional[Tensor]], Tensor]

AFFINITY_SOURCES: dict[str, AffinitySource] = {}


affinity_source = registrar(AFFINITY_SOURCES, "affinity source")
affinity_source.__doc__ = """``@affinity_source(name)``: register a function as the affinity source ``name`` (once per name)."""


def get_affinity_source(name: str) -> AffinitySource:
    """The source registered as ``name``; ConfigError naming ``cam.affinity.source`` and the known names."""
    if name not in AFFINITY_SOURCES:
        raise ConfigError(f"cam.affinity.source={name!r}: expected one of {sorted(AFFINITY_SOURCES)} "
                          f"(register a new one with excel.cam.affinity_source, see docs/extending.md)")
    return AFFINITY_SOURCES[name]


@affinity_source("attention")
def attention_source(encoded: Any, layers: Sequence[int], attn_pred: Optional[Tensor]) -> Tensor:
    """CLIP's attention between patches: the mean of ``layers``, or their Q-selected mean times Q
    (:func:`excel.cam.attention_affinity`, algorithm.md §5.1 steps 1-3)."""
    check_attention(encoded.attn, encoded.lam.shape[0], encoded.lam.shape[1])
    return attention_affinity(encoded.attn, layers, attn_pred)
