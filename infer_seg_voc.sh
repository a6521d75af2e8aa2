#!/usr/bin/env bash
# Multi-scale + flip segmentation inference on VOC (optional CRF, test-set PNGs). Usage (as the reference's script):
#   bash infer_seg_voc.sh tools/infer_lam.py [gpu_device=0] [gpu_number=1] [infer_set=val] [checkpoint_path] [key=value ...]
# The seed passes a tool path first; it is accepted, and the VOC segmentation tool is what runs.
set -euo pipefail
source "$(dirname "$0")/scripts/_env.sh"
source "$EXCEL_ROOT/scripts/_launch.sh"
source "$EXCEL_ROOT/scripts/_infer_seg.sh"
excel_infer_seg tools/infer_seg_voc.py 29521 "$@"
