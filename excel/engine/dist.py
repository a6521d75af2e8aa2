"""torch.distributed helpers: torchrun-native, with a plain single-process fallback.

Under torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` in the environment) :func:`init_distributed` joins the
process group (nccl when ``run.device`` resolves to CUDA, gloo otherwise). Without those variables nothing is
initialised and every helper answers as a single process would: rank 0, world size 1, and collectives are no-ops. Collective helpers stage tensors through the group's device (:func:`group_device`).
"""
from __future__ import annotations

import datetime
import logging
import os
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as tdist

from excel.config import ConfigError, resolve_device

log = logging.getLogger(__name__)

__all__ = ["init_distributed", "is_distributed", "get_rank", "get_world_size", "get_local_rank", "barrier",
           "all_reduce_sum", "broadcast_object", "all_gather_object", "group_device", "cleanup", "local_device",
           "node_leader_first"]

T = TypeVar("T")
_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def _env_int(key: str) -> int:
    value = os.environ[key]
    try:
        return int(value)
    except ValueError as err:
        raise ValueError(f"environment variable {key}={value!r} is not an integer (set by torchrun)") from err


def init_distributed(device: str = "auto", backend: str | None = None,
                     timeout: float | None = None) -> tuple[int, int, int]:
    """Join the torchrun process group if the environment asks for one.

    Args:
        device: ``run.device``. The backend follows it: nccl when it resolves to CUDA, gloo for the CPU. Inside a
            group of several processes a device index (``cuda:1``) is refused: each process takes
            ``cuda:(LOCAL_RANK % device_count)``, so one GPU per task (SLURM) and one process per GPU both work.
        backend: force a backend instead (tests).
        timeout: seconds a collective may wait before the group gives up (``run.dist_timeout``); None keeps
            torch's default. Waits for rank 0 (building the TSE bank, one download of the CLIP weights per
            machine) count against it.
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
    resolved = _rank_device(device, world_size, local_rank)
    if backend is None:
        backend = "nccl" if resolved.type == "cuda" else "gloo"
    device_id = None
    if backend == "nccl":
        if resolved.type != "cuda":
            raise ConfigError(f"the nccl backend needs run.device=cuda (or auto on a GPU host), got {device!r}")
        device_id = resolved
        torch.cuda.set_device(device_id)
    if timeout is not None and not float(timeout) > 0:
        raise ConfigError(f"run.dist_timeout={timeout!r}: expected a positive number of seconds")
    extra = {"timeout": datetime.timedelta(seconds=float(timeout))} if timeout is not None else {}
    tdist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size,
                             device_id=device_id, **extra)
    log.info("joined process group: backend %s, rank %d/%d, local rank %d, device %s%s", backend, rank, world_size,
             local_rank, resolved, f", timeout {float(timeout):g} s" if timeout is not None else "")
    return rank, world_size, local_rank


def _rank_device(spec: str, world_size: int, local_rank: int) -> torch.device:
    """The device of the process with ``local_rank`` in a group of ``world_size`` for ``run.device=spec``."""
    device = resolve_device(spec)
    if device.type != "cuda":
        return device
    if device.index is not None:
        if world_size > 1:
            raise ConfigError(f"run.device={spec!r} names one GPU, but {world_size} processes would all use it; "
                              f"use run.device=cuda (each process takes cuda:LOCAL_RANK) and choose GPUs with "
                              f"CUDA_VISIBLE_DEVICES")
        return device
    return torch.device(f"cuda:{local_rank % torch.cuda.device_count()}")


def group_device() -> torch.device:
    """The device the process group's collectives run on: this process's GPU under nccl, else the CPU."""
    if is_distributed() and tdist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())   # set by init_distributed for this rank
    return torch.device("cpu")


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


def local_device(spec: str = "auto") -> torch.device:
    """This process's device for ``run.device=spec``: ``auto``/``cuda`` become ``cuda:(LOCAL_RANK % device_count)``
    inside a process group (an explicit index is refused there); otherwise the spec as
    :func:`excel.config.resolve_device` resolves it (``auto`` -> cuda when available, else cpu)."""
    if is_distributed():
        return _rank_device(spec, get_world_size(), get_local_rank())
    return resolve_device(spec)


def _device_kwargs() -> dict[str, Any]:
    if is_distributed() and tdist.get_backend() == "nccl":
        return {"device_ids": [group_device().index]}
    return {}


def barrier() -> None:
    """Wait for every process; a no-op without a process group."""
    if is_distributed():
        tdist.barrier(**_device_kwargs())


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes in place and return it (unchanged without a process group).

    A tensor on another device than the group's (a CPU confusion matrix under nccl) travels through a copy on the
    group's device, so callers need not know the backend."""
    if is_distributed() and get_world_size() > 1:
        where = group_device()
        if tensor.device == where:
            tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)
        else:
            staged = tensor.to(where)
            tdist.all_reduce(staged, op=tdist.ReduceOp.SUM)
            tensor.copy_(staged)
    return tensor


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s picklable ``obj`` on every process (``obj`` itself without a process group)."""
    if not is_distributed() or get_world_size() == 1:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src, device=group_device())
    return box[0]


def all_gather_object(obj: T) -> list[T]:
    """Every process's picklable ``obj``, in rank order (``[obj]`` without a process group)."""
    if not is_distributed() or get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * get_world_size()
    tdist.all_gather_object(out, obj)
    return out


def node_leader_first(leader: Callable[[], T], others: Callable[[], T]) -> T:
    """``leader()`` on local rank 0 of every machine while the other processes wait at a barrier, then
    ``others()`` on them (e.g. the first downloads the CLIP weights into the cache, the rest read the cache).

    Without a process group this is ``leader()``. An error on a machine's leader reaches every process: the
    leaders' outcomes are gathered (that is the barrier), and each process raises the first failure's
    ``RuntimeError`` rather than waiting for the group's timeout."""
    if not is_distributed() or get_world_size() == 1:
        return leader()
    is_leader = get_local_rank() == 0
    result: Any = None
    error = ""
    if is_leader:
        try:
            result = leader()
        except Exception as err:  # noqa: BLE001 - sent to every process, raised again below
            error = f"{type(err).__name__}: {err}"
            failure = err
    outcomes = all_gather_object((get_rank(), error))
    failed = [(rank, message) for rank, message in outcomes if message]
    if failed:
        if is_leader and error:
            raise failure
        rank, message = failed[0]
        raise RuntimeError(f"rank {rank}, the first process of its machine, failed: {message}")
    return result if is_leader else others()


def cleanup() -> None:
    """Leave the process group, if one was joined."""
    if is_distributed():
        tdist.destroy_process_group()
