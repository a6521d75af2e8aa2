"""The pseudo-label pipeline as one object, built once from the config for its stage (algorithm.md §5, §9.4).

``PseudoLabeler.from_config(cfg, stage)`` reads ``cam.*`` (affinity source and layers, Sinkhorn rounds, background
power, PAR) and the stage's CAA threshold: ``train`` -> ``cam.box_threshold``, ``val`` -> ``eval.box_threshold``,
``infer`` -> ``infer.box_threshold``. Training, validation, infer_lam, predict and the benchmarks all call it.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from excel.cam.affinity import DEFAULT_AFFINITY_LAYERS
from excel.cam.boxes import BOX_METHODS
from excel.cam.par import PAR
from excel.cam.pseudo import PseudoScores, score_stack
from excel.cam.sources import get_affinity_source
from excel.config import ConfigError

THRESHOLD_KEYS = {"train": "cam.box_threshold", "val": "eval.box_threshold", "infer": "infer.box_threshold"}


def build_par(cfg: Any) -> PAR:
    """The PAR of ``cam.par`` (``num_iter: 0`` switches PAR off: the maps pass unchanged)."""
    return PAR(dilations=list(cfg.cam.par.dilations), num_iter=int(cfg.cam.par.num_iter),
               method=str(cfg.cam.par.method))


class PseudoLabeler(nn.Module):
    """Pseudo labels from a model's encoded pass: affinity source -> transition matrix -> box masks -> refinement
    -> background -> PAR (algorithm.md §5.1-5.5).

    Args:
        par: the PAR module (a buffer-only module: ``.to(device)`` moves it with the labeler).
        box_threshold: CAA threshold ϑ.
        affinity_source: a name registered in :data:`excel.cam.AFFINITY_SOURCES`, or None to skip the affinity
            refinement (``cam.affinity_refine: false``, 𝒯 = identity).
        affinity_layers: handed to the source (the attention source averages these layers).
        sinkhorn_iters: column/row normalisation rounds of the transition matrix.
        bg_power: background score exponent.
        box_method: how the box masks' connected components stop: auto | checked | fixed
            (:func:`excel.cam.boxes.box_masks`; auto reads the device only on the CPU).
    """

    def __init__(self, par: nn.Module, box_threshold: float = 0.79, affinity_source: Optional[str] = "attention",
                 affinity_layers: Sequence[int] = DEFAULT_AFFINITY_LAYERS, sinkhorn_iters: int = 3,
                 bg_power: float = 1.0, box_method: str = "auto") -> None:
        super().__init__()
        self.par = par
        self.box_threshold = float(box_threshold)
        self.source_name = affinity_source
        self.source = None if affinity_source is None else get_affinity_source(affinity_source)
        self.affinity_layers = tuple(int(l) for l in affinity_layers)
        self.sinkhorn_iters = int(sinkhorn_iters)
        self.bg_power = float(bg_power)
        if box_method not in BOX_METHODS:
            raise ValueError(f"box_method must be one of {BOX_METHODS}, got {box_method!r}")
        self.box_method = box_method

    @classmethod
    def from_config(cls, cfg: Any, stage: str) -> "PseudoLabeler":
        """The labeler of ``stage`` (train | val | infer) from ``cfg.cam`` and the stage's box threshold."""
        if stage not in THRESHOLD_KEYS:
            raise ConfigError(f"PseudoLabeler stage {stage!r}: expected one of {sorted(THRESHOLD_KEYS)}")
        group, key = THRESHOLD_KEYS[stage].split(".")
        cam = cfg.cam
        return cls(build_par(cfg), box_threshold=float(cfg[group][key]),
                   affinity_source=str(cam.affinity.source) if cam.affinity_refine else None,
                   affinity_layers=tuple(cam.affinity_layers), sinkhorn_iters=int(cam.sinkhorn_iters),
                   bg_power=float(cam.bg_power), box_method=str(cam.box_method))

    @torch.no_grad()
    def scores(self, encoded: Any, cls_labels: Tensor, images: Tensor, out_size: Sequence[int],
               q: Optional[Tensor] = None, *, lam: Optional[Tensor] = None, before_par: bool = False,
               max_classes: Optional[int] = None) -> PseudoScores:
        """The score stack before the argmax.

        Args:
            encoded: the model's ``EncodeOutput`` (``lam`` B x P x C_fg, ``attn`` L x B x N x N, ...: what the
                affinity source reads).
            cls_labels: B x C_fg multi-hot image labels.
            images: B x 3 x h x w image for PAR (training: :func:`excel.engine.train.par_input`; evaluation: the
                normalised input, quirk 18).
            out_size: (H, W) of the labels.
            q: optional B x P x P attn_pred for the source's layer selection (algorithm.md §5.1).
            lam: B x P x C_fg LAM to use instead of ``encoded.lam`` (the LVC LAM, a flip-merged LAM).
            before_par: stop before PAR (the CRF input of algorithm.md §9.4); :meth:`refine` finishes it.
            max_classes: the most present classes of an image of the batch, when the caller counted it on the
                host (``excel.engine.train.collate_train``); None reads it from ``cls_labels`` (a device read).

        Returns:
            :class:`excel.cam.PseudoScores` (scores B x (1 + M) x H x W, lut B x (1 + M), valid B x M).
        """
        lam = encoded.lam if lam is None else lam
        affinity = None if self.source is None else (
            lambda: self.source(encoded, self.affinity_layers, q))
        return score_stack(lam, cls_labels, images, out_size, affinity, None if before_par else self.par,
                           self.box_threshold, self.sinkhorn_iters, self.bg_power, max_classes, self.box_method)

    def refine(self, images: Tensor, scores: PseudoScores) -> PseudoScores:
        """PAR on scores taken with ``before_par=True`` (``images`` as in :meth:`scores`)."""
        return scores.refined(self.par, images)

    @torch.no_grad()
    def forward(self, encoded: Any, cls_labels: Tensor, images: Tensor, out_size: Sequence[int],
                q: Optional[Tensor] = None, *, lam: Optional[Tensor] = None,
                max_classes: Optional[int] = None) -> Tensor:
        """B x H x W int64 pseudo labels in {0} ∪ {c + 1 : c present}; arguments as :meth:`scores`."""
        return self.scores(encoded, cls_labels, images, out_size, q, lam=lam, max_classes=max_classes).labels()

    def extra_repr(self) -> str:
        return (f"source={self.source_name}, box_threshold={self.box_threshold}, layers={self.affinity_layers}, "
                f"sinkhorn_iters={self.sinkhorn_iters}, bg_power={self.bg_power}, box_method={self.box_method}")
