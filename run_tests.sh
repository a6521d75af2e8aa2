#!/usr/bin/env bash
# Run the test suite (CPU only: no GPU, network, dataset or real CLIP weights needed), with the active environment
# when it has excel's requirements and pytest, else with ./.venv (made on first use; scripts/_env.sh).
# Usage: bash run_tests.sh [pytest args ...]
#   bash run_tests.sh                     everything (what CI runs)
#   bash run_tests.sh -m "not slow"       the quick loop: without the multi-process, ViT-B/16 and wheel tests
#   bash run_tests.sh tests/test_config.py -x
set -euo pipefail
source "$(dirname "$0")/scripts/_env.sh"
excel_env pytest
cd "$EXCEL_ROOT"
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
# Quiet by default; whatever -q/-v flags are passed, pytest keeps its summary line (it drops it below -1).
level=0
given=0
for arg in "$@"; do
    case "$arg" in
        --quiet) level=$((level - 1)); given=1 ;;
        --verbose) level=$((level + 1)); given=1 ;;
        --verbosity=*) level=${arg#--verbosity=}; given=1 ;;
        -*)
            if [[ "$arg" =~ ^-[qvxsl]+$ ]]; then
                q=${arg//[^q]/}
                v=${arg//[^v]/}
                level=$((level - ${#q} + ${#v}))
                if [ -n "$q$v" ]; then given=1; fi
            fi ;;
    esac
done
if [ "$given" = 0 ]; then level=-1; fi
if [ "$level" -lt -1 ]; then level=-1; fi
exec "$PYTHON" -m pytest "$@" --verbosity="$level"
