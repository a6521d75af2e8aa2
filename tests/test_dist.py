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


def _leader_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """Three processes as two machines: ranks 0, 1 on the first (local ranks 0, 1), rank 2 alone on the second."""
    import time

    local = {0: 0, 1: 1, 2: 0}[rank]
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(local),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    dist.init_distributed(backend="gloo", timeout=60)
    cache = Path(out_dir) / f"cache_node{0 if rank < 2 else 1}"
    try:
        def fetch() -> str:                      # the slow download: only the first process of each machine
            time.sleep(0.5)
            cache.mkdir(exist_ok=True)
            (cache / f"fetched_by_{rank}").write_text("weights")
            return "fetched"

        def read() -> str:                       # the others: the cache is complete when they get here
            return "read " + ",".join(sorted(p.name for p in cache.iterdir()))

        first = dist.node_leader_first(fetch, read)

        def broken() -> str:
            if rank == 2:
                raise ValueError("no network on this machine")
            return "fine"

        try:
            second = dist.node_leader_first(broken, lambda: "unreachable")
        except (RuntimeError, ValueError) as err:
            second = f"{type(err).__name__}: {err}"
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"first": first, "second": second}))
    finally:
        dist.cleanup()


@pytest.mark.slow
def test_node_leader_first_fetches_once_per_machine(tmp_path):
    mp.spawn(_leader_worker, args=(3, _free_port(), str(tmp_path)), nprocs=3, join=True)
    got = {rank: json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(3)}
    assert [got[r]["first"] for r in range(3)] == ["fetched", "read fetched_by_0", "fetched"]
    assert sorted(p.name for p in (tmp_path / "cache_node1").iterdir()) == ["fetched_by_2"]
    # a failing leader stops every process at once, with its message, instead of a hang until the timeout
    assert got[2]["second"] == "ValueError: no network on this machine"
    for rank in (0, 1):
        assert got[rank]["second"] == ("RuntimeError: rank 2, the first process of its machine, failed: "
                                       "ValueError: no network on this machine")
    assert dist.node_leader_first(lambda: "alone", lambda: "never") == "alone"   # no process group


def _timeout_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    import time

    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    dist.init_distributed(backend="gloo", timeout=2)
    try:
        if rank == 0:
            start = time.monotonic()
            try:
                dist.barrier()                    # rank 1 is busy for 8 s: the 2 s timeout ends the wait
                outcome = "passed"
            except RuntimeError as err:
                outcome = f"timed out: {type(err).__name__}"
            Path(out_dir, "rank0.json").write_text(json.dumps({"outcome": outcome,
                                                               "seconds": time.monotonic() - start}))
        else:
            time.sleep(8)
    finally:
        dist.cleanup()


@pytest.mark.slow
def test_dist_timeout_bounds_a_wait(tmp_path, no_torchrun_env):
    mp.spawn(_timeout_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    got = json.loads((tmp_path / "rank0.json").read_text())
    assert got["outcome"].startswith("timed out") and got["seconds"] < 7, got
    from excel.config import ConfigError

    with pytest.raises(ConfigError, match="run.dist_timeout=0: expected a positive number of seconds"):
        os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
        try:
            dist.init_distributed(backend="gloo", timeout=0)
        finally:
            for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
                os.environ.pop(key)
