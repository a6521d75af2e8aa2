#!/usr/bin/env bash
# The whole ExCEL pipeline on the generated world, offline, on CPU (docs/organism.md, "The demo"): zero-shot mAP, training-free
# pseudo labels with their mIoU (+CRF), a short training run, multi-scale inference with and without the CRF.
# Runs the active environment or ./.venv (scripts/_env.sh). Real ViT-B/16 weights are used when available (--weights FILE, the open_clip cache,
# or a download); otherwise the model organism runs: a small CLIP pretrained on the world, shipped in the package.
# Usage: bash run_demo.sh [--out demo_out] [--weights /path/to/ViT-B-16.pt] [--organism] [--iters N] [key=value ...]
set -euo pipefail
source "$(dirname "$0")/scripts/_env.sh"
excel_env
cd "$EXCEL_ROOT"
exec "$PYTHON" tools/demo.py "$@"
