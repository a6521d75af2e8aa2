"""How figures are written for people: the one percent formatter of logs, tables and reports."""
from __future__ import annotations

import math


def percent(value: float | None, missing: str = "nan") -> str:
    """``0.4567 -> "45.67"``; None, NaN or infinite -> ``missing``."""
    return missing if value is None or not math.isfinite(value) else f"{100 * value:.2f}"
