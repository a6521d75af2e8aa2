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
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Subset
from tqdm import tqdm

from excel.data import build_dataset, voc_palette
from excel.data.transforms import to_uint8_rgb
from excel.engine import dist
from excel.engine.checkpoint import load_trained_model
from excel.engine.inference import logit_size, multiscale_logits, upsample_logits
from excel.engine.sharded import ShardedRun, eval_loader, run_sharded
from excel.errors import UsageError
from excel.evaluation import ConfusionMatrix, CRFPool, crf_params
from excel.evaluation.report import Gallery
from excel.utils.io import atomic_path, atomic_save_png
from excel.utils.logging import git_revision
from excel.utils.vis import save_overlay

log = logging.getLogger(__name__)

__all__ = ["segment", "test_png_path", "TEST_LAYOUT"]

TEST_LAYOUT = Path("results") / "VOC2012" / "Segmentation" / "comp6_test_cls"
PRED_TITLE, CRF_TITLE = "prediction", "prediction + CRF"


def test_png_path(output_dir: str | Path, name: str) -> Path:
    """Where the test-set prediction of ``name`` goes (VOC submission layout, algorithm.md §9.5)."""
    return Path(output_dir) / TEST_LAYOUT / f"{name}.png"


def _scores(cm: ConfusionMatrix, names: list[str]) -> dict[str, Any]:
    s = cm.compute()
    clean = lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)  # noqa: E731
    return {"miou": clean(s["miou"]), "miou_plain": clean(s["miou_plain"]), "pixel_acc": clean(s["pixel_acc"]),
            "iou": {n: clean(float(v)) for n, v in zip(names, s["iou"])}}


def _pending_indices(dataset: Any, output_dir: Path, test: bool, max_images: int | None) -> list[int]:
    n = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    if not test:
        return list(range(n))
    return [i for i in range(n) if not test_png_path(output_dir, dataset.names[i]).is_file()]


class _Run:
    """State of one segmentation run on one rank: the confusion matrices, the gallery and the timers."""

    def __init__(self, cfg: DictConfig, output_dir: Path, test: bool, device: torch.device) -> None:
        self.cfg, self.output_dir, self.test, self.device = cfg, output_dir, test, device
        self.names = ["background", *cfg.data.class_names]
        self.raw_cm = ConfusionMatrix(len(self.names), device=device)  # on the device: nccl reduces CUDA tensors
        self.crf_cm = ConfusionMatrix(len(self.names), device=device)
        self.palette = voc_palette()
        self.timers = {"model": 0.0, "crf_wait": 0.0, "images": 0.0, "crf_images": 0.0}
        self.gallery = Gallery(output_dir, self.names, int(cfg.infer.report_max_images), palette=self.palette,
                               variants=[PRED_TITLE, CRF_TITLE] if cfg.infer.crf else [PRED_TITLE])

    def handle(self, name: str, rgb: np.ndarray | None, pred: np.ndarray, label: np.ndarray | None,
               crf: bool) -> None:
        """Score (labelled split) or write (test split) one final prediction (H, W) uint8."""
        if self.test:
            if crf or not self.cfg.infer.crf:
                atomic_save_png(pred.astype(np.uint8), test_png_path(self.output_dir, name), palette=self.palette)
        else:
            (self.crf_cm if crf else self.raw_cm).update(torch.from_numpy(pred.astype(np.int64)),
                                                         torch.from_numpy(label))
        if self.cfg.infer.save_overlays and rgb is not None and (crf or not self.cfg.infer.crf):
            save_overlay(self.output_dir / "overlays" / f"{name}.png", rgb, pred, self.names)
        links = {"overlay": f"overlays/{name}.png"}
        if self.test:
            links["label"] = test_png_path(".", name).as_posix()
        self.gallery.add(name, pred, variant=CRF_TITLE if crf else PRED_TITLE, rgb=None if crf else rgb, gt=label,
                         links=links)

    def drain(self, pool: CRFPool, wait: bool) -> None:
        t0 = time.perf_counter()
        for (name, rgb, label), pred in (pool.results() if wait else pool.ready()):
            self.handle(name, rgb, pred, label, crf=True)
            self.timers["crf_images"] += 1
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
        "scores": {"raw": None, "crf": None}, "git_revision": git_revision(),
        "config": OmegaConf.to_container(inf, resolve=True),
    }
    matrices = {PRED_TITLE: run.raw_cm, **({CRF_TITLE: run.crf_cm} if inf.crf else {})}
    if not test:
        sharded.reduce(*matrices.values())
        result["scores"] = {"raw": _scores(run.raw_cm, run.names),
                            "crf": _scores(run.crf_cm, run.names) if inf.crf else None}
    report = sharded.report(run.gallery, f"{tool} on {split}", _summary_line(result), None if test else matrices,
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
    pct = lambda v: "nan" if v is None else f"{100 * v:.2f}"  # noqa: E731
    line = f"{result['num_images']} images, {result['timing']['wall_seconds_per_image']:.2f} s/image"
    if raw is None:
        return f"{line}; no ground truth (test split): nothing scored"
    line = f"mIoU {pct(raw['miou'])} (m-IoU {pct(raw['miou_plain'])})" + (
        f", + CRF mIoU {pct(crf['miou'])} (m-IoU {pct(crf['miou_plain'])})" if crf else "") + f" on {line}"
    return line


def _report(result: dict[str, Any], run: _Run, test: bool) -> None:
    t = result["timing"]
    log.info("%d image(s): %.3f s/image model (MS + flip), %.3f s/image wall%s", result["num_images"],
             t["model_seconds_per_image"], t["wall_seconds_per_image"],
             f", {t['crf_wait_seconds_per_image']:.3f} s/image waiting for the CRF" if result["crf"] else "")
    if test:
        log.info("test predictions in %s (zip the 'results' folder for the evaluation server)",
                 Path(result["output_dir"]) / TEST_LAYOUT)
        return
    pct = lambda v: "nan" if v is None else f"{100 * v:.2f}"  # noqa: E731
    log.info("raw mIoU %s (m-IoU %s)\n%s", pct(result["scores"]["raw"]["miou"]),
             pct(result["scores"]["raw"]["miou_plain"]), run.raw_cm.table(run.names))
    if result["crf"]:
        log.info("CRF mIoU %s (m-IoU %s)\n%s", pct(result["scores"]["crf"]["miou"]),
                 pct(result["scores"]["crf"]["miou_plain"]), run.crf_cm.table(run.names))
