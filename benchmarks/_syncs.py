"""Count the calls that make the host wait for a GPU, on any device (the CPU included).

Each of these blocks the Python thread until the device has caught up when the tensor lives on a GPU: reading a
value (item, tolist, bool/int/float of a tensor, numpy, torch.equal), copying to the host (cpu), data-dependent
shapes (nonzero, unique, masked_select, boolean indexing), and host data copied onto a device: ``torch.tensor`` /
``torch.as_tensor`` with a ``device``, and ``x.new_tensor(data)`` (onto x's device, a pageable copy: on a GPU the
host waits for it). A TorchFunctionMode sees every such call made outside torch's own modules, so the
count is the same on a CPU-only machine as on a GPU (CUDA's own ``torch.cuda.set_sync_debug_mode`` needs a GPU).
"""
from __future__ import annotations

import sys
from collections import Counter
from typing import Any, Callable

import torch
from torch.overrides import TorchFunctionMode

SYNCING = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu", "nonzero", "unique",
           "unique_consecutive", "masked_select", "argwhere", "nonzero_static", "repeat_interleave", "equal",
           "allclose", "is_nonzero"}


class SyncCounter(TorchFunctionMode):
    """``with SyncCounter() as c: fn()``; then ``c.counts`` maps each syncing call to how often it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self._depth = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        caller = sys._getframe(1).f_globals.get("__name__", "")
        # count what the code under test calls, not what torch does inside (the optimisers read their CPU step
        # counters with item(), which never waits for a GPU)
        if self._depth == 0 and not caller.startswith("torch"):
            if name in SYNCING:
                self.counts[name] += 1
            elif name in ("tensor", "as_tensor") and kwargs.get("device") is not None:
                self.counts[f"{name}(host data, device)"] += 1
            elif name == "new_tensor":
                self.counts["new_tensor(host data)"] += 1
            elif name == "__getitem__" and len(args) > 1 and torch.is_tensor(args[1]) and args[1].dtype == torch.bool:
                self.counts["boolean index"] += 1
        self._depth += 1
        try:
            return func(*args, **kwargs)
        finally:
            self._depth -= 1


def count_syncs(fn: Callable[[], Any]) -> Counter[str]:
    """The syncing calls of one call of ``fn``."""
    with SyncCounter() as counter:
        fn()
    return counter.counts
