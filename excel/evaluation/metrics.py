"""Streaming confusion matrix and the mIoU of algorithm.md §9.1.

Rows are ground truth, columns predictions. Only pixels with 0 <= gt < C are counted (255 is ignored).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist

from excel.utils.numbers import percent


def confusion_matrix(pred: torch.Tensor, gt: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) int64 counts, ``out[g, p]`` = pixels with ground truth g predicted as p.

    Args:
        pred, gt: integer tensors of the same shape (any), on the same device.
    Raises:
        ValueError: shapes differ, or a counted pixel has a prediction outside [0, C).
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from ground truth {tuple(gt.shape)}")
    gt = gt.reshape(-1).long()
    pred = pred.reshape(-1).long().to(gt.device)
    keep = (gt >= 0) & (gt < num_classes)
    gt, pred = gt[keep], pred[keep]
    if pred.numel() and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"predictions must lie in [0, {num_classes}) where the ground truth is scored, got range "
                         f"[{int(pred.min())}, {int(pred.max())}]")
    counts = torch.bincount(gt * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


class ConfusionMatrix:
    """Accumulates a (C, C) confusion matrix over many images; only the matrix is kept.

    Args:
        num_classes: C (background included: 21 for VOC, 81 for COCO).
        device: where the counts live; None = the device of the first ``update``.
    """

    def __init__(self, num_classes: int, device: torch.device | str | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.mat: torch.Tensor | None = None
        if device is not None:
            self.mat = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        """Add the pixels of one prediction (any shape, e.g. (B, H, W)) and its ground truth (same shape)."""
        counts = confusion_matrix(pred, gt, self.num_classes)
        if self.mat is None:
            self.mat = counts
        else:
            self.mat += counts.to(self.mat.device)

    def all_reduce(self) -> None:
        """Sum the matrix over all ranks (no-op without an initialised process group)."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        # nccl reduces only tensors on this rank's GPU, gloo only CPU tensors: stage the matrix where the group is
        nccl = dist.get_backend() == "nccl"
        where = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        if self.mat is None:
            self.mat = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=where)
        staged = self.mat.to(where)
        dist.all_reduce(staged, op=dist.ReduceOp.SUM)
        self.mat = staged.to(self.mat.device)

    @property
    def matrix(self) -> np.ndarray:
        """The counts as a (C, C) int64 numpy array on the CPU."""
        if self.mat is None:
            return np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        return self.mat.detach().cpu().numpy().astype(np.int64)

    def compute(self) -> dict:
        """Scores from the accumulated counts.

        Returns a dict of:
            iou (C,): TP / (row + col - TP), NaN for a class absent from both ground truth and prediction;
            miou: the reference ``scores()`` value, nanmean of iou over classes with a GT row sum > 0;
            miou_plain: the table's "m-IoU", the plain mean of the per-class IoU (a 0/0 class is skipped rather
                than making it NaN; a class predicted but never in the GT counts as 0);
            precision (C,): TP / col, recall (C,): TP / row (NaN on 0/0);
            pixel_acc: TP summed / all counted pixels; mean_acc: nanmean of recall.
        """
        hist = self.matrix.astype(np.float64)
        tp, rows, cols = np.diag(hist), hist.sum(1), hist.sum(0)
        iou = _ratio(tp, rows + cols - tp)
        valid = rows > 0
        recall = _ratio(tp, rows)
        return {
            "iou": iou,
            "miou": _nanmean(iou[valid]),
            "miou_plain": _nanmean(iou),
            "precision": _ratio(tp, cols),
            "recall": recall,
            "pixel_acc": float(tp.sum() / hist.sum()) if hist.sum() > 0 else math.nan,
            "mean_acc": _nanmean(recall),
        }

    def table(self, class_names: Sequence[str] | None = None) -> str:
        """A printable per-class table (IoU, precision, recall, in %) with both means."""
        scores = self.compute()
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(f"table needs {self.num_classes} class names, got {len(names)}")
        width = max(12, max(len(n) for n in names) + 2)
        lines = [f"{'class':<{width}}{'IoU':>8}{'prec':>8}{'recall':>8}"]
        for i, name in enumerate(names):
            lines.append(f"{name:<{width}}" + "".join(f"{percent(scores[k][i]):>8}"
                                                      for k in ("iou", "precision", "recall")))
        for label, key in (("m-IoU", "miou_plain"), ("mIoU (GT)", "miou"), ("pixel acc", "pixel_acc")):
            lines.append(f"{label:<{width}}{percent(scores[key]):>8}")
        return "\n".join(lines)


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


def image_miou(pred: np.ndarray, gt: np.ndarray, ignore: int = 255) -> float:
    """One image's mIoU: the mean IoU over the classes present in its ground truth or its prediction (pixels
    where ``gt == ignore`` are left out). ``pred`` and ``gt`` are (H, W) integer maps; NaN when no pixel counts."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from ground truth {tuple(gt.shape)}")
    keep = gt != ignore
    p, g = pred[keep].astype(np.int64), gt[keep].astype(np.int64)
    if g.size == 0:
        return math.nan
    classes = np.union1d(np.unique(g), np.unique(p))
    ious = [np.sum((g == c) & (p == c)) / np.sum((g == c) | (p == c)) for c in classes]
    return float(np.mean(ious))


def foreground_share(gt: np.ndarray, ignore: int = 255) -> float:
    """Share of an (H, W) ground truth's counted pixels (not ``ignore``) that are foreground (label > 0)."""
    keep = gt != ignore
    return float((gt[keep] > 0).mean()) if keep.any() else math.nan


def binned_difference(shares: Sequence[float], a: Sequence[float], b: Sequence[float],
                      edges: Sequence[float]) -> list[dict]:
    """Per-image scores ``a`` and ``b`` of the same images, grouped by ``shares`` (e.g. :func:`foreground_share`)
    into the bins [edges[i], edges[i+1]): one dict per bin with lo, hi, count and the mean of a, b and a - b
    (NaN for an empty bin)."""
    s, x, y = (np.asarray(v, dtype=np.float64) for v in (shares, a, b))
    if not (s.shape == x.shape == y.shape):
        raise ValueError(f"shares, a and b must have one value per image, got {s.shape}, {x.shape}, {y.shape}")
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (s >= lo) & (s < hi)
        n = int(sel.sum())
        out.append({"lo": float(lo), "hi": float(hi), "count": n,
                    "a": float(x[sel].mean()) if n else math.nan, "b": float(y[sel].mean()) if n else math.nan,
                    "difference": float((x[sel] - y[sel]).mean()) if n else math.nan})
    return out
