"""benchmarks/attn_pred_quality.py: the pair AUC and the falsely-joined share against hand-computed cases, and a
run over a trained checkpoint of the tiny model."""
from __future__ import annotations

import json
import math

import pytest
import torch

from excel.config import load_config

from attn_pred_quality import _layer_choice_only, _product_only, false_join_share, measure, pair_auc


def test_pair_auc_by_hand():
    labels = torch.tensor([0, 0, 1, -1])           # patch 3 is left out
    values = torch.full((4, 4), 9.0)               # any pair with patch 3 would win, were it counted
    values[0, 1], values[0, 2], values[1, 2] = 0.5, 0.7, 0.2
    # the one same-label pair (0, 1) scores 0.5: above (1, 2) at 0.2, below (0, 2) at 0.7
    assert pair_auc(values, labels) == 0.5
    values[0, 1] = 0.8
    assert pair_auc(values, labels) == 1.0
    assert pair_auc(values, torch.tensor([2, 2, 2, -1])) is None      # no pair of two classes
    assert pair_auc(values, torch.tensor([0, 1, 2, 3])) is None       # no pair of one class
    assert pair_auc(values, torch.tensor([5, -1, -1, -1])) is None    # a single labelled patch


def test_false_join_share_by_hand():
    gt = torch.tensor([1, 1, 2, 0])
    pseudo = torch.tensor([1, 1, 1, 0])            # the pseudo labels join patch 2 to the class-1 object
    q = torch.zeros(4, 4)
    q[0, 1] = q[1, 0] = 0.8
    q[0, 2] = q[2, 0] = 0.1
    q[1, 2] = q[2, 1] = 0.1
    q[3, 3] = 5.0                                  # the diagonal is never a pair
    # joined pairs (0,1), (0,2), (1,2) both ways: mass 2.0, of which (0,2) and (1,2): 0.4
    assert false_join_share(q, gt, pseudo) == pytest.approx(0.2)
    assert false_join_share(q, gt, torch.tensor([1, 2, 3, 0])) is None   # nothing joined


def test_q_roles_apart_by_hand():
    from types import SimpleNamespace

    # two layers over CLS + 2 patches; Q = 0.5 everywhere. d_l = sum(Q - A_l): layer 0 sums to 4 over the patch
    # block (d = 2 - 4 = -2), layer 1 to 0 (d = 2): tau = 0, only layer 0 is chosen
    attn = torch.zeros(2, 1, 3, 3)
    attn[0, 0, 1:, 1:] = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    q = torch.full((1, 2, 2), 0.5)
    encoded = SimpleNamespace(attn=attn)
    assert torch.allclose(_layer_choice_only(encoded, [0, 1], q), torch.ones(1, 2, 2) / (1 + 1e-5))
    assert torch.allclose(_product_only(encoded, [0, 1], q), torch.full((1, 2, 2), 0.25))


def test_measure_on_a_trained_checkpoint(seg_checkpoint):
    from pathlib import Path

    from excel.config import CONFIG_DIR

    cfg = load_config([CONFIG_DIR / "voc.yaml", CONFIG_DIR / "test_tiny.yaml"], seg_checkpoint["overrides"])
    row = measure(cfg, seg_checkpoint["path"], "val", 3)
    assert row["images"] == 3 and row["checkpoint"] == Path(seg_checkpoint["path"]).name
    for key in ("pseudo_miou_with_q", "pseudo_miou_without_q", "pseudo_miou_layer_choice_only",
                "pseudo_miou_product_only"):
        assert 0.0 <= row[key] <= 1.0
    for key in ("q_auc_ground_truth", "q_auc_pseudo_labels", "attention_auc_ground_truth", "q_false_join_share"):
        assert math.isnan(row[key]) or 0.0 <= row[key] <= 1.0
    json.dumps(row)
    # the labels without Q come from the frozen CLIP alone: a fresh (random) decoder gives the same figure
    fresh = measure(cfg, None, "val", 3)
    assert fresh["checkpoint"] == "random decoder"
    assert fresh["pseudo_miou_without_q"] == pytest.approx(row["pseudo_miou_without_q"], abs=1e-9)
