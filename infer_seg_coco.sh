#!/usr/bin/env bash
# Multi-scale + flip segmentation inference on MS COCO 2014 with a trained checkpoint, scored with the dense CRF (on
# by default for COCO; infer.crf=false skips it).
# Usage:
#   bash infer_seg_coco.sh [gpu_device=0] [gpu_number=1] [infer_set=val] [checkpoint] [key=value | --config FILE ...]
#   bash infer_seg_coco.sh 0,1 2 val work_dirs/coco_exp1/checkpoints/iter_0100000.pth data.root=data/COCO
# A tool path before the GPU list (the reference's form, e.g. tools/infer_lam.py) is the tool that runs.
# Several machines: NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT in the environment (docs/training.md).
set -euo pipefail
source "$(dirname "$0")/scripts/_env.sh"
source "$EXCEL_ROOT/scripts/_launch.sh"
source "$EXCEL_ROOT/scripts/_infer_seg.sh"
excel_infer_seg tools/infer_seg_coco.py 29531 "$@"
