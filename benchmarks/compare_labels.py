"""Compare two folders of label maps (pseudo labels or predictions) against the ground truth: each folder's mIoU,
background precision and recall, mean foreground precision and recall, and the per-image mIoU of both grouped by
how much of the image is foreground, to see where one setting wins and the other loses.

    python benchmarks/compare_labels.py --pair GT_DIR A_DIR B_DIR [--pair GT_DIR A_DIR B_DIR ...]
                                        [--edges 0 0.15 0.25 0.35 0.5 1.01] [--num-classes 21] [--json OUT]

Each ``--pair`` names a ground-truth folder (e.g. ``<data>/SegmentationClassAug``) and two folders of PNG label maps
of the same images (e.g. ``<out>/pseudo_labels`` of two ``tools/infer_lam.py`` runs); several pairs (e.g. one per
world seed) are pooled. Every image of A must be in B and in the ground truth; a missing or corrupt map is named.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from excel.data.voc import load_label
from excel.evaluation.metrics import ConfusionMatrix, binned_difference, foreground_share, image_miou
from excel.utils.io import atomic_write_json

EDGES = (0.0, 0.15, 0.25, 0.35, 0.5, 1.01)


def compare(pairs: Sequence[tuple[str | Path, str | Path, str | Path]], num_classes: int = 21,
            edges: Sequence[float] = EDGES) -> dict[str, Any]:
    """Scores of label folders A and B against the ground truth, pooled over ``pairs`` of (gt, a, b) folders:
    {"a"/"b": {miou, bg_precision, bg_recall, fg_precision, fg_recall}, "bins": binned_difference(...) of the
    per-image mIoU, A first, "images": count}."""
    matrices = {"a": ConfusionMatrix(num_classes), "b": ConfusionMatrix(num_classes)}
    shares, scores = [], {"a": [], "b": []}
    for gt_dir, a_dir, b_dir in pairs:
        names = sorted(p.name for p in Path(a_dir).glob("*.png"))
        if not names:
            raise FileNotFoundError(f"{a_dir}: no PNG label maps")
        for name in names:
            gt = load_label(Path(gt_dir) / name, num_classes - 1).astype(np.int64)
            shares.append(foreground_share(gt))
            for key, folder in (("a", a_dir), ("b", b_dir)):
                pred = load_label(Path(folder) / name, num_classes - 1).astype(np.int64)
                matrices[key].update(torch.from_numpy(pred), torch.from_numpy(gt))
                scores[key].append(image_miou(pred, gt))
    out: dict[str, Any] = {"images": len(shares)}
    for key, cm in matrices.items():
        s = cm.compute()
        out[key] = {"miou": s["miou"], "bg_precision": float(s["precision"][0]), "bg_recall": float(s["recall"][0]),
                    "fg_precision": float(np.nanmean(s["precision"][1:])),
                    "fg_recall": float(np.nanmean(s["recall"][1:]))}
    out["bins"] = binned_difference(shares, scores["a"], scores["b"], edges)
    return out


def print_comparison(result: dict[str, Any], names: tuple[str, str] = ("A", "B")) -> None:
    """The table of :func:`compare`'s result, in %."""
    print(f"{result['images']} images\n")
    print(f"| labels | mIoU | bg precision | bg recall | fg precision | fg recall |\n|---|---:|---:|---:|---:|---:|")
    for key, name in zip(("a", "b"), names):
        r = result[key]
        print(f"| {name} | {100 * r['miou']:.1f} | {100 * r['bg_precision']:.1f} | {100 * r['bg_recall']:.1f} | "
              f"{100 * r['fg_precision']:.1f} | {100 * r['fg_recall']:.1f} |")
    print(f"\n| foreground share of the image | images | image mIoU {names[0]} | image mIoU {names[1]} | "
          f"{names[0]} - {names[1]} |\n|---|---:|---:|---:|---:|")
    for b in result["bins"]:
        values = " | ".join("-" if b["count"] == 0 else f"{100 * b[k]:+.1f}" if k == "difference" else
                            f"{100 * b[k]:.1f}" for k in ("a", "b", "difference"))
        print(f"| {100 * b['lo']:.0f}-{min(100 * b['hi'], 100):.0f} % | {b['count']} | {values} |")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", nargs=3, action="append", required=True, metavar=("GT", "A", "B"),
                        help="ground-truth folder and two label folders of the same images (repeatable)")
    parser.add_argument("--edges", type=float, nargs="+", default=list(EDGES),
                        help="bin edges of the foreground share (increasing)")
    parser.add_argument("--num-classes", type=int, default=21, help="classes with background (VOC 21, COCO 81)")
    parser.add_argument("--names", nargs=2, default=("A", "B"), help="what to call the two folders")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    if any(b <= a for a, b in zip(args.edges, args.edges[1:])):
        raise SystemExit(f"--edges {args.edges}: expected increasing values")
    result = compare([tuple(p) for p in args.pair], args.num_classes, args.edges)
    print_comparison(result, tuple(args.names))
    if args.json:
        atomic_write_json(Path(args.json), json.loads(json.dumps(result)))
    return result


if __name__ == "__main__":
    main()
