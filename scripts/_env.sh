# Shared shell helper: choose the Python that the scripts run. Sourced by run_demo.sh, run_tests.sh, run_train.sh,
# the infer_*.sh scripts and scripts/slurm_train.sbatch; `excel_env [optional requirement ...]` sets $PYTHON.
#
#   1. EXCEL_PYTHON=/path/to/python forces that interpreter. It must meet requirements.txt; nothing is installed.
#   2. Otherwise an active environment (an activated venv, $VIRTUAL_ENV, or conda env, $CONDA_PREFIX) in which torch
#      imports is used when it meets requirements.txt's bounds; a missing package stops the script with one line
#      naming it, and nothing is installed. An active environment without torch is passed over (said once).
#   3. Otherwise ./.venv, made on first use: requirements.txt under the exact pins of constraints.txt, then excel in
#      editable mode (network or a local package index needed; the script says so before it starts). With
#      EXCEL_NO_INSTALL=1 (compute nodes, scripts/slurm_train.sbatch) an incomplete ./.venv is an error instead.
EXCEL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export HF_HUB_DISABLE_TELEMETRY=1

_excel_same_dir() {
    [ "$(cd "$1" 2>/dev/null && pwd -P)" = "$(cd "$2" 2>/dev/null && pwd -P)" ]
}

# _excel_use PYTHON LABEL [--need NAME ...]: check PYTHON against requirements.txt and make it $PYTHON.
_excel_use() {
    local python="$1" label="$2" status=0
    shift 2
    if [ ! -x "$python" ] && ! command -v "$python" >/dev/null 2>&1; then
        echo "[excel] error: $label: no such interpreter" >&2
        return 1
    fi
    "$python" "$EXCEL_ROOT/scripts/_requirements_met.py" "$EXCEL_ROOT" --import-torch ${1+"$@"} || status=$?
    if [ "$status" != 0 ]; then
        echo "[excel] error: $label lacks what is named above; install it there (pip install -r requirements.txt)," \
             "or choose another interpreter with EXCEL_PYTHON=/path/to/python" >&2
        return 1
    fi
    PYTHON="$python"
    export PYTHONPATH="$EXCEL_ROOT${PYTHONPATH:+:$PYTHONPATH}"
}

_excel_venv_stale() {
    local stamp="$1" name
    [ -f "$stamp" ] || return 0
    for name in requirements.txt constraints.txt pyproject.toml; do
        [ "$EXCEL_ROOT/$name" -nt "$stamp" ] && return 0
    done
    return 1
}

# _excel_venv [--need NAME ...]: ./.venv, made and kept in step with requirements.txt + constraints.txt.
_excel_venv() {
    local venv="$EXCEL_ROOT/.venv"
    local stamp="$venv/.excel-installed"
    if _excel_venv_stale "$stamp" && [ -x "$venv/bin/python" ]; then
        # a manual install (README: pip install -r requirements.txt -c constraints.txt ...) is kept as it is
        if "$venv/bin/python" "$EXCEL_ROOT/scripts/_requirements_met.py" "$EXCEL_ROOT" --pins --editable \
                ${1+"$@"} 2>/dev/null; then
            touch "$stamp"
        fi
    fi
    if _excel_venv_stale "$stamp"; then
        if [ "${EXCEL_NO_INSTALL:-0}" = 1 ]; then
            [ -x "$venv/bin/python" ] && "$venv/bin/python" "$EXCEL_ROOT/scripts/_requirements_met.py" \
                "$EXCEL_ROOT" --pins --editable ${1+"$@"}
            echo "[excel] error: no Python with excel's requirements here, and EXCEL_NO_INSTALL=1 forbids installing:" \
                 "activate an environment that has them, set EXCEL_PYTHON=/path/to/python, or make $venv once on" \
                 "a machine with network (bash run_tests.sh)" >&2
            return 1
        fi
        if [ ! -x "$venv/bin/python" ]; then
            echo "[excel] no active environment with torch: creating $venv"
            python3 -m venv "$venv" || { echo "[excel] error: could not create a virtual environment with python3" >&2; return 1; }
        fi
        echo "[excel] installing requirements.txt with the pins of constraints.txt into $venv (needs network or a" \
             "local package index; first run: a few minutes)"
        "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1
        "$venv/bin/python" -m pip install -q -r "$EXCEL_ROOT/requirements.txt" -c "$EXCEL_ROOT/constraints.txt" \
            || return 1
        "$venv/bin/python" -m pip install -q --no-deps -e "$EXCEL_ROOT" || return 1
        touch "$stamp"
    fi
    export PATH="$venv/bin:$PATH"
    export PYTHONPATH="$EXCEL_ROOT${PYTHONPATH:+:$PYTHONPATH}"
    PYTHON="$venv/bin/python"
}

# excel_env [NAME ...]: set $PYTHON (see the top of this file); NAMEs are optional requirements the caller needs.
excel_env() {
    local needs=() name prefix status=0 report
    for name in "$@"; do needs+=(--need "$name"); done
    if [ -n "${EXCEL_PYTHON:-}" ]; then
        _excel_use "$EXCEL_PYTHON" "EXCEL_PYTHON=$EXCEL_PYTHON" ${needs[@]+"${needs[@]}"}
        return
    fi
    prefix="${VIRTUAL_ENV:-${CONDA_PREFIX:-}}"
    if [ -n "$prefix" ] && ! _excel_same_dir "$prefix" "$EXCEL_ROOT/.venv"; then
        if [ -x "$prefix/bin/python" ]; then
            report=$("$prefix/bin/python" "$EXCEL_ROOT/scripts/_requirements_met.py" "$EXCEL_ROOT" --import-torch \
                ${needs[@]+"${needs[@]}"} 2>&1) || status=$?
        else
            status=3
        fi
        if [ "$status" = 0 ]; then
            PYTHON="$prefix/bin/python"
            export PYTHONPATH="$EXCEL_ROOT${PYTHONPATH:+:$PYTHONPATH}"
            return
        elif [ "$status" != 3 ]; then   # torch imports: this is the environment meant, but it lacks something
            [ -n "$report" ] && echo "$report" >&2
            echo "[excel] error: the active environment $prefix lacks what is named above; install it there" \
                 "(pip install -r requirements.txt), or choose another interpreter with EXCEL_PYTHON=/path/to/python" >&2
            return 1
        fi
        echo "[excel] the active environment $prefix has no working torch: using $EXCEL_ROOT/.venv" >&2
    fi
    _excel_venv ${needs[@]+"${needs[@]}"}
}
