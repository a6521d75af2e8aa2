"""Ablations in miniature on the model organism, on one or several world seeds: training-free pseudo-label mIoU
(full, TSE off, SVC off, affinity refinement off, PAR off, and every configs/ablations/ file) and segmentation mIoU
after the standard organism training (full, LVC off, affinity loss off), each row's mean and spread over the seeds,
the zero-shot mAP and the +CRF figures of the full rows, whether each sign agrees with the paper, and where the
affinity refinement wins and loses (benchmarks/compare_labels.py on the full and refinement-off pseudo labels).

    python benchmarks/organism_ablations.py --seeds 2026 4242 [--out work_dirs/organism_ablations]
                                            [--skip-training] [--object-scale 1.0] [--parts] [--varied-backdrops 0]
                                            [--weights organism|FILE]

Every finished row is kept in ``<out>/seed<S>/rows/`` with the weight file's fingerprint, so a rerun (or a second
process for another seed) resumes instead of starting over. One seed takes about 35 minutes on 2 CPU cores (three
trainings; docs/organism.md has the measured time); --skip-training gives the training-free half in about 10.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
from pathlib import Path
from typing import Any, Callable, Sequence

import _organism as org
import compare_labels
from omegaconf import OmegaConf

from excel.config import CONFIG_DIR
from excel.utils.io import atomic_write_json

SWITCHES = {"full": [], "TSE off": ["tse.enabled=false"], "SVC off": ["model.svc.enabled=false"],
            "affinity refinement off": ["cam.affinity_refine=false"], "PAR off": ["cam.par.num_iter=0"]}
# keys that change only training, not the training-free pseudo labels
TRAINING_ONLY = ("lvc.", "loss.", "train.", "optim.", "quirks.crop_without_gt", "quirks.decoder_clean_features",
                 "quirks.per_sample_batch_mean")
TRAINING = {"full": [], "LVC off": ["lvc.enabled=false"], "affinity loss off": ["loss.aff_weight=0.0"]}
VAL_EVERY = 250                      # validations of the trainings (the standard config validates every 500)
PSEUDO, SEG = "training-free pseudo labels", "segmentation after training (MS+flip)"
# the paper's signs: (measure, setting, compared with full of the same measure, largest allowed difference)
CLAIMS = ((PSEUDO, "SVC off", -15.0), (PSEUDO, "affinity refinement off", 0.0), (PSEUDO, "PAR off", 0.0),
          (PSEUDO, "TSE off", 1.0), (SEG, "LVC off", 0.0))


def _flatten(node: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def fingerprint(weights: str) -> str:
    """A short hash of the organism weight file ('organism': the shipped one), so cached rows follow the weights."""
    from excel.organism.weights import SHIPPED

    path = SHIPPED if weights == "organism" else Path(weights)
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def cached(folder: Path, slug: str, key: str, compute: Callable[[], dict]) -> dict:
    """``compute()``'s record, kept in ``folder/<slug>.json`` under ``key``; reused when the key matches."""
    path = folder / f"{slug}.json"
    if path.is_file():
        record = json.loads(path.read_text())
        if record.get("key") == key:
            return record
    record = {"key": key, **compute()}
    atomic_write_json(path, record)
    return record


def seed_rows(args: argparse.Namespace, seed: int, key: str) -> dict[str, Any]:
    """Every row of one world seed: {"rows": [(measure, setting, mIoU, CRF mIoU or None)], "zero_shot_map": ...}."""
    from excel.organism.evaluate import split_zero_shot_map

    run = argparse.Namespace(**{**vars(args), "seed": seed})
    out, data, weights = org.world_run(run)
    cache = out / "rows"
    rows: list[tuple[str, str, float, float | None]] = []
    curves: dict[str, list[dict]] = {}
    runs = [(name, [], overrides) for name, overrides in SWITCHES.items()]
    runs += [(f"ablations/{p.name}", [p], []) for p in sorted((CONFIG_DIR / "ablations").glob("*.yaml"))]
    full_cfg = org.organism_config(data, out / "train_full", overrides=weights)
    full_flat = _flatten(OmegaConf.to_container(full_cfg))
    zero_shot = cached(cache, "zero_shot", key, lambda: {"map": split_zero_shot_map(full_cfg, "val")})["map"]
    print(f"seed {seed}: zero-shot mAP {100 * zero_shot:.1f}", flush=True)
    for name, layers, overrides in runs:
        slug = "lam_" + name.replace("/", "_").replace(" ", "_")
        cfg = org.organism_config(data, out / "train_full", layers, [*weights, *overrides])
        flat = _flatten(OmegaConf.to_container(cfg))
        changed = [k for k in flat if flat[k] != full_flat.get(k)]
        if name != "full" and changed and all(k.startswith(TRAINING_ONLY) for k in changed):
            rows.append((PSEUDO, name + " (= full: changes training only)", rows[0][2], None))
            continue
        crf = name == "full"
        record = cached(cache, slug, key, lambda: org.pseudo_label_miou(cfg, out / slug, crf=crf))
        rows.append((PSEUDO, name, record["miou"], record.get("crf_miou") if crf else None))
        print(f"seed {seed}: {'pseudo labels':<14} {name:<48} {100 * record['miou']:6.1f}", flush=True)
    if not args.skip_training:
        for name, overrides in TRAINING.items():
            slug = "seg_" + name.replace(" ", "_")
            # validation every quarter of the run: the pseudo labels before and after the LVC switch
            cfg = org.organism_config(data, out / f"train_{name.replace(' ', '_')}",
                                      overrides=[*weights, *overrides, f"train.eval_iters={VAL_EVERY}"])
            crf = name == "full"
            record = cached(cache, slug, key, lambda: {**org.train_and_segment(cfg, crf=crf),
                                                       "val": org.validation_log(cfg)})
            rows.append((SEG, name, record["seg_miou"], record.get("seg_crf_miou") if crf else None))
            curves[name] = record["val"]
            print(f"seed {seed}: {'segmentation':<14} {name:<48} {100 * record['seg_miou']:6.1f}   validation "
                  f"pseudo labels " + " ".join(f"{v['iter']}: {100 * v['pseudo_miou']:.1f}" for v in record["val"]),
                  flush=True)
    folders = (data / "SegmentationClassAug", out / "lam_full" / "pseudo_labels",
               out / "lam_affinity_refinement_off" / "pseudo_labels")
    return {"rows": rows, "zero_shot_map": zero_shot, "val": curves, "refinement_folders": folders}


def summarise(per_seed: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per row: the mIoU of each seed (%), their mean and spread (half the range), and the CRF mean."""
    seeds = list(per_seed)
    table = []
    for i, (measure, setting, _, _) in enumerate(per_seed[seeds[0]]["rows"]):
        values = [100 * per_seed[s]["rows"][i][2] for s in seeds]
        crf = [per_seed[s]["rows"][i][3] for s in seeds]
        table.append({"measure": measure, "setting": setting, "per_seed": dict(zip(seeds, values)),
                      "mean": statistics.fmean(values), "spread": (max(values) - min(values)) / 2,
                      "crf_mean": 100 * statistics.fmean(crf) if None not in crf else None})
    return table


def claims(table: list[dict[str, Any]]) -> list[tuple[str, float, float, bool]]:
    """(claim, row mean, full mean, holds) for each of the paper's signs in :data:`CLAIMS`."""
    mean = {(r["measure"], r["setting"]): r["mean"] for r in table}
    out = []
    for measure, setting, allowed in CLAIMS:
        if (measure, setting) in mean:
            row, full = mean[(measure, setting)], mean[(measure, "full")]
            bound = f"full {allowed:+g}" if allowed else "full"
            out.append((f"{setting} <= {bound} ({measure})", row, full, row <= full + allowed))
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    parser = org.world_parser(__doc__.splitlines()[0], "work_dirs/organism_ablations", "training-free rows only")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="world seeds (at least two for a spread; default: --seed alone)")
    args = parser.parse_args(argv)
    org.quiet()
    seeds = args.seeds or [args.seed]
    key = f"{fingerprint(args.weights)}:{args.num_train}:{args.num_val}"
    per_seed = {seed: seed_rows(args, seed, key) for seed in seeds}
    table = summarise(per_seed)
    cols = " | ".join(f"seed {s}" for s in seeds)
    print(f"\nOrganism ablations ({args.num_val} val images per seed; mean and spread = half the range over "
          f"{len(seeds)} seed{'s' * (len(seeds) > 1)})\n")
    print(f"| measure | setting | {cols} | mean | spread |\n|---|---|{'---:|' * len(seeds)}---:|---:|")
    for r in table:
        values = " | ".join(f"{v:.1f}" for v in r["per_seed"].values())
        crf = f" (+CRF {r['crf_mean']:.1f})" if r["crf_mean"] is not None else ""
        print(f"| {r['measure']} | {r['setting']} | {values} | {r['mean']:.1f}{crf} | {r['spread']:.1f} |")
    zero_shot = statistics.fmean(per_seed[s]["zero_shot_map"] for s in seeds)
    print(f"\nzero-shot mAP of the CLIP: mean {100 * zero_shot:.1f}")
    print("\nThe paper's signs, on the means:")
    checked = claims(table)
    for text, row, full, holds in checked:
        print(f"  {'agrees   ' if holds else 'DISAGREES'}  {text}: {row:.1f} vs {full:.1f}")
    for name in TRAINING:
        if all(name in per_seed[s]["val"] for s in seeds):
            steps = [v["iter"] for v in per_seed[seeds[0]]["val"][name]]
            means = [statistics.fmean(100 * per_seed[s]["val"][name][i]["pseudo_miou"] for s in seeds)
                     for i in range(len(steps))]
            print(f"validation pseudo labels, {name}: " + ", ".join(f"{i}: {m:.1f}" for i, m in zip(steps, means)))
    # where the affinity refinement wins and loses: the full and refinement-off pseudo labels, all seeds pooled
    print("\nThe affinity refinement by the foreground share of the image (all seeds pooled):")
    refinement = compare_labels.compare([per_seed[s]["refinement_folders"] for s in seeds])
    compare_labels.print_comparison(refinement, ("full", "refinement off"))
    summary = {"seeds": seeds, "val": {s: per_seed[s]["val"] for s in seeds}, "num_val": args.num_val,
               "weights": args.weights, "key": key, "table": table, "zero_shot_map": zero_shot,
               "claims": [dict(claim=t, row=r, full=f, holds=h) for t, r, f, h in checked],
               "refinement_by_foreground": refinement}
    atomic_write_json(Path(args.out).resolve() / "ablations_summary.json", summary)
    return summary


if __name__ == "__main__":
    main()
