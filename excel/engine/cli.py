"""Command-line parsing shared by the thin entry points in ``scripts/`` and ``tools/``."""
from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import Callable, Sequence

from omegaconf import DictConfig

from excel.config import CONFIG_DIR, ConfigError, load_config

log = logging.getLogger(__name__)


def config_parser(description: str, default_config: str | None) -> argparse.ArgumentParser:
    """A parser with ``--config FILE`` (repeatable, merged after the default) and trailing ``key=value`` overrides."""
    parser = argparse.ArgumentParser(description=description,
                                     epilog="Trailing key=value arguments override config keys (see configs/base.yaml).")
    add_config_flags(parser, default_config)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser


def add_config_flags(parser: argparse.ArgumentParser, default_config: str | None = None) -> None:
    """``--config FILE`` (repeatable: the layers, merged in order) and ``--allow-base-reset``."""
    default_note = f" (merged on top of configs/{default_config})" if default_config else ""
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help=f"experiment YAML or shipped config name{default_note}; may be given several times")
    add_base_reset_flag(parser)


def add_base_reset_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-base-reset", action="store_true",
                        help="accept a --config file whose _base_ chain changes keys an earlier --config file set "
                             "(by default that stops the run)")


_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def split_overrides(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """Positional arguments split into (the others, the ``key=value`` config overrides), each in order."""
    overrides = [a for a in items if _OVERRIDE.match(a)]
    return [a for a in items if not _OVERRIDE.match(a)], overrides


def config_from_args(args: argparse.Namespace, default_config: str | None,
                     follow_checkpoint: bool = False) -> DictConfig:
    """base.yaml <- ``configs/<default_config>`` <- each ``--config`` <- ``key=value``.

    With ``follow_checkpoint`` and ``infer.checkpoint`` set, the config stored in that checkpoint takes the place of
    the default config (see :func:`config_for_checkpoint`).
    """
    defaults: list[Path] = [CONFIG_DIR / default_config] if default_config else []
    files = [Path(f) for f in args.config]
    allow = bool(getattr(args, "allow_base_reset", False))
    cfg = load_config(files, args.overrides, defaults=defaults, allow_base_reset=allow)
    if follow_checkpoint and cfg.infer.checkpoint not in (None, ""):
        return config_for_checkpoint(cfg.infer.checkpoint, files, args.overrides, defaults, allow)
    return cfg


def config_for_checkpoint(checkpoint: str | Path, files: Sequence[str | Path] = (), overrides: Sequence[str] = (),
                          defaults: Sequence[str | Path] = (), allow_base_reset: bool = False) -> DictConfig:
    """base.yaml <- the config stored in ``checkpoint`` <- ``files`` <- ``overrides``: the model, its classes and
    text bank come from the run that trained it. A checkpoint without a stored config (a plain state dict, a file
    of the reference) falls back to ``defaults``.

    Raises:
        FileNotFoundError, CheckpointError: the checkpoint is missing or unreadable.
        ConfigError: the stored config does not load with this version of excel, or a file or override is bad.
    """
    from excel.engine.checkpoint import load_checkpoint

    stored = load_checkpoint(checkpoint, map_location="cpu").get("config") or {}
    if not stored:
        log.info("%s holds no config: the model is built from %s", checkpoint,
                 ", ".join(str(p) for p in [*defaults, *files]) or "base.yaml")
        return load_config(files, overrides, defaults=defaults, allow_base_reset=allow_base_reset)
    try:
        load_config(None, defaults=[stored])
    except ConfigError as err:
        raise ConfigError(f"the config stored in {checkpoint} does not load with this version of excel: {err}") \
            from err
    cfg = load_config(files, overrides, defaults=[stored], allow_base_reset=allow_base_reset)
    log.info("model and classes from the config stored in %s (%d foreground classes + background); --config files "
             "and key=value override it", checkpoint, len(cfg.data.class_names))
    return cfg


def parse_config(argv: Sequence[str] | None, description: str, default_config: str | None,
                 follow_checkpoint: bool = False) -> DictConfig:
    """Parse ``argv`` with :func:`config_parser` and return the merged config (see :func:`config_from_args`)."""
    args = config_parser(description, default_config).parse_intermixed_args(argv)
    return config_from_args(args, default_config, follow_checkpoint)


def run_cli(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)`` and return the exit status for ``sys.exit``: an ``int`` that ``main`` returns (a tool
    with a status of its own, such as 1 for a report with problems), else 0. Bad input, an
    :class:`~excel.errors.ExcelError` or a missing file, is printed as one ``error:`` line with status 2, no
    traceback; anything else is a bug and keeps its traceback.
    """
    import sys

    from excel.errors import ExcelError, user_message

    try:
        result = main(argv)
    except (ExcelError, FileNotFoundError) as err:
        print(f"error: {user_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished work is on disk and a rerun continues from it", file=sys.stderr)
        return 130
    return result if isinstance(result, int) and not isinstance(result, bool) else 0
