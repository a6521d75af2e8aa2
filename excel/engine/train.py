"""The ExCEL training loop (algorithm.md §5.7, §7, §8): frozen CLIP, on-line pseudo labels, decoder training.

``train(cfg)`` runs as one plain process or under torchrun (one process per device, gloo on CPU, nccl on CUDA).
Only rank 0 logs to file and writes checkpoints. ``train.resume=auto`` continues from the newest checkpoint in the
work dir with the same loss sequence as an uninterrupted run (see ``excel.engine.sampler``).
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, default_collate
from tqdm import tqdm

from excel.cam import PseudoLabeler
from excel.config import save_config, work_dir_of
from excel.data import build_dataset
from excel.data.transforms import normalize_on_device
from excel.data.voc import DatasetError, check_dataset
from excel.engine import dist
from excel.engine.checkpoint import (CheckpointError, check_compatible, latest_checkpoint, load_checkpoint,
                                     load_model_weights, restore_rng_states, save_checkpoint)
from excel.engine.loss_log import PendingStep, StepResult, read_steps
from excel.engine.optim import PolyWarmupAdamW, resolve_fused
from excel.engine.sampler import InfiniteSampler, SeededItems
from excel.engine.validate import validate, visual_samples
from excel.losses import LOSS_TERMS, LossInputs, loss_weights
from excel.model import ExCEL, build_model
from excel.text.cluster_bank import check_text_sources
from excel.utils.io import atomic_write_text
from excel.utils.logging import git_revision, setup_logging
from excel.utils.tensors import set_tf32
from excel.utils.vis import sample_grid, write_curves

log = logging.getLogger(__name__)

def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch. ``deterministic`` asks for deterministic kernels where torch has them
    (``warn_only``: operations without one, such as CUDA's bilinear upsampling backward, warn and stay
    nondeterministic). On the CPU a resumed run repeats the uninterrupted one exactly; on CUDA it comes close."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic and torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")   # cuBLAS needs it for deterministic GEMMs
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    # deterministic mode would also fill every new tensor with NaN (one extra kernel per allocation); torch's docs
    # state results stay deterministic without it, as long as no uninitialised memory is read (none is here)
    torch.utils.deterministic.fill_uninitialized_memory = False


def par_input(images: torch.Tensor, mean: Sequence[float] | torch.Tensor,
              std: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Training PAR image (quirk 18): de-normalise, truncate to uint8, scale to [0, 1]. (B,3,H,W) -> (B,3,H,W).

    ``mean``/``std``: 3 values, or 1 x 3 x 1 x 1 tensors on the images' device (the trainer's: no host copy). The
    truncation of the de-normalised image (not the loader's uint8 crop) is kept: it can be one below the pixel."""
    mean_t = mean if torch.is_tensor(mean) else images.new_tensor(mean).view(1, 3, 1, 1)
    std_t = std if torch.is_tensor(std) else images.new_tensor(std).view(1, 3, 1, 1)
    pixels = images * std_t + mean_t
    return pixels.clamp(0, 255).to(torch.uint8).to(images.dtype) / 255.0


def _autocast(device: torch.device, amp: str):
    if amp == "none" or device.type != "cuda":
        return torch.autocast(device_type=device.type, enabled=False)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device_type="cuda", dtype=dtype)


def collate_train(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The training batch: ``default_collate`` plus ``max_classes``, the most present classes of an image in the
    batch, counted here on the host (in the loader worker) so that the step need not read it from the device."""
    batch = default_collate(items)
    batch["max_classes"] = max((int((item["cls_label"] > 0).sum()) for item in items), default=0)
    return batch


class Trainer:
    """Holds the model, optimiser, data stream and schedule of one run; ``run()`` trains to ``train.max_iters``."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.rank, self.world_size, _ = dist.init_distributed(cfg.run.device, timeout=cfg.run.dist_timeout)
        device = dist.local_device(cfg.run.device)
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)
        self.device = device
        self.work_dir = work_dir_of(cfg)
        if self.rank == 0:
            self.work_dir.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        setup_logging(self.work_dir / "train.log", self.rank)
        if cfg.train.amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"train.amp={cfg.train.amp!r}: expected none, bf16 or fp16")
        seed_everything(cfg.run.seed, cfg.run.deterministic)
        set_tf32(cfg.run.tf32)
        # the data first: a bad file in either split stops the run in seconds, before any weights are read
        self.train_set = build_dataset(cfg, cfg.data.train_split, stage="train")
        self.val_set = build_dataset(cfg, cfg.eval.split, stage="val")
        if cfg.data.check_files:
            self._check_data()
        check_text_sources(cfg)  # the knowledge base too, before CLIP is loaded

        self.loss_weights = loss_weights(cfg.loss)
        self.model: ExCEL = build_model(cfg, mode="train").to(device)
        self.ddp: torch.nn.Module = self.model
        if dist.is_distributed():
            # a loss term switched off may leave a head without gradients: DDP must then look for unused parameters
            unused = not all(self.loss_weights.values())
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False,
                find_unused_parameters=unused)
        self.optimizer = PolyWarmupAdamW(
            self.model.trainable_parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
            betas=tuple(cfg.optim.betas), eps=cfg.optim.eps, warmup_iters=cfg.optim.warmup_iters,
            warmup_ratio=cfg.optim.warmup_ratio, max_iters=cfg.train.max_iters, power=cfg.optim.power,
            fused=resolve_fused(cfg.optim.fused))
        if cfg.train.compile:
            self.model.decoder.compile()   # in place: parameter names and checkpoints stay the same
        # the normalisation constants, made on the device once (the loader ships uint8 crops)
        self.pixel_mean = torch.tensor(list(cfg.data.augment.mean), dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.pixel_std = torch.tensor(list(cfg.data.augment.std), dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.scaler = torch.amp.GradScaler("cuda", enabled=(cfg.train.amp == "fp16" and device.type == "cuda"))
        self.labeler = PseudoLabeler.from_config(cfg, "train").to(device)
        self.val_labeler = PseudoLabeler.from_config(cfg, "val").to(device)
        self.start_iter = 0
        # callables run with the number of finished iterations after each one (and after its validation and
        # checkpoint): progress reporting, custom logging, fault injection in the tests
        self.after_iteration: list[Callable[[int], None]] = []
        self._resume()
        self.tb = self._tensorboard()
        self.vis_indices = _spread(len(self.val_set), int(cfg.run.vis_samples)) if self.tb is not None else []

    # ----------------------------------------------------------------- setup helpers
    def _check_data(self) -> None:
        """Read every listed image header and mask of the train and val splits (each process a share, several
        threads each): files exist, sizes agree, mask values lie in 0..C_fg or the ignore value.

        Raises:
            DatasetError: on every process, naming the count and the first bad files of all processes.
        """
        t0 = time.perf_counter()
        problems: list[str] = []
        for dataset in (self.train_set, self.val_set):
            share = range(self.rank, len(dataset), self.world_size)
            problems += [f"[{dataset.split}] {p}" for p in check_dataset(
                dataset, raise_on_error=False, decode=False, indices=share, workers=max(1, self.cfg.data.num_workers),
                progress=self.rank == 0)]
        problems = [p for part in dist.all_gather_object(problems) for p in part]
        total = len(self.train_set) + len(self.val_set)
        if problems:
            c = self.train_set.num_classes
            hint = (f" (the config has {c} foreground classes + background in data.class_names: masks may hold "
                    f"0..{c} and {self.cfg.data.ignore_index} = ignore)"
                    if any("foreground classes + background" in p for p in problems) else "")
            raise DatasetError(f"{len(problems)} of the {total} listed items of the train split "
                               f"'{self.train_set.split}' and the val split '{self.val_set.split}' are bad, nothing "
                               f"was trained: {'; '.join(problems[:5])}{'; ...' if len(problems) > 5 else ''}{hint}. "
                               f"Fix the files, or leave them out of the lists (tools/prepare_voc.py --drop-bad); "
                               f"data.check_files=false skips this check")
        log.info("checked %d listed images and masks (train %s, val %s) in %.1f s", total, self.train_set.split,
                 self.val_set.split, time.perf_counter() - t0)

    def _resume(self) -> None:
        spec = self.cfg.train.resume
        if spec is None:
            return
        # rank 0 picks and reads the checkpoint and sends it: every rank resumes from the same iteration, and
        # machines without a shared disk need no copy of the work dir
        found = None
        if self.rank == 0:
            path = latest_checkpoint(self.work_dir) if spec == "auto" else Path(spec)
            try:
                found = (str(path), load_checkpoint(path, map_location="cpu")) if path is not None else None
            except Exception as err:  # sent on, so the other ranks fail too instead of waiting
                found = err
        found = dist.broadcast_object(found)
        if isinstance(found, Exception):
            raise found
        if found is None:
            log.info("train.resume=auto: no checkpoint in %s, starting from scratch", self.work_dir)
            return
        path, ckpt = Path(found[0]), found[1]
        check_compatible(ckpt.get("meta") or {}, self.model.meta(), source=str(path))
        load_model_weights(self.model, ckpt["model"], source=str(path))  # CheckpointError naming any mismatch
        if ckpt["optimizer"] is None or ckpt["iteration"] is None:
            raise CheckpointError(f"train.resume={spec}: {path} holds model weights only (no optimizer state and "
                                  f"iteration); resume needs a checkpoint written by training")
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if "scaler" in ckpt and ckpt["scaler"]:
            self.scaler.load_state_dict(ckpt["scaler"])
        restore_rng_states(ckpt.get("rng"))
        self.start_iter = int(ckpt["iteration"])
        log.info("resumed from %s at iteration %d", path, self.start_iter)

    def _tensorboard(self):
        if not (self.cfg.run.tensorboard and self.rank == 0):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("run.tensorboard=true but tensorboard is not installed; continuing without it")
            return None
        return SummaryWriter(str(self.work_dir / "tb"))

    def _loader(self) -> DataLoader:
        cfg = self.cfg
        sampler = InfiniteSampler(len(self.train_set), self.rank, self.world_size, seed=cfg.run.seed,
                                  start=self.start_iter * cfg.train.batch_size)
        return DataLoader(SeededItems(self.train_set), batch_size=cfg.train.batch_size, sampler=sampler,
                          num_workers=cfg.data.num_workers, drop_last=True, pin_memory=self.device.type == "cuda",
                          collate_fn=collate_train,
                          generator=torch.Generator().manual_seed(cfg.run.seed),
                          persistent_workers=cfg.data.num_workers > 0)

    def _log_start(self) -> None:
        if self.rank != 0:
            return
        save_config(self.cfg, self.work_dir / "config.yaml")
        atomic_write_text(self.work_dir / "git_revision.txt", git_revision() + "\n")
        cfg = self.cfg
        log.info("work dir %s, device %s, %d process(es), git %s", self.work_dir, self.device, self.world_size,
                 git_revision())
        batch = int(cfg.train.batch_size)
        log.info("batch %d per process x %d processes = %d", batch, self.world_size, batch * self.world_size)
        log.info("resolved config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
        log.info("switches: TSE %s, SVC %s, LVC %s (from iter %s), attn_pred selection from iter %s, "
                 "loss weights %s, amp %s",
                 cfg.tse.enabled, cfg.model.svc.enabled, cfg.lvc.enabled, cfg.lvc.start_iter,
                 cfg.lvc.attn_pred_start_iter, ", ".join(f"{k} {v}" for k, v in self.loss_weights.items()),
                 cfg.train.amp)
        if cfg.train.amp != "none" and self.device.type != "cuda":
            log.warning("train.amp=%s is for CUDA; on %s the run stays in fp32", cfg.train.amp, self.device)
        fixes = [k for k, v in cfg.quirks.items() if v]
        log.info("quirk fixes on: %s", ", ".join(fixes) if fixes else "none (faithful reference behaviour)")

    # ----------------------------------------------------------------- one iteration
    def launch(self, n: int, batch: dict[str, Any]) -> PendingStep:
        """Run iteration ``n`` on ``batch`` (a :func:`collate_train` batch: uint8 images) without reading the
        device: the losses come back on it (see :mod:`excel.engine.loss_log`)."""
        cfg = self.cfg
        pixels = batch["image"].to(self.device, non_blocking=True)
        cls_labels = batch["cls_label"].to(self.device, non_blocking=True)
        images = normalize_on_device(pixels, self.pixel_mean, self.pixel_std) if pixels.dtype == torch.uint8 \
            else pixels   # an already normalised batch (a caller's own collate)
        self.ddp.train()
        with _autocast(self.device, cfg.train.amp):
            out = self.ddp(images)
        use_lvc = bool(cfg.lvc.enabled) and n >= cfg.lvc.start_iter
        with torch.no_grad():
            lam = self.model.calibrated_lam(out, out.fused) if use_lvc else out.lam
            q = out.attn_pred.detach().float() if n >= cfg.lvc.attn_pred_start_iter else None
            pseudo = self.labeler(out.encoded, cls_labels, par_input(images, self.pixel_mean, self.pixel_std),
                                  images.shape[-2:], q, lam=lam.float(), max_classes=batch.get("max_classes"))
        inputs = LossInputs(out, out.seg_logits.float(), pseudo, n, cfg)
        # a term with weight 0 is not computed (its value is recorded as 0)
        terms = {name: LOSS_TERMS[name](inputs) if weight else inputs.logits.new_zeros(())
                 for name, weight in self.loss_weights.items()}
        loss = sum(weight * terms[name] for name, weight in self.loss_weights.items())
        losses = torch.stack([loss.detach(), *(t.detach() for t in terms.values())]).float()
        lr = self.optimizer.set_lr(n)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return PendingStep(n, losses, lr, use_lvc)

    def step(self, n: int, batch: dict[str, Any]) -> StepResult:
        """:meth:`launch` then read its losses at once (one host sync; every rank must call it)."""
        return read_steps([self.launch(n, batch)], list(self.loss_weights), self.world_size)[0]

    # ----------------------------------------------------------------- the loop
    def run(self) -> dict[str, float]:
        cfg = self.cfg
        self._log_start()
        metrics_file = self.work_dir / "metrics.jsonl"
        if self.rank == 0:
            _truncate_metrics(metrics_file, self.start_iter)
        max_iters = int(cfg.train.max_iters)
        data = iter(self._loader())
        bar = tqdm(range(self.start_iter, max_iters), initial=self.start_iter, total=max_iters, desc="train",
                   disable=self.rank != 0, dynamic_ncols=True)
        last_val: dict[str, float] = {}
        window: list[PendingStep] = []
        t0 = t_window = time.perf_counter()
        for n in bar:
            window.append(self.launch(n, next(data)))
            finished = n + 1
            evaluate = finished % cfg.train.eval_iters == 0 or finished == max_iters
            # the losses stay on the device until a logging point: one read for the window (hooks see every
            # finished iteration's record, so with hooks each iteration is one)
            if finished % cfg.train.log_iters == 0 or evaluate or self.after_iteration:
                self._write_window(window, (time.perf_counter() - t_window) / len(window), metrics_file,
                                   bar, t0, max_iters)
                window = []
            if evaluate:
                last_val = self.evaluate(finished)
                if finished >= cfg.train.ckpt_start_iter:
                    self.save(finished)
            for hook in self.after_iteration:
                hook(finished)
            if not window:
                t_window = time.perf_counter()   # validation and checkpoints are not part of the next steps
        bar.close()
        if self.rank == 0:
            if self.device.type == "cuda":
                log.info("peak CUDA memory %.2f GiB (allocated by tensors on %s)",
                         torch.cuda.max_memory_allocated(self.device) / 2 ** 30, self.device)
            log.info("training curves: %s", write_curves(self.work_dir))
        if self.tb is not None:
            self.tb.close()
        dist.barrier()
        return last_val

    def _write_window(self, window: list[PendingStep], step_s: float, metrics_file: Path, bar: Any, t0: float,
                      max_iters: int) -> None:
        """Read the window's losses (every rank: a collective), then on rank 0 append one metrics record per
        iteration (``step_s``: the window's mean wall time per iteration, data wait included), TensorBoard
        scalars, the progress bar and, at ``train.log_iters``, the log line."""
        results = read_steps(window, list(self.loss_weights), self.world_size)
        if self.rank != 0:
            return
        records = []
        for pending, result in zip(window, results):
            losses = {"loss": result.loss, **{f"{k}_loss": v for k, v in result.terms.items()}}
            records.append({"iter": pending.iteration, **losses, "lr": result.lr, "lvc": result.lvc,
                            "step_s": round(step_s, 5)})
            if self.tb is not None:
                for key in (*losses, "lr"):
                    self.tb.add_scalar(f"train/{key}", records[-1][key], pending.iteration)
        with open(metrics_file, "a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(r) + "\n" for r in records))
        last, n = results[-1], window[-1].iteration
        bar.set_postfix({**{k: f"{v:.4f}" for k, v in last.terms.items()}, "lr": f"{last.lr:.2e}"})
        if (n + 1) % self.cfg.train.log_iters == 0:
            done = n + 1 - self.start_iter
            eta = (time.perf_counter() - t0) / done * (max_iters - n - 1)
            log.info("iter %d/%d lr %.3e %s lvc %s eta %s", n + 1, max_iters, last.lr,
                     " ".join(f"{k} {v:.4f}" for k, v in records[-1].items() if k.endswith("loss")), last.lvc,
                     _fmt_time(eta))

    def evaluate(self, iteration: int) -> dict[str, float]:
        result = validate(self.model, self.val_set, self.cfg, self.device, self.val_labeler)
        if self.rank == 0:
            log.info("iter %d validation: seg mIoU %.2f, pseudo-label mIoU %.2f\n%s", iteration,
                     100 * result["seg_miou"], 100 * result["pseudo_miou"], result["seg_table"])
            with open(self.work_dir / "val.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"iter": iteration, "seg_miou": result["seg_miou"],
                                     "pseudo_miou": result["pseudo_miou"]}) + "\n")
            if self.tb is not None:
                self.tb.add_scalar("val/seg_miou", result["seg_miou"], iteration)
                self.tb.add_scalar("val/pseudo_miou", result["pseudo_miou"], iteration)
                self._log_samples(iteration)
            write_curves(self.work_dir)
        return {"seg_miou": result["seg_miou"], "pseudo_miou": result["pseudo_miou"]}

    def _log_samples(self, iteration: int) -> None:
        """One TensorBoard image per fixed validation sample: image | LAM of its top classes | training-free pseudo
        label | decoder prediction | ground truth (VOC palette)."""
        names = ["background", *self.cfg.data.class_names]
        samples = visual_samples(self.model, self.val_set, self.vis_indices, self.cfg, self.device,
                                 self.val_labeler)
        for k, s in enumerate(samples):
            grid = sample_grid(s["rgb"], s["gt"], [("pseudo label (training-free)", s["pseudo"]),
                                                   ("decoder", s["pred"])], names, lams=s["lams"])
            self.tb.add_image(f"val_samples/{k:02d}_{s['name']}", grid.image, iteration, dataformats="HWC")

    def save(self, iteration: int) -> None:
        if self.rank == 0:
            state = self.model.state_dict() if self.cfg.train.save_full_model else self.model.decoder_state_dict()
            path = save_checkpoint(self.work_dir, state, self.optimizer, iteration, self.cfg,
                                   extra={"scaler": self.scaler.state_dict()}, meta=self.model.meta(),
                                   keep=self.cfg.train.keep_checkpoints)
            log.info("saved checkpoint %s", path)
        dist.barrier()


def _truncate_metrics(path: Path, start_iter: int) -> None:
    """Drop metric records at or past ``start_iter`` (they are recomputed after a resume)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line)["iter"] < start_iter]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _spread(count: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(count)`` (all of them when k >= count)."""
    if k <= 0 or count == 0:
        return []
    if k >= count:
        return list(range(count))
    return sorted({int(round(i * (count - 1) / (k - 1))) for i in range(k)}) if k > 1 else [0]


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def train(cfg: DictConfig) -> dict[str, float]:
    """Train ExCEL with ``cfg``; returns the last validation figures (seg_miou, pseudo_miou)."""
    trainer = Trainer(cfg)
    try:
        return trainer.run()
    finally:
        dist.cleanup()
