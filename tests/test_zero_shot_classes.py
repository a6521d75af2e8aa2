"""Per-class zero-shot figures of the organism (excel.organism.evaluate, benchmarks/zero_shot_classes.py)."""
from __future__ import annotations

import math

import pytest
import torch

from excel.organism.evaluate import negatives_below


def test_negatives_below_by_hand():
    scores = torch.tensor([[0.9, 0.1], [0.5, 0.7], [0.3, 0.2], [0.1, 0.6]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    share = negatives_below(scores, labels)
    # class 0: negatives score 0.5 and 0.1; the positive at 0.9 is above both (1), the one at 0.3 above one (1/2)
    # class 1: negatives 0.1, 0.2, 0.6; the positive at 0.7 is above all three; a tie would not count as below
    assert share[0, 0] == 1.0 and share[2, 0] == 0.5 and share[1, 1] == 1.0
    assert all(math.isnan(share[i, c]) for i, c in ((1, 0), (3, 0), (0, 1), (2, 1), (3, 1)))
    tie = negatives_below(torch.tensor([[0.5], [0.5]]), torch.tensor([[1.0], [0.0]]))
    assert tie[0, 0] == 0.0


def test_zero_shot_classes_runs_and_matches_the_map(mini_voc):
    from zero_shot_classes import main

    torch.manual_seed(0)                                # the random-init tiny CLIP the benchmark loads
    overrides = [f"data.root={mini_voc}", "data.num_workers=0", "model.clip.name=excel-tiny",
                 "model.clip.pretrained=null", "model.input_size=224"]
    out = main(overrides)
    assert out["images"] == 4 and len(out["classes"]) == 20
    aps = [c["ap"] for c in out["classes"] if c["positives"] > 0]
    assert out["map"] == pytest.approx(sum(aps) / len(aps))
    assert sum(r["positives"] for r in out["by_area"]) == sum(c["positives"] for c in out["classes"])
    assert all(0 <= r["negatives_below"] <= 1 for r in out["by_area"] if r["positives"])
