"""Checkpoints: the file format (``files``: atomic save, validated load, rotation, RNG states), the reference's
files (``reference``: recognise and convert, algorithm.md §9.4a) and trained weights into a model (``weights``).

``files`` is imported here at once (torch only); ``reference`` and ``weights`` build CLIP models, so their names are
imported on first use and ``import excel.engine`` stays light.
"""
from __future__ import annotations

import importlib
from typing import Any

from excel.engine.checkpoint.files import (CHECKPOINT_FORMAT, CheckpointError, capture_rng_states, check_compatible,
                                           checkpoint_meta, class_count_mismatch, latest_checkpoint, load_checkpoint,
                                           periodic_checkpoint_path, prune_checkpoints, restore_rng_states,
                                           save_checkpoint, strip_module_prefix)

_LAZY = {"ReferenceCheckpoint": "reference", "is_reference_state": "reference", "reference_key_map": "reference",
         "convert_reference_state": "reference", "clip_from_state": "reference", "save_converted": "reference",
         "build_seeded_model": "weights", "load_model_weights": "weights", "load_trained_model": "weights"}

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "capture_rng_states", "check_compatible", "checkpoint_meta",
           "class_count_mismatch", "latest_checkpoint", "load_checkpoint", "periodic_checkpoint_path",
           "prune_checkpoints", "restore_rng_states", "save_checkpoint", "strip_module_prefix", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"excel.engine.checkpoint.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'excel.engine.checkpoint' has no attribute {name!r}")
