#!/usr/bin/env bash
# Run the test suite (CPU only: no GPU, network, dataset or real CLIP weights needed).
# Usage: bash run_tests.sh [pytest args ...]
set -euo pipefail
source "$(dirname "$0")/scripts/_env.sh"
excel_env
cd "$EXCEL_ROOT"
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
exec "$PYTHON" -m pytest -q "$@"
