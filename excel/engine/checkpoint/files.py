"""Training checkpoints: atomic save, validated load, periodic rotation, RNG state capture and restore.

A checkpoint is one ``torch.save`` of a plain dict (loadable with ``weights_only=True``):

    format "excel-checkpoint", version 1,
    model      state dict (decoder only unless ``train.save_full_model``), saved from the unwrapped model
    optimizer  optimizer state dict (or None), iteration (int: iterations completed),
    config     the resolved config as a plain dict,
    meta       dict(backbone, pretrained, num_classes, embed_dim, git_revision, ...),
    rng        dict(torch, cuda (current device), numpy, python) generator states of the saving process,
    plus the keys of ``extra`` (e.g. ``scaler``) at the top level.

Periodic checkpoints live in ``<work_dir>/checkpoints/iter_<iteration:07d>.pth``; the newest ``keep`` are kept.
"""
from __future__ import annotations

import copy
import logging
import os
import pickle
import random
import re
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from excel.errors import ExcelError
from excel.utils.io import atomic_torch_save
from excel.utils.logging import git_revision

log = logging.getLogger(__name__)

__all__ = ["CheckpointError", "CHECKPOINT_FORMAT", "save_checkpoint", "load_checkpoint", "latest_checkpoint",
           "periodic_checkpoint_path", "prune_checkpoints", "checkpoint_meta", "check_compatible",
           "strip_module_prefix", "capture_rng_states", "restore_rng_states"]

CHECKPOINT_FORMAT = "excel-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
_PERIODIC = re.compile(r"^iter_(\d+)\.pth$")
_RESERVED = ("format", "version", "model", "optimizer", "iteration", "config", "meta", "rng")
_INFORMATIONAL_META = frozenset({"git_revision", "pretrained"})  # differences here do not block loading
_FILE_SUFFIXES = (".pth", ".pt", ".ckpt")


class CheckpointError(ExcelError, ValueError):
    """A checkpoint file cannot be read, is not a checkpoint, or does not fit the current config."""


# ----------------------------------------------------------------------------- RNG states
def capture_rng_states() -> dict[str, Any]:
    """Generator states of torch (CPU, and the current CUDA device once CUDA is in use), numpy's global RNG and
    python ``random``. Only the current device is captured so that rank 0 never touches the other ranks' GPUs."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    return {
        "torch": torch.get_rng_state(),
        "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": random.getstate(),
    }


def restore_rng_states(states: Mapping[str, Any] | None) -> None:
    """Restore what :func:`capture_rng_states` captured; ``None`` (an old or plain checkpoint) does nothing."""
    if not states:
        return
    if "torch" in states:
        torch.set_rng_state(states["torch"].cpu().to(torch.uint8))
    cuda_states = states.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda_states[0].cpu().to(torch.uint8))
    if "numpy" in states:
        s = states["numpy"]
        keys = np.asarray(s["keys"].cpu().numpy() if torch.is_tensor(s["keys"]) else s["keys"]).astype(np.uint32)
        np.random.set_state((s["kind"], keys, int(s["pos"]), int(s["has_gauss"]), float(s["gauss"])))
    if "python" in states:
        version, internal, gauss = states["python"]
        random.setstate((version, tuple(internal), gauss))


# ----------------------------------------------------------------------------- metadata
def _plain_config(cfg: DictConfig | Mapping[str, Any] | None) -> dict[str, Any]:
    if cfg is None:
        return {}
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return copy.deepcopy(dict(cfg))


def checkpoint_meta(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """What a checkpoint must agree with to be loaded: backbone, num_classes (with background), decoder width.

    Also records ``pretrained`` and the git revision (informational, not compared).
    """
    plain = _plain_config(cfg)
    try:
        return {"backbone": plain["model"]["clip"]["name"], "pretrained": plain["model"]["clip"]["pretrained"],
                "num_classes": len(plain["data"]["class_names"]) + 1,
                "embed_dim": int(plain["model"]["decoder"]["embed_dim"]), "git_revision": git_revision()}
    except KeyError as err:
        raise CheckpointError(f"config lacks key {err} needed for the checkpoint metadata "
                              f"(model.clip.name, model.clip.pretrained, data.class_names, model.decoder.embed_dim)") from err


def check_compatible(ckpt_meta: Mapping[str, Any], expected_meta: Mapping[str, Any], source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` naming every key (num_classes, backbone, embed_dim, ...) whose value differs.

    Keys present on one side only, and the informational ``git_revision`` / ``pretrained``, are not compared.
    """
    problems = [_meta_difference(key, ckpt_meta[key], expected_meta[key]) for key in expected_meta
                if key in ckpt_meta and key not in _INFORMATIONAL_META and ckpt_meta[key] != expected_meta[key]]
    if problems:
        raise CheckpointError(f"{source} does not fit the current config: " + "; ".join(problems))


def class_count_mismatch(in_checkpoint: int, in_config: int) -> str:
    """A class-count mismatch in the user's terms: foreground classes, background counted apart.

    Args:
        in_checkpoint, in_config: output classes including background (num_classes, classifier rows).
    """
    return (f"the checkpoint predicts {in_checkpoint} classes, i.e. {in_checkpoint - 1} foreground classes "
            f"(+ background), but the config has {in_config - 1} foreground classes (+ background) in "
            f"data.class_names")


def _meta_difference(key: str, in_checkpoint: Any, in_config: Any) -> str:
    if key == "num_classes" and isinstance(in_checkpoint, int) and isinstance(in_config, int):
        return class_count_mismatch(in_checkpoint, in_config)
    return f"{key} is {in_checkpoint!r} in the checkpoint but {in_config!r} in the config"


def strip_module_prefix(state_dict: Mapping[str, Any], prefix: str = "module.") -> "OrderedDict[str, Any]":
    """Remove a leading ``prefix`` (DistributedDataParallel's ``module.``) from every key that has it."""
    return OrderedDict((k[len(prefix):] if k.startswith(prefix) else k, v) for k, v in state_dict.items())


# ----------------------------------------------------------------------------- save
def periodic_checkpoint_path(work_dir: str | os.PathLike, iteration: int) -> Path:
    return Path(work_dir) / CHECKPOINT_DIR / f"iter_{int(iteration):07d}.pth"


def _periodic_checkpoints(work_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    folder = Path(work_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_file() and (m := _PERIODIC.match(p.name))]
    return sorted(found)


def latest_checkpoint(work_dir: str | os.PathLike) -> Path | None:
    """The periodic checkpoint of ``work_dir`` with the highest iteration, or None when there is none."""
    found = _periodic_checkpoints(work_dir)
    return found[-1][1] if found else None


def prune_checkpoints(work_dir: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` (>= 1) periodic checkpoints of ``work_dir``; returns the deleted paths."""
    if int(keep) < 1:
        raise ValueError(f"train.keep_checkpoints={keep}: at least the latest checkpoint must be kept (>= 1)")
    found = _periodic_checkpoints(work_dir)
    doomed = [p for _, p in found[: max(0, len(found) - int(keep))]]
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def save_checkpoint(path: str | os.PathLike, model_state: Mapping[str, Any], optimizer: Any, iteration: int,
                    cfg: DictConfig | Mapping[str, Any] | None, extra: Mapping[str, Any] | None = None,
                    meta: Mapping[str, Any] | None = None, keep: int | None = None) -> Path:
    """Write a checkpoint atomically (a reader never sees a partial file) and return its path.

    Args:
        path: a file (``*.pth``/``*.pt``/``*.ckpt``), or a run folder: then the file is
            :func:`periodic_checkpoint_path` and, with ``keep``, only the newest ``keep`` periodic ones remain.
        model_state: state dict of the unwrapped model (``module.`` prefixes are stripped).
        optimizer: an optimizer (its ``state_dict()`` is stored), a state dict, or None.
        iteration: iterations completed (the loop resumes at this 0-based iteration).
        cfg: the resolved config (stored as a plain dict).
        extra: more top-level entries (e.g. ``scaler``); may not reuse a reserved key.
        meta: compatibility metadata; default :func:`checkpoint_meta` (cfg). ``git_revision`` is added if absent.
    """
    target = Path(path)
    periodic = target.suffix not in _FILE_SUFFIXES
    if periodic:
        target = periodic_checkpoint_path(target, iteration)
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(_RESERVED))
    if clash:
        raise ValueError(f"save_checkpoint: extra entries {clash} collide with reserved checkpoint keys {_RESERVED}")
    meta = dict(meta) if meta is not None else (checkpoint_meta(cfg) if cfg is not None else {})
    if "git_revision" not in meta:
        meta["git_revision"] = git_revision()
    opt_state = optimizer.state_dict() if hasattr(optimizer, "state_dict") else optimizer
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
               "model": strip_module_prefix(model_state), "optimizer": opt_state, "iteration": int(iteration),
               "config": _plain_config(cfg), "meta": meta, "rng": capture_rng_states(), **extra}
    atomic_torch_save(payload, target)
    if periodic and keep is not None:
        for gone in prune_checkpoints(target.parent.parent, keep):
            log.info("removed old checkpoint %s (train.keep_checkpoints=%d)", gone, keep)
    return target


# ----------------------------------------------------------------------------- load
def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
_PICKLE_MAGIC = b"\x80"  # torch's legacy format starts with a pickle protocol opcode


def _read_error(path: Path, err: Exception | None) -> CheckpointError:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if size == 0:
        why = "the file is empty"
    elif magic == _ZIP_MAGIC and not zipfile.is_zipfile(path):
        why = f"the file is truncated ({size} bytes; an interrupted copy or write?)"
    else:
        why = "it is not a PyTorch checkpoint"
    detail = f" ({type(err).__name__}: {err})" if err is not None else ""
    return CheckpointError(f"cannot read checkpoint {path}: {why}{detail}")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, or a plain model state dict.

    A plain state dict (e.g. the reference's ``model.state_dict()``, or ``{"state_dict": ...}``) is returned as
    ``dict(format="state_dict", model=..., optimizer=None, iteration=None, config={}, meta={}, rng=None)``.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: unreadable, truncated, of another format, or from a newer checkpoint version.
    """
    path = Path(path)
    if not path.is_file():
        hint = " (it is a folder: use latest_checkpoint(work_dir) or name the .pth file)" if path.is_dir() else ""
        raise FileNotFoundError(f"checkpoint not found: {path}{hint}")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not (head == _ZIP_MAGIC or head.startswith(_PICKLE_MAGIC)):
        raise _read_error(path, None)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError, OSError) as err:
        raise _read_error(path, err) from err
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        version = obj.get("version")
        if not isinstance(version, int) or version > CHECKPOINT_VERSION:
            raise CheckpointError(f"checkpoint {path} has format version {version!r}; this code reads up to "
                                  f"{CHECKPOINT_VERSION}")
        missing = [k for k in _RESERVED if k not in obj]
        if missing:
            raise CheckpointError(f"checkpoint {path} lacks the entries {missing}")
        return dict(obj)
    state = obj.get("state_dict") if isinstance(obj, Mapping) and _is_state_dict(obj.get("state_dict")) else obj
    if _is_state_dict(state):
        log.info("%s is a plain state dict (%d tensors), not an excel checkpoint", path, len(state))
        return {"format": "state_dict", "version": None, "model": OrderedDict(state), "optimizer": None,
                "iteration": None, "config": {}, "meta": {}, "rng": None}
    what = f"a dict with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
    raise CheckpointError(f"{path} is not an excel checkpoint nor a model state dict: it holds {what}")
