"""Count the ATen operators a call dispatches (each is at least one kernel launch on a GPU, or dispatcher work).

A ``TorchDispatchMode`` sees every operator below autograd, the backward pass included, on any device, so the count
is the same on a CPU-only machine as on a GPU. Views (``slice``, ``select``, ``view``) count too: on a GPU they
launch nothing, but each costs dispatcher and Python time, and a loop of them is what a fused kernel replaces.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from torch.utils._python_dispatch import TorchDispatchMode


class OpCounter(TorchDispatchMode):
    """``with OpCounter() as c: fn()``; then ``c.counts`` maps each ATen operator (``aten.add_``) to its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn: Callable[[], Any]) -> Counter[str]:
    """The ATen operators dispatched by one call of ``fn``."""
    with OpCounter() as counter:
        fn()
    return counter.counts
