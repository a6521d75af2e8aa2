"""Run multi-process tests with device-checked collectives (see tests/collective_check/sitecustomize.py)."""
from __future__ import annotations

import os
from pathlib import Path

CHECK_DIR = Path(__file__).resolve().parent / "collective_check"
REPO = Path(__file__).resolve().parent.parent


def checked_env(report: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default os.environ) with the checker on PYTHONPATH (before the repo) and its report file set."""
    env = dict(os.environ if base is None else base)
    paths = [str(CHECK_DIR), str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["EXCEL_CHECK_COLLECTIVES"] = str(report)
    return env


def checked_calls(report: Path) -> list[tuple[int, str, str, str]]:
    """(rank, collective, device, caller) of every checked call the processes made."""
    if not report.is_file():
        return []
    rows = [line.split() for line in report.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(int(r[0]), r[1], r[2], r[3]) for r in rows]
