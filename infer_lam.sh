#!/usr/bin/env bash
# Training-free (or checkpoint) pseudo labels and their mIoU. Usage (as the reference's script):
#   bash infer_lam.sh tools/infer_lam.py [gpu_device=0] [gpu_number=1] [infer_set=train] [checkpoint_path=""] [key=value ...]
# Extra key=value overrides (e.g. data.root=..., --config configs/coco.yaml) are passed through.
set -euo pipefail
source "$(dirname "$0")/scripts/_env.sh"
source "$EXCEL_ROOT/scripts/_launch.sh"
tool="${1:-tools/infer_lam.py}"; devices="${2:-0}"; nproc="${3:-1}"; split="${4:-train}"; ckpt="${5:-}"
shift $(( $# < 5 ? $# : 5 ))
excel_env
extra=("infer.split=$split")
[ -n "$ckpt" ] && extra+=("infer.checkpoint=$ckpt")
excel_launch "$tool" "$devices" "$nproc" "${MASTER_PORT:-29511}" "${extra[@]}" "$@"
