"""Exit 0 when this Python has what excel needs, else print one line per missing piece and exit 1 (3: torch does
not import at all).

    python scripts/_requirements_met.py ROOT [--need NAME ...] [--pins] [--editable] [--import-torch]

Used by scripts/_env.sh to decide which interpreter the shell scripts run:

- the requirement lines of ``ROOT/requirements.txt`` must hold (their version bounds); a line whose comment starts
  with ``optional`` counts only when ``--need NAME`` names it (``run_tests.sh`` needs pytest);
- ``--pins``: the exact versions of ``ROOT/constraints.txt`` too (the ./.venv the scripts make, as CI runs it);
- ``--editable``: excel installed in editable mode from ROOT (the ./.venv);
- ``--import-torch``: torch must really import (an active conda or venv environment is used only then).

Reads package metadata, imports nothing heavy but torch when asked, and never touches the network.
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

TORCH_DOES_NOT_IMPORT = 3


def requirement_lines(path: Path, need: tuple[str, ...] = ()) -> list[str]:
    """The requirement strings of ``path`` that apply: every line but the ``# optional`` ones not named in ``need``."""
    wanted = {n.lower().replace("_", "-") for n in need}
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        text, _, comment = raw.partition("#")
        text = text.strip()
        if not text:
            continue
        name = text.split(";")[0]
        for sep in "<>=!~[ ":
            name = name.split(sep)[0]
        if comment.strip().lower().startswith("optional") and name.lower().replace("_", "-") not in wanted:
            continue
        lines.append(text)
    return lines


def _check(line: str, source: str) -> str | None:
    """None when ``line`` holds in this Python, else one sentence naming the package and what ``source`` asks."""
    try:
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:  # pip vendors it
        try:
            from pip._vendor.packaging.requirements import InvalidRequirement, Requirement  # type: ignore
        except ImportError:
            return f"neither packaging nor pip is installed, so {line!r} cannot be checked (pip install packaging)"
    try:
        req = Requirement(line)
    except InvalidRequirement:
        return f"{source}: cannot parse {line!r}"
    if req.marker is not None and not req.marker.evaluate():
        return None
    try:
        version = md.version(req.name)
    except md.PackageNotFoundError:
        return f"{req.name} is not installed ({source} asks for {line})"
    if req.specifier and not req.specifier.contains(version, prereleases=True):
        return f"{req.name} {version} is installed, {source} asks for {line}"
    return None


def unmet(root: Path, need: tuple[str, ...] = (), pins: bool = False, editable: bool = True) -> list[str]:
    """What is missing for excel in this Python, one sentence per package (empty: nothing)."""
    checks = [(line, "requirements.txt") for line in requirement_lines(root / "requirements.txt", need)]
    if pins and (root / "constraints.txt").is_file():
        checks += [(line, "constraints.txt") for line in requirement_lines(root / "constraints.txt")]
    problems = [p for p in (_check(line, source) for line, source in checks) if p]
    if editable:
        try:
            url = json.loads(md.distribution("excel").read_text("direct_url.json") or "{}")
        except md.PackageNotFoundError:
            return problems + ["excel is not installed"]
        where = Path(unquote(urlparse(url.get("url", "")).path)) if url.get("url", "").startswith("file:") else None
        if not url.get("dir_info", {}).get("editable") or where is None or where.resolve() != root.resolve():
            problems.append(f"excel is not installed in editable mode from {root}")
    return problems


def torch_imports() -> str | None:
    """None when ``import torch`` works in this Python (in a child process: a broken CUDA library can crash it),
    else the last line of its error."""
    proc = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True)
    if proc.returncode == 0:
        return None
    lines = (proc.stderr or "").strip().splitlines()
    return lines[-1] if lines else f"exit status {proc.returncode}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--need", action="append", default=[], help="an optional requirement that counts here")
    parser.add_argument("--pins", action="store_true", help="the exact versions of constraints.txt too")
    parser.add_argument("--editable", action="store_true", help="excel installed in editable mode from ROOT")
    parser.add_argument("--import-torch", action="store_true", help="torch must import")
    args = parser.parse_args(argv)
    if args.import_torch:
        error = torch_imports()
        if error is not None:
            print(f"[excel] {sys.executable}: torch does not import ({error})", file=sys.stderr)
            return TORCH_DOES_NOT_IMPORT
    missing = unmet(args.root, tuple(args.need), pins=args.pins, editable=args.editable)
    for item in missing:
        print(f"[excel] {sys.executable}: {item}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
