# Shared launcher, sourced by run_train.sh and the infer_*.sh scripts (not run on its own).
#   excel_launch SCRIPT GPU_DEVICES GPU_NUMBER MASTER_PORT [args ...]
# One plain process for GPU_NUMBER=1 on one machine; otherwise torchrun with GPU_NUMBER processes per machine.
# GPU_DEVICES becomes CUDA_VISIBLE_DEVICES; an empty GPU_DEVICES ("") keeps the one the scheduler set.
# Several machines: set in the environment of every machine
#   NNODES       number of machines (default 1)
#   NODE_RANK    this machine's index, 0 .. NNODES-1 (default 0)
#   MASTER_ADDR  address of machine 0, reachable from all (default 127.0.0.1)
#   MASTER_PORT  a free port on machine 0 (the scripts' own default otherwise)
# and torchrun gets them as --nnodes, --node_rank, --master_addr and --master_port.

# excel_count_positional MAX ARGS...: how many leading ARGS (at most MAX) are positional, i.e. come before the
# first --flag or key=value argument.
excel_count_positional() {
    local max="$1" n=0 arg
    shift
    for arg in "$@"; do
        [ "$n" -ge "$max" ] && break
        case "$arg" in -*|*=*) break ;; esac
        n=$((n + 1))
    done
    echo "$n"
}

excel_launch() {
    local script="$1" devices="$2" nproc="$3" port="$4"
    shift 4
    local nnodes="${NNODES:-1}" node_rank="${NODE_RANK:-0}" addr="${MASTER_ADDR:-127.0.0.1}" name value
    for name in nproc nnodes node_rank port; do
        value="${!name}"
        if ! [[ "$value" =~ ^[0-9]+$ ]]; then
            echo "[excel] error: $name must be a whole number, got '$value'" >&2
            return 2
        fi
    done
    if [ "$node_rank" -ge "$nnodes" ]; then
        echo "[excel] error: NODE_RANK=$node_rank must be below NNODES=$nnodes" >&2
        return 2
    fi
    if [ ! -f "$EXCEL_ROOT/$script" ] && [ ! -f "$script" ]; then
        echo "[excel] no such script: $script" >&2
        return 2
    fi
    [ -f "$script" ] || script="$EXCEL_ROOT/$script"
    if "$PYTHON" -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        if [ -z "$devices" ]; then   # keep the scheduler's assignment (SLURM sets CUDA_VISIBLE_DEVICES)
            echo "[excel] GPUs as assigned (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-all}), $nproc process(es) per machine"
        else
            export CUDA_VISIBLE_DEVICES="$devices"
            echo "[excel] GPUs $devices, $nproc process(es) per machine"
        fi
    else
        echo "[excel] no GPU found: running on CPU with $nproc process(es) per machine (gloo backend)"
        export CUDA_VISIBLE_DEVICES=""
    fi
    if [ "$nproc" -gt 1 ] || [ "$nnodes" -gt 1 ]; then
        echo "[excel] torchrun: machine $node_rank of $nnodes, master $addr:$port"
        "$PYTHON" -m torch.distributed.run --nnodes="$nnodes" --node_rank="$node_rank" --master_addr="$addr" \
            --master_port="$port" --nproc_per_node="$nproc" "$script" "$@"
    else
        "$PYTHON" "$script" "$@"
    fi
}
