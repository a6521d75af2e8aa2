"""The embedded demo (tools/demo.py, excel.engine.demo): its config, its weights check, and a small run."""
from __future__ import annotations

from pathlib import Path

import pytest

from excel.engine.demo import demo_config, find_weights
from excel.errors import ExcelError

from _tools import load_tool  # noqa: E402


def test_demo_config_rescales_the_organism_schedule(tmp_path):
    cfg = demo_config(tmp_path, None, 300, ["run.seed=3"])
    assert cfg.model.clip.name == "excel-organism" and cfg.train.max_iters == 300 and cfg.train.eval_iters == 300
    assert cfg.data.root == str(tmp_path / "data") and cfg.run.work_dir == str(tmp_path / "train")
    assert cfg.run.seed == 3 and cfg.data.num_workers == 0
    # organism.yaml: LVC from 467 of 1000 iterations, the affinity-label switch at 800: the same fractions of 300
    assert cfg.lvc.start_iter == pytest.approx(0.467 * 300, abs=1)
    assert cfg.train.aff_label_switch_iter == pytest.approx(0.8 * 300, abs=1)
    real = demo_config(tmp_path, "/weights/ViT-B-16.pt", 40, [])
    assert real.model.clip.name == "ViT-B-16" and real.model.clip.pretrained == "/weights/ViT-B-16.pt"
    assert real.train.batch_size == 2 and real.train.max_iters == 40


def test_a_missing_weights_file_is_named(tmp_path):
    with pytest.raises(ExcelError, match=r"--weights .*nope.pt: no such file"):
        find_weights(str(tmp_path / "nope.pt"), None)


@pytest.mark.slow
def test_the_demo_runs_end_to_end_on_a_small_world(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "demo"
    summary = load_tool("demo").main(["--organism", "--out", str(out), "--num-train", "8", "--num-val", "4",
                                      "--iters", "4", "--num-overlays", "2"])
    assert summary["weights"] == "organism" and summary["num_val"] == 4
    for key in ("zero_shot_map", "pseudo_label_miou", "pseudo_label_crf_miou", "seg_miou", "seg_crf_miou"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert summary["zero_shot_map"] > 0.5  # the shipped organism knows its world (chance is far lower)
    for report in ("pseudo_labels", "segmentation", "predictions"):
        assert (out / report / "report.html").is_file()
    assert len(list(Path(out / "predictions" / "overlays").glob("*.png"))) == 2
