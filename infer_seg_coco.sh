#!/usr/bin/env bash
# Multi-scale + flip segmentation inference on COCO (optional CRF). Usage (as the reference's script):
#   bash infer_seg_coco.sh tools/infer_lam.py [gpu_device=0] [gpu_number=1] [infer_set=val] [checkpoint_path] [key=value ...]
# The seed passes a tool path first; it is accepted, and the COCO segmentation tool is what runs.
set -euo pipefail
source "$(dirname "$0")/scripts/_env.sh"
source "$EXCEL_ROOT/scripts/_launch.sh"
source "$EXCEL_ROOT/scripts/_infer_seg.sh"
excel_infer_seg tools/infer_seg_coco.py 29531 "$@"
