"""Text bank: prompt ensemble (algorithm.md §2.1), TSE aggregation, its mask count (§3.3, quirk 13)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from excel.backbone import load_tokenizer
from excel.text import build_text_bank, encode_prompts, num_masked, tse_aggregate


def ref_tse(fg: torch.Tensor, centers: torch.Tensor, m: int) -> torch.Tensor:
    """Row by row: keep the J - m largest logits, softmax over them, mix the centres, add the class text."""
    out = []
    for row in fg:
        logits = (row @ centers).tolist()
        keep = sorted(range(len(logits)), key=lambda j: -logits[j])[: len(logits) - m]
        z = sum(math.exp(logits[j]) for j in keep)
        mix = sum(math.exp(logits[j]) / z * centers[:, j] for j in keep)
        out.append(mix + row)
    return torch.stack(out)


def test_mask_count_is_int_of_float_product():
    # (1 - 0.9) = 0.09999999999999998 in binary floats: 112 -> 11.199.. -> 11; 224 -> 22.399.. -> 22
    assert num_masked(112, 0.9) == 11
    assert num_masked(224, 0.9) == 22
    assert num_masked(10, 0.9) == 0          # 0.9999999999999998 truncates to 0
    assert num_masked(20, 0.9) == 1


@pytest.mark.parametrize("num_clusters,masked", [(112, 11), (224, 22)])
def test_tse_aggregate_masks_m_smallest(num_clusters, masked):
    gen = torch.Generator().manual_seed(num_clusters)
    fg = F.normalize(torch.randn(4, 16, generator=gen, dtype=torch.float64), dim=-1)
    centers = 0.98 * F.normalize(torch.randn(16, num_clusters, generator=gen, dtype=torch.float64), dim=0)
    out = tse_aggregate(fg, centers, top_k=0.9)
    torch.testing.assert_close(out, ref_tse(fg, centers, masked), rtol=0, atol=1e-12)
    assert not torch.allclose(out, ref_tse(fg, centers, masked - 1))   # exactly m, not m - 1


def test_tse_aggregate_hand_computed():
    # fg = e1; centres e1, e2, -e1 -> logits [1, 0, -1]; top_k = 0.5 masks int(0.5 * 3) = 1 (the -1)
    fg = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    centers = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    e = math.e
    expected = torch.tensor([[1 + e / (e + 1), 1 / (e + 1)]], dtype=torch.float64)
    torch.testing.assert_close(tse_aggregate(fg, centers, top_k=0.5), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="centers"):
        tse_aggregate(fg, centers.t(), top_k=0.5)


def test_tse_mix_parts_hand_computed():
    # two classes e1, e2; centres e1, e2 (J = 2, top_k = 1.0 masks nothing): logits [[1, 0], [0, 1]]
    # alpha = [[a, b], [b, a]] with a = e / (e + 1), b = 1 / (e + 1); attribute mixes [a, b] and [b, a];
    # their mean over the classes is [1/2, 1/2]
    fg = torch.eye(2, dtype=torch.float64)
    centers = torch.eye(2, dtype=torch.float64)
    a, b = math.e / (math.e + 1), 1 / (math.e + 1)
    full = torch.tensor([[1 + a, b], [b, 1 + a]], dtype=torch.float64)
    shared = torch.tensor([[1.5, 0.5], [0.5, 1.5]], dtype=torch.float64)
    specific = torch.tensor([[1 + a - 0.5, b - 0.5], [b - 0.5, 1 + a - 0.5]], dtype=torch.float64)
    torch.testing.assert_close(tse_aggregate(fg, centers, 1.0), full, rtol=0, atol=1e-12)
    torch.testing.assert_close(tse_aggregate(fg, centers, 1.0, mix="shared"), shared, rtol=0, atol=1e-12)
    torch.testing.assert_close(tse_aggregate(fg, centers, 1.0, mix="class_specific"), specific, rtol=0, atol=1e-12)
    # the two parts add up to the reference's mix
    parts = tse_aggregate(fg, centers, 1.0, "shared") + tse_aggregate(fg, centers, 1.0, "class_specific") - fg
    torch.testing.assert_close(parts, full, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="tse.mix='both'"):
        tse_aggregate(fg, centers, 1.0, mix="both")


def test_build_text_bank_rows_and_order():
    gen = torch.Generator().manual_seed(0)
    fg = F.normalize(torch.randn(3, 8, generator=gen), dim=-1)
    bg = F.normalize(torch.randn(2, 8, generator=gen), dim=-1)
    centers = F.normalize(torch.randn(8, 20, generator=gen), dim=0)
    plain = build_text_bank(fg, bg)
    torch.testing.assert_close(plain, torch.cat([fg, bg]))
    bank = build_text_bank(fg, bg, centers, top_k=0.9)
    assert bank.shape == (5, 8)
    torch.testing.assert_close(bank.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(bank[:3], F.normalize(tse_aggregate(fg, centers, 0.9), dim=-1))
    torch.testing.assert_close(bank[3:], bg)                           # background rows untouched


def test_encode_prompts_matches_per_prompt_encoding(tiny_clip):
    tokenizer = load_tokenizer("excel-tiny")
    names = ["cat", "bird avian", "person with clothes,people,human"]
    templates = ["a clean origami {}.", "a photo of a {}."]
    out = encode_prompts(tiny_clip, tokenizer, names, templates)
    assert out.shape == (3, 32)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))
    with torch.no_grad():
        for i, name in enumerate(names):
            per_t = [F.normalize(tiny_clip.encode_text(tokenizer([t.format(name)])), dim=-1)[0] for t in templates]
            ref = F.normalize(torch.stack(per_t).mean(0), dim=0)
            torch.testing.assert_close(out[i], ref, rtol=1e-5, atol=1e-6)
    assert encode_prompts(tiny_clip, tokenizer, [], templates).shape == (0, 32)
    with pytest.raises(ValueError, match="placeholder"):
        encode_prompts(tiny_clip, tokenizer, names, ["no slot"])
