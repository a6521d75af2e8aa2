#!/usr/bin/env bash
# Train ExCEL. Usage (as the reference's script):
#   bash run_train.sh scripts/train_voc.py [gpu_devices=0] [gpu_number=1] [master_port=29501] [log_tag=""] [key=value ...]
# Examples:
#   bash run_train.sh scripts/train_voc.py 0,1 2 29501 exp1 data.root=/data/VOC2012
#   bash run_train.sh scripts/train_coco.py 0 1 29502 "" --config configs/ablations/no_lvc.yaml
# Without a GPU it says so and runs on CPU (gloo when gpu_number > 1).
set -euo pipefail
source "$(dirname "$0")/scripts/_env.sh"
source "$EXCEL_ROOT/scripts/_launch.sh"
if [ $# -lt 1 ]; then sed -n '2,8p' "$0"; exit 2; fi
script="$1"; devices="${2:-0}"; nproc="${3:-1}"; port="${4:-29501}"; tag="${5:-}"
shift $(( $# < 5 ? $# : 5 ))
excel_env
extra=()
[ -n "$tag" ] && extra+=("run.log_tag=$tag")
excel_launch "$script" "$devices" "$nproc" "$port" "${extra[@]}" "$@"
