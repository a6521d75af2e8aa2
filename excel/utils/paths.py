"""Where the package lives: the folder above ``excel/`` is a source checkout's root, or site-packages once installed."""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
