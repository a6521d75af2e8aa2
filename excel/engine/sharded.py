"""What the inference runs over a whole split share (``segment`` and ``run_infer_lam``).

Such a run is sharded over the torchrun processes (one plain process otherwise):

- :func:`run_sharded` joins the process group when torchrun asks for one and leaves it afterwards if it joined it;
- :class:`ShardedRun` is one rank's part: its device and TF32 setting, the output folder (made by rank 0 before any
  rank writes), the log file, the resolved config next to the outputs, the CRF worker pool, the sums over ranks,
  the report page and the atomic ``results.json``;
- :func:`eval_loader` gives each rank its share of the images, each image to exactly one rank.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, Subset

from excel.config import ConfigError, output_dir_of, save_config
from excel.data.loader import ShardSampler
from excel.engine import dist
from excel.evaluation import ConfusionMatrix, CRFPool, crf_params
from excel.evaluation.report import Gallery
from excel.utils.io import atomic_write_json
from excel.utils.logging import git_revision, setup_logging
from excel.utils.tensors import set_tf32

log = logging.getLogger(__name__)

__all__ = ["eval_loader", "run_sharded", "ShardedRun"]

T = TypeVar("T")


def eval_loader(dataset: Dataset, cfg: DictConfig, max_items: int | None = None) -> DataLoader:
    """Batch-1 loader over this rank's share of the first ``max_items`` items (each item on exactly one rank;
    images keep their own sizes)."""
    if max_items is not None and max_items < len(dataset):  # type: ignore[arg-type]
        dataset = Subset(dataset, range(int(max_items)))
    return DataLoader(dataset, batch_size=1, sampler=ShardSampler(dataset, dist.get_rank(), dist.get_world_size()),
                      num_workers=cfg.data.num_workers, collate_fn=_collate_one)


def _collate_one(items: list[dict[str, Any]]) -> dict[str, Any]:
    item = items[0]
    out: dict[str, Any] = {}
    for key, value in item.items():
        out[key] = value.unsqueeze(0) if torch.is_tensor(value) else [value]
    return out


def run_sharded(cfg: DictConfig, tool: str, body: Callable[["ShardedRun"], T]) -> T:
    """``body(ShardedRun(cfg, tool))`` on every rank. The process group is joined when torchrun asks for one
    (``run.device`` picks the backend) and left afterwards when this call joined it; the CRF pool is closed."""
    owns_group = not dist.is_distributed()
    dist.init_distributed(cfg.run.device, timeout=cfg.run.dist_timeout)
    run = None
    try:
        run = ShardedRun(cfg, tool)
        return body(run)
    finally:
        if run is not None:
            run.close()
        if owns_group:
            dist.cleanup()


def crf_worker_count(setting: int | None, cores: int | None = None, processes: int | None = None) -> int:
    """The CRF worker processes for ``infer.crf_workers``: the setting itself, or, for None, the CPU cores this
    process may use (``cores``; default its CPU affinity) divided among the processes of this machine
    (``processes``; default torchrun's ``LOCAL_WORLD_SIZE``, else 1), less one for the inference itself, at
    least 1."""
    if setting is not None:
        if int(setting) < 0:
            raise ConfigError(f"infer.crf_workers={setting}: expected 0 (inline), a positive count or null (auto)")
        return int(setting)
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if processes is None:
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, cores // max(1, processes) - 1)


class ShardedRun:
    """One rank's part of an inference run over a split; the output folder is ``output_dir_of(cfg, tool)``.

    Creating it sets TF32 (``run.tf32``), makes the output folder on rank 0 (every rank waits for it), logs to
    ``<output_dir>/<tool>.log`` (rank 0) and writes the resolved config there as ``config.yaml``.
    """

    def __init__(self, cfg: DictConfig, tool: str) -> None:
        self.cfg, self.tool = cfg, tool
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.device = dist.local_device(cfg.run.device)
        set_tf32(cfg.run.tf32)
        self.output_dir: Path = output_dir_of(cfg, tool)
        if self.rank == 0:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        setup_logging(self.output_dir / f"{tool}.log", self.rank)
        if self.rank == 0:
            save_config(cfg, self.output_dir / "config.yaml")
            log.info("%s: split %s, checkpoint %s, output %s, %d process(es), git %s", tool, cfg.infer.split,
                     cfg.infer.checkpoint, self.output_dir, self.world_size, git_revision())
        self.pool: CRFPool | None = None

    def crf_pool(self) -> CRFPool | None:
        """The dense-CRF worker pool of ``infer.crf_params`` on ``infer.crf_workers`` processes (labels only), made
        on first use; None when ``infer.crf`` is off. Closed when the run ends."""
        if self.cfg.infer.crf and self.pool is None:
            workers = crf_worker_count(self.cfg.infer.crf_workers)
            log.info("CRF on %d worker process(es)%s", workers,
                     " (infer.crf_workers=null: the cores this process may use, shared by the processes of this "
                     "machine, less one for inference)" if self.cfg.infer.crf_workers is None else "")
            self.pool = CRFPool(workers, labels_only=True, **crf_params(self.cfg.infer.crf_params))
        return self.pool

    def sum_over_ranks(self, values: Sequence[float]) -> list[float]:
        """The sums of ``values`` over all ranks (float64, one all-reduce)."""
        return dist.all_reduce_sum(torch.tensor(list(values), dtype=torch.float64)).tolist()

    @staticmethod
    def reduce(*matrices: ConfusionMatrix) -> None:
        """Sum each confusion matrix over all ranks, in place (every rank must pass the same ones)."""
        for cm in matrices:
            cm.all_reduce()

    def report(self, gallery: Gallery, title: str, summary: str,
               matrices: dict[str, ConfusionMatrix] | None = None, notes: Sequence[str] = ()) -> Path | None:
        """Write ``report.html`` from every rank's gallery (see :meth:`Gallery.finish`); its path on rank 0."""
        return gallery.finish(title, summary, matrices, notes, rank=self.rank, world_size=self.world_size,
                              barrier=dist.barrier)

    def finish(self, result: dict[str, Any]) -> dict[str, Any]:
        """Write ``result`` as ``<output_dir>/results.json`` (rank 0, atomically), wait for every rank, return it."""
        if self.rank == 0:
            atomic_write_json(self.output_dir / "results.json", result)
        dist.barrier()
        return result

    def close(self) -> None:
        """Stop the CRF workers, if any were started."""
        if self.pool is not None:
            self.pool.close()
            self.pool = None
