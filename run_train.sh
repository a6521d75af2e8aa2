#!/usr/bin/env bash
# Train ExCEL: one process, or torchrun on several GPUs and machines. Usage (the reference's positional form):
#   bash run_train.sh SCRIPT [gpu_devices=0] [gpu_number=1] [master_port=$MASTER_PORT or 29501] [log_tag=""] [key=value ...]
# gpu_devices "" keeps CUDA_VISIBLE_DEVICES as the scheduler set it. The Python: scripts/_env.sh (the active
# environment, EXCEL_PYTHON, or ./.venv).
# Examples:
#   bash run_train.sh scripts/train_voc.py 0,1 2 29501 exp1 data.root=/data/VOC2012
#   bash run_train.sh scripts/train_coco.py 0 1 29502 "" --config configs/ablations/no_lvc.yaml
# Several machines (gpu_number processes on each): on machine i of N run
#   NNODES=N NODE_RANK=i MASTER_ADDR=<machine 0> MASTER_PORT=29501 bash run_train.sh scripts/train_voc.py 0,1,2,3 4
# (scripts/slurm_train.sbatch does this under SLURM). train.batch_size is per process: the effective batch is
# batch_size x gpu_number x N. Without a GPU it says so and runs on CPU (gloo when there are several processes).
set -euo pipefail
source "$(dirname "$0")/scripts/_env.sh"
source "$EXCEL_ROOT/scripts/_launch.sh"
if [ $# -lt 1 ]; then awk 'NR > 1 && /^#/ {print; next} NR > 1 {exit}' "$0"; exit 2; fi
script="$1"
shift
n=$(excel_count_positional 4 "$@")
pos=("${@:1:n}")
shift "$n"
devices="${pos[0]-0}"; nproc="${pos[1]:-1}"; port="${pos[2]:-${MASTER_PORT:-29501}}"; tag="${pos[3]:-}"
excel_env
extra=()
[ -n "$tag" ] && extra+=("run.log_tag=$tag")
excel_launch "$script" "$devices" "$nproc" "$port" "${extra[@]}" "$@"
