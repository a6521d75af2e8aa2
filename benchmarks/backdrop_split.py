"""Where TSE gains and loses in a world with unnamed backdrops (docs/organism.md, "Why TSE does not help").

    python benchmarks/backdrop_split.py --seed S --varied-backdrops P [--out work_dirs/organism_ablations]
                                        [--weights organism|FILE] [--images 40]

Run it after ``python benchmarks/organism_ablations.py --seeds S --varied-backdrops P --skip-training`` with the
same arguments: it reads that run's pseudo labels. For the rows full, TSE off and TSE's two parts
(``ablations/tse_shared_only.yaml``, ``ablations/tse_class_specific.yaml``) it prints the pseudo labels' mIoU
(pooled over the images) on the val images whose background is an unnamed backdrop and on those on the named
stuff kinds; with ``--images N`` (default 40, 0: none) also the foreground AUC of TSE's shared part on the first N
images of each group (``benchmarks/tse_geometry.py``'s measure: below 0.5 it marks background).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

import _organism as org

ROWS = ("full", "TSE off", "ablations/tse_shared_only.yaml", "ablations/tse_class_specific.yaml")


def backdrop_flags(seed: int, num_train: int, num_val: int, varied_backdrops: float) -> list[bool]:
    """For each val image of ``make_synthetic_voc(seed=seed, num_train=..., num_val=...)`` in list order, whether
    its background is an unnamed backdrop (the scene is redrawn from its stream; nothing is read from disk)."""
    from excel.organism.synthetic import WORLD_SIZE, voc_scene
    from excel.organism.world import World

    world = World(varied_backdrops=varied_backdrops)
    return [voc_scene(seed, num_train + 1 + k, WORLD_SIZE, world).stuff == [] for k in range(num_val)]


def split_miou(gt_dir: Path, pred_dir: Path, names: Sequence[str], flags: Sequence[bool],
               num_classes: int) -> dict[str, float]:
    """mIoU of the PNG label maps in ``pred_dir`` against ``gt_dir``, pooled over the images of each group:
    {"backdrop": ..., "named": ...} (NaN for an empty group)."""
    from excel.data.voc import load_label
    from excel.evaluation.metrics import ConfusionMatrix

    groups = {True: ConfusionMatrix(num_classes + 1), False: ConfusionMatrix(num_classes + 1)}
    for name, flag in zip(names, flags):
        gt = load_label(gt_dir / f"{name}.png", num_classes)
        pred = load_label(pred_dir / f"{name}.png", num_classes, size=gt.shape)
        groups[flag].update(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(gt.astype(np.int64)))
    counts = {flag: sum(f == flag for f in flags) for flag in groups}
    return {label: (float(groups[flag].compute()["miou"]) if counts[flag] else float("nan"))
            for label, flag in (("backdrop", True), ("named", False))}


def split_auc(cfg: Any, flags: Sequence[bool], images: int) -> dict[str, float]:
    """Foreground AUC of TSE's shared part on the first ``images`` val images of each group."""
    import torch.nn.functional as F
    from torch.utils.data import Subset

    from excel.data import build_dataset
    from excel.model import build_model
    from tse_geometry import patch_auc, text_parts

    clip, fg, _, _, shared = text_parts(cfg)
    model = build_model(cfg, clip, mode="val").eval()
    dataset = build_dataset(cfg, "val", stage="val")
    out = {}
    for label, flag in (("backdrop", True), ("named", False)):
        index = [i for i, f in enumerate(flags) if f == flag][:images]
        if not index:
            out[label] = float("nan")
            continue
        record = patch_auc(model, fg, model.text_bank[:fg.shape[0]], F.normalize(shared, dim=0),
                           Subset(dataset, index), len(index), int(cfg.model.input_size))
        out[label] = record["shared_foreground_auc"]
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    parser = org.world_parser(__doc__.splitlines()[0], "work_dirs/organism_ablations", "(ignored: training-free)")
    parser.add_argument("--images", type=int, default=40, help="images per group for the AUC (0: none)")
    args = parser.parse_args(argv)
    org.quiet()
    if args.varied_backdrops <= 0:
        parser.error("--varied-backdrops must be > 0: a world without backdrops has nothing to split")
    out, data, weights = org.world_run(args)
    names = (data / "lists" / "val.txt").read_text().split()
    flags = backdrop_flags(args.seed, args.num_train, args.num_val, args.varied_backdrops)
    if len(names) != len(flags):
        raise SystemExit(f"{data / 'lists' / 'val.txt'}: {len(names)} images, expected --num-val {args.num_val}")
    cfg = org.organism_config(data, out / "train_full", overrides=[*weights, "tse.enabled=true", "tse.mix=full"])
    num_classes = len(cfg.data.class_names)
    result: dict[str, Any] = {"seed": args.seed, "backdrop_images": sum(flags), "named_images": len(flags) - sum(flags),
                              "miou": {}}
    print(f"seed {args.seed}: {sum(flags)} val images on an unnamed backdrop, {len(flags) - sum(flags)} on named stuff")
    print(f"{'pseudo labels, mIoU':<40s} {'backdrop':>9s} {'named':>9s}")
    for row in ROWS:
        folder = out / ("lam_" + row.replace("/", "_").replace(" ", "_")) / "pseudo_labels"
        if not folder.is_dir():
            raise SystemExit(f"{folder}: not found; run benchmarks/organism_ablations.py --seeds {args.seed} "
                             f"--varied-backdrops {args.varied_backdrops:g} --skip-training first (same --out, "
                             f"--weights, --num-train, --num-val)")
        miou = split_miou(data / "SegmentationClassAug", folder, names, flags, num_classes)
        result["miou"][row] = miou
        print(f"{row:<40s} {100 * miou['backdrop']:9.1f} {100 * miou['named']:9.1f}")
    if args.images > 0:
        result["shared_foreground_auc"] = split_auc(cfg, flags, args.images)
        auc = result["shared_foreground_auc"]
        print(f"{'TSE shared part, foreground AUC':<40s} {auc['backdrop']:9.3f} {auc['named']:9.3f}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
