"""Performance benchmark: how far ExCEL's training step and LAM inference are from the bare frozen CLIP forward.

ViT-B/16 (``ViT-B-16-quickgelu``, random init), batch 4, 320 x 320 crops of a generated VOC-layout dataset
(375 x 500 images), TSE on with a random 112-cluster bank file (no KMeans). Figures, each the median over
``--repeats`` rounds after ``--warmup`` rounds; every round runs all the measurements once, so load changes on a
shared machine hit all of them alike, and the ratios are medians of per-round ratios:

    (a) bare      open_clip visual forward (no_grad), positional table resized to 20 x 20
    (b) encode    ExCEL.encode (SVC dual path, attention stack, decoder features, LAM)
    (c) pseudo    the training PseudoLabeler on the batch (no Q)
    (d) step      a training step that does not log (Trainer.launch) before the LVC switch (plain LAM, no Q)
    (e) step_lvc  the same after it (LVC LAM through the shortcut, Q = attn_pred)
        decoder   decoder forward + backward on the encoded features
        optimiser the fused AdamW update of the decoder (its gradients left in place)
                  (d) is split into encode + pseudo + decoder + optimiser + the rest (losses, normalisation)
    (f) infer_lam training-free LAM inference per image (resize to 320, encode, pseudo labels at the image size),
                  compared with the bare forward of one image (bare_b1)
    (g) peak memory of each: CUDA max memory allocated above what was allocated before; CPU the peak RSS
        increase over the RSS after glibc malloc_trim (Linux /proc/self/clear_refs + VmHWM; n/a elsewhere)
    data          one training batch from the real loader in the main process (one worker's cost)

Usage (no weights, no network)::

    python benchmarks/bench_excel.py [--device cpu|cuda] [--repeats N] [--warmup N] [--amp bf16] [--json out.json]
                                     [--profile]   # also the top operators of (a) and (d) (torch.profiler), the
                                                   # host syncs of one call of (b)-(e) (benchmarks/_syncs.py) and
                                                   # the ATen operators a step dispatches (benchmarks/_ops.py), as
                                                   # it runs here and on the CUDA code paths

``--amp bf16`` (CUDA only) runs the frozen forward under bf16 autocast (``model.clip.autocast=bf16``; the bare
forward (a) too, so the ratios compare like with like) and reports max |Δ| of the LAM and of the attention stack
against fp32 and the share of pseudo-label pixels that change. On CUDA the same is reported for TF32 (``run.tf32``,
on by default) against true fp32.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import json
import logging
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]

from _ops import count_ops  # noqa: E402  (run by path, the script's folder is on sys.path)
from _syncs import count_syncs  # noqa: E402
BATCH, SIDE, IMAGE_SIZE, NUM_CLUSTERS = 4, 320, (375, 500), 112


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--amp", default="none", choices=["none", "bf16"], help="autocast of the frozen forward (CUDA)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--infer-images", type=int, default=2, help="images per round for (f)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--profile", action="store_true", help="print the top operators of (a) and (d)")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.infer_images < 1:
        p.error("--repeats and --infer-images must be >= 1, --warmup >= 0")
    return args


# ---------------------------------------------------------------------------------------------- measuring
class Meter:
    """Wall-clock timing and peak memory on one device (CUDA timings are synchronised)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def time(self, fn: Callable[[], Any]) -> float:
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - start

    def peak(self, fn: Callable[[], Any]) -> int | None:
        """Bytes of peak memory above the level before ``fn`` (None when it cannot be measured)."""
        if self.device.type == "cuda":
            self.sync()
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            fn()
            self.sync()
            return torch.cuda.max_memory_allocated(self.device) - before
        before = _reset_rss_peak()
        fn()
        after = _rss_kib("VmHWM")
        return None if before is None or after is None else max(after - before, 0) * 1024


def _rss_kib(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def _reset_rss_peak() -> int | None:
    """Return freed heap pages to the OS (glibc malloc_trim), reset the peak RSS to the current RSS (Linux
    clear_refs 5) and return that RSS in KiB; None where unsupported."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _rss_kib("VmRSS")


# ---------------------------------------------------------------------------------------------- set-up
def make_workspace(root: Path, num_val: int) -> tuple[Path, Path]:
    """A generated VOC-layout dataset and a random TSE bank file [centers (512, J), flags (20, J)]."""
    from excel.organism import make_synthetic_voc

    data = make_synthetic_voc(root / "voc", num_train=2 * BATCH, num_val=num_val, num_test=0, size=IMAGE_SIZE)
    gen = torch.Generator().manual_seed(0)
    centers = torch.nn.functional.normalize(torch.randn(512, NUM_CLUSTERS, generator=gen), dim=0)
    flags = torch.zeros(20, NUM_CLUSTERS)
    flags[torch.arange(NUM_CLUSTERS) % 20, torch.arange(NUM_CLUSTERS)] = 1.0
    bank = root / "bank.pth"
    torch.save([centers, flags], bank)
    return data, bank


def build_trainer(root: Path, device: str, amp: str):
    from excel.config import load_config
    from excel.engine.train import Trainer

    data, bank = make_workspace(root, num_val=8)
    cfg = load_config(REPO / "configs" / "voc.yaml", [
        "model.clip.name=ViT-B-16-quickgelu", "model.clip.pretrained=null", f"model.clip.autocast={amp}",
        f"data.root={data}", "data.num_workers=0", f"tse.bank_file={bank}", f"run.work_dir={root / 'work'}",
        f"run.device={device}"])
    return Trainer(cfg)


def bare_visual(trainer) -> torch.nn.Module:
    """open_clip's own visual tower with the same weights and the 20 x 20 positional table of the model."""
    vit = copy.deepcopy(trainer.model.visual.vit)
    vit.positional_embedding = torch.nn.Parameter(trainer.model.visual.pos_embed.clone(), requires_grad=False)
    return vit.eval()


# ---------------------------------------------------------------------------------------------- the benchmark
def workloads(trainer, batch: dict[str, Any], val_items: list[dict[str, Any]]) -> dict[str, Callable[[], Any]]:
    from excel.cam import PseudoLabeler
    from excel.engine.infer_lam import lam_inputs
    from excel.engine.inference import resize_square
    cfg, model, device = trainer.cfg, trainer.model, trainer.device
    images, cls_labels, par_images = device_inputs(trainer, batch)
    vit = bare_visual(trainer)
    infer_labeler = PseudoLabeler.from_config(cfg, "infer").to(device)
    with torch.no_grad():
        encoded = model.encode(images)
    lvc_iter = int(cfg.lvc.start_iter)
    val = [(item["image"][None].to(device), item["cls_label"][None].to(device), item["label"].shape[-2:])
           for item in val_items]

    def frozen_autocast() -> Any:  # the bare forward runs under the same autocast as the model's frozen forward
        on = model.frozen_autocast == "bf16" and device.type == "cuda"
        return torch.autocast("cuda", dtype=torch.bfloat16) if on else contextlib.nullcontext()

    @torch.no_grad()
    def bare() -> Any:
        with frozen_autocast():
            return vit(images)

    @torch.no_grad()
    def bare_b1() -> Any:
        with frozen_autocast():
            return vit(images[:1])

    @torch.no_grad()
    def pseudo() -> Any:
        return trainer.labeler(encoded, cls_labels, par_images, images.shape[-2:], max_classes=batch["max_classes"])

    def decoder() -> Any:
        model.train()
        out = model.decoder(encoded.features)
        (out.seg_logits.float().mean() + out.attn_pred.float().mean()).backward()
        trainer.optimizer.zero_grad(set_to_none=True)

    model.train()
    out = model.decoder(encoded.features)
    (out.seg_logits.float().mean() + out.attn_pred.float().mean()).backward()
    grads = [p.grad for p in model.trainable_parameters()]

    def optimiser() -> Any:   # the update alone, on gradients kept from one decoder backward
        for p, g in zip(model.trainable_parameters(), grads):
            p.grad = g
        trainer.optimizer.step()

    @torch.no_grad()
    def infer() -> Any:
        model.eval()
        for image, cls_label, size in val:
            x = resize_square(image, int(cfg.model.input_size))
            enc, q = lam_inputs(model, x, with_checkpoint=False)
            infer_labeler(enc, cls_label, x, size, q)

    return {
        "bare": bare,
        "encode": lambda: model.encode(images),
        "pseudo": pseudo,
        "step": lambda: trainer.launch(0, batch),
        "step_lvc": lambda: trainer.launch(lvc_iter, batch),
        "decoder": decoder,
        "optimiser": optimiser,
        "bare_b1": bare_b1,
        "infer_lam": infer,
    }


def device_inputs(trainer, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The step's inputs on the device: normalised images, class labels and the PAR image (a collate_train batch)."""
    from excel.data.transforms import normalize_on_device
    from excel.engine.train import par_input

    images = normalize_on_device(batch["image"].to(trainer.device), trainer.pixel_mean, trainer.pixel_std)
    return (images, batch["cls_label"].to(trainer.device),
            par_input(images, trainer.pixel_mean, trainer.pixel_std))


@contextlib.contextmanager
def cuda_paths(trainer) -> Any:
    """The code paths a step takes on CUDA, on this device: fused PAR, the surgery attention of all images at once,
    box components in fixed rounds (the CPU runs them differently because that is faster there, or free: see
    excel/cam/par.py, excel/backbone/svc.py, excel/cam/boxes.py)."""
    import excel.backbone.svc as svc

    labeler = trainer.labeler
    par, chunk = labeler.par, svc._surgery_chunk
    method, par.method = par.method, "fused"
    boxes, labeler.box_method = labeler.box_method, "fixed"
    svc._surgery_chunk = lambda q: max(q.shape[0], 1)
    try:
        yield
    finally:
        par.method, svc._surgery_chunk, labeler.box_method = method, chunk, boxes


def operator_counts(trainer, batch: dict[str, Any]) -> dict[str, int]:
    """ATen operators of one non-logging step before LVC, as it runs here and on the CUDA code paths."""
    trainer.launch(0, batch)   # first use makes the per-device constant tables
    here = sum(count_ops(lambda: trainer.launch(0, batch)).values())
    with cuda_paths(trainer):
        trainer.launch(0, batch)
        cuda = sum(count_ops(lambda: trainer.launch(0, batch)).values())
    return {"here": here, "cuda_paths": cuda}


def host_syncs(trainer, jobs: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Host syncs of one call of each step stage, as run here and on the CUDA code paths (:func:`cuda_paths`)."""
    names = ("encode", "pseudo", "step", "step_lvc")
    out = {name: dict(count_syncs(jobs[name])) for name in names}
    with cuda_paths(trainer):
        out.update({f"{name}, CUDA code paths": dict(count_syncs(jobs[name])) for name in names})
    return out


def tf32_effect(trainer, batch: dict[str, Any]) -> dict[str, float]:
    """max |Δ| of the LAM and pseudo-label agreement between true fp32 and TF32 (``run.tf32``) frozen forwards."""
    from excel.utils.tensors import set_tf32

    images, cls_labels, par_images = device_inputs(trainer, batch)
    results = {}
    with torch.no_grad():
        for on in (False, True):
            set_tf32(on)
            enc = trainer.model.encode(images)
            results[on] = (enc.lam.float(), trainer.labeler(enc, cls_labels, par_images, images.shape[-2:]))
    set_tf32(bool(trainer.cfg.run.tf32))
    (lam32, lab32), (lam_tf, lab_tf) = results[False], results[True]
    return {"lam_max_abs_diff": float((lam32 - lam_tf).abs().max()),
            "pseudo_label_agreement": float((lab32 == lab_tf).float().mean())}


def data_seconds(trainer, rounds: int) -> float:
    """Median seconds for one batch from the real training loader, in this process (num_workers=0)."""
    stream = iter(trainer._loader())
    next(stream)
    return statistics.median(Meter(torch.device("cpu")).time(lambda: next(stream)) for _ in range(rounds))


def bf16_effect(trainer, batch: dict[str, Any]) -> dict[str, float]:
    """max |Δ| of the LAM (and the share of changed pseudo-label pixels) between fp32 and bf16 frozen forwards."""
    model = trainer.model
    images, cls_labels, par_images = device_inputs(trainer, batch)
    results = {}
    with torch.no_grad():
        for mode in ("none", "bf16"):
            model.frozen_autocast = mode
            enc = model.encode(images)
            labels = trainer.labeler(enc, cls_labels, par_images, images.shape[-2:])
            results[mode] = (enc.lam.float(), enc.attn.float(), labels)
    model.frozen_autocast = "bf16"
    (lam32, attn32, lab32), (lam16, attn16, lab16) = results["none"], results["bf16"]
    return {"lam_max_abs_diff": float((lam32 - lam16).abs().max()),
            "attn_max_abs_diff": float((attn32 - attn16).abs().max()),
            "pseudo_label_changed_fraction": float((lab32 != lab16).float().mean())}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from excel.config import resolve_device
    from excel.engine.train import collate_train

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    amp = args.amp if device.type == "cuda" else "none"
    if amp != args.amp:
        print(f"--amp {args.amp} ignored on {device}: model.clip.autocast only acts on CUDA")
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="excel_bench_") as tmp:
        trainer = build_trainer(Path(tmp), str(device), amp)
        logging.getLogger().setLevel(logging.WARNING)          # the step loop logs nothing worth timing
        batch = collate_train([trainer.train_set[i] for i in range(BATCH)])
        val_items = [trainer.val_set[i] for i in range(min(args.infer_images, len(trainer.val_set)))]
        jobs = workloads(trainer, batch, val_items)
        meter = Meter(device)
        times: dict[str, list[float]] = {name: [] for name in jobs}
        for round_ in range(args.warmup + args.repeats):
            for name, fn in jobs.items():
                seconds = meter.time(fn)
                if round_ >= args.warmup:
                    times[name].append(seconds)
        peaks = {name: meter.peak(fn) for name, fn in jobs.items()}
        data = data_seconds(trainer, max(args.repeats, 3))
        amp_effect = bf16_effect(trainer, batch) if amp == "bf16" else None
        tf32 = tf32_effect(trainer, batch) if device.type == "cuda" else None
        operators = operator_counts(trainer, batch) if args.profile else None
        profiles = {name: top_operators(jobs[name], device) for name in ("bare", "step")} if args.profile else None
        syncs = host_syncs(trainer, jobs) if args.profile else None
    n_infer = len(val_items)
    per_image = {"infer_lam": [t / n_infer for t in times["infer_lam"]], "pseudo": [t / BATCH for t in times["pseudo"]]}

    def ratio(num: list[float], den: list[float]) -> float:
        return statistics.median(a / b for a, b in zip(num, den))

    return {
        "device": _device_name(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "amp": amp, "repeats": args.repeats, "warmup": args.warmup, "batch": BATCH, "side": SIDE,
        "infer_images": n_infer,
        "load_average_start": load_start, "load_average_end": os.getloadavg(),
        "seconds": {name: statistics.median(v) for name, v in times.items()},
        "seconds_min": {name: min(v) for name, v in times.items()},
        "per_image_seconds": {name: statistics.median(v) for name, v in per_image.items()},
        "infer_lam_images_per_second": 1.0 / statistics.median(per_image["infer_lam"]),
        "ratios": {"encode/bare": ratio(times["encode"], times["bare"]),
                   "step/bare": ratio(times["step"], times["bare"]),
                   "step_lvc/bare": ratio(times["step_lvc"], times["bare"]),
                   "infer_lam/bare_b1": ratio(per_image["infer_lam"], times["bare_b1"])},
        "peak_memory_bytes": peaks, "data_seconds_per_batch": data, "bf16": amp_effect, "profiles": profiles,
        "host_syncs": syncs, "tf32": tf32, "operators": operators,
    }


def top_operators(fn: Callable[[], Any], device: torch.device, rows: int = 12) -> str:
    """torch.profiler table of the operators taking the most self time in one call of ``fn``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        fn()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages(group_by_input_shape=True).table(sort_by=key, row_limit=rows, max_name_column_width=40,
                                                               max_shapes_column_width=60)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} logical cores)"


def report(res: dict[str, Any]) -> str:
    mib = lambda b: "n/a" if b is None else f"{b / 2 ** 20:8.0f} MiB"  # noqa: E731
    sec, low, peak = res["seconds"], res["seconds_min"], res["peak_memory_bytes"]
    rows = [("(a) bare CLIP forward, batch 4", "bare"), ("(b) ExCEL.encode", "encode"),
            ("(c) pseudo labels, batch 4", "pseudo"), ("(d) train step, before LVC", "step"),
            ("(e) train step, after LVC", "step_lvc"), ("    decoder forward + backward", "decoder"),
            ("    optimiser (fused AdamW)", "optimiser"),
            ("    bare CLIP forward, batch 1", "bare_b1"),
            (f"(f) infer_lam, {res['infer_images']} images", "infer_lam")]
    lines = [f"device {res['device']}, torch {res['torch']}, {res['threads']} threads, amp {res['amp']}, "
             f"median of {res['repeats']} after {res['warmup']} warm-up",
             "load average (1/5/15 min) start {:.2f} {:.2f} {:.2f}, end {:.2f} {:.2f} {:.2f}".format(
                 *res["load_average_start"], *res["load_average_end"]),
             f"{'':34s} {'median s':>9s} {'min s':>8s} {'peak mem (g)':>13s}"]
    for label, key in rows:
        lines.append(f"{label:34s} {sec[key]:9.3f} {low[key]:8.3f} {mib(peak[key]):>13s}")
    r, per = res["ratios"], res["per_image_seconds"]
    lines += [f"ratios: (b)/(a) {r['encode/bare']:.2f}   (d)/(a) {r['step/bare']:.2f}   "
              f"(e)/(a) {r['step_lvc/bare']:.2f}",
              f"pseudo labels {per['pseudo']:.3f} s/image; infer_lam {per['infer_lam']:.3f} s/image "
              f"({res['infer_lam_images_per_second']:.2f} images/s) = {r['infer_lam/bare_b1']:.2f} x bare (batch 1)",
              f"data: {res['data_seconds_per_batch']:.3f} s per batch of 4 in one process "
              f"({res['data_seconds_per_batch'] / sec['step']:.2f} x step (d))"]
    rest = sec["step"] - sec["encode"] - sec["pseudo"] - sec["decoder"] - sec["optimiser"]
    lines.append(f"(d) split: encode {sec['encode']:.3f} + pseudo labels (PAR included) {sec['pseudo']:.3f} + "
                 f"decoder forward + backward {sec['decoder']:.3f} + optimiser {sec['optimiser']:.3f} + "
                 f"losses/rest {rest:.3f} s; LVC adds (e) - (d) = {sec['step_lvc'] - sec['step']:.3f} s")
    if res.get("tf32"):
        t = res["tf32"]
        lines.append(f"TF32 frozen forward (run.tf32): LAM max |Δ| {t['lam_max_abs_diff']:.3g} against fp32, "
                     f"pseudo-label agreement {100 * t['pseudo_label_agreement']:.2f}%")
    if res.get("operators"):
        o = res["operators"]
        lines.append(f"ATen operators of one step (d): {o['here']} as run here, {o['cuda_paths']} on the CUDA code "
                     f"paths (fused PAR, batched surgery attention)")
    if res["bf16"]:
        b = res["bf16"]
        changed = 100 * b["pseudo_label_changed_fraction"]
        lines.append(f"bf16 frozen forward: LAM max |Δ| {b['lam_max_abs_diff']:.3g}, attention max |Δ| "
                     f"{b['attn_max_abs_diff']:.3g}, pseudo-label pixels changed {changed:.2f}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()
    result = run(args)
    result["total_seconds"] = time.perf_counter() - start
    print(report(result))
    for name, counts in (result["host_syncs"] or {}).items():
        detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
        print(f"host syncs in one '{name}' call: {sum(counts.values())} ({detail or 'none'})")
    for name, table in (result["profiles"] or {}).items():
        print(f"\ntop operators of one '{name}' call:\n{table}")
    print(f"total {result['total_seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
