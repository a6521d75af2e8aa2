#!/usr/bin/env bash
# Pseudo labels (LAM) for a whole split and their mIoU: training-free, or with a trained checkpoint.
# Usage:
#   bash infer_lam.sh [gpu_device=0] [gpu_number=1] [infer_set=train] [checkpoint=""] [key=value | --config FILE ...]
#   bash infer_lam.sh 0 1 train "" data.root=data/VOC2012 infer.crf=true
#   bash infer_lam.sh 0 1 train "" --config configs/coco.yaml data.root=data/COCO
# A leading tool path (the reference's form: bash infer_lam.sh tools/infer_lam.py 0 1 train) is accepted and is the
# tool that runs. Several machines: NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT in the environment (docs/training.md).
set -euo pipefail
source "$(dirname "$0")/scripts/_env.sh"
source "$EXCEL_ROOT/scripts/_launch.sh"
tool=tools/infer_lam.py
case "${1:-}" in *.py) tool="$1"; shift ;; esac
n=$(excel_count_positional 4 "$@")
pos=("${@:1:n}")
shift "$n"
devices="${pos[0]-0}"; nproc="${pos[1]:-1}"; split="${pos[2]:-train}"; ckpt="${pos[3]:-}"
excel_env
extra=("infer.split=$split")
[ -n "$ckpt" ] && extra+=("infer.checkpoint=$ckpt")
excel_launch "$tool" "$devices" "$nproc" "${MASTER_PORT:-29511}" "${extra[@]}" "$@"
