"""infer.crf_workers: a count as given, or (null) the cores this process may use, shared by the processes of the
machine, less one for the inference itself."""
from __future__ import annotations

import os

import pytest

from excel.config import ConfigError, load_config
from excel.engine.sharded import crf_worker_count


def test_a_given_count_is_kept():
    assert crf_worker_count(0) == 0 and crf_worker_count(3, cores=64) == 3
    with pytest.raises(ConfigError, match="infer.crf_workers=-1"):
        crf_worker_count(-1)


def test_null_follows_the_cores(monkeypatch):
    assert crf_worker_count(None, cores=16, processes=1) == 15      # one GPU process on a 16-core machine
    assert crf_worker_count(None, cores=16, processes=4) == 3       # four processes share 16 cores: 4 - 1 each
    assert crf_worker_count(None, cores=2, processes=1) == 1
    assert crf_worker_count(None, cores=4, processes=8) == 1        # never fewer than one
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")                     # torchrun's processes on this machine
    assert crf_worker_count(None, cores=16) == 7
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert crf_worker_count(None) == max(1, available - 1)


def test_the_default_is_null_for_both_datasets():
    for name in ("voc.yaml", "coco.yaml"):
        assert load_config(name).infer.crf_workers is None
    assert load_config("coco.yaml", ["infer.crf_workers=8"]).infer.crf_workers == 8
