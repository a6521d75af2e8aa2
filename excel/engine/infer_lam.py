"""Pseudo-label inference over a whole split (algorithm.md §9.4): ``tools/infer_lam.py`` / ``infer_lam.sh``.

Training-free mode (``infer.checkpoint`` unset): plain LAM, Q = None. Checkpoint mode: the pair [x, flip x] goes
through the model, the LVC LAM of both is max-merged and re-normalised, and Q is attn_pred of the plain forward of x
alone. With ``infer.crf`` the CRF reads the [bg, r_c...] scores before PAR (algorithm.md §9.4).
The split is sharded over ranks, the confusion matrices are all-reduced, labels are written as VOC-palette PNGs
(atomically), and a rerun skips images whose PNGs exist (their files are scored instead).
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from tqdm import tqdm

from excel.cam import PseudoLabeler
from excel.data import build_dataset
from excel.data.transforms import to_uint8_rgb
from excel.engine.checkpoint import load_trained_model
from excel.engine.inference import resize_square
from excel.engine.outputs import SplitOutputs, miou_text
from excel.engine.sharded import ShardedRun, eval_loader, run_sharded
from excel.errors import UsageError
from excel.model import EncodeOutput, ExCEL, attn_pred
from excel.utils.numbers import percent
from excel.utils.tensors import grid_side
from excel.utils.vis import save_lam_overlays

log = logging.getLogger(__name__)


@torch.no_grad()
def lam_inputs(model: ExCEL, x: torch.Tensor, with_checkpoint: bool) -> tuple[EncodeOutput, torch.Tensor | None]:
    """The encoded pass (``lam`` B x P x C_fg, ``attn`` L x B x N x N, ...) and Q (B,P,P) or None for a batch of
    resized images x (B,3,S,S): what the pseudo labels read.

    Training-free: the plain LAM and no Q. With a checkpoint (B must be 1), algorithm.md §9.4: the LVC LAM of the
    flip pair, and Q = attn_pred of the plain forward of x alone (its mean over x's own Gram matrix, not the pair's).
    """
    if not with_checkpoint:
        return model.encode(x), None
    if x.shape[0] != 1:
        raise UsageError("checkpoint-mode LAM inference takes one image at a time (the flip pair is the batch)")
    out = model(torch.cat([x, x.flip(-1)], dim=0))
    lam_pair = model.calibrated_lam(out, out.fused)  # mu over the 2-image batch (quirk 9)
    g = grid_side(lam_pair.shape[1], "lam_inputs: the LAM's patch count")
    c = lam_pair.shape[-1]
    flipped_back = lam_pair[1:].view(1, g, g, c).flip(2).reshape(1, g * g, c)
    lam = torch.maximum(lam_pair[:1], flipped_back)
    lam = lam - lam.amin(dim=1, keepdim=True)
    lam = lam / (lam.amax(dim=1, keepdim=True) + 1e-5)
    # the decoder works image by image, so x's fused feature is the pair's first one; only attn_pred's batch mean
    # (quirk 9) would see the mirror, hence Q is recomputed on x alone
    return replace(out.encoded.take(slice(0, 1)), lam=lam), attn_pred(out.fused[:1])


def _read_png(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


PSEUDO_TITLE, CRF_TITLE = "pseudo label", "pseudo label + CRF"


class _LamRun:
    """One infer_lam run on this rank: the labeler step (the sink's labels) and the rerun's skipping."""

    def __init__(self, sharded: ShardedRun, model: ExCEL) -> None:
        cfg, out_dir, device = sharded.cfg, sharded.output_dir, sharded.device
        self.cfg, self.model, self.device = cfg, model, device
        self.with_checkpoint = cfg.infer.checkpoint is not None
        self.labeler = PseudoLabeler.from_config(cfg, "infer").to(device)
        self.class_names = list(cfg.data.class_names)
        self.mean, self.std = list(cfg.data.augment.mean), list(cfg.data.augment.std)
        self.label_dir, self.crf_dir = out_dir / "pseudo_labels", out_dir / "pseudo_labels_crf"
        self.out = SplitOutputs(cfg, out_dir, device, (PSEUDO_TITLE, CRF_TITLE))
        self.pool = sharded.crf_pool()
        self.skipped = 0

    def score_existing(self, item: dict[str, Any]) -> bool:
        """Score the files of an image done by an earlier run; False when it still has to be computed."""
        name = item["name"][0]
        png, crf_png = self.label_dir / f"{name}.png", self.crf_dir / f"{name}.png"
        if not png.exists() or (self.pool is not None and not crf_png.exists()):
            return False
        self._record(item, _read_png(png))
        if self.pool is not None:
            self.out.record(name, _read_png(crf_png), item["label"][0], crf=True)
        self.skipped += 1
        return True

    def process(self, items: list[dict[str, Any]]) -> None:
        """Pseudo labels of a group of images: one forward for the group (resized to squares), then each image."""
        x = torch.cat([resize_square(it["image"].to(self.device), self.cfg.model.input_size) for it in items])
        encoded, q = lam_inputs(self.model, x, with_checkpoint=self.with_checkpoint)
        for i, item in enumerate(items):
            one = slice(i, i + 1)
            self._finish(item, x[one], encoded.take(one), None if q is None else q[one])
        self.drain(wait=False)

    def _finish(self, item: dict[str, Any], x: torch.Tensor, encoded: EncodeOutput, q: torch.Tensor | None) -> None:
        name, image, label = item["name"][0], item["image"], item["label"]
        cls_label = item["cls_label"].to(self.device)
        if self.pool is not None:
            # one image, so no padded class slots: the labels are the argmax after PAR, the CRF gets the un-PAR'd
            # [bg, r_c...] stack, not soft-maxed (algorithm.md §9.4)
            raw = self.labeler.scores(encoded, cls_label, x, label.shape[-2:], q, before_par=True)
            pred = self.labeler.refine(x, raw).labels()
            self.pool.submit(to_uint8_rgb(image[0], self.mean, self.std), raw.scores[0].cpu().numpy(),
                             (name, raw.lut[0].cpu().numpy(), label[0]))
        else:
            pred = self.labeler(encoded, cls_label, x, label.shape[-2:], q)
        rgb = self._record(item, pred[0].to(torch.uint8).cpu().numpy(), png=True)
        if self.cfg.infer.save_overlays:
            save_lam_overlays(self.out.output_dir / "overlays" / "cams", name, rgb,
                              encoded.lam[0].float().cpu().numpy(),
                              torch.nonzero(cls_label[0] > 0).flatten().tolist(), self.class_names)

    def _record(self, item: dict[str, Any], pred: np.ndarray, png: bool = False) -> np.ndarray:
        """Score, draw and (``png``) write one image's pseudo label; returns its (H, W, 3) uint8 picture."""
        name = item["name"][0]
        rgb = to_uint8_rgb(item["image"][0], self.mean, self.std)
        self.out.record(name, pred, item["label"][0], png=self.label_dir / f"{name}.png" if png else None, rgb=rgb,
                        overlay=png, links={"label": f"pseudo_labels/{name}.png",
                                            "CRF label": f"pseudo_labels_crf/{name}.png",
                                            "overlay": f"overlays/{name}.png"})
        return rgb

    def drain(self, wait: bool) -> None:
        """Save and score the CRF results that are ready (all of them when ``wait``)."""
        def finish(meta: tuple[str, np.ndarray, torch.Tensor], labels: np.ndarray) -> None:
            name, lut, gt = meta
            self.out.record(name, lut[labels.astype(np.int64)].astype(np.uint8), gt, crf=True,
                            png=self.crf_dir / f"{name}.png")

        self.out.drain(self.pool, wait, finish)

    def summary_line(self, summary: dict[str, Any]) -> str:
        """The report page's one line of results."""
        line = "pseudo-label " + miou_text(summary)
        if self.cfg.infer.crf:
            line += f", + CRF mIoU {percent(summary['crf_miou'])}"
        return line + f" on {summary['num_images']} images ({summary['mode']}, {summary['seconds']:.0f} s)"


def run_infer_lam(cfg: DictConfig) -> dict[str, Any]:
    """Write pseudo labels for ``infer.split`` and score them; returns the mIoU figures (every rank has them)."""
    if str(cfg.infer.split) == "test":
        raise UsageError("infer.split=test has no image-level labels: pseudo labels need them (use train or val)")
    if int(cfg.infer.batch_size) < 1:
        raise UsageError(f"infer.batch_size={cfg.infer.batch_size}: expected a positive number of images")
    return run_sharded(cfg, "infer_lam", _infer_lam)


def _infer_lam(sharded: ShardedRun) -> dict[str, Any]:
    cfg, rank = sharded.cfg, sharded.rank
    split, checkpoint = str(cfg.infer.split), cfg.infer.checkpoint
    # checkpoint mode forwards each image with its mirror (the pair is the batch, quirk 9): one image at a time
    group = 1 if checkpoint else int(cfg.infer.batch_size)
    mode = "checkpoint" if checkpoint else "training-free"
    if rank == 0:
        log.info("%s mode, %d image(s) per forward, box threshold %s, CRF %s", mode, group, cfg.infer.box_threshold,
                 cfg.infer.crf)
    dataset = build_dataset(cfg, split, stage="val")  # the list and folders are checked before any weights are read
    run = _LamRun(sharded, load_trained_model(cfg, checkpoint, sharded.device, mode=split))
    t_start = time.perf_counter()
    pending: list[dict[str, Any]] = []
    for item in tqdm(eval_loader(dataset, cfg, cfg.infer.max_images), desc=f"infer_lam {split}",
                     disable=rank != 0, dynamic_ncols=True):
        if run.score_existing(item):
            continue
        pending.append(item)
        if len(pending) == group:
            run.process(pending)
            pending = []
    if pending:
        run.process(pending)
    run.drain(wait=True)
    matrices = run.out.matrices()
    sharded.reduce(*matrices.values())
    scores = matrices[PSEUDO_TITLE].compute()
    summary: dict[str, Any] = {"split": split, "mode": mode, "miou": float(scores["miou"]),
                               "miou_plain": float(scores["miou_plain"]),
                               "num_images": min(len(dataset), cfg.infer.max_images or len(dataset)),
                               "skipped_existing": run.skipped, "seconds": time.perf_counter() - t_start}
    if cfg.infer.crf:
        crf_scores = matrices[CRF_TITLE].compute()
        summary["crf_miou"] = float(crf_scores["miou"])
        summary["crf_miou_plain"] = float(crf_scores["miou_plain"])
    notes = [f"checkpoint: {checkpoint or 'none (training-free)'}; box threshold {cfg.infer.box_threshold}; "
             f"CRF {'on' if cfg.infer.crf else 'off'}"]
    report = sharded.report(run.out.gallery, f"infer_lam: pseudo labels on {split}", run.summary_line(summary),
                            matrices, notes)
    if report is not None:
        summary["report"] = str(report)
    if rank == 0:
        log.info("pseudo labels (%s) on %s:\n%s", mode, split, run.out.table(PSEUDO_TITLE))
        if cfg.infer.crf:
            log.info("pseudo labels + CRF on %s:\n%s", split, run.out.table(CRF_TITLE))
        log.info("labels in %s (%d written, %d already there), %.1f s", run.label_dir,
                 summary["num_images"] - run.skipped, run.skipped, summary["seconds"])
    return sharded.finish(summary)
