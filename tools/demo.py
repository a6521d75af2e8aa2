"""The embedded demo (``bash run_demo.sh``): the whole ExCEL pipeline on the generated world, offline, on CPU.

1. generates the world's data in VOC layout (textured scenes with 1-3 objects of 20 classes),
2. zero-shot multi-label mAP of the CLIP on the val images (has it learned its world?),
3. training-free pseudo labels on val (TSE + SVC LAM, affinity refinement, PAR), with and without the dense CRF,
4. a short decoder training run on on-line pseudo labels (LVC from the reference's fraction of the run),
5. multi-scale + flip segmentation inference on val, with and without the CRF, and overlays with a legend.

It uses real OpenAI ViT-B/16 weights when they can be had (``--weights FILE``, the open_clip cache, or a download),
and otherwise the model organism: a small CLIP pretrained on this world and shipped in the package
(``configs/organism.yaml``), with which every number is real.

    python tools/demo.py [--out demo_out] [--weights /path/to/ViT-B-16.pt] [--organism] [key=value ...]
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from excel.engine.cli import run_cli


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="Run the ExCEL pipeline end to end on the generated world.")
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--weights", default=None, help="OpenAI ViT-B-16.pt (or open_clip checkpoint) to use")
    parser.add_argument("--organism", action="store_true", help="skip the ViT-B/16 weights search")
    parser.add_argument("--num-train", type=int, default=200, help="generated training images")
    parser.add_argument("--num-val", type=int, default=60, help="generated validation images")
    parser.add_argument("--iters", type=int, default=300, help="training iterations")
    parser.add_argument("--num-overlays", type=int, default=8, help="val images given a legend overlay")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_args(argv)

    from excel.engine.demo import run_demo
    from excel.utils.logging import setup_logging

    setup_logging()
    return run_demo(args.out, args.weights, args.organism, args.num_train, args.num_val, args.iters,
                    args.num_overlays, args.overrides)


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
