#!/usr/bin/env bash
# The GPU check: the CUDA tests, bench_excel.py in fp32 and bf16, a 1-process NCCL torchrun training at ViT-B/16 size
# through the LVC switch (fp32 and train.amp=bf16), MS+flip inference (+CRF) on 50 generated images, and the
# projected wall time of the VOC and COCO schedules. Writes <out>/gpu_report.json and gpu_report.md (the table the
# README quotes; its time is in docs/performance.md). Random-init weights, generated data, nothing downloaded.
# Usage: bash benchmarks/gpu_check.sh [--out DIR] [--iters N] [--skip stage,...] [--smoke]
#   --smoke runs the same stages on the CPU with the tiny model (checks the script, not the GPU).
# Python: $EXCEL_PYTHON (or $PYTHON) if set, else the active venv or conda env, else the project's .venv if it
# exists, else python3 (a GPU host's own torch is fine). Nothing is installed unless EXCEL_WHEELS is given.
# Offline host missing packages: EXCEL_WHEELS=DIR installs the wheels (and a pydensecrf2 sdist) found there first.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PYTHON="${EXCEL_PYTHON:-${PYTHON:-}}"
if [ -z "$PYTHON" ]; then
    for env in "${VIRTUAL_ENV:-}" "${CONDA_PREFIX:-}" "$ROOT/.venv"; do
        if [ -n "$env" ] && [ -x "$env/bin/python" ]; then PYTHON="$env/bin/python"; break; fi
    done
    PYTHON="${PYTHON:-python3}"
fi
if [ -n "${EXCEL_WHEELS:-}" ]; then
    site="${TMPDIR:-/tmp}/excel_site"
    echo "[gpu_check] installing the packages in $EXCEL_WHEELS into $site"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$EXCEL_WHEELS"/*.whl
    for sdist in "$EXCEL_WHEELS"/*.tar.gz; do
        [ -e "$sdist" ] || continue
        "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation --target "$site" "$sdist" \
            || echo "[gpu_check] could not build $sdist (the CRF stage will fail)"
    done
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
exec "$PYTHON" benchmarks/gpu_check.py "$@"
