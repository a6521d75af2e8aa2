"""Seconds per image of multi-scale + flip segmentation inference and of the dense CRF (algorithm.md §9.2, §9.3).

    python benchmarks/bench_inference.py [--dataset voc coco] [--repeats 3] [--size 375 500] [--threads 2]

ViT-B/16 random init (model.clip.pretrained=null), the dataset config's scales and flip rule, one random image of
the given size; the CRF runs on the softmax of the averaged logits at full resolution with the reference settings.
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
from excel.engine.inference import build_seeded_model, logit_size, multiscale_logits
from excel.evaluation import dense_crf


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
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    h, w = args.size
    results: dict[str, dict[str, float]] = {}
    for name in args.dataset:
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
    return results


if __name__ == "__main__":
    main()
