"""Feature surgery (algorithm.md §4) and the token normalisation quirk (algorithm.md §1.7)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from excel.cam import feature_surgery_lam, normalize_tokens


def naive_lam(tokens: torch.Tensor, text: torch.Tensor, num_fg: int, temperature: float = 2.0) -> torch.Tensor:
    """The reference's formulation: the full [B, N, K, D] product, minus its mean over K, summed over D."""
    prob = torch.softmax(temperature * tokens[:, 0] @ text.t(), dim=-1)           # (B, K)
    w = prob / prob.mean(-1, keepdim=True)
    feats = tokens[:, :, None, :] * text[None, None, :, :] * w[:, None, :, None]  # (B, N, K, D)
    feats = feats - feats.mean(dim=2, keepdim=True)
    s = feats.sum(-1)                                                            # (B, N, K)
    low, high = s.min(dim=1, keepdim=True).values, s.max(dim=1, keepdim=True).values
    s = (s - low) / (high - low)
    return s[:, 1:, :num_fg]


def test_normalize_tokens_axes_hand_computed():
    y = torch.tensor([[[3.0, 4.0], [4.0, 3.0]]])
    # over tokens: each channel divided by its norm over the two tokens (5 for both channels)
    torch.testing.assert_close(normalize_tokens(y), torch.tensor([[[0.6, 0.8], [0.8, 0.6]]]))
    torch.testing.assert_close(normalize_tokens(y, over="channels"), torch.tensor([[[0.6, 0.8], [0.8, 0.6]]]))
    y = torch.tensor([[[1.0, 0.0], [1.0, 2.0]]])
    r2 = math.sqrt(2.0)
    torch.testing.assert_close(normalize_tokens(y), torch.tensor([[[1 / r2, 0.0], [1 / r2, 1.0]]]))
    torch.testing.assert_close(normalize_tokens(y, over="channels"),
                               torch.tensor([[[1.0, 0.0], [1 / math.sqrt(5), 2 / math.sqrt(5)]]]))
    with pytest.raises(ValueError, match="over"):
        normalize_tokens(y, over="batch")


def test_feature_surgery_matches_naive_formula():
    gen = torch.Generator().manual_seed(0)
    tokens = normalize_tokens(torch.randn(3, 10, 16, generator=gen, dtype=torch.float64))
    text = F.normalize(torch.randn(7, 16, generator=gen, dtype=torch.float64), dim=-1)
    fast = feature_surgery_lam(tokens, text, num_fg=4)
    assert fast.shape == (3, 9, 4)
    torch.testing.assert_close(fast, naive_lam(tokens, text, 4), rtol=0, atol=1e-12)
    assert fast.min() >= 0 and fast.max() <= 1
    torch.testing.assert_close(feature_surgery_lam(tokens, text, 4, temperature=5.0),
                               naive_lam(tokens, text, 4, temperature=5.0), rtol=0, atol=1e-12)


def test_feature_surgery_hand_computed_cls_in_minmax():
    # T = [e1, e2]; tokens CLS = e1, patch1 = e2, patch2 = (0.6, 0.8); w = 2 softmax(2 * [1, 0])
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]], dtype=torch.float64)
    text = torch.eye(2, dtype=torch.float64)
    w0 = 2 * math.exp(2) / (math.exp(2) + 1)
    w1 = 2 - w0
    s = [w0 / 2, -w1 / 2, (0.6 * w0 - 0.8 * w1) / 2]          # s[n, 0] = (w0 sim0 - w1 sim1) / 2
    lo, hi = min(s), max(s)
    expected = torch.tensor([[[(s[1] - lo) / (hi - lo)], [(s[2] - lo) / (hi - lo)]]], dtype=torch.float64)
    out = feature_surgery_lam(tokens, text, num_fg=1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert out.max() < 1                                      # the CLS token took the maximum (quirk 6)
    assert out[0, 0, 0] == 0


def test_lam_does_not_depend_on_the_batch():
    """Each image's LAM is bit-identical whether it is computed alone or in a batch (infer.batch_size relies on it)."""
    torch.manual_seed(3)
    tokens = normalize_tokens(torch.randn(5, 401, 512))
    text = torch.nn.functional.normalize(torch.randn(45, 512), dim=-1)
    batched = feature_surgery_lam(tokens, text, num_fg=20)
    alone = torch.cat([feature_surgery_lam(tokens[i:i + 1], text, num_fg=20) for i in range(5)])
    assert torch.equal(batched, alone)
