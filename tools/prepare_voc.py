"""Write the PASCAL VOC split lists and cls_labels_onehot.npy, and report missing or unreadable files.

    python tools/prepare_voc.py --root data/VOC2012                       # SegmentationClassAug already in root
    python tools/prepare_voc.py --root data/VOC2012 --sbd-root data/SBD/benchmark_RELEASE/dataset
    python tools/prepare_voc.py --root data/VOC2012 --test-root data/VOC2012_test   # also the test download
    python tools/prepare_voc.py --root data/my_data          # a dataset of your own: images and masks only

Masks: <root>/SegmentationClassAug/<id>.png (the usual 10,582-mask download). With --sbd-root pointing at SBD's
dataset folder (cls/*.mat, train.txt, val.txt) the missing SegmentationClassAug masks are made first: SBD's
GTcls.Segmentation, or VOC's own SegmentationClass mask where VOC has one; masks already there are kept.
train_aug = (SBD train + val, or every mask in <root>/SegmentationClassAug) + VOC train - VOC val - VOC test.
--test-root takes the VOC 2012 test download (DIR/JPEGImages, DIR/ImageSets/Segmentation/test.txt): its ids become
lists/test.txt and lists/test_root.txt records DIR, so infer.split=test finds the images without data.test_root.
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
                        help="SBD's dataset folder (cls/*.mat, train.txt, val.txt): converts the missing "
                             "SegmentationClassAug masks and takes train_aug's SBD ids from it")
    parser.add_argument("--test-root", default=None,
                        help="the VOC 2012 test download (JPEGImages/, ImageSets/Segmentation/test.txt)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="foreground classes C (mask values 1..C); default: the highest value in the masks")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="without ImageSets/Segmentation/val.txt: the share of images drawn for val (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of that train/val draw (default 0)")
    args = parser.parse_args(argv)
    return run_and_report(lambda: prepare_voc(args.root, args.out, args.sbd_root, args.image_dir, args.label_dir,
                                              args.num_classes, args.deep, args.drop_bad,
                                              val_fraction=args.val_fraction, seed=args.seed,
                                              test_root=args.test_root))


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
