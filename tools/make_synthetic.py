"""Write a dataset of the generated world (excel/organism/world.py) in the VOC layout (or COCO 2014 with --coco).

    python tools/make_synthetic.py --root data/organism                 # the organism's data (VOC layout)
    python tools/make_synthetic.py --root data/organism_coco --coco     # the same world with the 80 COCO classes
    python tools/make_synthetic.py --root data/organism_parts --parts   # objects with parts (docs/organism.md)

Image sides are 240-320 px; everything is a function of --seed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from excel.engine.cli import run_cli
from excel.errors import UsageError


def main(argv: list[str] | None = None) -> int:
    from excel.organism.synthetic import WORLD_SIZE, make_synthetic_coco, make_synthetic_voc
    from excel.organism.world import BACKDROP_KINDS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="output dataset folder")
    parser.add_argument("--num-train", type=int, default=500, help="training images (default 500)")
    parser.add_argument("--num-val", type=int, default=100, help="validation images (default 100)")
    parser.add_argument("--num-test", type=int, default=20, help="test images, no masks (VOC layout only)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the scenes")
    parser.add_argument("--coco", action="store_true", help="COCO 2014 layout with the 80 COCO classes")
    parser.add_argument("--object-scale", type=float, default=1.0,
                        help="object size factor (1.0: the world the shipped organism learned)")
    parser.add_argument("--parts", action="store_true",
                        help="objects with parts (wheels, legs, wings, ...), named by the part knowledge base")
    parser.add_argument("--varied-backdrops", type=float, default=0.0,
                        help="chance that a scene's background is an unnamed backdrop of random colours and pattern "
                             "(0: the world the shipped organism learned)")
    parser.add_argument("--backdrop-kinds", nargs="+", choices=BACKDROP_KINDS, default=list(BACKDROP_KINDS),
                        help="the kinds of unnamed backdrop drawn (default: all)")
    args = parser.parse_args(argv)
    if min(args.num_train, args.num_val, args.num_test) < 0:
        raise UsageError(f"image counts must be >= 0, got --num-train {args.num_train} --num-val {args.num_val} "
                         f"--num-test {args.num_test}")
    if Path(args.root).exists() and not Path(args.root).is_dir():
        raise UsageError(f"--root {args.root}: exists and is not a folder")
    world = dict(size=WORLD_SIZE, seed=args.seed, progress=True, object_scale=args.object_scale, parts=args.parts,
                 varied_backdrops=args.varied_backdrops, backdrop_kinds=args.backdrop_kinds)
    if args.coco:
        root = make_synthetic_coco(args.root, num_train=args.num_train, num_val=args.num_val, **world)
    else:
        root = make_synthetic_voc(args.root, num_train=args.num_train, num_val=args.num_val,
                                  num_test=args.num_test, **world)
    print(f"wrote {args.num_train} train / {args.num_val} val images of the generated world to {root}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
