#!/usr/bin/env bash
# Multi-scale + flip segmentation inference on PASCAL VOC with a trained checkpoint: val scored with and without the
# dense CRF (infer.crf=true), or the test set written as PNGs for the evaluation server (infer_set=test).
# Usage:
#   bash infer_seg_voc.sh [gpu_device=0] [gpu_number=1] [infer_set=val] [checkpoint] [key=value | --config FILE ...]
#   bash infer_seg_voc.sh 0 1 val work_dirs/voc_exp1/checkpoints/iter_0030000.pth data.root=data/VOC2012 infer.crf=true
# A tool path before the GPU list (the reference's form, e.g. tools/infer_lam.py) is the tool that runs.
# Several machines: NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT in the environment (docs/training.md).
set -euo pipefail
source "$(dirname "$0")/scripts/_env.sh"
source "$EXCEL_ROOT/scripts/_launch.sh"
source "$EXCEL_ROOT/scripts/_infer_seg.sh"
excel_infer_seg tools/infer_seg_voc.py 29521 "$@"
