"""Scene statistics of a generated split of the organism's world, beside PASCAL VOC 2012's.

    python benchmarks/world_stats.py [--seed S] [--split val] [--object-scale X] [--parts] [--varied-backdrops P]

The scenes are those `python tools/make_synthetic.py --root DIR --seed S` writes (same streams, same sizes), drawn
in memory. Prints the foreground share of the pixels, classes and objects per image, the quartiles of an object's
share of its image, image sizes and per-class frequency, and whether each aimed-at figure is in VOC's range.
"""
from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from excel.organism.synthetic import WORLD_SIZE, voc_scene
from excel.organism.world import World
from excel.engine.cli import run_cli
from excel.errors import UsageError
from excel.organism.stats import VOC_STATS, scene_statistics, within_voc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="world seed (make_synthetic.py --seed)")
    parser.add_argument("--split", choices=("train", "val", "test"), default="val")
    parser.add_argument("--num-train", type=int, default=500, help="as make_synthetic.py (default 500)")
    parser.add_argument("--num-val", type=int, default=100, help="as make_synthetic.py (default 100)")
    parser.add_argument("--num-test", type=int, default=20, help="as make_synthetic.py (default 20)")
    parser.add_argument("--object-scale", type=float, default=1.0, help="the world's object size factor")
    parser.add_argument("--parts", action="store_true", help="objects with parts (make_synthetic.py --parts)")
    parser.add_argument("--varied-backdrops", type=float, default=0.0,
                        help="chance of an unnamed backdrop (make_synthetic.py --varied-backdrops)")
    args = parser.parse_args(argv)
    counts = {"train": args.num_train, "val": args.num_val, "test": args.num_test}
    if min(counts.values()) < 0 or counts[args.split] == 0:
        raise UsageError(f"--num-{args.split} {counts[args.split]}: the split needs at least one image")
    first = 1 + {"train": 0, "val": args.num_train, "test": args.num_train + args.num_val}[args.split]
    world = World(object_scale=args.object_scale, parts=args.parts, varied_backdrops=args.varied_backdrops)
    scenes = (voc_scene(args.seed, i, WORLD_SIZE, world)
              for i in tqdm(range(first, first + counts[args.split]), desc=f"{args.split} scenes"))
    stats = scene_statistics(scenes, world.class_names)
    ok = within_voc(stats)
    print(f"world seed {args.seed}, split {args.split}, {stats['images']} images, object scale {args.object_scale:g}"
          + (", objects with parts" if args.parts else "")
          + (f", unnamed backdrops in {args.varied_backdrops:.0%} of scenes" if args.varied_backdrops else ""))
    print(f"{'figure':28s} {'world':>9s} {'VOC 2012':>9s}  in range")
    rows = [("foreground share of pixels", "foreground_share", "{:.1%}"),
            ("  median over images", "foreground_share_median", "{:.1%}"),
            ("classes per image", "classes_per_image", "{:.2f}"), ("objects per image", "objects_per_image", "{:.2f}"),
            ("object area share, Q1", "area_q1", "{:.1%}"), ("object area share, median", "area_median", "{:.1%}"),
            ("object area share, Q3", "area_q3", "{:.1%}"), ("objects under 2 % of the image", "area_under_2pct",
                                                                 "{:.0%}"),
            ("image long side (px)", "long_side", "{:.0f}"), ("image short side, median", "short_side_median",
                                                                "{:.0f}")]
    for label, key, fmt in rows:
        voc = fmt.format(VOC_STATS[key]) if key in VOC_STATS else "-"
        print(f"{label:28s} {fmt.format(stats[key]):>9s} {voc:>9s}  {({True: 'yes', False: 'NO'}).get(ok.get(key), '')}")
    shares = stats["class_image_share"]
    print("share of images holding each class (VOC: person in about "
          f"{VOC_STATS['person_image_share']:.0%}, every other class in 3-9 %):")
    print("  " + ", ".join(f"{name} {share:.0%}" for name, share in shares.items()))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
