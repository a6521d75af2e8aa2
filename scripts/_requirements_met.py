"""Exit 0 when this Python already has what ``requirements.txt`` asks for and excel installed from ROOT, else 1.

    python scripts/_requirements_met.py ROOT

Used by scripts/_env.sh so that a manual install (the README's ``pip install -r requirements.txt`` and
``pip install --no-deps -e .``) is not redone by the shell scripts. Reads package metadata only; imports nothing
heavy and never touches the network.
"""
from __future__ import annotations

import importlib.metadata as md
import json
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

try:
    from packaging.requirements import InvalidRequirement, Requirement
except ImportError:  # pip vendors it
    from pip._vendor.packaging.requirements import InvalidRequirement, Requirement  # type: ignore[no-redef]


def unmet(root: Path) -> list[str]:
    """What is missing: requirement lines not satisfied, and excel not installed (editable) from ``root``."""
    problems = []
    for line in (root / "requirements.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            problems.append(f"cannot parse {line!r}")
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            version = md.version(req.name)
        except md.PackageNotFoundError:
            problems.append(f"{req.name} is not installed")
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req.name} {version} does not satisfy {req.specifier}")
    try:
        url = json.loads(md.distribution("excel").read_text("direct_url.json") or "{}")
    except md.PackageNotFoundError:
        return problems + ["excel is not installed"]
    where = Path(unquote(urlparse(url.get("url", "")).path)) if url.get("url", "").startswith("file:") else None
    if not url.get("dir_info", {}).get("editable") or where is None or where.resolve() != root.resolve():
        problems.append(f"excel is not installed in editable mode from {root}")
    return problems


if __name__ == "__main__":
    missing = unmet(Path(sys.argv[1]))
    for item in missing:
        print(f"[excel] {item}", file=sys.stderr)
    sys.exit(1 if missing else 0)
