"""ConfusionMatrix: hand-computed scores, a slow reference, streaming, and a 2-process gloo all_reduce."""
from __future__ import annotations

import math
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp

from excel.evaluation import ConfusionMatrix, confusion_matrix


def slow_confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """Obviously-correct pixel loop."""
    out = np.zeros((num_classes, num_classes), dtype=np.int64)
    for p, g in zip(pred.reshape(-1).tolist(), gt.reshape(-1).tolist()):
        if 0 <= g < num_classes:
            out[g, p] += 1
    return out


def test_hand_computed_three_classes():
    # 10 scored pixels and 2 ignored ones (255)
    gt = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 255, 255])
    pred = torch.tensor([0, 0, 1, 2, 1, 1, 0, 2, 2, 1, 2, 0])
    cm = ConfusionMatrix(3)
    cm.update(pred, gt)
    np.testing.assert_array_equal(cm.matrix, [[2, 1, 1], [1, 2, 0], [0, 1, 2]])
    s = cm.compute()
    np.testing.assert_allclose(s["iou"], [2 / 5, 2 / 5, 2 / 4])
    assert s["miou"] == pytest.approx((0.4 + 0.4 + 0.5) / 3)
    assert s["miou_plain"] == pytest.approx((0.4 + 0.4 + 0.5) / 3)
    np.testing.assert_allclose(s["precision"], [2 / 3, 2 / 4, 2 / 3])
    np.testing.assert_allclose(s["recall"], [2 / 4, 2 / 3, 2 / 3])
    assert s["pixel_acc"] == pytest.approx(0.6)


def test_absent_classes_and_the_two_means():
    # class 3: predicted once, never in the GT (IoU 0); class 4: absent from both (IoU NaN)
    gt = torch.tensor([[0, 0, 1], [1, 2, 2]])
    pred = torch.tensor([[0, 3, 1], [1, 2, 2]])
    s = ConfusionMatrix(5)
    s.update(pred, gt)
    r = s.compute()
    np.testing.assert_allclose(r["iou"][:4], [0.5, 1.0, 1.0, 0.0])
    assert math.isnan(r["iou"][4])
    assert r["miou"] == pytest.approx(2.5 / 3)          # reference scores(): classes with GT only
    assert r["miou_plain"] == pytest.approx(2.5 / 4)    # table m-IoU: every class with a defined IoU
    assert math.isnan(r["precision"][4]) and r["precision"][3] == 0.0


def test_streaming_matches_slow_reference_and_ignores_out_of_range():
    g = torch.Generator().manual_seed(0)
    num_classes = 6
    gt = torch.randint(0, num_classes, (4, 17, 19), generator=g)
    gt[:, :3] = 255
    gt[0, 5, :4] = -1
    pred = torch.randint(0, num_classes, (4, 17, 19), generator=g)
    cm = ConfusionMatrix(num_classes)
    for i in range(4):
        cm.update(pred[i], gt[i])
    expected = slow_confusion(pred.numpy(), gt.numpy(), num_classes)
    np.testing.assert_array_equal(cm.matrix, expected)
    np.testing.assert_array_equal(confusion_matrix(pred, gt, num_classes).numpy(), expected)
    assert cm.matrix.sum() == int(((gt >= 0) & (gt < num_classes)).sum())
    # invariants: IoU <= min(precision, recall), all in [0, 1]
    s = cm.compute()
    assert np.all(s["iou"] <= np.minimum(s["precision"], s["recall"]) + 1e-12)
    assert 0.0 <= s["miou"] <= 1.0


def test_bad_inputs_are_named():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        cm.update(torch.tensor([0, 5]), torch.tensor([0, 1]))
    cm.update(torch.tensor([7]), torch.tensor([255]))  # a bad prediction on an ignored pixel is not scored
    assert cm.matrix.sum() == 0
    with pytest.raises(ValueError):
        ConfusionMatrix(0)


def test_table_lists_every_class_and_both_means():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 0, 1, 2, 1, 1, 0, 2, 2, 1]), torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2]))
    text = cm.table(["background", "cat", "dog"])
    lines = text.splitlines()
    assert lines[1].split() == ["background", "40.00", "66.67", "50.00"]
    assert "dog" in lines[3] and "50.00" in lines[3]
    assert "m-IoU" in text and "mIoU (GT)" in text and "43.33" in text
    with pytest.raises(ValueError, match="3 class names"):
        cm.table(["a", "b"])


def test_all_reduce_without_process_group_is_noop():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    cm.all_reduce()
    np.testing.assert_array_equal(cm.matrix, [[1, 1], [0, 0]])


def _rank_data(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randint(0, 4, (50,), generator=g), torch.randint(0, 4, (50,), generator=g)


def _all_reduce_worker(rank: int, world: int, port: int, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        cm = ConfusionMatrix(4)
        if rank == 0:  # rank 1 never updates: its matrix is created by all_reduce
            cm.update(*_rank_data(0))
            cm.update(*_rank_data(1))
        cm.all_reduce()
        if rank == 1:
            np.save(out_file, cm.matrix)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_all_reduce_two_processes_gloo(tmp_path):
    out = tmp_path / "rank1.npy"
    tmp.start_processes(_all_reduce_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True,
                        start_method="fork")  # fork: no re-import of torch in the children (fast)
    expected = sum(slow_confusion(p.numpy(), g.numpy(), 4) for p, g in map(_rank_data, (0, 1)))
    np.testing.assert_array_equal(np.load(out), expected)
