"""Pseudo-label inference over a whole split (spec §9.4): ``tools/infer_lam.py`` / ``infer_lam.sh``.

Training-free mode (``infer.checkpoint`` unset): plain LAM, Q = None. Checkpoint mode: the pair [x, flip x] goes
through the model, the LVC LAM of both is max-merged and re-normalised, and Q is the pair forward's attn_pred of x.
The split is sharded over ranks, the confusion matrices are all-reduced, labels are written as VOC-palette PNGs
(atomically), and a rerun skips images whose PNGs exist (their files are scored instead).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from PIL import Image
from tqdm import tqdm

from excel.errors import UsageError
from excel.cam import PAR, make_pseudo_labels, pseudo_label_scores
from excel.config import resolve_device
from excel.data import build_dataset
from excel.data.palette import overlay, voc_palette, with_legend
from excel.engine import dist
from excel.engine.inference import load_trained_model
from excel.engine.train import work_dir_of
from excel.engine.validate import eval_loader, resize_square
from excel.evaluation import ConfusionMatrix, CRFPool
from excel.model import ExCEL
from excel.utils.io import atomic_path, atomic_save_png, atomic_write_json
from excel.utils.logging import setup_logging

log = logging.getLogger(__name__)


def to_uint8_image(image: torch.Tensor, mean: list[float], std: list[float]) -> np.ndarray:
    """(3,H,W) normalised tensor -> (H,W,3) uint8 RGB (rounded)."""
    pixels = image.float().cpu() * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return pixels.round().clamp(0, 255).byte().permute(1, 2, 0).numpy()


@torch.no_grad()
def lam_inputs(model: ExCEL, x: torch.Tensor, with_checkpoint: bool) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """LAM (B,P,C_fg), attention stack (L,B,N,N) and Q (B,P,P) or None for a batch of resized images x (B,3,S,S).

    Training-free: the plain LAM and no Q. With a checkpoint (B must be 1): §9.4's flip pair and LVC.
    """
    if not with_checkpoint:
        enc = model.encode(x)
        return enc.lam, enc.attn, None
    if x.shape[0] != 1:
        raise UsageError("checkpoint-mode LAM inference takes one image at a time (the flip pair is the batch)")
    out = model(torch.cat([x, x.flip(-1)], dim=0))
    lam_pair = model.calibrated_lam(out, out.fused)  # mu over the 2-image batch (quirk 9)
    g = int(round(lam_pair.shape[1] ** 0.5))
    c = lam_pair.shape[-1]
    flipped_back = lam_pair[1:].view(1, g, g, c).flip(2).reshape(1, g * g, c)
    lam = torch.maximum(lam_pair[:1], flipped_back)
    lam = lam - lam.amin(dim=1, keepdim=True)
    lam = lam / (lam.amax(dim=1, keepdim=True) + 1e-5)
    return lam, out.attn[:, :1], out.attn_pred[:1]


def _read_png(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def _cam_overlays(folder: Path, name: str, image: np.ndarray, lam: torch.Tensor, cls_label: torch.Tensor,
                  class_names: list[str]) -> None:
    """One JPEG per present class: the LAM (g x g) upsampled to the image and blended as a heat map."""
    import cv2

    g = int(round(lam.shape[0] ** 0.5))
    h, w = image.shape[:2]
    for c in torch.nonzero(cls_label > 0).flatten().tolist():
        grid = lam[:, c].view(1, 1, g, g).float()
        heat = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)
        colour = cv2.applyColorMap((heat.cpu().numpy() * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
        blend = (0.5 * image + 0.5 * colour).astype(np.uint8)
        safe = class_names[c].replace(" ", "_")
        with atomic_path(folder / f"{name}_{safe}.jpg") as tmp:
            Image.fromarray(blend).save(tmp, format="JPEG", quality=90)


def run_infer_lam(cfg: DictConfig) -> dict[str, Any]:
    """Write pseudo labels for ``infer.split`` and score them; returns the mIoU figures (rank 0 has them all)."""
    rank, world, local_rank = dist.init_distributed()
    device = resolve_device(cfg.run.device)
    if device.type == "cuda" and dist.is_distributed():
        device = torch.device("cuda", local_rank)
    split = str(cfg.infer.split)
    if split == "test":
        raise UsageError("infer.split=test has no image-level labels: pseudo labels need them (use train or val)")
    out_dir = Path(cfg.infer.output_dir) if cfg.infer.output_dir else work_dir_of(cfg) / f"infer_lam_{split}"
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    setup_logging(out_dir / "infer_lam.log", rank)
    checkpoint = cfg.infer.checkpoint
    log.info("infer_lam on split %s (%s mode), output %s", split,
             "checkpoint" if checkpoint else "training-free", out_dir)
    model = load_trained_model(cfg, checkpoint, device, mode=split)
    par = PAR(dilations=list(cfg.cam.par.dilations), num_iter=cfg.cam.par.num_iter).to(device)
    dataset = build_dataset(cfg, split, stage="val")
    class_names = list(cfg.data.class_names)
    names_bg = ["background", *class_names]
    mean, std = list(cfg.data.augment.mean), list(cfg.data.augment.std)
    palette = voc_palette()
    label_dir, crf_dir = out_dir / "pseudo_labels", out_dir / "pseudo_labels_crf"
    overlay_dir = out_dir / "overlays"
    cm = ConfusionMatrix(len(names_bg), device=device)
    crf_cm = ConfusionMatrix(len(names_bg), device="cpu")
    use_crf = bool(cfg.infer.crf)
    pool = CRFPool(num_workers=int(cfg.infer.crf_workers), labels_only=True, **dict(cfg.infer.crf_params)) \
        if use_crf else None
    done_skipped = 0
    t_start = time.perf_counter()
    loader = eval_loader(dataset, cfg, cfg.eval.max_images)
    try:
        for batch in tqdm(loader, desc=f"infer_lam {split}", disable=rank != 0, dynamic_ncols=True):
            name = batch["name"][0]
            label = batch["label"].to(device)
            png, crf_png = label_dir / f"{name}.png", crf_dir / f"{name}.png"
            if png.exists() and (not use_crf or crf_png.exists()):
                cm.update(torch.from_numpy(_read_png(png)).to(device).long()[None], label)
                if use_crf:
                    crf_cm.update(torch.from_numpy(_read_png(crf_png)).long()[None], label.cpu())
                done_skipped += 1
                continue
            image = batch["image"].to(device)
            cls_label = batch["cls_label"].to(device)
            x = resize_square(image, cfg.model.input_size)
            lam, attn, q = lam_inputs(model, x, with_checkpoint=checkpoint is not None)
            kwargs = dict(attn_pred=q, box_threshold=cfg.infer.box_threshold, par=par,
                          affinity_layers=tuple(cfg.cam.affinity_layers), sinkhorn_iters=cfg.cam.sinkhorn_iters,
                          bg_power=cfg.cam.bg_power)
            if use_crf:
                scores, lut = pseudo_label_scores(lam, attn, cls_label, x, label.shape[-2:], **kwargs)
                pred = lut.gather(1, scores.argmax(1).view(1, -1)).view_as(label)
                valid = torch.isfinite(scores[0, :, 0, 0])
                pool.submit(to_uint8_image(image[0], mean, std), scores[0, valid].cpu().numpy(),
                            (name, lut[0, valid].cpu().numpy(), label.cpu()))
            else:
                pred = make_pseudo_labels(lam, attn, cls_label, x, label.shape[-2:], **kwargs)
            cm.update(pred, label)
            pred_np = pred[0].to(torch.uint8).cpu().numpy()
            atomic_save_png(pred_np, png, palette=palette)
            if cfg.infer.save_overlays:
                rgb = to_uint8_image(image[0], mean, std)
                atomic_save_png(with_legend(overlay(rgb, pred_np), pred_np, names_bg), overlay_dir / f"{name}.png")
                _cam_overlays(overlay_dir / "cams", name, rgb, lam[0], cls_label[0], class_names)
            if pool is not None:
                for meta, result in pool.ready():
                    _score_crf(meta, result, crf_dir, crf_cm, palette)
        if pool is not None:
            for meta, result in pool.results():
                _score_crf(meta, result, crf_dir, crf_cm, palette)
    finally:
        if pool is not None:
            pool.close()
    cm.all_reduce()
    crf_cm.all_reduce()
    elapsed = time.perf_counter() - t_start
    result = cm.compute()
    summary: dict[str, Any] = {"split": split, "mode": "checkpoint" if checkpoint else "training-free",
                               "miou": float(result["miou"]), "miou_plain": float(result["miou_plain"]),
                               "num_images": min(len(dataset), cfg.eval.max_images or len(dataset)),
                               "skipped_existing": done_skipped, "seconds": elapsed}
    if rank == 0:
        log.info("pseudo labels (%s) on %s:\n%s", summary["mode"], split, cm.table(names_bg))
        if use_crf:
            crf_result = crf_cm.compute()
            summary["crf_miou"] = float(crf_result["miou"])
            summary["crf_miou_plain"] = float(crf_result["miou_plain"])
            log.info("pseudo labels + CRF on %s:\n%s", split, crf_cm.table(names_bg))
        atomic_write_json(out_dir / "results.json", summary)
        log.info("labels in %s (%d written, %d already there), %.1f s", label_dir,
                 summary["num_images"] - done_skipped, done_skipped, elapsed)
    dist.barrier()
    return summary


def _score_crf(meta: tuple, labels: np.ndarray, crf_dir: Path, crf_cm: ConfusionMatrix, palette: list[int]) -> None:
    """Map CRF argmax indices back to class labels, save, and score them."""
    name, lut, gt = meta
    pred = lut[labels.astype(np.int64)].astype(np.uint8)
    atomic_save_png(pred, crf_dir / f"{name}.png", palette=palette)
    crf_cm.update(torch.from_numpy(pred).long()[None], gt)
