"""Training losses kept on the device between logging points, then read in one host sync.

A training step launches its work and returns a :class:`PendingStep` whose losses are still on the device, so a
step that does not log never waits for the GPU. At a logging point (``train.log_iters``, before validation and
checkpoints, at the end, and before ``after_iteration`` hooks) :func:`read_steps` all-reduces the stacked losses of
the window once, reads them once, and checks them: every rank reads the same means at the same iterations, so a
non-finite loss stops all ranks together, naming the first iteration it appeared at.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from excel.engine import dist


@dataclass
class StepResult:
    """Scalar results of one training iteration: the weighted total, each loss term's mean over the ranks
    (``{name}_loss``, in the order of ``excel.losses.LOSS_TERMS``), the learning rate and whether LVC was on."""

    loss: float
    terms: dict[str, float]
    lr: float
    lvc: bool


@dataclass
class PendingStep:
    """One launched iteration: ``losses`` (1 + T,) float32 [total, term...] on the device, detached; the learning
    rate it used and whether LVC was on (host values)."""

    iteration: int
    losses: Tensor
    lr: float
    lvc: bool


def read_steps(pending: Sequence[PendingStep], names: Sequence[str], world_size: int) -> list[StepResult]:
    """The means over the ranks of the pending steps' losses, read in one host sync.

    Every rank must call it with the same iterations (a collective when distributed).

    Raises:
        FloatingPointError: on every rank alike, at the first iteration whose mean total or term is not finite.
    """
    if not pending:
        return []
    summed = dist.all_reduce_sum(torch.stack([p.losses for p in pending]))
    rows = (summed / world_size).tolist()
    results = []
    for p, (total, *values) in zip(pending, rows):
        means = dict(zip(names, values))
        if not all(math.isfinite(v) for v in (total, *values)):
            raise FloatingPointError(f"non-finite loss {total} at iteration {p.iteration} "
                                     f"({', '.join(f'{k} {v}' for k, v in means.items())}; means over "
                                     f"{world_size} process(es))")
        results.append(StepResult(total, means, p.lr, p.lvc))
    return results
