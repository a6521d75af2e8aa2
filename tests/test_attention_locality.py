"""benchmarks/attention_locality.py: the own-object attention share against hand-computed cases, and on the shipped
organism (its attention is object-bound in the layers the affinity reads, unlike random weights)."""
from __future__ import annotations

import sys

import pytest
import torch

from excel.organism.synthetic import WORLD_SIZE, make_synthetic_voc
from excel.organism.weights import SHIPPED

from attention_locality import main, own_region_share, patch_labels


def test_patch_labels_majority_and_mixed_patches():
    label = torch.zeros(4, 4, dtype=torch.long)
    label[:2, :2] = 3                      # top-left patch: all class 3
    label[0, 2:], label[1, 2] = 5, 5       # top-right patch: three pixels of class 5 -> class 5
    label[2, 2], label[3, 3] = 7, 255      # bottom-right: 7, bg, 255, bg -> bg holds 0.5 -> background
    label[2:, :2] = 255                    # bottom-left: all ignore -> left out
    label[2, 0] = 2                        # ... one pixel of class 2: 0.25 -> still left out
    assert patch_labels(label, size=4, grid=2).tolist() == [3, 5, -1, 0]


def test_own_region_share_by_hand():
    labels = torch.tensor([1, 1, 0, 2])    # two class-1 patches, one background, one class-2 patch
    attn = torch.tensor([[[2.0, 2.0, 0.0, 0.0],     # patch 0: all on class 1 -> 1.0
                          [1.0, 0.0, 1.0, 2.0],     # patch 1: 1/4 on class 1
                          [5.0, 5.0, 5.0, 5.0],     # background rows are not counted
                          [1.0, 1.0, 1.0, 1.0]]])   # patch 3: 1/4 on itself
    share, chance, n = own_region_share(attn, labels)
    assert n == 3
    assert share.tolist() == pytest.approx([1.0 + 0.25 + 0.25])
    assert chance == pytest.approx(2 / 4 + 2 / 4 + 1 / 4)   # each patch's class area share
    empty_share, _, zero = own_region_share(attn, torch.tensor([0, 0, -1, 0]))
    assert zero == 0 and empty_share.tolist() == [0.0]


@pytest.mark.skipif(not SHIPPED.is_file(), reason="the organism weights are not in this checkout")
def test_organism_attention_is_object_bound_and_random_is_chance(tmp_path, capsys):
    root = make_synthetic_voc(tmp_path / "data", num_train=1, num_val=12, num_test=0, size=WORLD_SIZE, seed=3)
    out = main(["--images", "12", "--random", f"data.root={root}", "data.num_workers=0"])
    trained, random = out["trained"], out["random"]
    chance = trained["chance"]
    # measured on these 12 images: chance 45 % (VOC-sized objects); organism 93 / 89 / 89 / 87 / 83 / 85 % in the
    # affinity layers 6-11 and 83 % through the refinement's transition matrix, random 41-47 %. On a world this
    # object-heavy a share of k x chance cannot exceed 1 / chance, so the bounds are on the lift: the share of the
    # room above chance taken, (own - chance) / (1 - chance): 0.78 averaged over layers 6-11, 0.68 for the matrix
    lift = [(s - chance) / (1 - chance) for s in trained["own_share"][6:12]]
    assert sum(lift) / len(lift) > 0.6
    assert (trained["transition_own_share"] - chance) / (1 - chance) > 0.5
    assert all(abs(s - chance) < 0.5 * chance for s in random["own_share"])
    assert "read by the affinity" in capsys.readouterr().out
