# Shared shell helpers: create .venv on first use and keep it in step with requirements.txt (an environment that
# already satisfies it, e.g. after the README's manual install, is used as it is).
# Sourced by run_demo.sh, run_tests.sh, run_train.sh and the infer_*.sh scripts.
EXCEL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export HF_HUB_DISABLE_TELEMETRY=1

excel_env() {
    local venv="$EXCEL_ROOT/.venv"
    local stamp="$venv/.excel-installed"
    if [ ! -x "$venv/bin/python" ]; then
        echo "[excel] creating $venv"
        python3 -m venv "$venv" || { echo "[excel] could not create a virtual environment with python3" >&2; return 1; }
    fi
    if [ ! -f "$stamp" ] || [ "$EXCEL_ROOT/requirements.txt" -nt "$stamp" ] || [ "$EXCEL_ROOT/pyproject.toml" -nt "$stamp" ]; then
        # a manual install (README: pip install -r requirements.txt && pip install --no-deps -e .) is kept as it is
        if "$venv/bin/python" "$EXCEL_ROOT/scripts/_requirements_met.py" "$EXCEL_ROOT" 2>/dev/null; then
            touch "$stamp"
        fi
    fi
    if [ ! -f "$stamp" ] || [ "$EXCEL_ROOT/requirements.txt" -nt "$stamp" ] || [ "$EXCEL_ROOT/pyproject.toml" -nt "$stamp" ]; then
        echo "[excel] installing requirements into $venv (first run: a few minutes)"
        "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1
        "$venv/bin/python" -m pip install -q -r "$EXCEL_ROOT/requirements.txt" || return 1
        "$venv/bin/python" -m pip install -q --no-deps -e "$EXCEL_ROOT" || return 1
        touch "$stamp"
    fi
    export PATH="$venv/bin:$PATH"
    export PYTHONPATH="$EXCEL_ROOT${PYTHONPATH:+:$PYTHONPATH}"
    PYTHON="$venv/bin/python"
}
