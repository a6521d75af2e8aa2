# Shared body of infer_seg_voc.sh / infer_seg_coco.sh (sourced): the reference's positional arguments
#   TOOL_AS_GIVEN [gpu_device=0] [gpu_number=1] [infer_set=val] [checkpoint_path] [key=value ...]
# The seed passes a tool path first; it is accepted and ignored: $EXCEL_SEG_TOOL is what runs.
excel_infer_seg() {
    local tool="$1" port="$2"
    shift 2
    local devices="${2:-0}" nproc="${3:-1}" split="${4:-val}" ckpt="${5:-}"
    shift $(( $# < 5 ? $# : 5 ))
    excel_env
    local extra=("infer.split=$split")
    [ -n "$ckpt" ] && extra+=("infer.checkpoint=$ckpt")
    excel_launch "$tool" "$devices" "$nproc" "${MASTER_PORT:-$port}" "${extra[@]}" "$@"
}
