"""Distributed helpers: single-process answers without a group, and a real 2-process gloo run."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from excel.engine import dist

_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture()
def no_torchrun_env(monkeypatch):
    for key in _TORCHRUN_ENV:
        monkeypatch.delenv(key, raising=False)


def test_single_process_answers_without_a_process_group(no_torchrun_env):
    assert not dist.is_distributed()
    assert dist.init_distributed() == (0, 1, 0)
    assert not dist.is_distributed()  # nothing was initialised
    assert (dist.get_rank(), dist.get_world_size(), dist.get_local_rank()) == (0, 1, 0)
    dist.barrier()
    t = torch.tensor([1.0, 2.0])
    assert dist.all_reduce_sum(t) is t and torch.equal(t, torch.tensor([1.0, 2.0]))
    obj = {"a": [1, 2]}
    assert dist.broadcast_object(obj) is obj
    dist.cleanup()  # no group: a no-op
    assert dist.local_device("cpu") == torch.device("cpu")


def test_incomplete_or_malformed_torchrun_env_is_an_error(no_torchrun_env, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(RuntimeError, match="WORLD_SIZE, LOCAL_RANK not set"):
        dist.init_distributed()
    monkeypatch.setenv("WORLD_SIZE", "two")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ValueError, match="WORLD_SIZE='two'"):
        dist.init_distributed()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """One process of the smoke test: join through the torchrun environment, use every collective helper."""
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    got = dist.init_distributed(backend="gloo")
    try:
        total = dist.all_reduce_sum(torch.tensor([rank + 1.0, 10.0 * rank]))
        shared = dist.broadcast_object({"from": dist.get_rank(), "names": ["a", "b"]} if rank == 0 else None)
        dist.barrier()
        result = {"init": list(got), "rank": dist.get_rank(), "world": dist.get_world_size(),
                  "local": dist.get_local_rank(), "sum": total.tolist(), "shared": shared,
                  "again": list(dist.init_distributed())}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.cleanup()
    assert not dist.is_distributed()


@pytest.mark.slow
def test_two_process_gloo_collectives(tmp_path):
    world = 2
    mp.spawn(_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    for rank in range(world):
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert r["init"] == [rank, world, rank] and r["again"] == [rank, world, rank]
        assert (r["rank"], r["world"], r["local"]) == (rank, world, rank)
        assert r["sum"] == [3.0, 10.0]  # (1 + 2, 0 + 10)
        assert r["shared"] == {"from": 0, "names": ["a", "b"]}


_CHECKED_SCRIPT = """
import os, sys, torch, torch.distributed as td
os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1])
from excel.engine import dist
dist.init_distributed("cpu")
dist.barrier()                              # through the helper: checked and let through
print("helper ok")
try:
    td.all_reduce(torch.ones(2))            # a raw collective: nccl would get whatever device this tensor is on
except RuntimeError as err:
    print("refused:", err)
dist.cleanup()
"""


def test_collective_checker_refuses_raw_collectives(tmp_path):
    """The checker of the multi-process tests lets the staging helpers through and stops any other collective."""
    import subprocess
    import sys

    from _collectives import checked_calls, checked_env

    report = tmp_path / "calls.txt"
    proc = subprocess.run([sys.executable, "-c", _CHECKED_SCRIPT, str(_free_port())], env=checked_env(report),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "helper ok" in proc.stdout
    assert "refused: collective all_reduce called from __main__" in proc.stdout
    assert checked_calls(report) == [(0, "barrier", "cpu", "excel.engine.dist")]
