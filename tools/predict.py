"""Predict label maps for any images: label PNGs and colour overlays with a legend.

With a trained checkpoint (its stored config supplies the classes; multi-scale + flip as in infer.*):
    python tools/predict.py photos/ --out preds --checkpoint work_dirs/voc/checkpoints/iter_0030000.pth [--crf]
Training-free, open vocabulary (LAM + pseudo labels of algorithm.md §9.4, no training):
    python tools/predict.py "photos/*.jpg" --out preds --classes "cat,dog,sofa"
    python tools/predict.py img.jpg --out preds --classes-file my_classes.yaml --knowledge-base my_kb.json
A class YAML is a list of names or a mapping with class_names (and optionally prompt_names, background_names).
--knowledge-base (JSON {class: [sentences]}) builds and caches a TSE cluster bank; without it the text bank holds the
plain prompts. --labels cls (default) marks a class present when its zero-shot probability is >= --cls-threshold (the
top class always), --labels all every class. key=value arguments override config keys (run.device=cpu). Writes
<out>/labels/*.png, <out>/overlays/*.png, classes.json, predictions.json, report.html.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from excel.config import resolve_device
from excel.engine.cli import add_config_flags, run_cli, split_overrides
from excel.engine.predict import (Predictor, collect_images, parse_class_list, predict_config, predict_images,
                                  read_class_file)
from excel.utils.logging import setup_logging


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="IMAGE|FOLDER|GLOB [key=value]",
                        help="images, folders (searched recursively) or glob patterns; then config overrides")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--checkpoint", default=None, help="trained checkpoint (trained mode)")
    parser.add_argument("--classes", default=None, help='comma-separated class names, e.g. "cat,dog" (training-free)')
    parser.add_argument("--classes-file", default=None, help="YAML with the class names (training-free)")
    parser.add_argument("--knowledge-base", default=None, help="JSON {class: [sentences]} for TSE (training-free)")
    parser.add_argument("--labels", choices=("cls", "all"), default="cls", help="training-free: present classes")
    parser.add_argument("--cls-threshold", type=float, default=0.1, help="for --labels cls (default 0.1)")
    parser.add_argument("--crf", action="store_true", help="dense CRF on the trained model's prediction")
    add_config_flags(parser)
    args = parser.parse_intermixed_args(argv)
    inputs, overrides = split_overrides(args.inputs)
    if not inputs or (args.classes and args.classes_file):
        parser.error("no input images given" if not inputs else "give --classes or --classes-file, not both")
    vocabulary = ({"class_names": parse_class_list(args.classes)} if args.classes
                  else read_class_file(args.classes_file) if args.classes_file else None)
    collect_images(inputs)  # the inputs are checked before any weights are read
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f"--checkpoint {args.checkpoint}: file not found")
    setup_logging(None)
    cfg = predict_config(args.config, overrides, checkpoint=args.checkpoint, vocabulary=vocabulary,
                         knowledge_base=args.knowledge_base, allow_base_reset=args.allow_base_reset)
    predictor = Predictor(cfg, checkpoint=args.checkpoint, labels=args.labels, cls_threshold=args.cls_threshold,
                          crf=args.crf or bool(args.checkpoint and cfg.infer.crf), device=resolve_device(cfg.run.device))
    return predict_images(predictor, inputs, args.out)


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
