"""The organism's quality figures on a freshly generated world: zero-shot mAP, training-free pseudo labels (with
and without SVC, +CRF) and segmentation after the standard organism training (MS+flip, +CRF).

    python benchmarks/organism_eval.py --seed 2026 [--out work_dirs/organism_eval] [--skip-training]
                                       [--object-scale 1.0] [--parts] [--weights organism|FILE]

Use a --seed never used while developing for figures you quote (the shipped tests and the demo use seed 0).
About 15 minutes on 2 CPU cores (the training is most of it).
"""
from __future__ import annotations

import json
from typing import Sequence

import _organism as org


def main(argv: Sequence[str] | None = None) -> dict:
    parser = org.world_parser(__doc__.splitlines()[0], "work_dirs/organism_eval", "training-free figures only")
    args = parser.parse_args(argv)
    org.quiet()
    from excel.organism.evaluate import split_zero_shot_map

    out, data, weights = org.world_run(args)
    cfg = org.organism_config(data, out / "train", overrides=weights)
    results: dict = {"seed": args.seed, "num_val": args.num_val, "object_scale": args.object_scale,
                     "weights": args.weights}
    results["zero_shot_map"] = split_zero_shot_map(cfg, "val")
    print(f"zero-shot multi-label mAP          {100 * results['zero_shot_map']:.1f}", flush=True)
    lam = org.pseudo_label_miou(cfg, out / "lam_full", crf=True)
    results["pseudo_miou"], results["pseudo_crf_miou"] = lam["miou"], lam.get("crf_miou")
    print(f"training-free pseudo labels        {100 * lam['miou']:.1f}   + CRF {100 * lam['crf_miou']:.1f}",
          flush=True)
    no_svc = org.pseudo_label_miou(org.organism_config(data, out / "train",
                                                          overrides=[*weights, "model.svc.enabled=false"]),
                                   out / "lam_no_svc")
    results["pseudo_miou_no_svc"] = no_svc["miou"]
    print(f"training-free pseudo labels, no SVC {100 * no_svc['miou']:.1f}", flush=True)
    if not args.skip_training:
        seg = org.train_and_segment(cfg)
        results.update(seg)
        print(f"segmentation after training        {100 * seg['seg_miou']:.1f} (MS+flip)   + CRF "
              f"{100 * seg['seg_crf_miou']:.1f}   (training {seg['train_seconds'] / 60:.1f} min)", flush=True)
    (out / "organism_eval.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
