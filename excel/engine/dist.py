"""torch.distributed helpers: torchrun-native, with a plain single-process fallback.

Under torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` in the environment) :func:`init_distributed` joins the
process group (nccl with CUDA, gloo otherwise). Without those variables nothing is initialised and every helper
answers as a single process would: rank 0, world size 1, main process, and collectives are no-ops.
"""
from __future__ import annotations

import logging
import os
from typing import Any, TypeVar

import torch
import torch.distributed as tdist
from torch import nn

from excel.config import resolve_device

log = logging.getLogger(__name__)

__all__ = ["init_distributed", "is_distributed", "get_rank", "get_world_size", "get_local_rank", "is_main_process",
           "barrier", "all_reduce_sum", "broadcast_object", "cleanup", "local_device", "unwrap_model"]

T = TypeVar("T")
_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def _env_int(key: str) -> int:
    value = os.environ[key]
    try:
        return int(value)
    except ValueError as err:
        raise ValueError(f"environment variable {key}={value!r} is not an integer (set by torchrun)") from err


def init_distributed(backend: str | None = None) -> tuple[int, int, int]:
    """Join the torchrun process group if the environment asks for one.

    Args:
        backend: None picks nccl when CUDA is available and gloo otherwise.
    Returns:
        (rank, world_size, local_rank); (0, 1, 0) for a plain single process. Calling it again returns the
        values of the existing group.
    """
    if is_distributed():
        return get_rank(), get_world_size(), get_local_rank()
    missing = [k for k in _ENV_KEYS if k not in os.environ]
    if len(missing) == len(_ENV_KEYS):
        return 0, 1, 0
    if missing:
        raise RuntimeError(f"incomplete torchrun environment: {', '.join(missing)} not set "
                           f"(expected all of {', '.join(_ENV_KEYS)}, plus MASTER_ADDR and MASTER_PORT)")
    rank, world_size, local_rank = (_env_int(k) for k in _ENV_KEYS)
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    device_id = None
    if backend == "nccl":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA device(s) are visible")
        device_id = torch.device(f"cuda:{local_rank}")
        torch.cuda.set_device(device_id)
    tdist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size,
                             device_id=device_id)
    log.info("joined process group: backend %s, rank %d/%d, local rank %d", backend, rank, world_size, local_rank)
    return rank, world_size, local_rank


def is_distributed() -> bool:
    """True when a process group is initialised."""
    return tdist.is_available() and tdist.is_initialized()


def get_rank() -> int:
    return tdist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return tdist.get_world_size() if is_distributed() else 1


def get_local_rank() -> int:
    """``LOCAL_RANK`` inside a process group, else 0."""
    return int(os.environ.get("LOCAL_RANK", 0)) if is_distributed() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def local_device(spec: str = "auto") -> torch.device:
    """This process's device: ``auto``/``cuda`` become ``cuda:LOCAL_RANK`` inside a process group; otherwise the
    spec as :func:`excel.config.resolve_device` resolves it (``auto`` -> cuda when available, else cpu)."""
    device = resolve_device(spec)
    if device.type == "cuda" and device.index is None and is_distributed():
        device = torch.device(f"cuda:{get_local_rank()}")
    return device


def _nccl_kwargs() -> dict[str, Any]:
    if is_distributed() and tdist.get_backend() == "nccl":
        return {"device_ids": [get_local_rank()]}
    return {}


def barrier() -> None:
    """Wait for every process; a no-op without a process group."""
    if is_distributed():
        tdist.barrier(**_nccl_kwargs())


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes in place and return it (unchanged without a process group)."""
    if is_distributed() and get_world_size() > 1:
        tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s picklable ``obj`` on every process (``obj`` itself without a process group)."""
    if not is_distributed() or get_world_size() == 1:
        return obj
    box = [obj]
    device = torch.device(f"cuda:{get_local_rank()}") if tdist.get_backend() == "nccl" else None
    tdist.broadcast_object_list(box, src=src, device=device)
    return box[0]


def all_gather_object(obj: T) -> list[T]:
    """Every process's picklable ``obj``, in rank order (``[obj]`` without a process group)."""
    if not is_distributed() or get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * get_world_size()
    tdist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    """Leave the process group, if one was joined."""
    if is_distributed():
        tdist.destroy_process_group()


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel (or DataParallel) wrapper; ``model`` itself otherwise."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model
