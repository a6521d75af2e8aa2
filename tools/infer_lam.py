"""Pseudo labels for a whole split and their mIoU (algorithm.md §9.4): training-free, or with a trained checkpoint.

    python tools/infer_lam.py data.root=/data/VOC2012 infer.split=train
    python tools/infer_lam.py --config configs/coco.yaml data.root=/data/COCO infer.split=val_part
    torchrun --nproc_per_node=2 tools/infer_lam.py infer.checkpoint=work_dirs/voc/checkpoints/iter_0030000.pth
    bash infer_lam.sh 0 1 train "" infer.crf=true infer.save_overlays=true

With infer.checkpoint, the model, its classes and the other settings come from the config stored in the checkpoint;
--config files and key=value arguments override it.
Writes <output_dir>/pseudo_labels/<id>.png (VOC palette), optional CRF labels and overlays, results.json, a
log with the per-class table, and report.html (table, confusion heat map, worst images first; open it in a
browser). A rerun skips images whose labels exist.
"""
from __future__ import annotations

import sys
from typing import Sequence

from excel.engine.cli import parse_config, run_cli
from excel.engine.infer_lam import run_infer_lam


def main(argv: Sequence[str] | None = None) -> dict:
    cfg = parse_config(argv, "ExCEL pseudo labels (LAM) for a split, with mIoU.", "voc.yaml", follow_checkpoint=True)
    return run_infer_lam(cfg)


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
