"""Training end to end on the generated mini dataset: one process in-process, and 2 processes under torchrun."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _collectives import checked_calls, checked_env
from excel.engine.optim import poly_warmup_lr

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "configs" / "test_tiny.yaml")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_single_process_training_writes_a_complete_work_dir(mini_voc, tmp_path):
    from scripts.train_voc import main

    work = tmp_path / "wd"
    torch.manual_seed(123)  # the run must not depend on the caller's RNG state
    result = main(["--config", TINY, f"data.root={mini_voc}", f"run.work_dir={work}",
                   f"tse.cache_dir={tmp_path / 'banks'}", "train.max_iters=6", "train.eval_iters=3"])
    assert set(result) == {"seg_miou", "pseudo_miou"} and 0 <= result["seg_miou"] <= 1
    for name in ("config.yaml", "git_revision.txt", "train.log", "metrics.jsonl", "val.jsonl"):
        assert (work / name).is_file(), name
    metrics = _lines(work / "metrics.jsonl")
    assert [m["iter"] for m in metrics] == list(range(6))
    # schedule of the tiny config: LVC from iteration 3, warm-up 2, max 6 (algorithm.md §8.2: lr set before each step)
    assert [m["lvc"] for m in metrics] == [False] * 3 + [True] * 3
    for m in metrics:
        assert m["lr"] == pytest.approx(poly_warmup_lr(m["iter"], 1e-3, 2, 1e-6, 6, 1.0), rel=1e-9)
        assert m["loss"] == pytest.approx(m["seg_loss"] + 0.1 * m["aff_loss"], rel=1e-5)
    assert [v["iter"] for v in _lines(work / "val.jsonl")] == [3, 6]
    ckpts = sorted((work / "checkpoints").glob("iter_*.pth"))
    assert [c.name for c in ckpts] == ["iter_0000003.pth", "iter_0000006.pth"]
    ckpt = torch.load(ckpts[-1], map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 6 and ckpt["meta"]["num_classes"] == 21 and ckpt["meta"]["backbone"] == "excel-tiny"
    assert all(not k.startswith(("visual", "vit")) for k in ckpt["model"])  # decoder only by default
    assert {"optimizer", "rng", "config"} <= set(ckpt)
    log = (work / "train.log").read_text()
    assert "resolved config" in log and "batch 2 per process x 1 processes = 2" in log


@pytest.mark.slow
def test_two_process_gloo_training(mini_voc, tmp_path):
    work = tmp_path / "wd"
    report = tmp_path / "collectives.txt"
    env = checked_env(report, dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "scripts" / "train_voc.py"), "--config", TINY, f"data.root={mini_voc}", f"run.work_dir={work}",
           f"tse.cache_dir={tmp_path / 'banks'}", "train.max_iters=4", "train.eval_iters=2"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (work / "train.log").read_text()
    assert "2 process(es)" in log and "batch 2 per process x 2 processes = 4" in log  # test_tiny: train.batch_size 2
    calls = checked_calls(report)        # every collective ran on the group's device, through a staging point
    assert {r for r, *_ in calls} == {0, 1} and {d for _, _, d, _ in calls} == {"cpu"}
    assert sum(name == "all_reduce" for r, name, _, _ in calls if r == 0) >= 4   # the loss mean of each iteration
    assert [m["iter"] for m in _lines(work / "metrics.jsonl")] == [0, 1, 2, 3]  # rank 0 alone writes
    assert [v["iter"] for v in _lines(work / "val.jsonl")] == [2, 4]
    assert sorted(p.name for p in (work / "checkpoints").glob("iter_*.pth")) == ["iter_0000002.pth",
                                                                                  "iter_0000004.pth"]


def test_bad_files_in_either_split_stop_training_before_the_first_iteration(mini_voc, tmp_path):
    """A val mask with a value above the class count, a train mask of the wrong size and a listed image that is
    missing are all named before the model is built (no metrics, no checkpoint), in one error."""
    import shutil
    import time

    import numpy as np
    from PIL import Image

    from excel.data import DatasetError
    from scripts.train_voc import main

    root = shutil.copytree(mini_voc, tmp_path / "voc")
    val = (root / "lists" / "val.txt").read_text().split()
    train = (root / "lists" / "train.txt").read_text().split()
    mask = np.array(Image.open(root / "SegmentationClassAug" / f"{val[1]}.png"))
    mask[0, 0] = 21
    Image.fromarray(mask).save(root / "SegmentationClassAug" / f"{val[1]}.png")
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(root / "SegmentationClassAug" / f"{train[2]}.png")
    (root / "JPEGImages" / f"{train[4]}.jpg").unlink()
    work = tmp_path / "wd"
    start = time.perf_counter()
    with pytest.raises(DatasetError) as info:
        main(["--config", TINY, f"data.root={root}", f"run.work_dir={work}", f"tse.cache_dir={tmp_path / 'banks'}",
              "model.clip.pretrained=/no/such/weights.pt"])  # never read: the data check comes first
    seconds = time.perf_counter() - start
    message = str(info.value)
    assert message.startswith("3 of the 12 listed items of the train split 'train' and the val split 'val' are bad")
    assert f"[val] label {root / 'SegmentationClassAug' / val[1]}.png holds values [21] outside 0..20 (20 " \
           f"foreground classes + background)" in message
    assert f"[train] label {root / 'SegmentationClassAug' / train[2]}.png is 5x7" in message
    assert f"[train] id '{train[4]}' is listed in" in message and "does not exist" in message
    assert "masks may hold 0..20 and 255 = ignore" in message and "\n" not in message
    assert not (work / "metrics.jsonl").exists() and seconds < 30


def test_a_short_knowledge_base_is_refused_before_any_weights_are_read(mini_voc, tmp_path):
    from excel.config import load_config
    from excel.text.knowledge import KnowledgeBaseError
    from scripts.train_voc import main

    names = list(load_config([REPO / "configs" / "voc.yaml"]).data.class_names)
    kb = {c: [f"a clean origami {c}. it shows detail {i}." for i in range(12)] for c in names}
    kb["cat"] = kb["cat"][:3]
    (tmp_path / "kb.json").write_text(json.dumps(kb))
    with pytest.raises(KnowledgeBaseError, match=r"fewer than tse.min_sentences=10 sentences: 'cat' has 3 "):
        main(["--config", TINY, f"data.root={mini_voc}", f"run.work_dir={tmp_path / 'wd'}",
              f"tse.knowledge_base={tmp_path / 'kb.json'}", f"model.clip.pretrained={tmp_path / 'absent.pt'}"])
