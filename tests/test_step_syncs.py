"""The training step without host syncs: uint8 batches normalised on the device, the class count from the host,
losses read once per logging window (excel.engine.loss_log), and the same numbers as reading every step."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from excel.engine.loss_log import PendingStep, read_steps

from _syncs import count_syncs

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "configs" / "test_tiny.yaml")


def test_read_steps_means_and_the_first_non_finite_iteration():
    pending = [PendingStep(4, torch.tensor([1.5, 1.0, 5.0]), 0.1, False),
               PendingStep(5, torch.tensor([2.5, 2.0, 5.0]), 0.2, True)]
    first, second = read_steps(pending, ["seg", "aff"], world_size=1)
    assert (first.loss, first.terms, first.lr, first.lvc) == (1.5, {"seg": 1.0, "aff": 5.0}, 0.1, False)
    assert second.terms == {"seg": 2.0, "aff": 5.0} and second.lvc
    # world size 2 without a process group: the sum is the tensor itself, so the means halve
    assert read_steps(pending[:1], ["seg", "aff"], world_size=2)[0].loss == 0.75
    bad = [pending[0], PendingStep(5, torch.tensor([float("nan"), 1.0, float("inf")]), 0.2, True), pending[1]]
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan at iteration 5 \(seg 1.0, aff inf"):
        read_steps(bad, ["seg", "aff"], world_size=1)
    assert read_steps([], ["seg"], world_size=1) == []


@pytest.fixture()
def trainer(tiny_cfg, mini_voc, tmp_path):
    from excel.engine.train import Trainer

    tiny_cfg.data.root = str(mini_voc)
    tiny_cfg.run.work_dir = str(tmp_path / "wd")
    tiny_cfg.tse.cache_dir = str(tmp_path / "banks")
    return Trainer(tiny_cfg)


def test_a_step_that_does_not_log_reads_nothing(trainer):
    from excel.engine.train import collate_train

    items = [trainer.train_set[i] for i in range(2)]
    batch = collate_train(items)
    assert batch["image"].dtype == torch.uint8
    assert batch["max_classes"] == max(int((it["cls_label"] > 0).sum()) for it in items)
    # no loss read, no class count, no host-to-device copy of constants (made once per device, on the first
    # step); on the CPU, cam.box_method auto keeps the boxes' convergence check (a free read there), the fixed
    # rounds a GPU runs read nothing, and both give the same labels
    trainer.launch(0, batch)
    assert count_syncs(lambda: trainer.launch(0, batch)) == {"equal": 1}
    trainer.labeler.box_method = "fixed"
    assert count_syncs(lambda: trainer.launch(0, batch)) == {}
    from excel.engine.train import normalize_on_device, par_input
    images = normalize_on_device(batch["image"], trainer.pixel_mean, trainer.pixel_std)
    with torch.no_grad():
        encoded = trainer.model.encode(images)
    labels = {}
    for method in ("checked", "fixed"):
        trainer.labeler.box_method = method
        labels[method] = trainer.labeler(encoded, batch["cls_label"], par_input(images, trainer.pixel_mean,
                                                                                trainer.pixel_std), images.shape[-2:])
    assert torch.equal(labels["checked"], labels["fixed"])
    pending = trainer.launch(1, batch)
    assert pending.iteration == 1 and pending.losses.shape == (1 + len(trainer.loss_weights),)
    assert not pending.losses.requires_grad


def test_deferred_losses_equal_per_step_reads(mini_voc, tmp_path):
    # log_iters 1 reads every step; log_iters 4 reads windows of 4 (and before validation): the records are equal
    from scripts.train_voc import main

    runs = {}
    for log_iters in (1, 4):
        work = tmp_path / f"log{log_iters}"
        main(["--config", TINY, f"data.root={mini_voc}", f"run.work_dir={work}", f"tse.cache_dir={tmp_path / 'b'}",
              "train.max_iters=6", "train.eval_iters=3", f"train.log_iters={log_iters}"])
        runs[log_iters] = [{k: v for k, v in json.loads(line).items() if k != "step_s"}
                           for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in runs[4]] == list(range(6)) and runs[1] == runs[4]


def test_a_non_finite_loss_stops_at_the_logging_point(mini_voc, tmp_path, monkeypatch):
    from excel import losses
    from scripts.train_voc import main

    seg = losses.LOSS_TERMS["seg"]
    monkeypatch.setitem(losses.LOSS_TERMS, "seg", lambda x: seg(x) * (float("nan") if x.iteration == 1 else 1.0))
    work = tmp_path / "wd"
    with pytest.raises(FloatingPointError, match="at iteration 1 "):
        main(["--config", TINY, f"data.root={mini_voc}", f"run.work_dir={work}", f"tse.cache_dir={tmp_path / 'b'}",
              "train.max_iters=4", "train.eval_iters=4", "train.log_iters=2"])
    assert not (work / "metrics.jsonl").exists()   # the window [0, 1] is not written
