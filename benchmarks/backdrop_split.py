"""Where TSE gains and loses in a world with unnamed backdrops (docs/organism.md, "Why TSE does not help").

    python benchmarks/backdrop_split.py --seed S --varied-backdrops P [--out work_dirs/organism_ablations]
                                        [--weights organism|FILE] [--images 40] [--segmentation]

Run it after ``python benchmarks/organism_ablations.py --seeds S --varied-backdrops P --skip-training`` with the
same arguments: it reads that run's pseudo labels. For the rows full, TSE off and TSE's two parts
(``ablations/tse_shared_only.yaml``, ``ablations/tse_class_specific.yaml``) it prints the pseudo labels' mIoU
(pooled over the images) on the val images whose background is an unnamed backdrop and on those on the named
stuff kinds; with ``--images N`` (default 40, 0: none) also the foreground AUC of TSE's shared part on the first N
images of each group (``benchmarks/tse_geometry.py``'s measure: below 0.5 it marks background). With
``--segmentation``, also the MS+flip segmentation (no CRF) of each training of that run that has finished
(``organism_ablations.py`` without ``--skip-training``), split the same way, with the share of pixels it gives a
class the image does not hold (per foreground pixel); its logits are kept in
``<run>/train_<name>/segmentation_split/``.
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


def absent_class_share(gt_dir: Path, pred_dir: Path, names: Sequence[str], flags: Sequence[bool],
                       num_classes: int) -> dict[str, float]:
    """Pixels labelled with a class the image does not hold, per foreground pixel of the ground truth, pooled over
    the images of each group (0 for pseudo labels, which know the image's classes; a decoder has to guess them)."""
    from excel.data.voc import load_label

    absent, foreground = {True: 0, False: 0}, {True: 0, False: 0}
    for name, flag in zip(names, flags):
        gt = load_label(gt_dir / f"{name}.png", num_classes)
        pred = load_label(pred_dir / f"{name}.png", num_classes, size=gt.shape)
        valid = gt != 255
        held = np.unique(gt[valid])
        absent[flag] += int((valid & (pred > 0) & ~np.isin(pred, held)).sum())
        foreground[flag] += int((valid & (gt > 0)).sum())
    return {label: (absent[flag] / foreground[flag] if foreground[flag] else float("nan"))
            for label, flag in (("backdrop", True), ("named", False))}


def split_segmentation(cfg: Any, checkpoint: Path, out_dir: Path, names: Sequence[str], flags: Sequence[bool],
                       gt_dir: Path) -> dict[str, dict[str, float]]:
    """:func:`split_miou` ("miou") and :func:`absent_class_share` ("absent") of the argmax of ``checkpoint``'s
    MS+flip logits on val (``tools/infer_seg_voc.py`` with ``infer.save_logits``, no CRF), written to ``out_dir``
    (reused when every image's logits are there)."""
    from PIL import Image

    from excel.engine.segment import segment

    logits = out_dir / "logits"
    if not all((logits / f"{name}.npy").is_file() for name in names):
        seg_cfg = cfg.copy()
        seg_cfg.infer.split, seg_cfg.infer.checkpoint, seg_cfg.infer.crf = "val", str(checkpoint), False
        seg_cfg.infer.save_logits, seg_cfg.infer.output_dir = True, str(out_dir)
        segment(seg_cfg, tool="infer_seg_voc")
    pred_dir = out_dir / "pred"
    pred_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        label = np.load(logits / f"{name}.npy").astype(np.float32).argmax(0).astype(np.uint8)
        Image.fromarray(label).save(pred_dir / f"{name}.png")
    num_classes = len(cfg.data.class_names)
    return {"miou": split_miou(gt_dir, pred_dir, names, flags, num_classes),
            "absent": absent_class_share(gt_dir, pred_dir, names, flags, num_classes)}


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
    parser.add_argument("--segmentation", action="store_true",
                        help="also split the MS+flip segmentation of each finished training of the run")
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
                             f"--backdrop-kinds, --weights, --num-train, --num-val)")
        miou = split_miou(data / "SegmentationClassAug", folder, names, flags, num_classes)
        result["miou"][row] = miou
        print(f"{row:<40s} {100 * miou['backdrop']:9.1f} {100 * miou['named']:9.1f}")
    if args.segmentation:
        result["segmentation"] = {}
        for train_dir in sorted(out.glob("train_*")):
            seg_cfg = org.organism_config(data, train_dir, overrides=weights)
            last = train_dir / "checkpoints" / f"iter_{int(seg_cfg.train.max_iters):07d}.pth"
            if not last.is_file():                  # not finished (yet)
                continue
            row = train_dir.name[len("train_"):].replace("_", " ")
            seg = split_segmentation(seg_cfg, last, train_dir / "segmentation_split", names, flags,
                                     data / "SegmentationClassAug")
            result["segmentation"][row] = seg
            miou, absent = seg["miou"], seg["absent"]
            print(f"{'segmentation MS+flip, ' + row:<40s} {100 * miou['backdrop']:9.1f} {100 * miou['named']:9.1f}")
            print(f"{'  absent-class pixels / foreground':<40s} {absent['backdrop']:9.2f} {absent['named']:9.2f}")
    if args.images > 0:
        result["shared_foreground_auc"] = split_auc(cfg, flags, args.images)
        auc = result["shared_foreground_auc"]
        print(f"{'TSE shared part, foreground AUC':<40s} {auc['backdrop']:9.3f} {auc['named']:9.3f}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
