"""The shared VOC / COCO segmentation inference run (algorithm.md §9.2, §9.3, §9.5).

``segment(cfg, tool)`` loads a trained checkpoint, runs multi-scale + flip inference over ``infer.split`` (sharded
over torchrun ranks, one plain process otherwise), and

- on a labelled split scores the raw prediction and, with ``infer.crf``, the dense-CRF prediction on the fly: the
  CRF runs on ``infer.crf_workers`` worker processes while the model goes on, and no logits touch the disk unless
  ``infer.save_logits``; both mIoU tables go to the screen, ``<output_dir>/<tool>.log`` and ``results.json``;
- on ``infer.split=test`` writes VOC-palette PNGs in the submission layout
  ``<output_dir>/results/VOC2012/Segmentation/comp6_test_cls/<name>.png`` (CRF labels when ``infer.crf``) and
  scores nothing; a rerun skips the images whose PNG exists.

VOC and COCO differ only in the config: ``infer.flip_at_unit_scale`` (quirk 19) and ``infer.logit_scale``
(COCO averages logits at 0.2x the image size, algorithm.md §9.3).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Subset
from tqdm import tqdm

from excel.data import build_dataset
from excel.data.transforms import to_uint8_rgb
from excel.engine import dist
from excel.engine.checkpoint import load_trained_model
from excel.engine.inference import logit_size, multiscale_logits, upsample_logits
from excel.engine.outputs import SplitOutputs, miou_text
from excel.engine.sharded import ShardedRun, eval_loader, run_sharded
from excel.errors import UsageError
from excel.evaluation import CRFPool, crf_params
from excel.utils.io import atomic_path
from excel.utils.logging import git_revision

log = logging.getLogger(__name__)

__all__ = ["segment", "test_png_path", "TEST_LAYOUT"]

TEST_LAYOUT = Path("results") / "VOC2012" / "Segmentation" / "comp6_test_cls"
PRED_TITLE, CRF_TITLE = "prediction", "prediction + CRF"


def test_png_path(output_dir: str | Path, name: str) -> Path:
    """Where the test-set prediction of ``name`` goes (VOC submission layout, algorithm.md §9.5)."""
    return Path(output_dir) / TEST_LAYOUT / f"{name}.png"


def _pending_indices(dataset: Any, output_dir: Path, test: bool, max_images: int | None) -> list[int]:
    n = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    if not test:
        return list(range(n))
    return [i for i in range(n) if not test_png_path(output_dir, dataset.names[i]).is_file()]


class _Run:
    """One segmentation run on one rank: the model step (the sink's labels) and the timers."""

    def __init__(self, cfg: DictConfig, output_dir: Path, test: bool, device: torch.device) -> None:
        self.cfg, self.output_dir, self.test, self.device = cfg, output_dir, test, device
        self.out = SplitOutputs(cfg, output_dir, device, (PRED_TITLE, CRF_TITLE))
        self.timers = {"model": 0.0, "crf_wait": 0.0, "images": 0.0, "crf_images": 0.0}

    def handle(self, name: str, rgb: np.ndarray | None, pred: np.ndarray, label: np.ndarray | None,
               crf: bool) -> None:
        """Score (labelled split) or write (test split) one prediction (H, W) uint8; the final one (the CRF's when
        ``infer.crf``) is the one written and drawn."""
        final = crf or not self.cfg.infer.crf
        links = {"overlay": f"overlays/{name}.png"}
        if self.test:
            links["label"] = test_png_path(".", name).as_posix()
        self.out.record(name, pred, label, crf=crf, png=test_png_path(self.output_dir, name) if self.test and final
                        else None, rgb=rgb, overlay=final, links=links)

    def drain(self, pool: CRFPool, wait: bool) -> None:
        t0 = time.perf_counter()
        self.timers["crf_images"] += self.out.drain(
            pool, wait, lambda meta, pred: self.handle(meta[0], meta[1], pred, meta[2], crf=True))
        self.timers["crf_wait"] += time.perf_counter() - t0

    def step(self, model: torch.nn.Module, batch: dict[str, Any], pool: CRFPool | None) -> None:
        cfg = self.cfg
        name = batch["name"][0]
        image = batch["image"].to(self.device)
        h, w = image.shape[-2:]
        t0 = time.perf_counter()
        small = multiscale_logits(model, image, int(cfg.model.input_size), list(cfg.infer.scales),
                                  bool(cfg.infer.flip_at_unit_scale), logit_size(h, w, cfg.infer.logit_scale))
        logits = upsample_logits(small, (h, w))
        pred = logits.argmax(0).to(torch.uint8).cpu().numpy()
        probs = torch.softmax(logits, dim=0).cpu().numpy() if pool is not None else None
        self.timers["model"] += time.perf_counter() - t0
        self.timers["images"] += 1
        if cfg.infer.save_logits:
            with atomic_path(self.output_dir / "logits" / f"{name}.npy") as tmp, open(tmp, "wb") as fh:
                np.save(fh, small.cpu().numpy().astype(np.float16))
        rgb = to_uint8_rgb(image[0], cfg.data.augment.mean, cfg.data.augment.std)
        label = None if self.test else batch["label"][0].cpu().numpy()
        self.handle(name, rgb, pred, label, crf=False)
        if pool is not None:
            t1 = time.perf_counter()
            pool.submit(rgb, probs, meta=(name, rgb if cfg.infer.save_overlays else None, label))
            self.timers["crf_wait"] += time.perf_counter() - t1
            self.drain(pool, wait=False)


def segment(cfg: DictConfig, tool: str = "infer_seg_voc") -> dict[str, Any]:
    """Run segmentation inference as configured (see the module docstring); every rank takes part.

    Returns:
        The results record (also written to ``<output_dir>/results.json`` by rank 0): ``raw`` and ``crf``
        scores (dicts with miou, miou_plain, pixel_acc, per-class iou; None when not computed), the number of
        images, timings (seconds per image) and the output folder.
    """
    if cfg.infer.checkpoint in (None, ""):
        raise UsageError(f"{tool}: infer.checkpoint is null; segmentation inference needs a trained checkpoint "
                         f"(infer.checkpoint=/path/to/iter_XXXXXXX.pth)")
    return run_sharded(cfg, tool, _segment)


def _segment(sharded: ShardedRun) -> dict[str, Any]:
    cfg, tool, rank, output_dir = sharded.cfg, sharded.tool, sharded.rank, sharded.output_dir
    inf = cfg.infer
    if rank == 0:
        log.info("scales %s, flip at scale 1.0 %s, logit scale %s, CRF %s%s", list(inf.scales),
                 inf.flip_at_unit_scale, inf.logit_scale, inf.crf,
                 f" {crf_params(inf.crf_params)} on {inf.crf_workers} worker(s)" if inf.crf else "")
    split = str(inf.split)
    test = split == "test"
    dataset = build_dataset(cfg, split, stage="test" if test else "val")
    model = load_trained_model(cfg, inf.checkpoint, sharded.device, mode=split)
    # rank 0 lists the finished PNGs and every rank shards its list: ranks never disagree on what is left
    pending = dist.broadcast_object(_pending_indices(dataset, output_dir, test, inf.max_images)
                                    if rank == 0 else None)
    if test and rank == 0:
        log.info("test split: %d of %d images to predict (existing PNGs are kept)", len(pending), len(dataset))
    run = _Run(cfg, output_dir, test, sharded.device)
    pool = sharded.crf_pool()
    t_start = time.perf_counter()
    for batch in tqdm(eval_loader(Subset(dataset, pending), cfg), desc=tool, disable=rank != 0, dynamic_ncols=True):
        run.step(model, batch, pool)
    if pool is not None:
        run.drain(pool, wait=True)
    wall = time.perf_counter() - t_start
    model_s, crf_wait_s, n_images, n_crf, wall_sum = sharded.sum_over_ranks(
        [run.timers[k] for k in ("model", "crf_wait", "images", "crf_images")] + [wall])
    result: dict[str, Any] = {
        "tool": tool, "split": split, "checkpoint": str(inf.checkpoint), "output_dir": str(output_dir),
        "num_images": int(n_images), "world_size": sharded.world_size, "scales": list(inf.scales),
        "flip_at_unit_scale": bool(inf.flip_at_unit_scale), "logit_scale": inf.logit_scale, "crf": bool(inf.crf),
        "crf_params": crf_params(inf.crf_params) if inf.crf else None,
        "timing": {"model_seconds_per_image": model_s / max(n_images, 1),
                   "wall_seconds_per_image": wall_sum / max(n_images, 1),
                   "crf_wait_seconds_per_image": crf_wait_s / max(n_crf, 1) if inf.crf else None},
        "peak_memory_gib": (torch.cuda.max_memory_allocated(sharded.device) / 2 ** 30
                            if sharded.device.type == "cuda" else None),   # this rank's, tensors only
        "scores": {"raw": None, "crf": None}, "git_revision": git_revision(),
        "config": OmegaConf.to_container(inf, resolve=True),
    }
    matrices = run.out.matrices()
    if not test:
        sharded.reduce(*matrices.values())
        result["scores"] = {"raw": run.out.scores(PRED_TITLE), "crf": run.out.scores(CRF_TITLE) if inf.crf else None}
    report = sharded.report(run.out.gallery, f"{tool} on {split}", _summary_line(result), None if test else matrices,
                            notes=[f"checkpoint: {inf.checkpoint}", f"scales {list(inf.scales)}, "
                                   f"flip at scale 1.0 {inf.flip_at_unit_scale}, CRF {inf.crf}"])
    if report is not None:
        result["report"] = str(report)
    if rank == 0:
        _report(result, run, test)
    return sharded.finish(result)


def _summary_line(result: dict[str, Any]) -> str:
    """One line of results for the report page."""
    raw, crf = result["scores"]["raw"], result["scores"]["crf"]
    line = f"{result['num_images']} images, {result['timing']['wall_seconds_per_image']:.2f} s/image"
    if raw is None:
        return f"{line}; no ground truth (test split): nothing scored"
    return miou_text(raw) + (f", + CRF {miou_text(crf)}" if crf else "") + f" on {line}"


def _report(result: dict[str, Any], run: _Run, test: bool) -> None:
    t = result["timing"]
    log.info("%d image(s): %.3f s/image model (MS + flip), %.3f s/image wall%s", result["num_images"],
             t["model_seconds_per_image"], t["wall_seconds_per_image"],
             f", {t['crf_wait_seconds_per_image']:.3f} s/image waiting for the CRF" if result["crf"] else "")
    if test:
        log.info("test predictions in %s (zip the 'results' folder for the evaluation server)",
                 Path(result["output_dir"]) / TEST_LAYOUT)
        return
    raw, crf = result["scores"]["raw"], result["scores"]["crf"]
    log.info("raw %s\n%s", miou_text(raw), run.out.table(PRED_TITLE))
    if crf:
        log.info("CRF %s\n%s", miou_text(crf), run.out.table(CRF_TITLE))
