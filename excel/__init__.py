"""excel: ExCEL (CVPR 2025) weakly supervised semantic segmentation with CLIP, in PyTorch.

Library layout and tensor contracts: docs/architecture.md. Quick start::

    from excel import build_model, load_config
    model = build_model(load_config("configs/voc.yaml"))
"""
from excel.config import load_config
from excel.model import ExCEL, build_model

__all__ = ["ExCEL", "build_model", "load_config"]
__version__ = "0.1.0"
