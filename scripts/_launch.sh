# Shared launcher: torchrun with the reference's positional arguments. Sourced by run_train.sh and infer_*.sh.
# excel_launch SCRIPT GPU_DEVICES GPU_NUMBER MASTER_PORT [extra args ...]
excel_launch() {
    local script="$1" devices="$2" nproc="$3" port="$4"
    shift 4
    if [ ! -f "$EXCEL_ROOT/$script" ] && [ ! -f "$script" ]; then
        echo "[excel] no such script: $script" >&2
        return 2
    fi
    [ -f "$script" ] || script="$EXCEL_ROOT/$script"
    if "$PYTHON" -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        export CUDA_VISIBLE_DEVICES="$devices"
        echo "[excel] GPUs $devices, $nproc process(es), master port $port"
    else
        echo "[excel] no GPU found: running on CPU with $nproc process(es) (gloo backend)"
        export CUDA_VISIBLE_DEVICES=""
    fi
    if [ "$nproc" -gt 1 ]; then
        "$PYTHON" -m torch.distributed.run --nproc_per_node="$nproc" --master_port="$port" "$script" "$@"
    else
        "$PYTHON" "$script" "$@"
    fi
}
