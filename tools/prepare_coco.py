"""Make COCO 2014's VOC-style masks from the annotations, write the split lists (train, val, val_part) and
cls_labels_onehot.npy; report bad files.

    python tools/prepare_coco.py --root data/COCO --annotations data/COCO/annotations   # masks, then the lists
    python tools/prepare_coco.py --root data/COCO [--val-part 5000] [--no-cls-labels] [--keep-empty]

--annotations DIR reads DIR/instances_{train,val}2014.json (pycocotools) and writes one index PNG per image to
<root>/SegmentationClass/{train2014,val2014}/<image file stem>.png: 0 background, the 80 categories 1..80 in the
standard order of COCO's category ids (1 -> 1, 18 -> 17, 90 -> 80), crowd regions 255 (ignore) where no other
object lies; where objects overlap the smaller one wins (painted from the largest area down). Masks already there
are kept, so a rerun finishes an interrupted one.

Accepts the reference layout (JPEGImages/{train,val}/, SegmentationClass/{train,val}/<12 digits>.png) and the
README one ({train,val}2014/, SegmentationClass/{train,val}2014/). Only images with at least one annotated object
(a foreground pixel in the mask) are listed, as in the standard lists (82,081 train, 40,137 val); the report says
how many were dropped, and --keep-empty keeps them. Exit code 0 when all is well, 1 when files are missing or bad
(nothing written unless --drop-bad), 2 when a folder is missing.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from excel.data.coco_masks import write_coco_masks
from excel.data.prepare import add_common_arguments, prepare_coco, run_and_report
from excel.engine.cli import run_cli


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, image_dir="JPEGImages", label_dir="SegmentationClass")
    parser.add_argument("--val-part", type=int, default=5000, help="val_part.txt = the first N of val (default 5000)")
    parser.add_argument("--no-cls-labels", action="store_true",
                        help="do not write cls_labels_onehot.npy (with --keep-empty the masks are only checked to exist)")
    parser.add_argument("--num-classes", type=int, default=80, help="foreground classes (default 80)")
    parser.add_argument("--keep-empty", action="store_true",
                        help="also list images whose mask has no foreground pixel (the standard lists leave them out)")
    parser.add_argument("--annotations", default=None,
                        help="folder with instances_{train,val}2014.json: make the masks from them first")
    args = parser.parse_args(argv)

    def job():
        made = write_coco_masks(args.root, args.annotations, args.label_dir) if args.annotations else []
        report = prepare_coco(args.root, args.out, args.image_dir, args.label_dir, args.num_classes, args.val_part,
                              not args.no_cls_labels, args.deep, args.drop_bad, args.keep_empty)
        report.notes[:0] = [m.note() for m in made]
        return report

    return run_and_report(job)


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
