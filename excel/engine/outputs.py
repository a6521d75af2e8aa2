"""What the two runs over a split write and score, written once: ``segment`` (decoder predictions) and
``run_infer_lam`` (pseudo labels) are the two sinks of one :class:`SplitOutputs`.

One rank's part: the label names and palette, a confusion matrix per variant (the raw labels and, with
``infer.crf``, the CRF labels; on the run's device, as nccl needs), palette PNGs, colour overlays, the report
gallery and the drain of the CRF worker pool.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from omegaconf import DictConfig

from excel.evaluation import ConfusionMatrix, CRFPool
from excel.evaluation.report import Gallery
from excel.utils.io import atomic_save_png
from excel.utils.numbers import percent
from excel.utils.palette import voc_palette
from excel.utils.vis import save_overlay

__all__ = ["SplitOutputs", "miou_text"]


def miou_text(scores: Mapping[str, Any]) -> str:
    """``"mIoU 45.67 (m-IoU 40.12)"`` from scores holding ``miou`` and ``miou_plain``."""
    return f"mIoU {percent(scores['miou'])} (m-IoU {percent(scores['miou_plain'])})"


class SplitOutputs:
    """Outputs of one inference run over a split on this rank.

    Args:
        cfg: the run's config (``data.class_names``, ``infer.crf``, ``infer.save_overlays``,
            ``infer.report_max_images``).
        output_dir: the run's folder (the gallery's ``report.html`` goes there).
        device: where the confusion matrices live.
        titles: (raw title, CRF title): the variants of the gallery and of the tables.
    """

    def __init__(self, cfg: DictConfig, output_dir: Path, device: torch.device, titles: tuple[str, str]) -> None:
        self.cfg, self.output_dir = cfg, output_dir
        self.names = ["background", *cfg.data.class_names]
        self.palette = voc_palette()
        self.raw_title, self.crf_title = titles
        self.crf = bool(cfg.infer.crf)
        self.cm = {t: ConfusionMatrix(len(self.names), device=device) for t in titles[: 2 if self.crf else 1]}
        self.gallery = Gallery(output_dir, self.names, int(cfg.infer.report_max_images), palette=self.palette,
                               variants=list(self.cm))

    def record(self, name: str, pred: np.ndarray, gt: np.ndarray | torch.Tensor | None = None, *, crf: bool = False,
               png: Path | None = None, rgb: np.ndarray | None = None, overlay: bool = False,
               links: Mapping[str, str] | None = None) -> None:
        """One final label map (H, W) uint8 of ``name``: scored against ``gt`` (H, W) when given, written as a
        palette PNG to ``png`` when given, drawn as ``overlays/<name>.png`` when ``overlay`` and
        ``infer.save_overlays`` (``rgb`` (H, W, 3) uint8 needed), and shown in the gallery (with ``rgb``, ``gt``
        and ``links`` when they are given)."""
        title = self.crf_title if crf else self.raw_title
        gt = None if gt is None else np.asarray(torch.as_tensor(gt).cpu())
        if gt is not None:  # counted on the CPU, added to the matrix where it lives
            self.cm[title].update(torch.from_numpy(np.asarray(pred, dtype=np.int64)), torch.from_numpy(gt))
        if png is not None:
            atomic_save_png(np.asarray(pred, dtype=np.uint8), png, palette=self.palette)
        if overlay and self.cfg.infer.save_overlays and rgb is not None:
            save_overlay(self.output_dir / "overlays" / f"{name}.png", rgb, pred, self.names)
        self.gallery.add(name, pred, variant=title, rgb=rgb, gt=gt, links=dict(links or {}))

    def drain(self, pool: CRFPool | None, wait: bool, finish: Callable[[Any, np.ndarray], None]) -> int:
        """Hand the CRF results that are ready (all of them when ``wait``) to ``finish(meta, labels)``; how many."""
        if pool is None:
            return 0
        done = 0
        for meta, labels in (pool.results() if wait else pool.ready()):
            finish(meta, labels)
            done += 1
        return done

    def matrices(self) -> dict[str, ConfusionMatrix]:
        """The confusion matrices by title (the CRF one only with ``infer.crf``)."""
        return dict(self.cm)

    def scores(self, title: str) -> dict[str, Any]:
        """JSON-ready scores of one variant: miou, miou_plain, pixel_acc and the per-class iou (NaN -> None)."""
        s = self.cm[title].compute()
        clean = lambda v: None if v is None or v != v else float(v)  # noqa: E731
        return {"miou": clean(s["miou"]), "miou_plain": clean(s["miou_plain"]), "pixel_acc": clean(s["pixel_acc"]),
                "iou": {n: clean(float(v)) for n, v in zip(self.names, s["iou"])}}

    def table(self, title: str) -> str:
        """The per-class table of one variant."""
        return self.cm[title].table(self.names)
