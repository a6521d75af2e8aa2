"""The reference's shell entry points keep their positional usage: run_train.sh and infer_seg_voc.sh on CPU."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "configs" / "test_tiny.yaml")


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_run_train_sh_positional_arguments(mini_voc, tmp_path):
    """script, gpu_devices, gpu_number, master_port, log_tag, then overrides (and --config) pass through."""
    proc = _run(["run_train.sh", "scripts/train_voc.py", "0", "1", "29571", "shtag", "--config", TINY,
                 f"data.root={mini_voc}", f"run.work_dir={tmp_path / 'wd'}", f"tse.cache_dir={tmp_path / 'banks'}",
                 "train.max_iters=2", "train.eval_iters=2"])
    gpu = torch.cuda.is_available()                  # the launcher says which it found; either way the run works
    assert ("[excel] GPUs 0, 1 process(es)" if gpu else "no GPU found: running on CPU") in proc.stdout
    work = tmp_path / "wd_shtag"  # the log tag is appended to the work dir
    assert (work / "checkpoints" / "iter_0000002.pth").exists() and (work / "config.yaml").exists()
    assert len((work / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
def test_infer_seg_voc_sh_accepts_the_seed_tool_argument(seg_checkpoint, tmp_path):
    out = tmp_path / "seg"
    _run(["infer_seg_voc.sh", "tools/infer_lam.py", "0", "1", "val", str(seg_checkpoint["path"]), "--config", TINY,
          *seg_checkpoint["overrides"], f"infer.output_dir={out}"])
    result = json.loads((out / "results.json").read_text())
    assert result["tool"] == "infer_seg_voc" and result["split"] == "val" and result["num_images"] == 4
    assert 0 <= result["scores"]["raw"]["miou"] <= 1


# ----------------------------------------------------------------------------- run_tests.sh and the environment
FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/../../calls.log"
case "$1" in */_requirements_met.py) exit "${FAKE_MET:-0}" ;; esac
"""


def _fake_checkout(tmp_path: Path) -> Path:
    """scripts/_env.sh, requirements.txt and pyproject.toml in a folder whose .venv/bin/python only logs its calls."""
    import shutil

    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    for name in ("scripts/_env.sh", "requirements.txt", "pyproject.toml"):
        shutil.copy(REPO / name, root / name)
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return root


def _excel_env(root: Path, met: int) -> list[str]:
    env = dict(os.environ, FAKE_MET=str(met))
    proc = subprocess.run(["bash", "-c", f'source "{root}/scripts/_env.sh" && excel_env'], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = (root / "calls.log").read_text().splitlines()
    (root / "calls.log").unlink()
    return calls


def _excel_env_quiet(root: Path) -> bool:
    """excel_env succeeds without calling the venv's python at all."""
    proc = subprocess.run(["bash", "-c", f'source "{root}/scripts/_env.sh" && excel_env'], capture_output=True,
                          text=True, timeout=60)
    return proc.returncode == 0 and not (root / "calls.log").exists()


def test_a_manual_install_is_not_redone(tmp_path):
    """After the README's manual install (no stamp file) the shell scripts check the environment and go on; only
    an environment that lacks something is installed into."""
    root = _fake_checkout(tmp_path)
    stamp = root / ".venv" / ".excel-installed"
    calls = _excel_env(root, met=0)
    assert calls == [f"{root}/scripts/_requirements_met.py {root}"] and stamp.is_file()
    assert not (root / "calls.log").exists() and _excel_env_quiet(root)  # stamp fresh: nothing is even checked
    stamp.unlink()
    calls = _excel_env(root, met=1)
    assert calls[0] == f"{root}/scripts/_requirements_met.py {root}"
    assert f"-m pip install -q -r {root}/requirements.txt" in calls
    assert f"-m pip install -q --no-deps -e {root}" in calls
    assert stamp.is_file()


def test_requirements_check_names_what_is_missing(tmp_path):
    import importlib.metadata as md
    import importlib.util

    spec = importlib.util.spec_from_file_location("requirements_met", REPO / "scripts" / "_requirements_met.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "requirements.txt").write_text("# pins\nnumpy\nno-such-package-xyz==1.0\ntorch==0.0.1\n")
    torch_version = md.version("torch")
    assert module.unmet(tmp_path) == ["no-such-package-xyz is not installed",
                                      f"torch {torch_version} does not satisfy ==0.0.1",
                                      f"excel is not installed in editable mode from {tmp_path}"]
    url = md.distribution("excel").read_text("direct_url.json") or ""
    if f"file://{REPO}" in url:  # this checkout, installed as the README says (or by run_tests.sh)
        assert module.unmet(REPO) == []


@pytest.mark.parametrize("flags", [[], ["-q"], ["-qq"], ["-q", "-q", "-x"], ["-v"]], ids=" ".join)
def test_run_tests_sh_keeps_the_summary_line(tmp_path, flags):
    (tmp_path / "test_one.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", "run_tests.sh", *flags, str(tmp_path / "test_one.py"), "-p", "no:cacheprovider"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert "1 passed" in last, proc.stdout
    assert ("PASSED" in proc.stdout) == (flags == ["-v"])
