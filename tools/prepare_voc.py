"""Write the PASCAL VOC split lists and cls_labels_onehot.npy, and report missing or unreadable files.

    python tools/prepare_voc.py --root data/VOC2012 [--sbd-root data/SBD/dataset] [--out data/VOC2012/lists]
    python tools/prepare_voc.py --root data/my_data          # a dataset of your own: images and masks only

train_aug = (SBD train + val, or every mask in <root>/SegmentationClassAug) + VOC train - VOC val - VOC test.
Without ImageSets/Segmentation/val.txt, a seeded train/val split is written (--val-fraction, --seed); without
--num-classes, the class count is the highest mask value (255 = ignore), and the report says so.
Image-level labels (cls_labels_onehot.npy) list every object of <root>/Annotations/<id>.xml when that folder exists
(the field's usual label file), else the classes in the masks; the report names the images where the two disagree.
Exit code 0 when all is well, 1 when files are missing or bad (nothing written unless --drop-bad), 2 when a
folder is missing.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from excel.data.prepare import add_common_arguments, prepare_voc, run_and_report
from excel.engine.cli import run_cli


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, image_dir="JPEGImages", label_dir="SegmentationClassAug")
    parser.add_argument("--sbd-root", default=None,
                        help="SBD folder with train.txt/val.txt (or a SegmentationClassAug folder) for train_aug")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="foreground classes C (mask values 1..C); default: the highest value in the masks")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="without ImageSets/Segmentation/val.txt: the share of images drawn for val (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of that train/val draw (default 0)")
    args = parser.parse_args(argv)
    return run_and_report(lambda: prepare_voc(args.root, args.out, args.sbd_root, args.image_dir, args.label_dir,
                                              args.num_classes, args.deep, args.drop_bad,
                                              val_fraction=args.val_fraction, seed=args.seed))


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
