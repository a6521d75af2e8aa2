"""Configuration: base.yaml <- experiment file(s) <- command-line ``key=value`` overrides.

Every key lives in ``configs/base.yaml``. Experiment files hold differences only and may chain
other files with ``_base_: other.yaml`` (relative to the file, else a shipped config of that name). The merged
config is in omegaconf struct mode, so an unknown key anywhere is an error that names it.

The shipped configs are the top-level ``configs/`` folder of a checkout (where you edit them); an installed
package carries a copy as ``excel.configs``. A name that is not an existing file (``voc.yaml``,
``ablations/no_tse.yaml``, ``configs/coco.yaml``) is looked up there, so ``load_config("voc.yaml")`` works from
any directory.

Layers cannot undo each other silently: when a later file's own ``_base_`` chain would change a key that an
earlier file set, loading stops and names the keys (``allow_base_reset=True``, the ``--allow-base-reset`` flag of
the tools, accepts it). Overlay files (``test_tiny.yaml``, ``ablations/*.yaml``) therefore carry no ``_base_``.
"""
from __future__ import annotations

import logging
import os
from importlib import resources
from pathlib import Path
from typing import Iterable, Mapping, Sequence, Union

import torch
import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from excel.errors import ExcelError
from excel.utils.paths import REPO_ROOT

log = logging.getLogger(__name__)


def _config_dir() -> Path:
    """The checkout's ``configs/`` when excel runs from a source checkout, else the copy installed with it."""
    checkout = REPO_ROOT / "configs"
    if (checkout / "base.yaml").is_file():
        return checkout
    return Path(str(resources.files("excel"))) / "configs"


CONFIG_DIR = _config_dir()
BASE_CONFIG = CONFIG_DIR / "base.yaml"

# One layer of a config: a YAML file (path or shipped name), or a config held in memory.
Layer = Union[str, os.PathLike, Mapping, DictConfig]


class ConfigError(ExcelError, ValueError):
    """A config file, key or value is not what the project expects."""


def shipped_configs() -> list[str]:
    """The shipped config files, named relative to the config folder (``voc.yaml``, ``ablations/no_tse.yaml``)."""
    return sorted(p.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("*.yaml"))


def find_config(name: str | os.PathLike, relative_to: str | os.PathLike | None = None) -> Path:
    """The YAML file that ``name`` stands for.

    ``name`` itself when it is an existing file (a relative name is taken from the working directory, or from
    ``relative_to``: the folder of the file whose ``_base_`` names it); else the shipped config of that name, where
    a leading ``configs/`` and a missing ``.yaml`` may be left out or in (``voc``, ``voc.yaml``,
    ``configs/ablations/no_tse.yaml``). An absolute path is never replaced by a shipped file.

    Raises:
        ConfigError: no such file, naming the place looked in and listing the shipped configs.
    """
    path = Path(name).expanduser()
    here = path if path.is_absolute() or relative_to is None else Path(relative_to) / path
    if here.is_file():
        return here
    if not path.is_absolute() and ".." not in path.parts:
        parts = path.parts[1:] if path.parts[:1] == ("configs",) else path.parts
        for candidate in (Path(*parts), Path(*parts).with_name(Path(*parts).name + ".yaml")) if parts else ():
            if (CONFIG_DIR / candidate).is_file():
                return CONFIG_DIR / candidate
    where = f" (looked in {Path(relative_to)})" if relative_to is not None and not path.is_absolute() else ""
    shipped = "" if path.is_absolute() else f"; the shipped configs ({CONFIG_DIR}) are: {', '.join(shipped_configs())}"
    raise ConfigError(f"config file not found: {name}{where}{shipped}")


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


def _in_memory(layer: Mapping | DictConfig, label: str) -> DictConfig:
    """A private, flag-free copy of a config given in memory (interpolations kept)."""
    try:
        data = OmegaConf.to_container(layer, resolve=False) if isinstance(layer, DictConfig) else dict(layer)
        return OmegaConf.create(data)
    except (OmegaConfBaseException, TypeError, ValueError) as err:
        raise ConfigError(f"{label} is not a valid config: {err}") from err


def _layer_chain(layer: Layer, label: str, seen: tuple[Path, ...] = (),
                 relative_to: Path | None = None) -> list[tuple[str, DictConfig]]:
    """(source, config) of ``layer`` and of its ``_base_`` ancestors, ancestors first; ``source`` names a file as
    the user would type it, or is ``label`` for a config held in memory."""
    if isinstance(layer, (Mapping, DictConfig)):
        path, source, cfg = None, label, _in_memory(layer, label)
    else:
        path = find_config(layer, relative_to).resolve()
        if path in seen:
            raise ConfigError(f"config files include each other in a loop: {' -> '.join(map(str, seen + (path,)))}")
        source, cfg = _short(path), _read_yaml(path)
    chain: list[tuple[str, DictConfig]] = []
    base = cfg.pop("_base_", None)
    if base is not None:
        bases = [base] if isinstance(base, str) else list(base)
        for b in bases:
            chain.extend(_layer_chain(str(b), label, seen + ((path,) if path else ()),
                                      path.parent if path else None))
    chain.append((source, cfg))
    return chain


def _leaf_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Dotted names of the values a config file sets (lists count as one value)."""
    keys: list[str] = []
    for key in cfg.keys():
        node = cfg._get_node(key)
        if isinstance(node, DictConfig) and len(node):
            keys.extend(_leaf_keys(node, f"{prefix}{key}."))
        else:
            keys.append(f"{prefix}{key}")
    return keys


_ABSENT = object()


def _plain_value(cfg: DictConfig, dotted: str) -> object:
    value = OmegaConf.select(cfg, dotted, default=_ABSENT, throw_on_resolution_failure=False)
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=False)
    return value


def _short(path: str | os.PathLike) -> str:
    """A config path as the user would type it: relative to the working directory or the repository if inside."""
    p = Path(path).resolve()
    for root in (Path.cwd(), REPO_ROOT):
        try:
            return str(p.relative_to(root))
        except ValueError:
            continue
    return str(p)


def _brief(value: object, width: int = 48) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 4] + " ..." + text[-1]


def _base_resets(before: DictConfig, after: DictConfig, bases: list[tuple[str, DictConfig]],
                 own: DictConfig, set_by: dict[str, str]) -> list[str]:
    """The keys that the ``_base_`` files ``bases`` change after an earlier layer set them (``own`` not resetting
    them itself), each described as ``key: old (layer) -> new (base file)``."""
    own_keys = set(_leaf_keys(own))
    problems: dict[str, str] = {}
    for base_source, part in bases:
        for key in _leaf_keys(part):
            if key in problems or key not in set_by or key in own_keys:
                continue
            old, new = _plain_value(before, key), _plain_value(after, key)
            if old != new:
                problems[key] = f"{key}: {_brief(old)} ({set_by[key]}) -> {_brief(new)} ({base_source})"
    return list(problems.values())


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
        raise ConfigError(_unknown_key(key, source)) from err
    except OmegaConfBaseException as err:
        raise ConfigError(f"bad value in {source}: {err}") from err


def _unknown_key(key: str, source: str) -> str:
    """The message for a key that base.yaml does not define."""
    return f"unknown config key '{key}' in {source}; every key must be defined in {BASE_CONFIG.name}"


def work_dir_of(cfg: DictConfig) -> Path:
    """The run folder: ``run.work_dir`` with ``_<run.log_tag>`` appended when a tag is given."""
    base = str(cfg.run.work_dir)
    return Path(f"{base}_{cfg.run.log_tag}" if cfg.run.log_tag else base)


def output_dir_of(cfg: DictConfig, tool: str) -> Path:
    """Where an inference tool writes: ``infer.output_dir``, or ``<work_dir>/<tool>_<infer.split>`` when it is
    null."""
    if cfg.infer.output_dir:
        return Path(cfg.infer.output_dir)
    return work_dir_of(cfg) / f"{tool}_{cfg.infer.split}"


def _as_layers(layers: object) -> list:
    if layers is None:
        return []
    if isinstance(layers, (str, os.PathLike, Mapping, DictConfig)):
        return [layers]
    return list(layers)  # type: ignore[call-overload]


def load_config(path: Layer | Sequence[Layer] | None = None,
                overrides: Sequence[str] | Iterable[str] = (), *,
                defaults: Layer | Sequence[Layer] | None = None,
                allow_base_reset: bool = False) -> DictConfig:
    """Merge ``configs/base.yaml`` <- ``defaults`` <- ``path`` (each with its ``_base_`` chain) <- overrides.

    A layer is a YAML file (a path; a name that is no existing file is looked up among the shipped configs, see
    :func:`find_config`) or a config held in memory (a ``DictConfig`` or a plain dict, e.g.
    ``{"train": {"max_iters": 10}}``; it may name ``_base_`` files too). Neither is modified.

    Args:
        path: the experiment layer, a list of them (merged in order), or None for the base config alone.
        overrides: dotted ``key=value`` strings (values parsed as YAML: ``train.max_iters=10``).
        defaults: layers merged before ``path`` that a later layer may replace freely: a tool's dataset config,
            the config stored in a checkpoint.
        allow_base_reset: accept a layer whose ``_base_`` chain changes keys that an earlier layer set.
    Returns:
        A struct-mode DictConfig; reading or setting an unknown key raises.
    Raises:
        ConfigError: a missing file (the shipped configs are listed), an unknown key (named in the message), a
            malformed override, or a layer's ``_base_`` chain undoing keys of an earlier layer (the keys and files
            are named).
    """
    cfg = _read_yaml(BASE_CONFIG)
    OmegaConf.set_struct(cfg, True)
    for i, one in enumerate(_as_layers(defaults), 1):
        for source, part in _layer_chain(one, "the stored config" if i == 1 else f"the stored config {i}"):
            cfg = _merge_strict(cfg, part, source)
    set_by: dict[str, str] = {}  # key -> the layer that set it
    for i, one in enumerate(_as_layers(path), 1):
        chain = _layer_chain(one, f"config layer {i} (given in memory)")
        bases, (layer_name, own) = chain[:-1], chain[-1]
        before = cfg
        for source, part in bases:
            cfg = _merge_strict(cfg, part, source)
        resets = [] if allow_base_reset else _base_resets(before, cfg, bases, own, set_by)
        if resets:
            listed = "; ".join(resets[:8]) + (f"; and {len(resets) - 8} more" if len(resets) > 8 else "")
            raise ConfigError(f"{layer_name}: its _base_ chain would silently undo {len(resets)} key(s) set by an "
                              f"earlier --config file: {listed}. Remove _base_ from the file meant to sit on top "
                              f"(an overlay needs none), change the --config order, or pass --allow-base-reset to "
                              f"accept it")
        cfg = _merge_strict(cfg, own, layer_name)
        for _, part in chain:
            set_by.update(dict.fromkeys(_leaf_keys(part), layer_name))
    overrides = list(overrides)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key = item.split("=", 1)[0].strip()
        if OmegaConf.select(cfg, key, default="__missing__") == "__missing__" and not _key_exists(cfg, key):
            raise ConfigError(_unknown_key(key, f"command-line override '{item}'"))
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
