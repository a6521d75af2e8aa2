"""excel: ExCEL (CVPR 2025) weakly supervised semantic segmentation with CLIP, in PyTorch.

Library layout and tensor contracts: docs/architecture.md. Quick start::

    from excel import build_model, load_config
    model = build_model(load_config("voc.yaml"))   # a shipped config by name, or a path

The top-level names are imported on first use, so light submodules (e.g. the CRF worker of
``excel.evaluation.crf``) start without importing torch.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ExCEL", "build_model", "load_config"]
__version__ = "0.1.0"

_LAZY = {"ExCEL": "excel.model", "build_model": "excel.model", "load_config": "excel.config"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'excel' has no attribute {name!r}")
