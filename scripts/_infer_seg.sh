# Shared body of infer_seg_voc.sh and infer_seg_coco.sh (sourced, not run on its own):
#   excel_infer_seg TOOL DEFAULT_PORT [tools/<any>.py] [gpu_device=0] [gpu_number=1] [infer_set=val] [checkpoint]
#                   [key=value | --config FILE ...]
# A leading tool path (the reference's form: bash infer_seg_voc.sh tools/infer_lam.py 0 1 val ...) is the tool that
# runs, as in infer_lam.sh; the script says so.
# The positional arguments end at the first --flag or key=value. MASTER_PORT in the environment replaces
# DEFAULT_PORT; NNODES, NODE_RANK and MASTER_ADDR spread the run over several machines (scripts/_launch.sh).
excel_infer_seg() {
    local tool="$1" port="${MASTER_PORT:-$2}"
    shift 2
    case "${1:-}" in *.py)
        if [ "$1" != "$tool" ]; then echo "[excel] running $1 (the tool given first) instead of $tool"; fi
        tool="$1"
        shift ;;
    esac
    local n
    n=$(excel_count_positional 4 "$@")
    local pos=("${@:1:n}")
    shift "$n"
    local devices="${pos[0]-0}" nproc="${pos[1]:-1}" split="${pos[2]:-val}" ckpt="${pos[3]:-}"
    excel_env
    local extra=("infer.split=$split")
    [ -n "$ckpt" ] && extra+=("infer.checkpoint=$ckpt")
    excel_launch "$tool" "$devices" "$nproc" "$port" "${extra[@]}" "$@"
}
