"""Helpers shared by the tests of the command-line tools and benchmarks (not collected as tests).

The tools and benchmarks are scripts, not a package: a test imports one from its path with :func:`load_script`
(``excel`` itself is installed, editable, in the environment), never through ``sys.path``.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def load_script(path: str):
    """Import the script ``path`` (relative to the repository, e.g. ``benchmarks/bench_inference.py``) as a
    module of its own, named after the file with its folder (``benchmarks_bench_inference``)."""
    file = REPO / path
    spec = importlib.util.spec_from_file_location(f"{file.parent.name}_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_tool(name: str):
    """Import ``tools/<name>.py`` as a module."""
    return load_script(f"tools/{name}.py")


def read_lines(path: Path) -> list[str]:
    """The whitespace-separated entries of a list file."""
    return path.read_text().split()
