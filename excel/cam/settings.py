"""Pseudo-label settings read from the config in one place, for training, validation, infer_lam and predict."""
from __future__ import annotations

from typing import Any

from torch import nn

from excel.cam.par import PAR


def build_par(cfg: Any) -> nn.Module:
    """The PAR of ``cam.par`` (``num_iter: 0`` switches PAR off: the maps pass unchanged)."""
    return PAR(dilations=list(cfg.cam.par.dilations), num_iter=int(cfg.cam.par.num_iter))


def pseudo_label_kwargs(cfg: Any, box_threshold: float, par: nn.Module | None) -> dict[str, Any]:
    """Keyword arguments of :func:`excel.cam.make_pseudo_labels` / ``pseudo_label_scores`` from ``cfg.cam``,
    with the caller's CAA threshold (training, validation and the tools each have theirs) and PAR module."""
    return dict(box_threshold=float(box_threshold), par=par, affinity_layers=tuple(cfg.cam.affinity_layers),
                sinkhorn_iters=int(cfg.cam.sinkhorn_iters), bg_power=float(cfg.cam.bg_power),
                use_affinity=bool(cfg.cam.affinity_refine))
