"""The one command to run whenever a GPU is at hand (``bash benchmarks/gpu_check.sh``; its time on one H200 is
in docs/performance.md).

Stages, each in its own process with its own time limit, so one failure does not hide the others:

    tests       the CUDA tests (``EXCEL_TEST_DEVICE=cuda pytest -m cuda``)
    bench_fp32  ``benchmarks/bench_excel.py --device cuda`` (ViT-B/16 size, batch 4, 320 px)
    bench_bf16  the same with ``--amp bf16``: bf16 max |Δ| of the LAM and pseudo-label agreement with fp32
    train_fp32  a 1-process NCCL torchrun training at ViT-B/16 size on generated data through the LVC switch
    train_bf16  the same with ``train.amp=bf16`` (decoder autocast; the frozen CLIP stays fp32)
    infer       MS + flip segmentation inference (+ pruned CRF) of the fp32 checkpoint on the generated val images
    organism    60 steps of the organism's pretraining recipe (``tools/pretrain_organism.py --device cuda
                --num-workers 9``), half with patch dropout and half on full views

then the projected wall time of the VOC (30k iterations) and COCO (100k) schedules from the measured step times, and
of the organism's whole pretraining (its default steps) from the organism stage's.
Writes ``<out>/gpu_report.json`` and ``<out>/gpu_report.md`` and prints the table.

    python benchmarks/gpu_check.py [--out work_dirs/gpu_check] [--iters 100] [--val-images 50]
    python benchmarks/gpu_check.py --smoke      # the same stages on the CPU with the tiny model (checks the script)

Random-init CLIP weights (no download): the figures are speed, memory and numerical agreement, not accuracy.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(REPO / "work_dirs" / "gpu_check"), help="report and work folder")
    p.add_argument("--iters", type=int, default=100, help="training iterations per precision")
    p.add_argument("--val-images", type=int, default=50, help="generated val images for validation and inference")
    p.add_argument("--train-images", type=int, default=64, help="generated train images")
    p.add_argument("--crf-workers", type=int, default=8, help="CRF processes of the inference stage")
    p.add_argument("--skip", default="", help="comma-separated stages to leave out")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny model, few iterations: checks the script itself")
    return p.parse_args(argv)


class Stages:
    """Runs the stages as subprocesses with time limits and collects what each reports."""

    def __init__(self, out: Path, env: dict[str, str]) -> None:
        self.out, self.env = out, env
        self.results: dict[str, dict[str, Any]] = {}

    def run(self, name: str, cmd: list[str], limit_s: int, env: dict[str, str] | None = None) -> bool:
        log = self.out / f"{name}.log"
        print(f"[gpu_check] {name}: {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        with open(log, "w", encoding="utf-8") as fh:
            try:
                rc = subprocess.run(cmd, cwd=REPO, env={**self.env, **(env or {})}, stdout=fh, stderr=subprocess.STDOUT,
                                    timeout=limit_s).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        seconds = time.perf_counter() - t0
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        self.results[name] = {"rc": rc, "seconds": round(seconds, 1), "log": log.name,
                              "summary": next((line for line in reversed(tail) if " passed" in line), None)}
        ok = rc == 0
        print(f"[gpu_check] {name}: {'ok' if ok else f'FAILED ({rc})'} in {seconds:.0f} s", flush=True)
        if not ok:
            self.results[name]["tail"] = tail
            print("\n".join("    " + line for line in tail), flush=True)
        return ok


def make_data(root: Path, num_train: int, num_val: int, smoke: bool) -> tuple[Path, Path]:
    """Generated VOC-layout data and a random 112-cluster TSE bank (no KMeans, no knowledge base)."""
    import torch

    from excel.organism import make_synthetic_voc

    size = ((48, 64), (48, 64)) if smoke else ((375, 375), (500, 500))
    data = make_synthetic_voc(root / "voc", num_train=num_train, num_val=num_val, num_test=0, size=size, seed=0)
    dim = 32 if smoke else 512
    gen = torch.Generator().manual_seed(0)
    centers = torch.nn.functional.normalize(torch.randn(dim, 112, generator=gen), dim=0)
    flags = torch.zeros(20, 112)
    flags[torch.arange(112) % 20, torch.arange(112)] = 1.0
    bank = root / "bank.pth"
    torch.save([centers, flags], bank)
    return data, bank


def step_figures(work_dir: Path, lvc_start: int) -> dict[str, Any]:
    """Median step seconds before and after the LVC switch (first 5 iterations left out: warm-up)."""
    records = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    before = [r["step_s"] for r in records if 5 <= r["iter"] < lvc_start]
    after = [r["step_s"] for r in records if r["iter"] >= lvc_start + 2]
    val = [json.loads(line) for line in (work_dir / "val.jsonl").read_text().splitlines() if line.strip()]
    first, last = records[0], records[-1]
    return {"iterations": len(records), "step_s_before_lvc": statistics.median(before) if before else None,
            "step_s_after_lvc": statistics.median(after) if after else None,
            "loss_first": first["loss"], "loss_last": last["loss"],
            "finite": all(abs(r["loss"]) < float("inf") for r in records),
            "lvc_iterations": sum(bool(r["lvc"]) for r in records),
            "val": val[-1] if val else None}


def peak_memory(work_dir: Path) -> float | None:
    """Peak CUDA memory (GiB) the training logged, if it did."""
    for line in (work_dir / "train.log").read_text(errors="replace").splitlines()[::-1]:
        if "peak CUDA memory" in line:
            return float(line.split("peak CUDA memory")[1].split("GiB")[0].strip(" :"))
    return None


def organism_projection(history: list[dict[str, Any]], probe_steps: int, steps: int,
                        full_view_steps: float) -> dict[str, float]:
    """Seconds per step with and without patch dropout, and the projected training minutes of a ``steps``-step run.

    ``history`` is the probe run's (``last.pth``), evaluated every ``probe_steps // 6`` steps, with dropout on its
    first half: the dropout figure is read over steps k..3k and the full-view one over 4k..6k (k = probe_steps // 6),
    so the first steps (warm-up) and the switch are left out. The minutes count step time only, as the
    ``seconds`` of the weights' ``meta`` do."""
    k = probe_steps // 6
    at = {int(h["step"]): float(h["seconds"]) for h in history}
    missing = [s for s in (k, 3 * k, 4 * k, 6 * k) if s not in at]
    if k < 1 or missing:
        raise ValueError(f"organism probe: no timing at steps {missing} of {sorted(at)} (probe of {probe_steps} steps)")
    dropout_s = (at[3 * k] - at[k]) / (2 * k)
    full_s = (at[6 * k] - at[4 * k]) / (2 * k)
    dropout_steps = round(steps * (1 - full_view_steps))
    return {"step_s_dropout": dropout_s, "step_s_full": full_s,
            "projected_minutes": (dropout_steps * dropout_s + (steps - dropout_steps) * full_s) / 60}


def projected_hours(step_before: float | None, step_after: float | None, iters: int, lvc_frac: float) -> float | None:
    if step_before is None or step_after is None:
        return None
    return (lvc_frac * step_before + (1 - lvc_frac) * step_after) * iters / 3600


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    from excel.config import load_config

    smoke = args.smoke
    device = "cpu" if smoke else "cuda"
    if not smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible (use --smoke to check the script on the CPU)", file=sys.stderr)
        return 2
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    if smoke:
        env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")
    skip = {s for s in args.skip.split(",") if s}
    stages = Stages(out, env)
    t_start = time.perf_counter()
    info: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if not smoke else "cpu (smoke)",
                            "torch": torch.__version__, "cuda": torch.version.cuda, "smoke": smoke}
    print(f"[gpu_check] {info['device']}, torch {info['torch']}, CUDA {info['cuda']}", flush=True)
    data, bank = make_data(out / "data", args.train_images if not smoke else 8, args.val_images if not smoke else 4,
                           smoke)
    py = sys.executable
    if "tests" not in skip:
        stages.run("tests", [py, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests/test_device.py",
                             "tests/test_par.py"]
                   if not smoke else [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_dist.py"],
                   limit_s=200, env={"EXCEL_TEST_DEVICE": device})
    figures: dict[str, Any] = {}
    for amp in ("none", "bf16"):
        name = "bench_fp32" if amp == "none" else "bench_bf16"
        if name in skip:
            continue
        json_out = out / f"{name}.json"
        cmd = [py, "benchmarks/bench_excel.py", "--device", device, "--repeats", "2" if smoke else "5",
               "--json", str(json_out)] + (["--amp", amp] if amp != "none" else ["--profile"])
        if stages.run(name, cmd, limit_s=600 if smoke else 120) and json_out.is_file():
            figures[name] = json.loads(json_out.read_text())
    iters = 6 if smoke else args.iters
    lvc_start = iters // 2
    model = (["--config", "configs/test_tiny.yaml"] if smoke else
             ["model.clip.name=ViT-B-16-quickgelu", "model.clip.pretrained=null"])
    common = model + [f"data.root={data}", f"tse.bank_file={bank}", f"train.max_iters={iters}",
                      f"lvc.start_iter={lvc_start}", f"lvc.attn_pred_start_iter={lvc_start}",
                      f"train.aff_label_switch_iter={int(iters * 0.8)}", f"train.eval_iters={iters}",
                      "train.ckpt_start_iter=0", "train.log_iters=10", "run.tensorboard=false",
                      f"run.device={device}", f"data.num_workers={0 if smoke else 6}", "run.vis_samples=0"]
    torchrun = [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    for amp in ("none", "bf16"):
        name = "train_fp32" if amp == "none" else "train_bf16"
        if name in skip:
            continue
        work = out / name
        if stages.run(name, torchrun + ["scripts/train_voc.py", *common, f"run.work_dir={work}", f"train.amp={amp}"],
                      limit_s=900 if smoke else 240):
            figures[name] = step_figures(work, lvc_start)
            figures[name]["peak_memory_gib"] = peak_memory(work)
    ckpts = sorted((out / "train_fp32").glob("**/iter_*.pth"))
    if "infer" not in skip and ckpts:
        infer_dir = out / "infer"
        ok = stages.run("infer", torchrun + ["tools/infer_seg_voc.py", *common, f"infer.checkpoint={ckpts[-1]}",
                                             "infer.split=val", f"infer.output_dir={infer_dir}", "infer.crf=true",
                                             f"infer.crf_workers={args.crf_workers}"],
                        limit_s=900 if smoke else 180)
        if ok and (infer_dir / "results.json").is_file():
            res = json.loads((infer_dir / "results.json").read_text())
            figures["infer"] = {"num_images": res["num_images"], "timing": res["timing"], "scales": res["scales"],
                                "peak_memory_gib": res.get("peak_memory_gib")}
    if "organism" not in skip:
        from excel.organism.pretrain import PretrainConfig

        probe, work = (6 if smoke else 60), out / "organism"
        cmd = [py, "tools/pretrain_organism.py", "--device", device, "--num-workers", "0" if smoke else "9",
               "--steps", str(probe), "--warmup", str(max(1, probe // 10)), "--full-view-steps", "0.5",
               "--eval-every", str(probe // 6), "--eval-images", "0", "--ckpt-every", str(probe),
               "--work-dir", str(work), "--export", str(work / "organism.pt")]
        cmd += ["--batch-size", "8", "--local-images", "4"] if smoke else []
        if work.exists():
            shutil.rmtree(work)
        if stages.run("organism", cmd, limit_s=600 if smoke else 300):
            history = torch.load(work / "last.pth", map_location="cpu", weights_only=False)["history"]
            defaults = PretrainConfig()
            figures["organism"] = organism_projection(history, probe, defaults.steps, defaults.full_view_steps)
    voc = load_config(REPO / "configs" / "voc.yaml")
    coco = load_config(REPO / "configs" / "coco.yaml")
    projection = {}
    if "train_fp32" in figures:
        for name, cfg in (("voc", voc), ("coco", coco)):
            total = int(cfg.train.max_iters)
            frac = int(cfg.lvc.start_iter) / total
            for amp in ("fp32", "bf16"):
                f = figures.get(f"train_{amp}")
                if f:
                    projection[f"{name}_{total // 1000}k_{amp}_hours"] = projected_hours(
                        f["step_s_before_lvc"], f["step_s_after_lvc"], total, frac)
    report = {**info, "stages": stages.results, "figures": figures, "projection": projection,
              "total_seconds": round(time.perf_counter() - t_start, 1)}
    (out / "gpu_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    md = markdown(report)
    (out / "gpu_report.md").write_text(md, encoding="utf-8")
    print(md)
    return 0 if all(r["rc"] == 0 for r in stages.results.values()) else 1


def markdown(r: dict[str, Any]) -> str:
    """The report as a markdown table (what the README quotes)."""
    f, p = r["figures"], r["projection"]
    num = lambda v, fmt="{:.3f}": "n/a" if v is None else fmt.format(v)  # noqa: E731
    lines = [f"GPU check on **{r['device']}** (torch {r['torch']}, CUDA {r['cuda']}), {r['total_seconds']:.0f} s",
             "", "| stage | result | seconds |", "|---|---|---:|"]
    lines += [f"| {k} | {'ok' if v['rc'] == 0 else 'FAILED: ' + str(v['rc'])}"
              f"{' (' + v['summary'].strip('= ') + ')' if v.get('summary') else ''} | {v['seconds']:.0f} |"
              for k, v in r["stages"].items()]
    lines += ["", "| figure | fp32 | bf16 |", "|---|---:|---:|"]
    b32, b16 = f.get("bench_fp32", {}), f.get("bench_bf16", {})
    for label, key in (("bare CLIP forward, batch 4 (s)", "bare"), ("ExCEL.encode, batch 4 (s)", "encode"),
                       ("train step before LVC (s)", "step"), ("train step after LVC (s)", "step_lvc")):
        lines.append(f"| bench: {label} | {num(b32.get('seconds', {}).get(key))} | "
                     f"{num(b16.get('seconds', {}).get(key))} |")
    sec32 = b32.get("seconds", {})
    if sec32.get("step") is not None and "optimiser" in sec32:
        rest = sec32["step"] - sum(sec32[k] for k in ("encode", "pseudo", "decoder", "optimiser"))
        lines.append(f"| bench: step split, encode / pseudo labels / decoder fwd+bwd / optimiser / rest (s) | "
                     f"{' / '.join(num(sec32[k]) for k in ('encode', 'pseudo', 'decoder', 'optimiser'))} / "
                     f"{num(rest)} | |")
    ops, syncs = b32.get("operators") or {}, (b32.get("host_syncs") or {}).get("step")
    if ops:
        lines.append(f"| bench: ATen operators / host syncs of a step that does not log | {ops.get('here')} / "
                     f"{sum(syncs.values()) if syncs is not None else 'n/a'} | |")
    tf = b32.get("tf32") or {}
    if tf:
        lines.append(f"| TF32 frozen forward (run.tf32, the fp32 column) against true fp32: LAM max abs diff / "
                     f"pseudo-label pixels agreeing | {num(tf.get('lam_max_abs_diff'), '{:.3g}')} / "
                     f"{num(100 * tf['pseudo_label_agreement'], '{:.2f}%')} | |")
    s32, s16 = b32.get("seconds", {}).get("step"), b16.get("seconds", {}).get("step")
    lines.append(f"| bench: images/s, training step (batch 4) | {num(s32 and 4 / s32, '{:.1f}')} | "
                 f"{num(s16 and 4 / s16, '{:.1f}')} |")
    m32, m16 = b32.get("peak_memory_bytes", {}).get("step"), b16.get("peak_memory_bytes", {}).get("step")
    lines.append(f"| bench: peak memory, train step (GiB) | {num(m32 and m32 / 2 ** 30, '{:.2f}')} | "
                 f"{num(m16 and m16 / 2 ** 30, '{:.2f}')} |")
    bf = b16.get("bf16") or {}
    changed = bf.get("pseudo_label_changed_fraction")
    agree = None if changed is None else 100 * (1 - changed)
    lines.append(f"| bf16 frozen forward: LAM max abs diff / pseudo-label pixels agreeing | | "
                 f"{num(bf.get('lam_max_abs_diff'), '{:.3g}')} / {num(agree, '{:.2f}%')} |")
    t32, t16 = f.get("train_fp32", {}), f.get("train_bf16", {})
    for label, key in (("torchrun (nccl) step before LVC (s)", "step_s_before_lvc"),
                       ("torchrun (nccl) step after LVC (s)", "step_s_after_lvc"),
                       ("torchrun peak memory (GiB)", "peak_memory_gib")):
        lines.append(f"| {label} | {num(t32.get(key))} | {num(t16.get(key))} |")
    lines.append(f"| torchrun loss first -> last | {num(t32.get('loss_first'))} -> {num(t32.get('loss_last'))} | "
                 f"{num(t16.get('loss_first'))} -> {num(t16.get('loss_last'))} |")
    inf = f.get("infer", {})
    if inf:
        t = inf["timing"]
        lines.append(f"| MS+flip inference, {inf['num_images']} images: model / wall s per image | "
                     f"{num(t['model_seconds_per_image'])} / {num(t['wall_seconds_per_image'])} | |")
        lines.append(f"| MS+flip inference peak memory (GiB) | {num(inf.get('peak_memory_gib'), '{:.2f}')} | |")
    for k, v in p.items():
        lines.append(f"| projected {k.replace('_hours', '')} training (h) | {num(v, '{:.1f}')} | |")
    org = f.get("organism")
    if org:
        lines.append(f"| organism pretraining step, patch dropout / full views (s) | {num(org['step_s_dropout'])} / "
                     f"{num(org['step_s_full'])} | |")
        lines.append(f"| projected organism pretraining, default steps (min) | "
                     f"{num(org['projected_minutes'], '{:.1f}')} | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
