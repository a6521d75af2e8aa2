"""The package's import layering (docs/architecture.md): no module imports from a layer above its own, and the
middle-layer packages do not import each other. Read off the source with ``ast`` (imports inside functions count)."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUNNERS = ("excel.engine.train", "excel.engine.segment", "excel.engine.infer_lam", "excel.engine.predict")
# layer of a module: the longest matching prefix decides
LAYERS = {
    "excel.utils": 0, "excel.errors": 0,
    "excel.config": 1,
    "excel.data": 2, "excel.backbone": 2, "excel.text": 2, "excel.cam": 2, "excel.losses": 2,
    "excel.organism": 3,
    "excel.model": 4,
    "excel.evaluation": 5,
    "excel.engine": 6, **{runner: 7 for runner in RUNNERS},
    "excel.engine.demo": 8,
}
MIDDLE = ("excel.data", "excel.backbone", "excel.text", "excel.cam", "excel.losses")


def _layer(module: str) -> tuple[str, int] | None:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)
    return (best, LAYERS[best]) if best else None


def _imports(path: Path, module: str) -> set[str]:
    out = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            out |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {m for m in out if m.startswith("excel.")}


def _modules() -> dict[str, Path]:
    found = {}
    for path in (REPO / "excel").rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def test_no_import_runs_back_up_a_layer():
    modules = _modules()
    upward = []
    for module, path in modules.items():
        own = _layer(module)
        if own is None:
            continue
        for target in _imports(path, module):
            if target not in modules and target.rsplit(".", 1)[0] in modules:
                target = target.rsplit(".", 1)[0]            # `from excel.x import name`: the module is excel.x
            theirs = _layer(target)
            if theirs is not None and theirs[1] > own[1]:
                upward.append(f"{module} (layer {own[1]}) imports {target} (layer {theirs[1]})")
    assert not upward, "\n".join(sorted(upward))


def test_middle_layer_packages_do_not_import_each_other():
    crossing = []
    for module, path in _modules().items():
        own = next((p for p in MIDDLE if module == p or module.startswith(p + ".")), None)
        if own is None:
            continue
        for target in _imports(path, module):
            other = next((p for p in MIDDLE if target == p or target.startswith(p + ".")), None)
            if other is not None and other != own:
                crossing.append(f"{module} imports {target}")
    assert not crossing, "\n".join(sorted(crossing))


def test_runners_do_not_import_each_other():
    modules = _modules()
    for runner in RUNNERS:
        others = {t for t in _imports(modules[runner], runner) for r in RUNNERS if r != runner and t.startswith(r)}
        assert not others, f"{runner} imports {others}"
