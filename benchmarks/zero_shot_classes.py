"""Where the organism's zero-shot mAP is lost: per-class AP, and how positives rank by the size of their object.

    python benchmarks/zero_shot_classes.py [--config configs/organism.yaml] [--split val] [key=value ...]

For the config's CLIP and dataset (e.g. ``data.root=DIR`` from ``python tools/make_synthetic.py --root DIR``) this
prints the zero-shot mAP that ``benchmarks/organism_ablations.py`` reports, then each class's AP with its number of
positive images and the median pixel share of the class in them, then, for the positive (image, class) pairs
binned by that share, the mean share of the class's negative images that score below the positive (1: every
positive above every negative). On 100 val images a class has a handful of positives, so one small object can
move a class's AP, and the mAP, by a lot.
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Sequence

import torch

from excel.config import CONFIG_DIR, load_config

AREA_BINS = (0.0, 0.02, 0.05, 0.15, 1.0)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from excel.organism.evaluate import negatives_below, split_zero_shot_scores
    from excel.organism.pretrain import average_precision
    from tse_geometry import bin_label, binned_means

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(CONFIG_DIR / "organism.yaml"))
    parser.add_argument("--split", default="val")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, list(args.overrides))
    scores, labels, areas = split_zero_shot_scores(cfg, args.split)
    ap = average_precision(scores, labels)
    names = list(cfg.data.class_names)
    print(f"zero-shot mAP on {len(scores)} {args.split} images: {100 * float(ap.nanmean()):.1f}")
    per_class = []
    for c, name in enumerate(names):
        pos = labels[:, c] > 0
        median = float(areas[pos, c].median()) if pos.any() else float("nan")
        per_class.append({"class": name, "ap": float(ap[c]), "positives": int(pos.sum()), "median_area": median})
        print(f"  {name:14s} AP {100 * float(ap[c]):5.1f}  positives {int(pos.sum()):3d}  median area {median:.3f}")
    share = negatives_below(scores, labels)
    pos = labels > 0
    bins = binned_means(areas[pos], share[pos], AREA_BINS)
    by_area = [{"area": [lo, hi], "positives": n, "negatives_below": v}
               for (lo, hi), (n, v) in zip(zip(AREA_BINS[:-1], AREA_BINS[1:]), bins)]
    print("positives by their class's pixel share: mean share of negatives scored below them")
    for row in by_area:
        print(f"  {bin_label(*row['area'])}  {row['positives']:4d} positives  {row['negatives_below']:.3f}")
    result = {"map": float(ap.nanmean()), "images": len(scores), "classes": per_class, "by_area": by_area}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
