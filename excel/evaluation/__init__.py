"""Scoring (streaming confusion-matrix mIoU, algorithm.md §9.1) and dense CRF post-processing (algorithm.md §9.2).

Names are imported on first use, so CRF worker processes (which unpickle ``excel.evaluation.crf``) skip torch.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["CRF_DEFAULTS", "CRFPool", "ConfusionMatrix", "confusion_matrix", "crf_params", "dense_crf"]

_LAZY = {"CRF_DEFAULTS": "crf", "CRFPool": "crf", "crf_params": "crf", "dense_crf": "crf",
         "ConfusionMatrix": "metrics", "confusion_matrix": "metrics"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"excel.evaluation.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'excel.evaluation' has no attribute {name!r}")
