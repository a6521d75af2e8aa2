"""Dense CRF post-processing (pydensecrf, algorithm.md §9.2 / §9.4) and a process pool to run it beside the main
loop."""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
from collections import deque
from typing import Any, Iterator, Mapping

import numpy as np

CRF_DEFAULTS = {"iter_max": 10, "pos_xy_std": 1, "pos_w": 3, "bi_xy_std": 67, "bi_rgb_std": 3, "bi_w": 4,
                "prune_below": 0.05}


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


def _energy(probs: np.ndarray, unary: str) -> np.ndarray:
    """(C, H, W) scores -> float32 unary energies as the CRF sees them."""
    if unary == "softmax":
        return -np.log(np.clip(probs.astype(np.float32), 1e-5, 1.0))
    return probs.astype(np.float32)


def rest_energy(energy: np.ndarray) -> np.ndarray:
    """(D, H, W) energies of the dropped labels -> (H, W) energy of their union, -log(sum exp(-E)): for the
    softmax unary, -log of the summed (clipped) probabilities the full CRF would see."""
    low = energy.min(0)
    return low - np.log(np.exp(low[None] - energy).sum(0))


def _rest_of(probs: np.ndarray, dropped: np.ndarray, unary: str) -> tuple[np.ndarray, np.ndarray]:
    """The dropped labels' union: its (H, W) energy and each dropped label's (D, H, W) share of it (summing to 1);
    in probability space for the softmax unary (one pass over the dropped planes, no log or exp of each)."""
    if unary == "softmax":
        seen = np.clip(probs[dropped].astype(np.float32), 1e-5, 1.0)
        total = seen.sum(0)
        seen /= total
        return -np.log(total), seen
    energy = probs[dropped].astype(np.float32)
    rest = rest_energy(energy)
    return rest, np.exp(rest[None] - energy)


def _mean_field(image: np.ndarray, energy: np.ndarray, iter_max: int, pos_xy_std: float, pos_w: float,
                bi_xy_std: float, bi_rgb_std: float, bi_w: float, free_last: bool) -> np.ndarray:
    """pydensecrf's mean field on (K, H, W) energies -> Q (K, H, W). ``free_last``: the last label takes no part
    in the pairwise terms (a diagonal compatibility with 0 there; -w elsewhere is exactly the Potts model)."""
    import pydensecrf.densecrf as dcrf

    num, h, w = energy.shape
    crf = dcrf.DenseCRF2D(w, h, num)
    crf.setUnaryEnergy(np.ascontiguousarray(energy.reshape(num, -1), dtype=np.float32))
    pos, bi = pos_w, bi_w
    if free_last:
        joins = np.ones(num, dtype=np.float32)
        joins[-1] = 0.0
        pos, bi = -pos_w * joins, -bi_w * joins
    crf.addPairwiseGaussian(sxy=pos_xy_std, compat=pos)
    crf.addPairwiseBilateral(sxy=bi_xy_std, srgb=bi_rgb_std, rgbim=np.ascontiguousarray(image), compat=bi)
    return np.asarray(crf.inference(int(iter_max)), dtype=np.float32).reshape(num, h, w)


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
            somewhere), which is much faster with many labels. The dropped labels join one extra "rest" label
            (their summed probability, :func:`rest_energy`) that keeps each pixel's normalisation as in the full
            CRF but takes no part in the pairwise terms (each dropped label alone is too faint to pull its
            neighbours); they share its marginal in proportion to their scores. None: every label.
    Returns:
        Q (C, H, W) float32, the approximate marginals (each pixel sums to 1).
    """
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
    if num_classes == 1:  # one label: every pixel's marginal is 1 whatever the kernels say
        return np.ones((1, h, w), dtype=np.float32)
    kernel = dict(iter_max=iter_max, pos_xy_std=pos_xy_std, pos_w=pos_w, bi_xy_std=bi_xy_std,
                  bi_rgb_std=bi_rgb_std, bi_w=bi_w)
    keep = kept_labels(probs, prune_below, unary)
    if len(keep) == num_classes:
        return _mean_field(image, _energy(probs, unary), **kernel, free_last=False)
    dropped = np.setdiff1d(np.arange(num_classes), keep)
    rest, share = _rest_of(probs, dropped, unary)
    kept_q = _mean_field(image, np.concatenate([_energy(probs[keep], unary), rest[None]]), **kernel, free_last=True)
    q = np.empty((num_classes, h, w), dtype=np.float32)
    q[keep] = kept_q[:-1]
    q[dropped] = kept_q[-1][None] * share
    return q


def pruned_job_inputs(probs: np.ndarray, prune_below: float | None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """What a CRF worker needs to return :func:`dense_crf`'s argmax: the kept labels (K,), their energies
    stacked with the rest's (K+1, H, W) float32 (K, H, W without pruning), and, when labels were dropped, the
    dropped label with the highest score per pixel and its part of the rest as a (2, H, W) float32 stack
    (label index, share): the rest's marginal times that share is the dropped labels' best marginal."""
    probs = np.asarray(probs)
    keep = kept_labels(probs, prune_below)
    if len(keep) == probs.shape[0]:
        return keep, _energy(probs, "softmax"), None
    dropped = np.setdiff1d(np.arange(probs.shape[0]), keep)
    rest, share = _rest_of(probs, dropped, "softmax")
    top = share.argmax(0)
    best = np.stack([dropped[top].astype(np.float32), np.take_along_axis(share, top[None], 0)[0]])
    return keep, np.concatenate([_energy(probs[keep], "softmax"), rest[None]]), best


def crf_params(node: Mapping[str, Any] | None) -> dict[str, Any]:
    """CRF keyword arguments from ``infer.crf_params`` (missing keys take the reference defaults)."""
    params = dict(CRF_DEFAULTS)
    for key, value in dict(node or {}).items():
        if key not in CRF_DEFAULTS:
            raise ValueError(f"unknown CRF parameter {key!r}; expected some of {sorted(CRF_DEFAULTS)}")
        params[key] = value
    return params


def _crf_job(image: np.ndarray, energy: np.ndarray, keep: np.ndarray, best: np.ndarray | None,
             params: dict[str, Any]) -> np.ndarray:
    """One labels-only pool job (inputs from :func:`pruned_job_inputs`) -> the (H, W) uint8 argmax of
    :func:`dense_crf`'s marginals."""
    kernel = {k: v for k, v in params.items() if k != "prune_below"}
    if best is None:
        q = _mean_field(image, energy, **kernel, free_last=False)
        return keep[q.argmax(0)].astype(np.uint8)
    q = _mean_field(image, energy, **kernel, free_last=True)
    kept_q = q[:-1]
    label = keep[kept_q.argmax(0)]
    rest_best = q[-1] * best[1]
    return np.where(rest_best > kept_q.max(0), best[0].astype(np.int64), label).astype(np.uint8)


def _q_job(image: np.ndarray, probs: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """One pool job returning every label's marginals (C, H, W): the whole score stack travels."""
    return dense_crf(image, probs, **params)


class CRFPool:
    """Run :func:`dense_crf` on worker processes while the caller keeps going.

    ``submit(image, probs, meta)`` queues a job (blocking only while ``max_pending`` jobs are running);
    ``results()`` yields ``(meta, out)`` in submission order until every job is done, where ``out`` is Q (C, H, W)
    or, with ``labels_only``, the argmax (H, W) uint8, equal to ``dense_crf(...).argmax(0)``. ``num_workers=0``
    runs each job inline in ``submit``. With ``labels_only`` and ``prune_below``, a job carries the kept labels'
    and the rest's energies plus two maps (:func:`pruned_job_inputs`), not the whole score stack.
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
        image = np.ascontiguousarray(image)
        if self.labels_only:
            keep, energy, best = pruned_job_inputs(probs, self.params["prune_below"])
            fn, job = _crf_job, (image, np.ascontiguousarray(energy), keep, best, self.params)
        else:
            fn, job = _q_job, (image, np.ascontiguousarray(probs, dtype=np.float32), self.params)
        if self._executor is None:
            self._pending.append((meta, fn(*job)))
            return
        running = [f for _, f in self._pending if isinstance(f, cf.Future) and not f.done()]
        if len(running) >= self.max_pending:
            cf.wait(running, return_when=cf.FIRST_COMPLETED)
        future = self._executor.submit(fn, *job)
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
