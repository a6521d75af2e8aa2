"""Device-checked collectives for the multi-process tests (loaded by Python at start-up through PYTHONPATH).

With ``EXCEL_CHECK_COLLECTIVES=<file>`` in the environment, every torch.distributed collective of the process is
wrapped: a tensor that is not on the process group's device (this rank's GPU under nccl, the CPU under gloo) raises,
and a collective issued from anywhere but the project's staging points (``excel.engine.dist``, the confusion
matrix's reduce, the TSE bank broadcast) or torch itself raises too, since only those points move tensors to the
group's device. So a 2-process gloo run on the CPU fails on the call that nccl would refuse on a GPU. Each checked
call appends one line (rank, collective, device, caller) to the file, for the test to count.
"""
from __future__ import annotations

import os

_REPORT = os.environ.get("EXCEL_CHECK_COLLECTIVES")
STAGING_POINTS = ("excel.engine.dist", "excel.evaluation.metrics", "excel.text.cluster_bank")
COLLECTIVES = ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter",
               "reduce_scatter_tensor", "reduce", "gather", "scatter", "all_to_all_single", "broadcast_object_list",
               "all_gather_object", "gather_object", "scatter_object_list", "barrier")


def _install(report: str) -> None:
    import sys

    import torch
    import torch.distributed as td

    def group_device(group) -> torch.device:
        if td.get_backend(group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def tensors_of(values) -> list:
        found = []
        for v in values:
            if torch.is_tensor(v):
                found.append(v)
            elif isinstance(v, (list, tuple)):
                found.extend(t for t in v if torch.is_tensor(t))
        return found

    def wrap(name, fn):
        def checked(*args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "?")
            if caller.startswith("torch."):                    # torch's own object collectives stage by themselves
                return fn(*args, **kwargs)
            if not caller.startswith(STAGING_POINTS):
                raise RuntimeError(f"collective {name} called from {caller}: only {', '.join(STAGING_POINTS)} put "
                                   f"tensors on the process group's device; call a helper of excel.engine.dist")
            where = group_device(kwargs.get("group"))
            for t in tensors_of(list(args) + list(kwargs.values())):
                if t.device != where:
                    raise RuntimeError(f"collective {name} from {caller} got a tensor on {t.device}; the process "
                                       f"group's device is {where} (nccl refuses CPU tensors)")
            device = kwargs.get("device")
            if name.endswith("_object_list") and device is not None and torch.device(device) != where:
                raise RuntimeError(f"{name} from {caller} stages on {device}, the group's device is {where}")
            with open(report, "a", encoding="utf-8") as fh:
                fh.write(f"{td.get_rank()} {name} {where} {caller}\n")
            return fn(*args, **kwargs)
        checked.__wrapped__ = fn
        return checked

    for name in COLLECTIVES:
        setattr(td, name, wrap(name, getattr(td, name)))


if _REPORT:
    _install(_REPORT)
