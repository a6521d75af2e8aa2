"""The shell entry points: the reference's positional usage (run_train.sh and infer_seg_voc.sh on CPU), the shorter
inference usage without a tool path, the multi-machine variables reaching torchrun, the SLURM example, and the
environment set-up of scripts/_env.sh."""
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
def test_infer_seg_voc_sh_accepts_a_leading_tool_path(seg_checkpoint, tmp_path):
    out = tmp_path / "seg"
    _run(["infer_seg_voc.sh", "tools/infer_lam.py", "0", "1", "val", str(seg_checkpoint["path"]), "--config", TINY,
          *seg_checkpoint["overrides"], f"infer.output_dir={out}"])
    result = json.loads((out / "results.json").read_text())
    assert result["tool"] == "infer_seg_voc" and result["split"] == "val" and result["num_images"] == 4
    assert 0 <= result["scores"]["raw"]["miou"] <= 1


# ----------------------------------------------------------------------------- what reaches torchrun
LAUNCH_PYTHON = """#!/usr/bin/env bash
# A stand-in for the checkout's python: no GPU, requirements met, and every launch written to calls.log.
case "$1" in
    */_requirements_met.py) exit 0 ;;
    -c) exit 1 ;;
esac
echo "$*" >> "$(dirname "$0")/../../calls.log"
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
[ "$*" = "show hostnames $SLURM_JOB_NODELIST" ] && printf 'gpu-a17\\ngpu-a18\\n'
"""
FAKE_SRUN = """#!/usr/bin/env bash
# as SLURM with --ntasks-per-node=1: the command once per machine, SLURM_NODEID = its index
while [ "${1#--}" != "$1" ]; do shift; done
for id in $(seq 0 $((SLURM_JOB_NUM_NODES - 1))); do SLURM_NODEID=$id "$@" || exit $?; done
"""
LAUNCH_FILES = ("run_train.sh", "infer_lam.sh", "infer_seg_voc.sh", "infer_seg_coco.sh", "scripts/_env.sh",
                "scripts/_launch.sh", "scripts/_infer_seg.sh", "scripts/slurm_train.sbatch", "requirements.txt",
                "pyproject.toml")
MULTI_NODE = ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture()
def launch_checkout(tmp_path):
    """The shell scripts in a folder whose .venv/bin/python records what it is asked to run (torchrun is
    ``python -m torch.distributed.run``), and whose entry points are empty files."""
    import shutil

    root = tmp_path / "checkout"
    for name in LAUNCH_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, root / name)
    for name in ("scripts/train_voc.py", "tools/infer_lam.py", "tools/infer_seg_voc.py", "tools/infer_seg_coco.py"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).touch()
    for path, text in ((".venv/bin/python", LAUNCH_PYTHON), ("bin/scontrol", FAKE_SCONTROL), ("bin/srun", FAKE_SRUN)):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
        (root / path).chmod(0o755)
    return root


def _launch(root: Path, args: list[str], env: dict[str, str] | None = None, status: int = 0) -> list[list[str]]:
    """Run a script of ``root`` (cwd ``root``); return the recorded launches, each as its argument list."""
    import shlex

    base = {k: v for k, v in os.environ.items() if k not in MULTI_NODE and not k.startswith("SLURM_")}
    base["PATH"] = f"{root / 'bin'}{os.pathsep}{base['PATH']}"
    proc = subprocess.run(["bash", *args], cwd=root, env={**base, **(env or {})}, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == status, proc.stdout + proc.stderr
    log = root / "calls.log"
    calls = [shlex.split(line) for line in log.read_text().splitlines()] if log.exists() else []
    log.unlink(missing_ok=True)
    return calls


TORCHRUN = ["-m", "torch.distributed.run"]


def test_one_process_on_one_machine_runs_the_script_directly(launch_checkout):
    root = launch_checkout
    assert _launch(root, ["run_train.sh", "scripts/train_voc.py", "0", "1", "29501", "exp1", "data.root=/d"]) == [
        ["scripts/train_voc.py", "run.log_tag=exp1", "data.root=/d"]]
    # the inference scripts without the reference's leading tool path, and with it (ignored by the seg scripts)
    ckpt = "work_dirs/voc/checkpoints/iter_0030000.pth"
    expected = [["tools/infer_seg_voc.py", "infer.split=val", f"infer.checkpoint={ckpt}", "infer.crf=true"]]
    assert _launch(root, ["infer_seg_voc.sh", "0", "1", "val", ckpt, "infer.crf=true"]) == expected
    assert _launch(root, ["infer_seg_voc.sh", "tools/infer_lam.py", "0", "1", "val", ckpt, "infer.crf=true"]) == expected
    # positional arguments stop at the first key=value or --flag; the rest keep their defaults
    assert _launch(root, ["infer_seg_coco.sh", "data.root=/coco"]) == [
        ["tools/infer_seg_coco.py", "infer.split=val", "data.root=/coco"]]
    assert _launch(root, ["infer_lam.sh", "0", "1", "val", "--config", "c.yaml"]) == [
        ["tools/infer_lam.py", "infer.split=val", "--config", "c.yaml"]]
    assert _launch(root, ["infer_lam.sh", "tools/infer_lam.py", "0", "1", "train", ""]) == [
        ["tools/infer_lam.py", "infer.split=train"]]


def test_several_processes_go_through_torchrun_with_one_machine_by_default(launch_checkout):
    root = launch_checkout
    (call,) = _launch(root, ["run_train.sh", "scripts/train_voc.py", "0,1", "2", "29507", "", "train.max_iters=9"])
    assert call == [*TORCHRUN, "--nnodes=1", "--node_rank=0", "--master_addr=127.0.0.1", "--master_port=29507",
                    "--nproc_per_node=2", "scripts/train_voc.py", "train.max_iters=9"]
    (call,) = _launch(root, ["infer_lam.sh", "0,1", "2", "train", ""])
    assert call == [*TORCHRUN, "--nnodes=1", "--node_rank=0", "--master_addr=127.0.0.1", "--master_port=29511",
                    "--nproc_per_node=2", "tools/infer_lam.py", "infer.split=train"]


def test_the_multi_machine_variables_reach_torchrun(launch_checkout):
    root = launch_checkout
    env = {"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.1.2.3", "MASTER_PORT": "29600"}
    flags = ["--nnodes=2", "--node_rank=1", "--master_addr=10.1.2.3", "--master_port=29600"]
    # one process per machine is still a torchrun job when there are two machines; an explicit port wins
    (call,) = _launch(root, ["run_train.sh", "scripts/train_voc.py", "0", "1"], env)
    assert call == [*TORCHRUN, *flags, "--nproc_per_node=1", "scripts/train_voc.py"]
    (call,) = _launch(root, ["run_train.sh", "scripts/train_voc.py", "0,1", "2", "29700", "exp"], env)
    assert call[2:7] == [*flags[:3], "--master_port=29700", "--nproc_per_node=2"]
    for script, tool in (("infer_seg_voc.sh", "infer_seg_voc.py"), ("infer_seg_coco.sh", "infer_seg_coco.py"),
                         ("infer_lam.sh", "infer_lam.py")):
        (call,) = _launch(root, [script, "0,1,2,3", "4", "val", "ckpt.pth"], env)
        assert call == [*TORCHRUN, *flags, "--nproc_per_node=4", f"tools/{tool}", "infer.split=val",
                        "infer.checkpoint=ckpt.pth"], script
    out = subprocess.run(["bash", "run_train.sh", "scripts/train_voc.py"], cwd=root, capture_output=True, text=True,
                         env={**os.environ, "PATH": f"{root / 'bin'}{os.pathsep}{os.environ['PATH']}",
                              "NNODES": "2", "NODE_RANK": "2"})
    assert out.returncode == 2 and "NODE_RANK=2 must be below NNODES=2" in out.stderr


def test_the_slurm_example_starts_one_torchrun_per_machine(launch_checkout):
    root = launch_checkout
    env = {"SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu-a[17-18]", "SLURM_SUBMIT_DIR": str(root),
           "GPUS_PER_NODE": "2"}
    calls = _launch(root, ["scripts/slurm_train.sbatch", "scripts/train_voc.py", "data.root=/d"], env)
    assert calls == [[*TORCHRUN, "--nnodes=2", f"--node_rank={rank}", "--master_addr=gpu-a17", "--master_port=29501",
                      "--nproc_per_node=2", "scripts/train_voc.py", "data.root=/d"] for rank in (0, 1)]


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
