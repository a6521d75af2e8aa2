"""Seconds per image of multi-scale + flip segmentation inference and of the dense CRF (algorithm.md §9.2, §9.3).

    python benchmarks/bench_inference.py [--dataset voc coco] [--repeats 3] [--size 375 500] [--threads 2]
                                         [--crf-workers 8] [--skip-model]
                                         [--trained CKPT --data ROOT [--images N] [--split val]]

ViT-B/16 random init (model.clip.pretrained=null), the dataset config's scales and flip rule, one random image of
the given size; the CRF runs on the softmax of the averaged logits at full resolution with the reference settings.
Then the CRF alone, full against pruned (``infer.crf_params.prune_below``), at 21 and 81 labels on sharpened random
logits where background and three classes dominate, with the projected CRF wall time of COCO val (40,137 images) on
``--crf-workers`` processes, and a fit of the CRF's cost as a fixed part plus a part per label (the floor of
what pruning can reach). With ``--trained``, the same full-against-pruned comparison on the MS+flip outputs of
a trained decoder over ``--images`` images of a generated dataset (``tools/make_synthetic.py``; the organism run of
``benchmarks/organism_eval.py`` leaves both), the realistic case.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from excel.config import CONFIG_DIR, load_config
from excel.engine.checkpoint import build_seeded_model
from excel.engine.inference import logit_size, multiscale_logits
from excel.evaluation import CRF_DEFAULTS, dense_crf
from excel.evaluation.crf import kept_labels

COCO_VAL_IMAGES = 40137


def many_label_scores(num_classes: int, h: int, w: int, seed: int = 0, sharp: float = 3.0,
                      box: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """An (H, W, 3) uint8 image and (C, H, W) softmax scores: smooth random logits (8x8-pixel cells), background and
    three other classes lifted everywhere and each winning in its own ``box`` (default a third of each side),
    sharpened by ``sharp``. tests/test_crf.py draws its cases from here too."""
    rng = np.random.default_rng(seed)
    bh, bw = box if box is not None else (h // 3, w // 3)
    lab = np.zeros((h, w), dtype=np.int64)
    dominant = np.concatenate([[0], rng.choice(np.arange(1, num_classes), 3, replace=False)])
    for c in dominant[1:]:
        y, x = rng.integers(0, h - bh), rng.integers(0, w - bw)
        lab[y:y + bh, x:x + bw] = c
    image = np.clip(rng.integers(0, 256, (num_classes, 3))[lab] + rng.normal(0, 20, (h, w, 3)), 0, 255)
    logits = rng.normal(0, 1, (num_classes, h // 8 + 1, w // 8 + 1)).repeat(8, 1).repeat(8, 2)[:, :h, :w]
    logits = logits + rng.normal(0, 0.3, (num_classes, h, w))
    logits[dominant] += 4.0
    logits[lab, np.arange(h)[:, None], np.arange(w)] += 3.0
    z = sharp * logits
    p = np.exp(z - z.max(0))
    return image.astype(np.uint8), (p / p.sum(0)).astype(np.float32)


def crf_pruning(h: int, w: int, repeats: int, workers: int) -> dict[str, dict[str, float]]:
    """Per-image CRF seconds, full and pruned, at 21 and 81 labels; pixel agreement; projected COCO val hours."""
    prune_below = CRF_DEFAULTS["prune_below"]
    out: dict[str, dict[str, float]] = {}
    for num_classes in (21, 81):
        rgb, probs = many_label_scores(num_classes, h, w)
        full_q, pruned_q = dense_crf(rgb, probs), dense_crf(rgb, probs, prune_below=prune_below)
        full = _median_time(lambda: dense_crf(rgb, probs), repeats)
        pruned = _median_time(lambda: dense_crf(rgb, probs, prune_below=prune_below), repeats)
        row = {"full_s": full, "pruned_s": pruned, "kept": float(len(kept_labels(probs, prune_below))),
               "agreement": float((full_q.argmax(0) == pruned_q.argmax(0)).mean()),
               "coco_val_full_h": full * COCO_VAL_IMAGES / workers / 3600,
               "coco_val_pruned_h": pruned * COCO_VAL_IMAGES / workers / 3600}
        out[f"crf_{num_classes}"] = row
        print(f"CRF {num_classes} labels, {h}x{w}: full {full:.2f} s/image, pruned (prune_below {prune_below}, "
              f"{int(row['kept'])} kept) {pruned:.2f} s/image, argmax agreement {100 * row['agreement']:.3f} %; "
              f"COCO val ({COCO_VAL_IMAGES} images) on {workers} CRF workers: full {row['coco_val_full_h']:.2f} h, "
              f"pruned {row['coco_val_pruned_h']:.2f} h", flush=True)
    return out


def crf_cost_model(h: int, w: int, repeats: int, counts: Sequence[int] = (2, 4, 8, 16)) -> dict[str, float]:
    """Fit the CRF's seconds per image as ``fixed + per_label * K`` over ``counts`` labels and print what pruning
    can reach at best: the fixed part (building the Gaussian and bilateral lattices, the per-pass overhead) does
    not shrink with the labels, so even background plus one class costs ``fixed + 2 * per_label``."""
    rgb, probs = many_label_scores(max(counts), h, w)
    times = [_median_time(lambda k=k: dense_crf(rgb, probs[:k]), repeats) for k in counts]
    per_label, fixed = np.polyfit(np.asarray(counts, float), np.asarray(times), 1)
    row = {"fixed_s": float(fixed), "per_label_s": float(per_label)}
    for num_classes in (21, 81):
        row[f"best_ratio_{num_classes}"] = float((fixed + 2 * per_label) / (fixed + num_classes * per_label))
    print(f"CRF cost model, {h}x{w}: {fixed:.2f} s whatever the labels + {per_label:.3f} s per label (fit over "
          f"{list(counts)} labels: {', '.join(f'{t:.2f}' for t in times)} s); background plus one class is the "
          f"least pruning can leave: {row['best_ratio_21']:.2f}x the full CRF at 21 labels, "
          f"{row['best_ratio_81']:.2f}x at 81", flush=True)
    return row


def trained_crf_pruning(checkpoint: str, data_root: str, split: str, images: int) -> dict[str, float]:
    """Full against pruned CRF on a trained decoder's MS+flip probabilities: agreement and seconds per image."""
    from excel.data import build_dataset
    from excel.engine.cli import config_for_checkpoint
    from excel.engine.checkpoint import load_trained_model
    from excel.engine.inference import upsample_logits
    from excel.data.transforms import to_uint8_rgb

    cfg = config_for_checkpoint(checkpoint, overrides=[f"data.root={data_root}", "run.device=cpu"])
    model = load_trained_model(cfg, checkpoint, torch.device("cpu"), mode=split)
    dataset = build_dataset(cfg, split, stage="val")
    prune_below = CRF_DEFAULTS["prune_below"]
    same = total = 0
    full_s = pruned_s = kept = 0.0
    n = min(images, len(dataset))
    for i in range(n):
        item = dataset[i]
        image = item["image"][None]
        h, w = image.shape[-2:]
        small = multiscale_logits(model, image, int(cfg.model.input_size), list(cfg.infer.scales),
                                  bool(cfg.infer.flip_at_unit_scale), logit_size(h, w, cfg.infer.logit_scale))
        probs = torch.softmax(upsample_logits(small, (h, w)), dim=0).numpy()
        rgb = to_uint8_rgb(image[0], cfg.data.augment.mean, cfg.data.augment.std)
        t0 = time.perf_counter()
        full = dense_crf(rgb, probs).argmax(0)
        t1 = time.perf_counter()
        pruned = dense_crf(rgb, probs, prune_below=prune_below).argmax(0)
        t2 = time.perf_counter()
        full_s, pruned_s = full_s + t1 - t0, pruned_s + t2 - t1
        same, total = same + int((full == pruned).sum()), total + full.size
        kept += len(kept_labels(probs, prune_below))
    row = {"images": n, "labels": int(probs.shape[0]), "kept_mean": kept / n, "full_s": full_s / n,
           "pruned_s": pruned_s / n, "agreement": same / total}
    print(f"trained decoder ({checkpoint}), {n} {split} images, {row['labels']} labels: full CRF "
          f"{row['full_s']:.2f} s/image, pruned ({row['kept_mean']:.1f} labels kept on average) "
          f"{row['pruned_s']:.2f} s/image ({row['pruned_s'] / row['full_s']:.2f} x), pixel agreement "
          f"{100 * row['agreement']:.3f} %", flush=True)
    return row


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", nargs="+", default=["voc", "coco"], choices=["voc", "coco"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, nargs=2, default=[375, 500], metavar=("H", "W"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--crf-workers", type=int, default=8, help="CRF processes for the COCO val projection")
    parser.add_argument("--skip-model", action="store_true", help="time the CRF pruning only")
    parser.add_argument("--trained", default=None, help="a trained checkpoint: pruning on its real outputs")
    parser.add_argument("--data", default=None, help="the generated dataset root for --trained")
    parser.add_argument("--split", default="val")
    parser.add_argument("--images", type=int, default=20, help="images for --trained")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    h, w = args.size
    results: dict[str, dict[str, float]] = {}
    for name in [] if args.skip_model else args.dataset:
        cfg = load_config(CONFIG_DIR / f"{name}.yaml", ["model.clip.pretrained=null", "tse.enabled=false"])
        model = build_seeded_model(cfg, mode="val").eval()
        image = torch.randn(1, 3, h, w)
        out_size = logit_size(h, w, cfg.infer.logit_scale)
        run = lambda: multiscale_logits(model, image, int(cfg.model.input_size), list(cfg.infer.scales),  # noqa: E731
                                        bool(cfg.infer.flip_at_unit_scale), out_size)
        run()  # warm-up
        ms = _median_time(run, args.repeats)
        logits = F.interpolate(run()[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        probs = logits.softmax(0).numpy()
        rgb = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
        crf = _median_time(lambda: dense_crf(rgb, probs), args.repeats)
        results[name] = {"ms_flip_s_per_image": ms, "crf_s_per_image": crf}
        print(f"{name}: scales {list(cfg.infer.scales)}, flip at 1.0 {cfg.infer.flip_at_unit_scale}, "
              f"{probs.shape[0]} classes, {h}x{w}: MS+flip {ms:.2f} s/image, CRF {crf:.2f} s/image", flush=True)
    results.update(crf_pruning(h, w, args.repeats, args.crf_workers))
    results["crf_cost_model"] = crf_cost_model(h, w, args.repeats)
    if args.trained:
        if not args.data:
            parser.error("--trained needs --data (the dataset root the checkpoint's classes belong to)")
        results["trained"] = trained_crf_pruning(args.trained, args.data, args.split, args.images)
    return results


if __name__ == "__main__":
    main()
