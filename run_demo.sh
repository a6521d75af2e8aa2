#!/usr/bin/env bash
# The whole ExCEL pipeline on a generated mini dataset, on CPU, in a few minutes:
# training-free pseudo labels with their mIoU, a short training run, multi-scale inference with and without CRF.
# Creates .venv on first use. Real ViT-B/16 weights are used when available (--weights FILE, the open_clip cache,
# or a download); otherwise a tiny random-init CLIP runs, and the demo says its numbers are meaningless.
# Usage: bash run_demo.sh [--out demo_out] [--weights /path/to/ViT-B-16.pt] [--tiny] [key=value ...]
set -euo pipefail
source "$(dirname "$0")/scripts/_env.sh"
excel_env
cd "$EXCEL_ROOT"
exec "$PYTHON" tools/demo.py "$@"
