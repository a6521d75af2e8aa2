"""Dense CRF post-processing (pydensecrf, algorithm.md §9.2 / §9.4) and a process pool to run it beside the main
loop."""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
from collections import deque
from typing import Any, Iterator, Mapping

import numpy as np

CRF_DEFAULTS = {"iter_max": 10, "pos_xy_std": 1, "pos_w": 3, "bi_xy_std": 67, "bi_rgb_std": 3, "bi_w": 4}


def dense_crf(image: np.ndarray, probs: np.ndarray, iter_max: int = 10, pos_xy_std: float = 1, pos_w: float = 3,
              bi_xy_std: float = 67, bi_rgb_std: float = 3, bi_w: float = 4, unary: str = "softmax") -> np.ndarray:
    """Mean-field dense CRF with a Gaussian and a bilateral kernel.

    Args:
        image: (H, W, 3) uint8 RGB.
        probs: (C, H, W) float scores. ``unary="softmax"``: scores in [0, 1] (softmax output, or the
            un-normalised [bg, r_c...] stack of algorithm.md §9.4) and the unary is -log(clip(p, 1e-5, 1));
            ``unary="raw"``: ``probs`` already is the unary energy and is used as is.
        iter_max, pos_*, bi_*: kernel settings (reference: 10, sxy 1 / compat 3, sxy 67 / srgb 3 / compat 4).
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
    if unary == "softmax":
        energy = -np.log(np.clip(probs.astype(np.float32), 1e-5, 1.0))
    elif unary == "raw":
        energy = probs.astype(np.float32)
    else:
        raise ValueError(f"unary must be 'softmax' or 'raw', got {unary!r}")
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


def _crf_job(image: np.ndarray, probs: np.ndarray, params: dict[str, Any], labels_only: bool) -> np.ndarray:
    q = dense_crf(image, probs, **params)
    return q.argmax(0).astype(np.uint8) if labels_only else q


class CRFPool:
    """Run :func:`dense_crf` on worker processes while the caller keeps going.

    ``submit(image, probs, meta)`` queues a job (blocking only while ``max_pending`` jobs are running);
    ``results()`` yields ``(meta, out)`` in submission order until every job is done, where ``out`` is Q (C, H, W)
    or, with ``labels_only``, the argmax (H, W) uint8. ``num_workers=0`` runs each job inline in ``submit``.
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
        if self._executor is None:
            self._pending.append((meta, _crf_job(image, probs, self.params, self.labels_only)))
            return
        running = [f for _, f in self._pending if isinstance(f, cf.Future) and not f.done()]
        if len(running) >= self.max_pending:
            cf.wait(running, return_when=cf.FIRST_COMPLETED)
        future = self._executor.submit(_crf_job, np.ascontiguousarray(image), np.ascontiguousarray(probs),
                                       self.params, self.labels_only)
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
