"""Configuration: base.yaml <- experiment file(s) <- command-line ``key=value`` overrides.

Every key lives in ``configs/base.yaml``. Experiment files hold differences only and may chain
other files with ``_base_: other.yaml`` (relative to the file). The merged config is in omegaconf
struct mode, so an unknown key anywhere is an error that names it.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, Sequence

import torch
import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from excel.errors import ExcelError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
BASE_CONFIG = CONFIG_DIR / "base.yaml"


class ConfigError(ExcelError, ValueError):
    """A config file, key or value is not what the project expects."""


def _read_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        cfg = OmegaConf.load(path)
    except (OmegaConfBaseException, OSError, ValueError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot parse config file {path}: {err}") from err
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return cfg


def _file_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[DictConfig]:
    """The configs of ``path`` and of its ``_base_`` ancestors, ancestors first."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config files include each other in a loop: {' -> '.join(map(str, seen + (path,)))}")
    cfg = _read_yaml(path)
    chain: list[DictConfig] = []
    base = cfg.pop("_base_", None)
    if base is not None:
        bases = [base] if isinstance(base, str) else list(base)
        for b in bases:
            chain.extend(_file_chain((path.parent / b), seen + (path,)))
    chain.append(cfg)
    return chain


def _kind(value: object) -> str | None:
    """The type family a config value must keep: section, list, bool, number, string (None: anything goes)."""
    if isinstance(value, (DictConfig, dict)):
        return "section"
    if isinstance(value, (ListConfig, list, tuple)):
        return "list"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


def _check_types(base: DictConfig, other: DictConfig, source: str, prefix: str = "") -> None:
    """Refuse a value whose type family differs from the base value's (null in either place is allowed)."""
    for key in other.keys():
        if key not in base:
            continue  # unknown keys are reported by the merge
        full = f"{prefix}{key}"
        old, new = base._get_node(key)._value(), other._get_node(key)._value()  # raw values, interpolations kept
        old_kind, new_kind = _kind(old), _kind(new)
        if old_kind is None or new_kind is None or old_kind == new_kind or (old_kind == "string" and new_kind == "number"):
            if old_kind == new_kind == "section":
                _check_types(base[key], other[key], source, full + ".")
            continue
        raise ConfigError(f"config key '{full}' in {source} must be a {old_kind} (like its default {old!r}), "
                          f"got {new!r}")


def _merge_strict(base: DictConfig, other: DictConfig, source: str) -> DictConfig:
    _check_types(base, other, source)
    try:
        return OmegaConf.merge(base, other)  # type: ignore[return-value]
    except (ConfigKeyError, ConfigAttributeError) as err:
        key = getattr(err, "full_key", None) or str(err)
        raise ConfigError(f"unknown config key '{key}' in {source}; every key must be defined in {BASE_CONFIG.name}") from err
    except OmegaConfBaseException as err:
        raise ConfigError(f"bad value in {source}: {err}") from err


def load_config(path: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
                overrides: Sequence[str] | Iterable[str] = ()) -> DictConfig:
    """Merge ``configs/base.yaml`` <- ``path`` (and its ``_base_`` chain) <- ``key=value`` overrides.

    Args:
        path: experiment YAML, a list of them (merged in order), or None for the base config alone.
        overrides: dotted ``key=value`` strings (values parsed as YAML: ``train.max_iters=10``).
    Returns:
        A struct-mode DictConfig; reading or setting an unknown key raises.
    Raises:
        ConfigError: a missing file, an unknown key (named in the message) or a malformed override.
    """
    cfg = _read_yaml(BASE_CONFIG)
    OmegaConf.set_struct(cfg, True)
    paths = [] if path is None else [path] if isinstance(path, (str, os.PathLike)) else list(path)
    for one in paths:
        for part in _file_chain(Path(one)):
            cfg = _merge_strict(cfg, part, str(one))
    overrides = list(overrides)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key = item.split("=", 1)[0].strip()
        if OmegaConf.select(cfg, key, default="__missing__") == "__missing__" and not _key_exists(cfg, key):
            raise ConfigError(f"unknown config key '{key}' in command-line override '{item}'; "
                              f"every key must be defined in {BASE_CONFIG.name}")
    if overrides:
        try:
            cfg = _merge_strict(cfg, OmegaConf.from_dotlist(overrides), "command-line overrides")
        except OmegaConfBaseException as err:
            raise ConfigError(f"bad command-line override: {err}") from err
    OmegaConf.set_struct(cfg, True)
    return cfg


def _key_exists(cfg: DictConfig, dotted: str) -> bool:
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return False
        node = node[part]
    return True


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; otherwise ``torch.device(spec)`` (checked to exist)."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"run.device={spec!r} but CUDA is not available on this machine; use run.device=cpu or auto")
    return device


def save_config(cfg: DictConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically)."""
    from excel.utils.io import atomic_write_text

    atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))
