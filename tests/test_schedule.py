"""rescale_schedule: every milestone keeps its fraction of the run."""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from excel.config import load_config
from excel.engine.schedule import rescale_schedule

REPO = Path(__file__).resolve().parent.parent


def test_voc_schedule_scaled_to_1500():
    voc = load_config(REPO / "configs" / "voc.yaml")
    got = dict(o.split("=") for o in rescale_schedule(voc, 1500))
    # 30000 -> 1500 is a factor 1/20: LVC 14000 -> 700, switch 24000 -> 1200, warm-up 50 -> 2.5 -> 2 (round half
    # to even), validation 2000 -> 100, logging 200 -> 10
    assert got == {"train.max_iters": "1500", "lvc.start_iter": "700", "lvc.attn_pred_start_iter": "700",
                   "train.aff_label_switch_iter": "1200", "optim.warmup_iters": "2", "train.eval_iters": "100",
                   "train.ckpt_start_iter": "0", "train.log_iters": "10"}
    scaled = load_config(REPO / "configs" / "voc.yaml", rescale_schedule(voc, 1500))
    assert scaled.lvc.start_iter / scaled.train.max_iters == pytest.approx(14000 / 30000, abs=1e-3)


def test_never_stays_never_and_small_runs_keep_one():
    coco = load_config(REPO / "configs" / "coco.yaml")
    got = dict(o.split("=") for o in rescale_schedule(coco, 10))
    assert "train.aff_label_switch_iter" not in got          # null (never) is kept as is
    assert got["optim.warmup_iters"] == "1" and got["train.eval_iters"] == "1" and got["train.log_iters"] == "1"
    assert got["lvc.start_iter"] == "3"                      # 30000 of 100000 -> 3 of 10
    with pytest.raises(ValueError, match="positive"):
        rescale_schedule(coco, 0)


@pytest.mark.parametrize("organism, reference, milestones, warmup", [
    ("organism.yaml", "voc.yaml", ("lvc.start_iter", "lvc.attn_pred_start_iter", "train.aff_label_switch_iter"),
     50 / 30000),
    ("organism_coco.yaml", "coco.yaml", ("lvc.start_iter", "lvc.attn_pred_start_iter", "train.ckpt_start_iter"),
     200 / 100000),
])
def test_organism_configs_keep_the_reference_fractions(organism, reference, milestones, warmup):
    ref = load_config(REPO / "configs" / reference)
    org = load_config(REPO / "configs" / organism)
    n, total = org.train.max_iters, ref.train.max_iters
    for key in milestones:
        a, b = (int(OmegaConf.select(c, key)) for c in (org, ref))
        assert a / n == pytest.approx(b / total, abs=0.01), key
    assert org.optim.warmup_iters / n == pytest.approx(warmup, abs=0.001)
    assert org.model.clip.name == "excel-organism" and org.data.name == ref.data.name


def test_coco_organism_keeps_cocos_own_rules():
    org = load_config(REPO / "configs" / "organism_coco.yaml")
    assert len(org.data.class_names) == 80 and org.train.aff_label_switch_iter is None and org.infer.crf
