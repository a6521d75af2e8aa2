"""The seed's shell entry points keep their positional usage: run_train.sh and infer_seg_voc.sh on CPU."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "configs" / "test_tiny.yaml")


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("EXCEL_TEST_KILL_AFTER_ITER", None)
    proc = subprocess.run(["bash", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_run_train_sh_positional_arguments(mini_voc, tmp_path):
    """script, gpu_devices, gpu_number, master_port, log_tag, then overrides (and --config) pass through."""
    proc = _run(["run_train.sh", "scripts/train_voc.py", "0", "1", "29571", "shtag", "--config", TINY,
                 f"data.root={mini_voc}", f"run.work_dir={tmp_path / 'wd'}", f"tse.cache_dir={tmp_path / 'banks'}",
                 "train.max_iters=2", "train.eval_iters=2"])
    assert "no GPU found: running on CPU" in proc.stdout
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
