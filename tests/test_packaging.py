"""What ``pip install .`` gives: a wheel with the configs (as ``excel.configs``), the organism weights, the model
configs and the knowledge bases, whose ``load_config("voc.yaml")`` works from any directory; openai is optional."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Run by the installed package's python from a folder that holds no checkout.
CHECK = r"""
import json, sys
from pathlib import Path
import excel
from excel.backbone import MODEL_CONFIG_DIR, load_clip
from excel.config import CONFIG_DIR, ConfigError, load_config
from excel.organism.weights import SHIPPED
from excel.text.cluster_bank import resolve_path

Path("mine.yaml").write_text("_base_: coco.yaml\ntrain:\n  batch_size: 2\n")
voc = load_config("voc.yaml", ["train.max_iters=7"])
custom = load_config(["configs/examples/custom.yaml", {"run": {"seed": 5}}])
mine = load_config("mine.yaml")
try:
    load_config("vocc.yaml")
    unknown = ""
except ConfigError as err:
    unknown = str(err)
clip = load_clip("excel-organism", "organism")
print(json.dumps({
    "package": excel.__file__, "config_dir": str(CONFIG_DIR), "weights": str(SHIPPED),
    "model_config": str(MODEL_CONFIG_DIR / "excel-organism.json"),
    "knowledge_base": str(resolve_path(voc.tse.knowledge_base)),
    "voc": [voc.data.name, len(voc.data.class_names), voc.tse.num_clusters, voc.train.max_iters, voc.train.batch_size],
    "custom": [list(custom.data.class_names), custom.run.seed, custom.tse.num_clusters],
    "mine": [mine.data.name, mine.train.batch_size], "unknown": unknown,
    "clip_width": clip.visual.transformer.width, "openai_loaded": "openai" in sys.modules,
}))
"""


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, " ".join(map(str, cmd)) + "\n" + proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_the_wheel_installs_and_loads_configs_from_any_directory(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    # a copy of what the build reads, so that the build leaves nothing in the checkout
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("excel", "configs"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", str(src),
          "-w", str(tmp_path / "dist")], tmp_path, env)
    (wheel,) = (tmp_path / "dist").glob("excel-*.whl")

    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {p.relative_to(REPO).as_posix() for p in (REPO / "excel").rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    expected |= {"excel/configs/" + p.relative_to(REPO / "configs").as_posix()
                 for p in (REPO / "configs").rglob("*") if p.is_file()}
    assert expected <= names, sorted(expected - names)  # every module and data file, configs under excel/configs
    for shipped in ("excel/organism/weights/excel-organism.pt", "excel/backbone/model_configs/excel-organism.json",
                    "excel/backbone/model_configs/excel-tiny.json", "excel/configs/base.yaml",
                    "excel/configs/ablations/no_tse.yaml", "excel/knowledge/voc_knowledge_base.json"):
        assert shipped in names, shipped
    metadata = next(zipfile.ZipFile(wheel).read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert "Requires-Dist: torch>=2.4" in metadata and "Provides-Extra: llm" in metadata
    assert 'Requires-Dist: openai>=1.0; extra == "llm"' in metadata
    assert not any(line.startswith("Requires-Dist: openai") and "extra" not in line for line in metadata.splitlines())

    # a fresh venv that sees this environment's packages (torch, open_clip, ...) through a .pth file
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    python = venv / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path,
                        env).strip())
    (purelib / "parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(python), "-m", "pip", "install", "--no-deps", "--ignore-installed", "--no-index", "-q", str(wheel)],
         tmp_path, env)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = json.loads(_run([str(python), "-c", CHECK], elsewhere, env).strip().splitlines()[-1])
    for key in ("package", "config_dir", "weights", "model_config", "knowledge_base"):
        assert Path(result[key]).is_relative_to(purelib / "excel"), (key, result[key])
        assert Path(result[key]).exists(), key
    assert result["voc"] == ["voc", 20, 112, 7, 4]
    assert result["custom"] == [["kiwi", "apple", "pear"], 5, 16]  # its _base_: ../voc.yaml, then a dict layer
    assert result["mine"] == ["coco", 2]                           # a file of one's own chained to a shipped name
    assert result["unknown"].startswith("config file not found: vocc.yaml") and "ablations/no_tse.yaml" in \
        result["unknown"] and "voc.yaml" in result["unknown"]
    assert result["clip_width"] == 128 and result["openai_loaded"] is False  # the shipped organism CLIP loads


def _imports(path: Path) -> set[str]:
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_import_boundaries():
    """excel.utils stands below excel.config; the library never imports the entry points."""
    for path in (REPO / "excel" / "utils").glob("*.py"):
        assert not {m for m in _imports(path) if m == "excel.config" or m.startswith("excel.config.")}, path
    for path in (REPO / "excel").rglob("*.py"):
        assert not {m for m in _imports(path) if m.split(".")[0] in ("tools", "scripts", "benchmarks")}, path


def test_openai_is_imported_only_when_a_knowledge_base_is_written():
    code = ("import sys, excel.text.llm, excel.engine.cli, excel.text.cluster_bank; "
            "print('openai' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
