"""Dense CRF post-processing (pydensecrf, algorithm.md §9.2 / §9.4) and a process pool to run it beside the main
loop."""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
from collections import deque
from typing import Any, Iterator, Mapping

import numpy as np

CRF_DEFAULTS = {"iter_max": 10, "pos_xy_std": 1, "pos_w": 3, "bi_xy_std": 67, "bi_rgb_std": 3, "bi_w": 4,
                "prune_below": 0.1}


def kept_labels(probs: np.ndarray, prune_below: float | None, unary: str = "softmax") -> np.ndarray:
    """Labels that can matter to the CRF: background (0) and every label whose probability reaches ``prune_below``
    at some pixel (for ``unary="raw"``: whose energy falls to -log(prune_below) somewhere).

    Args:
        probs: (C, H, W) scores as :func:`dense_crf` takes them.
        prune_below: the threshold; None keeps every label.
    Returns:
        (K,) int64 label indices, ascending, 0 first.
    """
    num_classes = probs.shape[0]
    if prune_below is None:
        return np.arange(num_classes)
    prune_below = float(prune_below)
    if not 0.0 <= prune_below < 1.0:
        raise ValueError(f"prune_below must be null or in [0, 1), got {prune_below}")
    flat = probs.reshape(num_classes, -1)
    if unary == "raw":
        keep = flat.min(1) <= (-np.log(prune_below) if prune_below > 0 else np.inf)
    else:
        keep = flat.max(1) >= prune_below
    keep[0] = True
    return np.flatnonzero(keep)


def dense_crf(image: np.ndarray, probs: np.ndarray, iter_max: int = 10, pos_xy_std: float = 1, pos_w: float = 3,
              bi_xy_std: float = 67, bi_rgb_std: float = 3, bi_w: float = 4, unary: str = "softmax",
              prune_below: float | None = None) -> np.ndarray:
    """Mean-field dense CRF with a Gaussian and a bilateral kernel.

    Args:
        image: (H, W, 3) uint8 RGB.
        probs: (C, H, W) float scores. ``unary="softmax"``: scores in [0, 1] (softmax output, or the
            un-normalised [bg, r_c...] stack of algorithm.md §9.4) and the unary is -log(clip(p, 1e-5, 1));
            ``unary="raw"``: ``probs`` already is the unary energy and is used as is.
        iter_max, pos_*, bi_*: kernel settings (reference: 10, sxy 1 / compat 3, sxy 67 / srgb 3 / compat 4).
        prune_below: run the CRF over :func:`kept_labels` only (background and the labels reaching this probability
            somewhere), which is much faster with many labels; the dropped labels get Q = 0. None: every label.
            An image where only background is kept costs nothing (one label: Q = 1 everywhere, exactly).
    Returns:
        Q (C, H, W) float32, the approximate marginals (each pixel sums to 1).
    """
    import pydensecrf.densecrf as dcrf

    image = np.asarray(image)
    if not image.flags.writeable:  # pydensecrf needs a writable buffer (np.asarray of a PIL image is read-only)
        image = image.copy()
    probs = np.asarray(probs)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"dense_crf needs an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2]:
        raise ValueError(f"dense_crf needs probs (C, H, W) matching the image {image.shape[:2]}, got {probs.shape}")
    num_classes, h, w = probs.shape
    if unary not in ("softmax", "raw"):
        raise ValueError(f"unary must be 'softmax' or 'raw', got {unary!r}")
    if num_classes == 1:  # one label: every pixel's marginal is 1 whatever the kernels say; skip the lattices
        return np.ones((1, h, w), dtype=np.float32)
    keep = kept_labels(probs, prune_below, unary)
    if len(keep) < num_classes:
        q = np.zeros((num_classes, h, w), dtype=np.float32)
        q[keep] = dense_crf(image, probs[keep], iter_max, pos_xy_std, pos_w, bi_xy_std, bi_rgb_std, bi_w, unary)
        return q
    if unary == "softmax":
        energy = -np.log(np.clip(probs.astype(np.float32), 1e-5, 1.0))
    elif unary == "raw":
        energy = probs.astype(np.float32)
    crf = dcrf.DenseCRF2D(w, h, num_classes)
    crf.setUnaryEnergy(np.ascontiguousarray(energy.reshape(num_classes, -1), dtype=np.float32))
    crf.addPairwiseGaussian(sxy=pos_xy_std, compat=pos_w)
    crf.addPairwiseBilateral(sxy=bi_xy_std, srgb=bi_rgb_std, rgbim=np.ascontiguousarray(image), compat=bi_w)
    q = crf.inference(int(iter_max))
    return np.asarray(q, dtype=np.float32).reshape(num_classes, h, w)


def crf_params(node: Mapping[str, Any] | None) -> dict[str, Any]:
    """CRF keyword arguments from ``infer.crf_params`` (missing keys take the reference defaults)."""
    params = dict(CRF_DEFAULTS)
    for key, value in dict(node or {}).items():
        if key not in CRF_DEFAULTS:
            raise ValueError(f"unknown CRF parameter {key!r}; expected some of {sorted(CRF_DEFAULTS)}")
        params[key] = value
    return params


def _crf_job(image: np.ndarray, probs: np.ndarray, keep: np.ndarray, num_classes: int, params: dict[str, Any],
             labels_only: bool) -> np.ndarray:
    """One pool job: the CRF over the kept labels' scores ``probs`` (K, H, W), mapped back to ``num_classes``."""
    q = dense_crf(image, probs, **dict(params, prune_below=None))
    if labels_only:
        return keep[q.argmax(0)].astype(np.uint8)
    if len(keep) == num_classes:
        return q
    full = np.zeros((num_classes, *q.shape[1:]), dtype=np.float32)
    full[keep] = q
    return full


class CRFPool:
    """Run :func:`dense_crf` on worker processes while the caller keeps going.

    ``submit(image, probs, meta)`` queues a job (blocking only while ``max_pending`` jobs are running);
    ``results()`` yields ``(meta, out)`` in submission order until every job is done, where ``out`` is Q (C, H, W)
    or, with ``labels_only``, the argmax (H, W) uint8. ``num_workers=0`` runs each job inline in ``submit``.
    With ``prune_below`` only the kept labels' scores travel to the worker, as float32.
    Use as a context manager so the workers are shut down.
    """

    def __init__(self, num_workers: int = 2, labels_only: bool = False, max_pending: int | None = None,
                 **params: Any) -> None:
        self.params = crf_params(params)
        self.labels_only = labels_only
        self.max_pending = max_pending or max(4, 4 * num_workers)
        self._pending: deque[tuple[Any, cf.Future | np.ndarray]] = deque()
        self._executor = None
        if num_workers > 0:
            self._executor = cf.ProcessPoolExecutor(max_workers=num_workers, mp_context=mp.get_context("spawn"))

    def submit(self, image: np.ndarray, probs: np.ndarray, meta: Any = None) -> None:
        """Queue the CRF of ``image`` (H, W, 3) uint8 with ``probs`` (C, H, W); ``meta`` comes back with the result."""
        probs = np.asarray(probs)
        keep = kept_labels(probs, self.params["prune_below"])
        job = (np.ascontiguousarray(image), np.ascontiguousarray(probs[keep], dtype=np.float32), keep,
               probs.shape[0], self.params, self.labels_only)
        if self._executor is None:
            self._pending.append((meta, _crf_job(*job)))
            return
        running = [f for _, f in self._pending if isinstance(f, cf.Future) and not f.done()]
        if len(running) >= self.max_pending:
            cf.wait(running, return_when=cf.FIRST_COMPLETED)
        future = self._executor.submit(_crf_job, *job)
        self._pending.append((meta, future))

    def ready(self) -> Iterator[tuple[Any, np.ndarray]]:
        """Yield the finished results at the head of the queue without waiting."""
        while self._pending and (not isinstance(self._pending[0][1], cf.Future) or self._pending[0][1].done()):
            yield self._pop()

    def results(self) -> Iterator[tuple[Any, np.ndarray]]:
        """Yield every queued result, waiting for each in submission order."""
        while self._pending:
            yield self._pop()

    def _pop(self) -> tuple[Any, np.ndarray]:
        meta, item = self._pending.popleft()
        return meta, (item.result() if isinstance(item, cf.Future) else item)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> "CRFPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
