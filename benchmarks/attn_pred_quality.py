"""What the decoder's predicted affinity Q (attn_pred) is worth at each checkpoint of a training run.

    python benchmarks/attn_pred_quality.py --checkpoints W/checkpoints/iter_*.pth [--split val] [--images 100]
                                           [--config configs/organism.yaml] [key=value ...]

The in-training validation scores the pseudo labels with Q (algorithm.md §5.1: Q picks the attention layers and
multiplies their mean), so its pseudo-label curve moves only through Q: the frozen CLIP's class maps and attention
are the same at every iteration. For each checkpoint this prints, on the first ``--images`` images of the split:

- the pseudo labels' mIoU with Q and without it (the same class maps and attention; Q = None is the training-free
  label), and their difference, Q's worth;
- how well Q tells patch pairs of one class from pairs of two classes (AUC, mean over images; 0.5 = no better than
  chance), against the ground truth and against the training-free pseudo labels the decoder learns from; the
  same AUC of the attention mean Ā that Q multiplies is printed once, as the yardstick;
- the share of Q's same-pair mass that falls on pairs the pseudo labels join but the ground truth does not;
- Q's two roles apart: the pseudo labels with only Q's choice of layers (the chosen layers' mean, not multiplied
  by Q) and with only Q's product (the mean of every affinity layer, times Q).

A Q that follows the pseudo labels more closely than the ground truth has learned the pseudo labels' mistakes.
Each image goes through the model alone (Q is normalised by its own Gram mean; the validation batches images, so
its figures differ in the last decimals). A patch has a label when at least half of its pixels do.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm import tqdm

from excel.cam.affinity import attention_affinity
from excel.config import CONFIG_DIR, load_config
from excel.text.analysis import rank_auc


def pair_auc(values: torch.Tensor, labels: torch.Tensor) -> float | None:
    """AUC of a (P, P) pair score for "same label" among the labelled patches (labels (P,), -1 = left out), over the
    pairs i < j; None when the image has no pair of each kind."""
    keep = (labels >= 0).nonzero().flatten()
    if keep.numel() < 2:
        return None
    i, j = torch.triu_indices(keep.numel(), keep.numel(), offset=1)
    a, b = keep[i], keep[j]
    same = labels[a] == labels[b]
    if bool(same.all()) or not bool(same.any()):
        return None
    return rank_auc(values[a, b], same)


def false_join_share(q: torch.Tensor, gt: torch.Tensor, pseudo: torch.Tensor) -> float | None:
    """Of Q's mass on pairs the pseudo labels join (i != j, both labelled), the share on pairs the ground truth
    splits; None when the pseudo labels join no labelled pair."""
    keep = (gt >= 0) & (pseudo >= 0)
    joined = (pseudo[:, None] == pseudo[None, :]) & keep[:, None] & keep[None, :]
    joined.fill_diagonal_(False)
    total = float(q[joined].sum())
    if total == 0:
        return None
    wrong = joined & (gt[:, None] != gt[None, :])
    return float(q[wrong].sum()) / total


def _layer_choice_only(encoded: Any, layers: Sequence[int], q: torch.Tensor) -> torch.Tensor:
    """The affinity source with Q's choice of layers but without its product: the chosen layers' mean."""
    return attention_affinity(encoded.attn, layers, q) / q


def _product_only(encoded: Any, layers: Sequence[int], q: torch.Tensor) -> torch.Tensor:
    """The affinity source with Q's product but without its choice of layers: every layer's mean times Q."""
    return attention_affinity(encoded.attn, layers) * q


def _mean(values: list[float | None]) -> float:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else float("nan")


@torch.no_grad()
def measure(cfg, checkpoint: str | None, split: str, images: int) -> dict[str, Any]:
    """The figures above for one checkpoint (None: the random decoder of a fresh model)."""
    from attention_locality import patch_labels
    from excel.cam import PseudoLabeler
    from excel.data import build_dataset
    from excel.engine.checkpoint import load_trained_model
    from excel.engine.inference import resize_square
    from excel.evaluation import ConfusionMatrix

    device = torch.device("cpu")
    model = load_trained_model(cfg, checkpoint, device, mode="val")
    labeler = PseudoLabeler.from_config(cfg, "val").to(device)
    dataset = build_dataset(cfg, split, stage="val")
    count = min(images, len(dataset))
    num_classes = len(cfg.data.class_names) + 1
    with_q, without_q = ConfusionMatrix(num_classes, device=device), ConfusionMatrix(num_classes, device=device)
    choice_only, product_only = ConfusionMatrix(num_classes, device=device), ConfusionMatrix(num_classes, device=device)
    choice_labeler, product_labeler = (PseudoLabeler.from_config(cfg, "val").to(device) for _ in range(2))
    choice_labeler.source, product_labeler.source = _layer_choice_only, _product_only
    size = int(cfg.model.input_size)
    auc_gt, auc_pseudo, auc_attn, false_join = [], [], [], []
    name = Path(checkpoint).name if checkpoint else "random decoder"
    for index in tqdm(range(count), desc=name, dynamic_ncols=True, leave=False):
        item = dataset[index]
        label = item["label"]
        x = resize_square(item["image"][None].to(device), size)
        out = model(x)
        cls = item["cls_label"][None].to(device)
        q = out.attn_pred
        plain = labeler(out.encoded, cls, x, label.shape[-2:])
        with_q.update(labeler(out.encoded, cls, x, label.shape[-2:], q), label[None])
        without_q.update(plain, label[None])
        choice_only.update(choice_labeler(out.encoded, cls, x, label.shape[-2:], q), label[None])
        product_only.update(product_labeler(out.encoded, cls, x, label.shape[-2:], q), label[None])
        grid = int(round(q.shape[-1] ** 0.5))
        gt = patch_labels(label, size, grid)
        pseudo = patch_labels(plain[0].cpu(), size, grid)
        auc_gt.append(pair_auc(q[0], gt))
        auc_pseudo.append(pair_auc(q[0], pseudo))
        auc_attn.append(pair_auc(attention_affinity(out.encoded.attn, list(cfg.cam.affinity_layers))[0], gt))
        false_join.append(false_join_share(q[0], gt, pseudo))
    return {"checkpoint": name, "images": count,
            "pseudo_miou_with_q": float(with_q.compute()["miou"]),
            "pseudo_miou_without_q": float(without_q.compute()["miou"]),
            "pseudo_miou_layer_choice_only": float(choice_only.compute()["miou"]),
            "pseudo_miou_product_only": float(product_only.compute()["miou"]),
            "q_auc_ground_truth": _mean(auc_gt), "q_auc_pseudo_labels": _mean(auc_pseudo),
            "attention_auc_ground_truth": _mean(auc_attn), "q_false_join_share": _mean(false_join)}


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(CONFIG_DIR / "organism.yaml"))
    parser.add_argument("--checkpoints", nargs="+", required=True, help="trained checkpoints, in training order")
    parser.add_argument("--split", default="val")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = parser.parse_args(argv)
    # key=value overrides written after the checkpoints land in --checkpoints: take them back
    moved = [a for a in args.checkpoints if "=" in a and not Path(a).is_file()]
    args.checkpoints = [a for a in args.checkpoints if a not in moved]
    args.overrides = [*args.overrides, *moved]
    if not args.checkpoints:
        raise SystemExit("--checkpoints: expected at least one checkpoint file")
    for path in args.checkpoints:
        if not Path(path).is_file():
            raise SystemExit(f"--checkpoints: {path} is not a file")
    rows = []
    for path in args.checkpoints:
        torch.manual_seed(0)
        rows.append(measure(load_config(args.config, list(args.overrides)), path, args.split, args.images))
    print(f"attn_pred (Q) at each checkpoint, {rows[0]['images']} {args.split} images; attention mean Ā: pair AUC "
          f"{100 * rows[0]['attention_auc_ground_truth']:.1f} against the ground truth")
    print("| checkpoint | pseudo labels with Q | without Q | Q's worth | Q pair AUC, ground truth | "
          "Q pair AUC, pseudo labels | Q mass on falsely joined pairs | Q's layer choice only | Q's product only |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['checkpoint']} | {100 * r['pseudo_miou_with_q']:.1f} | {100 * r['pseudo_miou_without_q']:.1f} | "
              f"{100 * (r['pseudo_miou_with_q'] - r['pseudo_miou_without_q']):+.1f} | "
              f"{100 * r['q_auc_ground_truth']:.1f} | {100 * r['q_auc_pseudo_labels']:.1f} | "
              f"{100 * r['q_false_join_share']:.1f} % | {100 * r['pseudo_miou_layer_choice_only']:.1f} | "
              f"{100 * r['pseudo_miou_product_only']:.1f} |")
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    main()
