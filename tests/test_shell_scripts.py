"""The shell entry points: the reference's positional usage (run_train.sh and infer_seg_voc.sh on CPU), the shorter
inference usage without a tool path, the multi-machine variables reaching torchrun, the SLURM example, and the
environment set-up of scripts/_env.sh."""
from __future__ import annotations

import json
import os
import subprocess
import sys
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
    _run(["infer_seg_voc.sh", "tools/infer_seg_voc.py", "0", "1", "val", str(seg_checkpoint["path"]), "--config", TINY,
          *seg_checkpoint["overrides"], f"infer.output_dir={out}"])
    result = json.loads((out / "results.json").read_text())
    assert result["tool"] == "infer_seg_voc" and result["split"] == "val" and result["num_images"] == 4
    assert 0 <= result["scores"]["raw"]["miou"] <= 1


# ----------------------------------------------------------------------------- what reaches torchrun
LAUNCH_PYTHON = """#!/usr/bin/env bash
# A stand-in for the checkout's python: no GPU, requirements met, and every launch written to calls.log.
case "$1" in
    */_requirements_met.py) exit "${FAKE_MET:-0}" ;;
    -c) [ "${FAKE_CUDA:-0}" = 1 ]; exit $? ;;
esac
echo "$*" >> "$(dirname "$0")/../../calls.log"
echo "${CUDA_VISIBLE_DEVICES-unset}" >> "$(dirname "$0")/../../devices.log"
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
                "constraints.txt", "pyproject.toml")
MULTI_NODE = ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")
# what chooses the interpreter (scripts/_env.sh): the tests set it themselves
ENV_CHOICE = ("VIRTUAL_ENV", "CONDA_PREFIX", "EXCEL_PYTHON", "EXCEL_NO_INSTALL")


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

    base = {k: v for k, v in os.environ.items()
            if k not in MULTI_NODE + ENV_CHOICE and not k.startswith("SLURM_")}
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
    # the inference scripts without the reference's leading tool path, and with it: then that tool runs
    ckpt = "work_dirs/voc/checkpoints/iter_0030000.pth"
    expected = [["tools/infer_seg_voc.py", "infer.split=val", f"infer.checkpoint={ckpt}", "infer.crf=true"]]
    assert _launch(root, ["infer_seg_voc.sh", "0", "1", "val", ckpt, "infer.crf=true"]) == expected
    assert _launch(root, ["infer_seg_voc.sh", "tools/infer_seg_voc.py", "0", "1", "val", ckpt, "infer.crf=true"]) \
        == expected
    assert _launch(root, ["infer_seg_voc.sh", "tools/infer_lam.py", "0", "1", "val", ckpt, "infer.crf=true"]) == [
        ["tools/infer_lam.py", "infer.split=val", f"infer.checkpoint={ckpt}", "infer.crf=true"]]
    assert _launch(root, ["infer_seg_coco.sh", "tools/no_such_tool.py", "0", "1"], status=2) == []
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
    outside = {k: v for k, v in os.environ.items() if k not in ENV_CHOICE}   # the checkout's .venv, as in _launch
    out = subprocess.run(["bash", "run_train.sh", "scripts/train_voc.py"], cwd=root, capture_output=True, text=True,
                         env={**outside, "PATH": f"{root / 'bin'}{os.pathsep}{os.environ['PATH']}",
                              "NNODES": "2", "NODE_RANK": "2"})
    assert out.returncode == 2 and "NODE_RANK=2 must be below NNODES=2" in out.stderr


def test_the_slurm_example_starts_one_torchrun_per_machine(launch_checkout):
    """Two machines of two GPUs: SLURM's GPU assignment stays, the port comes from the job id, the job has its own
    log tag (so its own work dir) and resumes on requeue; nothing is installed."""
    root = launch_checkout
    env = {"SLURM_JOB_ID": "123456", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu-a[17-18]",
           "SLURM_SUBMIT_DIR": str(root), "SLURM_GPUS_ON_NODE": "2", "CUDA_VISIBLE_DEVICES": "3,5", "FAKE_CUDA": "1"}
    calls = _launch(root, ["scripts/slurm_train.sbatch", "scripts/train_voc.py", "data.root=/d"], env)
    assert calls == [[*TORCHRUN, "--nnodes=2", f"--node_rank={rank}", "--master_addr=gpu-a17",
                      "--master_port=13456", "--nproc_per_node=2", "scripts/train_voc.py", "run.log_tag=job123456",
                      "train.resume=auto", "data.root=/d"] for rank in (0, 1)]       # 10000 + 123456 % 20000
    assert (root / "devices.log").read_text().split() == ["3,5", "3,5"]
    # another job on the same machines: another port and tag; MASTER_PORT and EXCEL_TAG choose them
    (call, _) = _launch(root, ["scripts/slurm_train.sbatch", "scripts/train_voc.py"], {**env, "SLURM_JOB_ID": "7"})
    assert "--master_port=10007" in call and "run.log_tag=job7" in call
    (call, _) = _launch(root, ["scripts/slurm_train.sbatch", "scripts/train_voc.py"],
                        {**env, "MASTER_PORT": "29999", "EXCEL_TAG": "voc_a"})
    assert "--master_port=29999" in call and "run.log_tag=voc_a" in call
    # the paper's setting, the script's default: one machine, one GPU, one plain process
    one = {**env, "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "gpu-a17", "SLURM_GPUS_ON_NODE": "1",
           "CUDA_VISIBLE_DEVICES": "6"}
    assert _launch(root, ["scripts/slurm_train.sbatch", "scripts/train_voc.py"], one) == [
        ["scripts/train_voc.py", "run.log_tag=job123456", "train.resume=auto"]]
    text = (root / "scripts" / "slurm_train.sbatch").read_text()
    assert "#SBATCH --requeue" in text and "#SBATCH --gpus-per-node=1" in text and "--nodes=2" in text
    # an environment that lacks something stops the job before srun, and nothing is installed
    assert _launch(root, ["scripts/slurm_train.sbatch", "scripts/train_voc.py"], {**env, "FAKE_MET": "1"},
                   status=1) == []


# ----------------------------------------------------------------------------- run_tests.sh and the environment
FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/../../calls.log"
case "$1" in */_requirements_met.py) exit "${FAKE_MET:-0}" ;; esac
"""


def _fake_checkout(tmp_path: Path) -> Path:
    """scripts/_env.sh and the requirement files in a folder whose .venv/bin/python only logs its calls."""
    import shutil

    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    for name in ("scripts/_env.sh", "scripts/_requirements_met.py", "requirements.txt", "constraints.txt",
                 "pyproject.toml"):
        shutil.copy(REPO / name, root / name)
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return root


def _source_env(root: Path, env: dict[str, str] | None = None, needs: str = "") -> subprocess.CompletedProcess:
    """``source scripts/_env.sh && excel_env NEEDS`` in a shell with no active environment (unless ``env`` sets
    one); prints the chosen interpreter as its last line."""
    base = {k: v for k, v in os.environ.items() if k not in ENV_CHOICE}
    return subprocess.run(["bash", "-c", f'source "{root}/scripts/_env.sh" && excel_env {needs} && echo "$PYTHON"'],
                          env={**base, **(env or {})}, capture_output=True, text=True, timeout=120)


def _excel_env(root: Path, met: int) -> list[str]:
    proc = _source_env(root, {"FAKE_MET": str(met)})
    assert proc.returncode == 0, proc.stderr
    calls = (root / "calls.log").read_text().splitlines()
    (root / "calls.log").unlink()
    return calls


def test_a_manual_install_is_not_redone(tmp_path):
    """After the README's manual install into ./.venv (no stamp file) the shell scripts check the environment and go
    on; only a ./.venv that lacks something is installed into, under the pins of constraints.txt."""
    root = _fake_checkout(tmp_path)
    stamp = root / ".venv" / ".excel-installed"
    calls = _excel_env(root, met=0)
    assert calls == [f"{root}/scripts/_requirements_met.py {root} --pins --editable"] and stamp.is_file()
    proc = _source_env(root)                       # stamp fresh: nothing is even checked
    assert proc.returncode == 0 and not (root / "calls.log").exists()
    assert proc.stdout.strip().splitlines()[-1] == f"{root}/.venv/bin/python"
    stamp.unlink()
    calls = _excel_env(root, met=1)
    assert calls[0] == f"{root}/scripts/_requirements_met.py {root} --pins --editable"
    assert f"-m pip install -q -r {root}/requirements.txt -c {root}/constraints.txt" in calls
    assert f"-m pip install -q --no-deps -e {root}" in calls
    assert stamp.is_file()


def test_no_install_on_a_node_that_forbids_it(tmp_path):
    """EXCEL_NO_INSTALL=1 (the SLURM script) and an incomplete ./.venv: an error that says what to do, no pip."""
    root = _fake_checkout(tmp_path)
    proc = _source_env(root, {"FAKE_MET": "1", "EXCEL_NO_INSTALL": "1"})
    assert proc.returncode == 1 and "EXCEL_NO_INSTALL=1 forbids installing" in proc.stderr
    assert "EXCEL_PYTHON=/path/to/python" in proc.stderr
    assert not any("pip install" in line for line in (root / "calls.log").read_text().splitlines())


@pytest.fixture()
def active_env(tmp_path):
    """A real virtual environment (no pip) that sees this Python's packages, torch included, through a .pth file:
    the user's own environment with a CUDA torch, as far as the scripts can tell."""
    import sysconfig

    venv = tmp_path / "userenv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def test_an_active_environment_that_meets_the_requirements_is_used(tmp_path, active_env):
    root = _fake_checkout(tmp_path)
    (root / "requirements.txt").write_text("torch>=2.0\nnumpy  # a comment\npytest>=7  # optional: the tests\n")
    for name in ("VIRTUAL_ENV", "CONDA_PREFIX"):           # an activated venv, or conda env
        proc = _source_env(root, {name: str(active_env)}, needs="pytest")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip().splitlines()[-1] == f"{active_env}/bin/python"
    assert not (root / "calls.log").exists()               # ./.venv was neither made nor asked
    # EXCEL_PYTHON forces an interpreter, whatever is active
    proc = _source_env(root, {"EXCEL_PYTHON": f"{active_env}/bin/python", "VIRTUAL_ENV": str(root / "nowhere")})
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == f"{active_env}/bin/python", proc.stderr


def test_a_missing_package_is_named_in_one_line_and_nothing_is_installed(tmp_path, active_env):
    root = _fake_checkout(tmp_path)
    (root / "requirements.txt").write_text("torch>=2.0\nno-such-package-xyz>=1.0\ntensorboard-xyz  # optional\n")
    for env in ({"CONDA_PREFIX": str(active_env)}, {"EXCEL_PYTHON": str(active_env / "bin" / "python")}):
        proc = _source_env(root, env)
        assert proc.returncode == 1
        lines = [line for line in proc.stderr.splitlines() if "no-such-package-xyz" in line]
        assert lines == [f"[excel] {active_env}/bin/python: no-such-package-xyz is not installed (requirements.txt "
                         f"asks for no-such-package-xyz>=1.0)"], proc.stderr
        assert "tensorboard-xyz" not in proc.stderr                      # optional and not needed here
        assert "EXCEL_PYTHON=/path/to/python" in proc.stderr.splitlines()[-1]
    assert not (root / "calls.log").exists()               # ./.venv untouched: no silent install
    proc = _source_env(root, {"EXCEL_PYTHON": str(tmp_path / "no" / "python")})
    assert proc.returncode == 1 and "no such interpreter" in proc.stderr


def test_an_active_environment_without_torch_falls_back_to_the_venv(tmp_path):
    root = _fake_checkout(tmp_path)
    bare = tmp_path / "bare"
    subprocess.run(["python3", "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    (root / ".venv" / ".excel-installed").touch()
    proc = _source_env(root, {"VIRTUAL_ENV": str(bare)})
    assert proc.returncode == 0, proc.stderr
    assert f"the active environment {bare} has no working torch: using {root}/.venv" in proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == f"{root}/.venv/bin/python"


def test_requirements_check_names_what_is_missing(tmp_path):
    import importlib.metadata as md
    import importlib.util

    spec = importlib.util.spec_from_file_location("requirements_met", REPO / "scripts" / "_requirements_met.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "requirements.txt").write_text("# bounds\nnumpy\nno-such-package-xyz>=1.0\ntorch>=0.1\n"
                                               "other-xyz  # optional: a tool\n")
    (tmp_path / "constraints.txt").write_text("torch==0.0.1\n")
    torch_version = md.version("torch")
    assert module.unmet(tmp_path, editable=False) == [
        "no-such-package-xyz is not installed (requirements.txt asks for no-such-package-xyz>=1.0)"]
    assert module.unmet(tmp_path, need=("other_xyz",), pins=True) == [
        "no-such-package-xyz is not installed (requirements.txt asks for no-such-package-xyz>=1.0)",
        "other-xyz is not installed (requirements.txt asks for other-xyz)",
        f"torch {torch_version} is installed, constraints.txt asks for torch==0.0.1",
        f"excel is not installed in editable mode from {tmp_path}"]
    url = md.distribution("excel").read_text("direct_url.json") or ""
    if f"file://{REPO}" in url:  # this checkout, installed as the README says (or by run_tests.sh)
        assert module.unmet(REPO, need=("pytest",), pins=True) == []


def test_ci_installs_the_pinned_torch():
    import importlib.util

    """CI's ./.venv gets the exact torch the suite is tested with; requirements.txt keeps bounds for users."""
    pins = (REPO / "constraints.txt").read_text()
    assert "torch==2.14.1" in pins and "torchvision==0.29.1" in pins
    requirements = (REPO / "requirements.txt").read_text()
    assert "torch>=2.4" in requirements and "==" not in requirements
    assert "pytorch.org/get-started" in requirements
    import tomllib

    spec = importlib.util.spec_from_file_location("requirements_met", REPO / "scripts" / "_requirements_met.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert set(module.requirement_lines(REPO / "requirements.txt")) == set(project["dependencies"])


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
