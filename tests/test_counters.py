"""The benchmarks' counters (benchmarks/_syncs.py, benchmarks/_ops.py) on hand-counted calls."""
from __future__ import annotations


import torch

from _ops import count_ops
from _syncs import count_syncs


def test_sync_counter_sees_every_kind():
    x = torch.rand(4)

    def calls() -> None:
        x.sum().item()                              # item
        x.tolist()                                  # tolist
        bool(x[0] > 0)                              # __bool__
        int(x.argmax())                             # __int__
        x[x > 0.5]                                  # boolean index
        x.nonzero()                                 # nonzero
        torch.equal(x, x)                           # equal
        x.new_tensor([1.0, 2.0])                    # host data onto x's device
        torch.tensor([1.0], device=x.device)        # host data onto a device
        torch.as_tensor([1.0], device=x.device)     # the same through as_tensor
        torch.tensor([1.0])                         # stays on the host: no sync
        x.new_zeros(3) + torch.full((3,), 2.0)      # made on the device: no sync

    counts = count_syncs(calls)
    assert counts == {"item": 1, "tolist": 1, "__bool__": 1, "__int__": 1, "boolean index": 1, "nonzero": 1,
                      "equal": 1, "new_tensor(host data)": 1, "tensor(host data, device)": 1,
                      "as_tensor(host data, device)": 1}


def test_op_counter_counts_aten_calls_backward_included():
    w = torch.rand(3, requires_grad=True)
    # forward mul and sum; backward: ones_like (the seed gradient), expand (sum's backward), mul (by 2), and the
    # detach of the accumulated gradient
    assert count_ops(lambda: (w * 2).sum().backward()) == {"aten.mul": 2, "aten.sum": 1, "aten.ones_like": 1,
                                                           "aten.expand": 1, "aten.detach": 1}
    assert count_ops(lambda: torch.ones(2) + 1) == {"aten.ones": 1, "aten.add": 1}
