"""Ablations in miniature on the model organism: one table of training-free pseudo-label mIoU (full, TSE off, SVC
off, affinity refinement off, PAR off, and every configs/ablations/ file) and of segmentation mIoU after the
standard organism training (full, LVC off, affinity loss off).

    python benchmarks/organism_ablations.py [--seed 2026] [--out work_dirs/organism_ablations] [--skip-training]
                                            [--object-scale 1.0] [--weights organism|FILE]

About 30 minutes on 2 CPU cores (three trainings; 20 with --full-checkpoint); --skip-training gives the
training-free half in about 10.
"""
from __future__ import annotations

import json
from typing import Sequence

import _organism as org
from omegaconf import OmegaConf

from excel.config import CONFIG_DIR

SWITCHES = {"full": [], "TSE off": ["tse.enabled=false"], "SVC off": ["model.svc.enabled=false"],
            "affinity refinement off": ["cam.affinity_refine=false"], "PAR off": ["cam.par.num_iter=0"]}
# keys that change only training, not the training-free pseudo labels
TRAINING_ONLY = ("lvc.", "loss.", "train.", "optim.", "quirks.crop_without_gt", "quirks.decoder_clean_features",
                 "quirks.per_sample_batch_mean")
TRAINING = {"full": [], "LVC off": ["lvc.enabled=false"], "affinity loss off": ["loss.aff_weight=0.0"]}


def _flatten(node: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    parser = org.world_parser(__doc__.splitlines()[0], "work_dirs/organism_ablations", "training-free rows only")
    parser.add_argument("--full-checkpoint", default=None,
                        help="a checkpoint of the standard training on the same data (e.g. from organism_eval.py) "
                             "to score instead of training the full row again")
    args = parser.parse_args(argv)
    org.quiet()
    out, data, weights = org.world_run(args)
    rows: list[tuple[str, str, float]] = []
    runs = [(name, [], overrides) for name, overrides in SWITCHES.items()]
    runs += [(f"ablations/{p.name}", [p], []) for p in sorted((CONFIG_DIR / "ablations").glob("*.yaml"))]
    full_flat = None
    for name, layers, overrides in runs:
        slug = name.replace("/", "_").replace(" ", "_")
        cfg = org.organism_config(data, out / "train_full", layers, [*weights, *overrides])
        flat = _flatten(OmegaConf.to_container(cfg))
        full_flat = full_flat or flat
        changed = [k for k in flat if flat[k] != full_flat.get(k)]
        if name != "full" and changed and all(k.startswith(TRAINING_ONLY) for k in changed):
            miou, note = rows[0][2], " (= full: changes training only)"
        else:
            miou, note = org.pseudo_label_miou(cfg, out / f"lam_{slug}")["miou"], ""
        rows.append(("training-free pseudo labels", name + note, miou))
        print(f"{'pseudo labels':<16} {name + note:<60} {100 * miou:6.1f}", flush=True)
    if not args.skip_training:
        for name, overrides in TRAINING.items():
            slug = name.replace(" ", "_")
            cfg = org.organism_config(data, out / f"train_{slug}", overrides=[*weights, *overrides])
            reuse = args.full_checkpoint if name == "full" else None
            miou = org.train_and_segment(cfg, crf=False, checkpoint=reuse)["seg_miou"]
            rows.append(("segmentation after training (MS+flip)", name, miou))
            print(f"{'segmentation':<16} {name:<40} {100 * miou:6.1f}", flush=True)
    print(f"\nOrganism ablations (world seed {args.seed}, {args.num_val} val images)\n")
    print("| measure | setting | mIoU |\n|---|---|---:|")
    for measure, name, miou in rows:
        print(f"| {measure} | {name} | {100 * miou:.1f} |")
    (out / "ablations.json").write_text(json.dumps([dict(measure=m, setting=n, miou=v) for m, n, v in rows],
                                                   indent=2))
    return {"rows": rows}


if __name__ == "__main__":
    main()
