"""Logging setup shared by the entry points: console on every rank (warnings only off rank 0), file on rank 0."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from excel.utils.paths import REPO_ROOT

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _QuietOpenClip(logging.Filter):
    """Drop open_clip's INFO chatter (it logs model-building steps on the root logger); keep its warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "open_clip" not in record.pathname


def setup_logging(log_file: str | Path | None = None, rank: int = 0, level: int = logging.INFO) -> None:
    """Configure the root logger once: INFO on rank 0 (console + ``log_file``), WARNING elsewhere."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(level if rank == 0 else logging.WARNING)
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
    console.addFilter(_QuietOpenClip())
    root.addHandler(console)
    if log_file is not None and rank == 0:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")
        file_handler.setFormatter(logging.Formatter(_FORMAT))
        file_handler.addFilter(_QuietOpenClip())
        root.addHandler(file_handler)
    for noisy in ("PIL", "matplotlib", "urllib3", "httpx", "huggingface_hub", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def git_revision() -> str:
    """The repository's HEAD commit (with ``-dirty`` when the tree has changes), or ``unknown`` (also for an
    installed package, which has no repository)."""
    if not (REPO_ROOT / ".git").exists():
        return "unknown"
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("-dirty" if dirty else "")
