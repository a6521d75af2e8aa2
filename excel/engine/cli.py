"""Command-line parsing shared by the thin entry points in ``scripts/`` and ``tools/``."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

from excel.config import CONFIG_DIR, load_config


def config_parser(description: str, default_config: str | None) -> argparse.ArgumentParser:
    """A parser with ``--config FILE`` (repeatable, merged after the default) and trailing ``key=value`` overrides."""
    parser = argparse.ArgumentParser(description=description,
                                     epilog="Trailing key=value arguments override config keys (see configs/base.yaml).")
    default_note = f" (merged on top of configs/{default_config})" if default_config else ""
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help=f"experiment YAML{default_note}; may be given several times")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser


def config_from_args(args: argparse.Namespace, default_config: str | None) -> DictConfig:
    files: list[Path] = [CONFIG_DIR / default_config] if default_config else []
    files += [Path(f) for f in args.config]
    return load_config(files, args.overrides)


def parse_config(argv: Sequence[str] | None, description: str, default_config: str | None) -> DictConfig:
    """Parse ``argv`` with :func:`config_parser` and return the merged config."""
    args = config_parser(description, default_config).parse_intermixed_args(argv)
    return config_from_args(args, default_config)


def run_cli(main, argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)``; print an :class:`~excel.errors.ExcelError` (or a missing file) as one line, exit 2."""
    import sys

    from excel.errors import ExcelError, user_message

    try:
        main(argv)
    except (ExcelError, FileNotFoundError) as err:
        print(f"error: {user_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished work is on disk and a rerun continues from it", file=sys.stderr)
        return 130
    return 0
