"""Losses (algorithm.md §7): hand-computed cases, slow loop references, invariants."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from excel.losses import affinity_labels, affinity_loss, balanced_seg_loss

EPS = 1e-6


# ----------------------------------------------------------------------------- balanced segmentation loss
def test_balanced_seg_loss_hand_case():
    # One 1x4 image, 2 classes. Logits per pixel (class 0, class 1) and labels:
    #   p0: (0, 0)     label 0 -> softmax (1/2, 1/2): ℓ = ln 2
    #   p1: (0, ln 3)  label 1 -> softmax (1/4, 3/4): ℓ = ln(4/3)
    #   p2: (ln 3, 0)  label 1 -> softmax (3/4, 1/4): ℓ = ln 4
    #   p3: (5, -5)    label 255 -> ignored
    # L_bg = ln2 / (1 + 1e-6); L_fg = (ln(4/3) + ln 4) / (2 + 1e-6) = ln(16/3) / (2 + 1e-6); L = (L_bg + L_fg) / 2
    ln3 = math.log(3)
    logits = torch.tensor([[[0.0, 0.0, ln3, 5.0], [0.0, ln3, 0.0, -5.0]]]).unsqueeze(2)  # (1, 2, 1, 4)
    labels = torch.tensor([[[0, 1, 1, 255]]])
    expected = (math.log(2) / (1 + EPS) + math.log(16 / 3) / (2 + EPS)) / 2  # = 0.765049...
    torch.testing.assert_close(balanced_seg_loss(logits, labels), torch.tensor(expected))


def test_balanced_seg_loss_pools_the_whole_batch():
    # Image 0: one bg pixel (ℓ = ln 2) and one fg pixel with ℓ = ln(4/3); image 1: two fg pixels with ℓ = ln 4.
    # Batch pooling: L_fg = (ln(4/3) + 2 ln 4) / 3, not the mean of per-image means ((ln(4/3) + ln 4) / 2).
    ln3 = math.log(3)
    logits = torch.tensor([[[0.0, 0.0], [0.0, ln3]], [[ln3, ln3], [0.0, 0.0]]]).unsqueeze(2)  # (2, 2, 1, 2)
    labels = torch.tensor([[[0, 1]], [[1, 1]]])
    l_bg = math.log(2) / (1 + EPS)
    l_fg = (math.log(4 / 3) + 2 * math.log(4)) / (3 + EPS)
    torch.testing.assert_close(balanced_seg_loss(logits, labels), torch.tensor((l_bg + l_fg) / 2))


def test_balanced_seg_loss_without_foreground_is_half_the_background_term():
    logits = torch.zeros(1, 3, 2, 2)
    labels = torch.zeros(1, 2, 2, dtype=torch.long)  # every pixel background: ℓ = ln 3, L_fg = 0 / 1e-6 = 0
    torch.testing.assert_close(balanced_seg_loss(logits, labels), torch.tensor(math.log(3) * 4 / (4 + EPS) / 2))


def _slow_balanced(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Reference: explicit bilinear upsample, then per-pixel loops."""
    up = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    sums, counts = {"bg": 0.0, "fg": 0.0}, {"bg": 0, "fg": 0}
    for b in range(labels.shape[0]):
        for i in range(labels.shape[1]):
            for j in range(labels.shape[2]):
                y = int(labels[b, i, j])
                if y == 255:
                    continue
                log_p = torch.log_softmax(up[b, :, i, j].double(), dim=0)
                kind = "bg" if y == 0 else "fg"
                sums[kind] += float(-log_p[y])
                counts[kind] += 1
    return (sums["bg"] / (counts["bg"] + EPS) + sums["fg"] / (counts["fg"] + EPS)) / 2


def test_balanced_seg_loss_upsamples_and_matches_slow_reference():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 3, 3, generator=gen)
    labels = torch.randint(0, 4, (2, 12, 12), generator=gen)
    labels[0, :2] = 255
    torch.testing.assert_close(balanced_seg_loss(logits, labels).double(),
                               torch.tensor(_slow_balanced(logits, labels), dtype=torch.float64), rtol=1e-5, atol=1e-6)


def test_balanced_seg_loss_rejects_bad_labels_and_shapes():
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        balanced_seg_loss(torch.zeros(1, 3, 2, 2), torch.full((1, 2, 2), 7))
    with pytest.raises(ValueError, match="B, C, h, w"):
        balanced_seg_loss(torch.zeros(3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))


# ----------------------------------------------------------------------------- affinity labels
def _label_map() -> torch.Tensor:
    """(1, 6, 6) map whose even-coordinate pixels hold the 3x3 grid [[0,0,1],[0,1,1],[2,2,255]]; odd ones hold 7."""
    grid = torch.tensor([[0, 0, 1], [0, 1, 1], [2, 2, 255]])
    full = torch.full((1, 6, 6), 7, dtype=torch.long)
    full[0, ::2, ::2] = grid
    return full


def test_affinity_labels_hand_case():
    # Stride 6 // 3 = 2 samples pixels (0,0),(0,2),...: patches (row-major) have labels 0,0,1,0,1,1,2,2,255.
    r = affinity_labels(_label_map(), grid=(3, 3), radius=1)[0]
    assert r.shape == (9, 9) and r.dtype == torch.uint8
    assert r[0, 0] == 1      # diagonal kept (quirk 12)
    assert r[0, 1] == 1      # labels 0 / 0, offset (0, 1)
    assert r[0, 2] == 255    # offset (0, 2) is outside the radius-1 window
    assert r[0, 4] == 0      # labels 0 / 1, offset (1, 1) is inside
    assert r[0, 8] == 255    # offset (2, 2) outside the window
    assert r[4, 8] == 255    # label 255 at patch 8
    assert r[8, 8] == 255    # ignored even on the diagonal
    assert r[6, 7] == 1 and r[3, 6] == 0 and r[5, 7] == 0


def _slow_affinity_labels(label_map: torch.Tensor, g: int, radius: int) -> torch.Tensor:
    batch, height, _ = label_map.shape
    s = height // g
    out = torch.empty(batch, g * g, g * g, dtype=torch.uint8)
    for b in range(batch):
        for p in range(g * g):
            for q in range(g * g):
                (i1, j1), (i2, j2) = divmod(p, g), divmod(q, g)
                a, c = int(label_map[b, s * i1, s * j1]), int(label_map[b, s * i2, s * j2])
                if abs(i1 - i2) > radius or abs(j1 - j2) > radius or a == 255 or c == 255:
                    out[b, p, q] = 255
                else:
                    out[b, p, q] = int(a == c)
    return out


def test_affinity_labels_match_slow_reference_and_are_symmetric():
    gen = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 4, (2, 20, 20), generator=gen)
    labels[1, 4:9, 4:9] = 255
    r = affinity_labels(labels, grid=(5, 5), radius=2)
    assert torch.equal(r, _slow_affinity_labels(labels, 5, 2))
    assert torch.equal(r, r.transpose(1, 2))
    # Radius 8 on a 5x5 grid keeps every pair.
    assert not (affinity_labels(labels[:1], grid=(5, 5), radius=8) == 255).any()


# ----------------------------------------------------------------------------- affinity loss
def test_affinity_loss_hand_case():
    # P = [[0.9, 0.2], [0.4, 0.7]], R = [[1, 0], [255, 1]].
    # Positives (0,0), (1,1): Σ(1 - P) = 0.1 + 0.3 = 0.4, n+ = 2 -> 0.4 / 3.
    # Negative (0,1): Σ P = 0.2, n- = 1 -> 0.2 / 2 = 0.1. (1,0) ignored.
    # L = 0.5 * 0.4/3 + 0.5 * 0.1 = 0.1166667.
    p = torch.tensor([[[0.9, 0.2], [0.4, 0.7]]], requires_grad=True)
    r = torch.tensor([[[1, 0], [255, 1]]], dtype=torch.uint8)
    loss = affinity_loss(p, r)
    torch.testing.assert_close(loss, torch.tensor(0.5 * 0.4 / 3 + 0.5 * 0.1))
    loss.backward()
    # dL/dP: -0.5/3 on positives, +0.5/2 on the negative, 0 where ignored.
    torch.testing.assert_close(p.grad, torch.tensor([[[-0.5 / 3, 0.25], [0.0, -0.5 / 3]]]))


def test_affinity_loss_pools_the_batch_and_checks_shapes():
    # Two images, each with one positive: Σ(1-P) = 0.5 + 0.25, n+ = 2 -> 0.75 / 3; no negatives -> 0 / 1.
    p = torch.tensor([[[0.5]], [[0.75]]])
    r = torch.ones(2, 1, 1, dtype=torch.long)
    torch.testing.assert_close(affinity_loss(p, r), torch.tensor(0.5 * 0.75 / 3))
    with pytest.raises(ValueError, match="same"):
        affinity_loss(torch.zeros(1, 4, 4), torch.zeros(1, 2, 2))


def test_loss_weights_follow_the_registered_terms_and_name_a_missing_key():
    from omegaconf import OmegaConf

    from excel.config import ConfigError
    from excel.losses import LOSS_TERMS, loss_term, loss_weights

    assert list(LOSS_TERMS) == ["seg", "aff"]
    assert loss_weights(OmegaConf.create({"seg_weight": 1.0, "aff_weight": 0.1, "aff_radius": 8})) == \
        {"seg": 1.0, "aff": 0.1}
    loss_term("extra_for_test")(lambda x: x.logits.sum())
    try:
        with pytest.raises(ConfigError, match="loss.extra_for_test_weight"):
            loss_weights(OmegaConf.create({"seg_weight": 1.0, "aff_weight": 0.1}))
        with pytest.raises(ValueError, match="already registered"):
            loss_term("extra_for_test")(lambda x: x.logits.sum())
    finally:
        LOSS_TERMS.pop("extra_for_test")
