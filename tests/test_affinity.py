"""Attention affinity and transition matrix (algorithm.md §5.1, quirk 3)."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from excel.cam.affinity import attention_affinity, transition_matrix


def constant_stack(values_per_image: list[list[float]], n: int) -> torch.Tensor:
    """L x B x N x N stack whose layer l of image b is the constant values_per_image[b][l]."""
    vals = torch.tensor(values_per_image, dtype=torch.float32).T  # L x B
    return vals[:, :, None, None].expand(-1, -1, n, n).clone()


def test_plain_mean_of_layers_6_to_11_without_cls():
    gen = torch.Generator().manual_seed(0)
    attn = torch.rand(12, 2, 5, 5, generator=gen)
    aff = attention_affinity(attn)
    assert aff.shape == (2, 4, 4)
    expected = sum(attn[l, :, 1:, 1:] for l in range(6, 12)) / 6
    assert torch.allclose(aff, expected, atol=1e-7)
    # Other layer choices are honoured; the CLS row and column never enter.
    attn2 = attn.clone()
    attn2[:, :, 0, :] = 99.0
    attn2[:, :, :, 0] = 99.0
    assert torch.allclose(attention_affinity(attn2, layers=(0, 11)), (attn[0, :, 1:, 1:] + attn[11, :, 1:, 1:]) / 2)


def test_layer_selection_by_hand():
    # P = 4 patches (N = 5), Q = 0.5 everywhere, layer l constant c_l, so d_l = 16 (0.5 - c_l).
    # Image 0: c_6..c_11 = 0.1, 1, 2, 3, 0.2, 0.3 -> d = 6.4, -8, -24, -40, 4.8, 3.2, τ = -9.6,
    #          S = {8, 9}, Ā = (2 + 3) / (2 + 1e-5) * 0.5.
    # Image 1: c = 0.4 (head mean, small), then 4.8, 4.8, 6, 6, 6 (head sums, quirk 3) ->
    #          d = 1.6, -68.8, -68.8, -88, -88, -88, τ = -66.67, S = {7..11}: layer 6 is dropped,
    #          Ā = (4.8 + 4.8 + 6 + 6 + 6) / (5 + 1e-5) * 0.5.
    c0 = [0.0] * 6 + [0.1, 1.0, 2.0, 3.0, 0.2, 0.3]
    c1 = [0.0] * 6 + [0.4, 4.8, 4.8, 6.0, 6.0, 6.0]
    attn = constant_stack([c0, c1], 5)
    q = torch.full((2, 4, 4), 0.5)
    aff = attention_affinity(attn, attn_pred=q)
    assert aff.shape == (2, 4, 4)
    assert torch.allclose(aff[0], torch.full((4, 4), 5 / (2 + 1e-5) * 0.5), rtol=1e-6)
    assert torch.allclose(aff[1], torch.full((4, 4), 27.6 / (5 + 1e-5) * 0.5), rtol=1e-6)


def test_layer_selection_multiplies_by_q_elementwise():
    gen = torch.Generator().manual_seed(1)
    attn = torch.rand(12, 1, 10, 10, generator=gen)
    attn[6] *= 0.1  # make layer 6 clearly the farthest from Q below
    q = torch.rand(1, 9, 9, generator=gen)
    aff = attention_affinity(attn, attn_pred=q)
    # slow reference, one layer at a time in float64
    a = attn[6:12, 0, 1:, 1:].double()
    d = [float((q[0].double() - a[i]).sum()) for i in range(6)]
    tau = sum(d) / 6
    chosen = [i for i in range(6) if d[i] <= tau]
    expected = sum(a[i] for i in chosen) / (len(chosen) + 1e-5) * q[0].double()
    assert 0 not in chosen
    assert torch.allclose(aff[0].double(), expected, rtol=1e-5)


def test_transition_matrix_by_hand():
    # A = [[1, 2], [3, 4]], one round: columns / [4, 6] -> [[1/4, 1/3], [3/4, 2/3]];
    # rows / [7/12, 17/12] -> [[3/7, 4/7], [9/17, 8/17]]; symmetrise: off-diagonal (4/7 + 9/17) / 2 = 131/238.
    x = [[Fraction(3, 7), Fraction(131, 238)], [Fraction(131, 238), Fraction(8, 17)]]
    sq = [[sum(x[i][k] * x[k][j] for k in range(2)) for j in range(2)] for i in range(2)]
    got = transition_matrix(torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]), iters=1)[0]
    assert torch.allclose(got, torch.tensor([[float(v) for v in row] for row in sq]), rtol=1e-6)


def transition_reference(aff: np.ndarray, iters: int) -> np.ndarray:
    x = aff.astype(np.float64)
    for _ in range(iters):
        for j in range(x.shape[1]):
            x[:, j] = x[:, j] / x[:, j].sum()
        for i in range(x.shape[0]):
            x[i, :] = x[i, :] / x[i, :].sum()
    x = (x + x.T) / 2
    return x @ x


def test_transition_matrix_invariants_and_reference():
    gen = torch.Generator().manual_seed(2)
    aff = torch.rand(3, 16, 16, generator=gen) ** 3
    t = transition_matrix(aff, iters=3)
    assert t.shape == (3, 16, 16)
    assert torch.allclose(t, t.transpose(1, 2), atol=1e-7) and (t >= 0).all()
    for b in range(3):
        np.testing.assert_allclose(t[b].numpy(), transition_reference(aff[b].numpy(), 3), rtol=1e-5, atol=1e-8)
    # Many rounds make X doubly stochastic, so the symmetrised square has rows summing to 1.
    converged = transition_matrix(aff, iters=60)
    assert torch.allclose(converged.sum(-1), torch.ones(3, 16), atol=1e-4)


def test_bad_input():
    with pytest.raises(ValueError, match="L x B x N x N"):
        attention_affinity(torch.rand(12, 5, 5))
    with pytest.raises(ValueError, match="layers"):
        attention_affinity(torch.rand(6, 1, 5, 5))  # layers 6..11 do not exist
    with pytest.raises(ValueError, match="attn_pred"):
        attention_affinity(torch.rand(12, 1, 5, 5), attn_pred=torch.rand(1, 5, 5))
    with pytest.raises(ValueError, match="B x P x P"):
        transition_matrix(torch.rand(2, 3, 4))
