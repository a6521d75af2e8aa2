"""Backbone: surgery attention, LVC bias, positional interpolation, the dual path and its aliasing, loading."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from excel.backbone import (CalibratedVisual, interpolate_pos_embed, load_clip, load_tokenizer, lvc_bias,
                            surgery_attention)


# ------------------------------------------------------------------------------------------ slow references

def softmax_rows(x: torch.Tensor) -> torch.Tensor:
    e = torch.exp(x - x.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def ref_attention(blk, u, head_mean=False, ex_bias=None):
    """Per-head loop over one block: (x_ori, sum_h A_h, x_new) for input u = ln_1(x) of shape (B, N, W)."""
    mha = blk.attn
    heads, width = mha.num_heads, mha.embed_dim
    d = width // heads
    wq, wk, wv = mha.in_proj_weight.split(width)
    bq, bk, bv = mha.in_proj_bias.split(width)
    ori, vs, a_sum, m = [], [], 0.0, 0.0
    for h in range(heads):
        rows = slice(h * d, (h + 1) * d)
        q = u @ wq[rows].t() + bq[rows]
        k = u @ wk[rows].t() + bk[rows]
        v = u @ wv[rows].t() + bv[rows]
        a = softmax_rows(q @ k.transpose(1, 2) / math.sqrt(d))
        ori.append(a @ v)
        vs.append(v)
        a_sum = a_sum + a
        m_h = (softmax_rows(q @ q.transpose(1, 2) / math.sqrt(d)) + softmax_rows(k @ k.transpose(1, 2) / math.sqrt(d))
               + softmax_rows(v @ v.transpose(1, 2) / math.sqrt(d))) / 3
        if ex_bias is not None:
            m_h = m_h.clone()
            m_h[:, 1:, 1:] += ex_bias
        m = m + m_h
    if head_mean:
        m = m / heads
    w_o, b_o = mha.out_proj.weight, mha.out_proj.bias
    x_ori = torch.cat(ori, dim=-1) @ w_o.t() + b_o
    x_new = torch.cat([m @ v for v in vs], dim=-1) @ w_o.t() + b_o
    return x_ori, a_sum, x_new


def ref_embed(vit, images):
    x = vit.conv1(images)
    g = x.shape[-1]
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([vit.class_embedding.expand(x.shape[0], 1, -1), x], dim=1)
    pos = vit.positional_embedding
    g0 = int(round(math.sqrt(pos.shape[0] - 1)))
    grid = pos[1:].reshape(1, g0, g0, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(g, g), mode="bilinear", align_corners=False).permute(0, 2, 3, 1).reshape(g * g, -1)
    return vit.ln_pre(x + torch.cat([pos[:1], grid]))


@torch.no_grad()
def ref_forward(vit, images, num_svc=5, head_mean=False, ex_bias=None):
    """Hand-rolled dual path (algorithm.md §1.4-1.6), copying the reference's in-place updates (aliasing)."""
    blocks = vit.transformer.resblocks
    first = len(blocks) - num_svc
    x = ref_embed(vit, images)
    feats, attn, mids, outs = [], [], [], []
    x_ori = None
    for i, blk in enumerate(blocks):
        if i < first:
            a_ori, a_sum, _ = ref_attention(blk, blk.ln_1(x))
            x = x + a_ori
            mids.append(x.clone())
            x = x + blk.mlp(blk.ln_2(x))
            outs.append(x.clone())
            attn.append(a_sum / blk.attn.num_heads)
            feats.append(x)
            continue
        src = x if i == first else x_ori
        a_ori, a_sum, x_new = ref_attention(blk, blk.ln_1(src), head_mean, ex_bias)
        if i == first:
            x_ori = x + a_ori
        else:
            x_ori += a_ori                 # in place: rewrites the tensor stored for the previous block
        mids.append(x_ori.clone())
        x_ori = x_ori + blk.mlp(blk.ln_2(x_ori))
        outs.append(x_ori.clone())
        x += x_new                         # in place: rewrites the tensor stored for block first - 1
        attn.append(a_sum)
        feats.append(x_ori)
    x[:, 0] = x_ori[:, 0]
    tokens = vit.ln_post(x) @ vit.proj
    return dict(tokens=tokens, new_tokens=x, attn=torch.stack(attn), features=torch.stack(feats),
                outs=outs, mids=mids)


@pytest.fixture(scope="module")
def images():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 80, 80, generator=gen)


# ------------------------------------------------------------------------------------------------ pure math

def test_surgery_attention_matches_per_head_loop():
    gen = torch.Generator().manual_seed(0)
    b, h, n, d = 2, 3, 5, 4
    q, k, v = (torch.randn(b, h, n, d, generator=gen, dtype=torch.float64) for _ in range(3))
    bias = torch.rand(b, n - 1, n - 1, generator=gen, dtype=torch.float64)
    for reduce in ("sum", "mean"):
        for ex in (None, bias):
            ref = torch.zeros(b, n, n, dtype=torch.float64)
            for bi in range(b):
                for hi in range(h):
                    m = sum(softmax_rows(t[bi, hi] @ t[bi, hi].T * 0.5) for t in (q, k, v)) / 3
                    if ex is not None:
                        m[1:, 1:] += ex[bi]
                    ref[bi] += m / (h if reduce == "mean" else 1)
            out = surgery_attention(q, k, v, 0.5, head_reduce=reduce, ex_bias=ex)
            torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    rows = surgery_attention(q, k, v, 0.5).sum(-1)
    torch.testing.assert_close(rows, torch.full_like(rows, h))          # head sum: rows sum to h
    with pytest.raises(ValueError, match="head_reduce"):
        surgery_attention(q, k, v, 0.5, head_reduce="max")


def test_lvc_bias_matches_reference_and_masks_below_mean():
    gen = torch.Generator().manual_seed(0)
    fused = torch.randn(2, 6, 3, 3, generator=gen, dtype=torch.float64)
    fused[1] = 0.5 * fused[1] + 1.0                                    # image 1: far more self-similar patches
    e = fused.flatten(2)
    e = e / e.norm(dim=1, keepdim=True)
    gram = torch.einsum("bcp,bcq->bpq", e, e)
    for per_sample in (False, True):
        mu = gram.mean(dim=(1, 2), keepdim=True) if per_sample else gram.mean()
        z = 3 * (gram - mu)
        ref = torch.where(z < 0, torch.zeros_like(z), torch.exp(z))     # -inf -> weight 0
        ref = ref / ref.sum(-1, keepdim=True)
        out = lvc_bias(fused, per_sample=per_sample)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
        assert torch.equal(out == 0, z < 0)
    assert not torch.allclose(lvc_bias(fused), lvc_bias(fused, per_sample=True))   # global mean (quirk 9)
    torch.testing.assert_close(lvc_bias(fused).sum(-1), torch.ones(2, 9, dtype=torch.float64))


def test_pos_interpolation_to_20x20_is_bilinear_half_pixel():
    gen = torch.Generator().manual_seed(0)
    pos = torch.randn(1 + 14 * 14, 3, generator=gen, dtype=torch.float64)
    out = interpolate_pos_embed(pos, 320 // 16)
    assert out.shape == (401, 3)
    assert torch.equal(out[0], pos[0])                                  # CLS row kept
    grid = pos[1:].reshape(14, 14, 3).numpy()
    ref = np.zeros((20, 20, 3))
    for i in range(20):                                                 # half-pixel centres, edge clamp
        for j in range(20):
            y = max((i + 0.5) * 14 / 20 - 0.5, 0.0)
            x = max((j + 0.5) * 14 / 20 - 0.5, 0.0)
            y0, x0 = int(y), int(x)
            y1, x1 = min(y0 + 1, 13), min(x0 + 1, 13)
            dy, dx = y - y0, x - x0
            ref[i, j] = ((1 - dy) * (1 - dx) * grid[y0, x0] + (1 - dy) * dx * grid[y0, x1]
                         + dy * (1 - dx) * grid[y1, x0] + dy * dx * grid[y1, x1])
    np.testing.assert_allclose(out[1:].reshape(20, 20, 3).numpy(), ref, atol=1e-12)
    tv = F.interpolate(pos[1:].reshape(1, 14, 14, 3).permute(0, 3, 1, 2), size=(20, 20), mode="bilinear",
                       align_corners=False).permute(0, 2, 3, 1).reshape(400, 3)
    assert torch.equal(out[1:], tv)
    assert interpolate_pos_embed(pos, 14) is pos


# ------------------------------------------------------------------------------------------ calibrated tower

def test_dual_path_matches_hand_rolled_reference(tiny_clip, images):
    vit = tiny_clip.visual
    got = CalibratedVisual(vit)(images)
    ref = ref_forward(vit, images)
    b, n = images.shape[0], 1 + (80 // 16) ** 2
    assert got.tokens.shape == (b, n, 32) and got.attn.shape == (12, b, n, n) and got.features.shape == (12, b, n, 64)
    for key in ("tokens", "new_tokens", "attn", "features"):
        torch.testing.assert_close(getattr(got, key), ref[key], rtol=1e-5, atol=2e-5, msg=key)
    # algorithm.md §1.6 table, checked against the hand-rolled states
    outs, mids = ref["outs"], ref["mids"]
    for l in range(6):
        torch.testing.assert_close(got.features[l], outs[l], rtol=1e-5, atol=2e-5)
    assert torch.equal(got.features[6], got.new_tokens)
    torch.testing.assert_close(got.new_tokens[:, 0], outs[11][:, 0], rtol=1e-5, atol=2e-5)
    for l in range(7, 11):
        torch.testing.assert_close(got.features[l], mids[l + 1], rtol=1e-5, atol=2e-5)
        assert not torch.allclose(got.features[l], outs[l], atol=1e-3)
    torch.testing.assert_close(got.features[11], outs[11], rtol=1e-5, atol=2e-5)
    # reported attention: head mean (rows sum 1) in blocks 0..6, head sum (rows sum 2 = heads) in 7..11
    rows = got.attn.sum(-1)
    torch.testing.assert_close(rows[:7], torch.ones_like(rows[:7]))
    torch.testing.assert_close(rows[7:], torch.full_like(rows[7:], 2.0))


@pytest.mark.parametrize("num_svc,head_mean", [(2, True), (12, False)])
def test_dual_path_other_settings(tiny_clip, images, num_svc, head_mean):
    vit = tiny_clip.visual
    got = CalibratedVisual(vit, num_svc_blocks=num_svc, head_mean=head_mean)(images)
    ref = ref_forward(vit, images, num_svc=num_svc, head_mean=head_mean)
    for key in ("tokens", "new_tokens", "attn", "features"):
        torch.testing.assert_close(getattr(got, key), ref[key], rtol=1e-5, atol=2e-5, msg=key)


def test_plain_blocks_equal_open_clip_bit_for_bit(tiny_clip):
    vit = tiny_clip.visual
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    cal = CalibratedVisual(vit, clean_features=True)
    with torch.no_grad():
        x = vit._embeds(images)                      # open_clip's own embedding (stored 14x14 grid, no resize)
        assert torch.equal(cal.embed(images), x)
        got = cal(images)
        for i, blk in enumerate(vit.transformer.resblocks):
            expected = blk(x)
            if i < 7:
                assert torch.equal(got.features[i], expected), f"block {i} differs from open_clip"
            else:                                    # original path of calibrated blocks: own q/k/v code
                torch.testing.assert_close(got.features[i], expected, rtol=1e-6, atol=1e-6)
            x = got.features[i]
        plain = CalibratedVisual(vit, svc_enabled=False)(images)
        torch.testing.assert_close(plain.tokens[:, 0], vit(images), rtol=1e-6, atol=1e-6)


def test_svc_disabled_is_plain_clip(tiny_clip, images):
    vit = tiny_clip.visual
    plain = CalibratedVisual(vit, svc_enabled=False)(images)
    clean = CalibratedVisual(vit, clean_features=True)(images)
    assert torch.equal(plain.features[:7], clean.features[:7])
    torch.testing.assert_close(plain.features, clean.features, rtol=1e-5, atol=2e-5)   # O_0..O_11
    torch.testing.assert_close(plain.tokens, vit.ln_post(clean.features[11]) @ vit.proj, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(plain.attn.sum(-1), torch.ones(12, 2, 26))
    assert torch.equal(plain.lvc_basis, torch.zeros_like(plain.lvc_basis))


def test_literal_lvc_forward_and_basis(tiny_clip, images):
    vit = tiny_clip.visual
    cal = CalibratedVisual(vit)
    bias = lvc_bias(torch.randn(2, 8, 5, 5, generator=torch.Generator().manual_seed(3)))
    plain = cal(images)
    lit = cal(images, ex_bias=bias)
    ref = ref_forward(vit, images, ex_bias=bias)
    torch.testing.assert_close(lit.tokens, ref["tokens"], rtol=1e-5, atol=2e-5)
    assert torch.equal(lit.attn, plain.attn)                           # E changes only the new path
    shortcut = plain.new_tokens.clone()
    shortcut[:, 1:] += cal.lvc_scale * bias @ plain.lvc_basis
    torch.testing.assert_close(lit.new_tokens, shortcut, rtol=1e-5, atol=1e-5)


def test_pos_resize_rule(tiny_clip):
    vit = tiny_clip.visual
    stored = vit.positional_embedding.detach().clone()
    images = torch.randn(1, 3, 320, 320, generator=torch.Generator().manual_seed(4))
    on_the_fly = CalibratedVisual(vit)
    permanent = CalibratedVisual(vit)
    permanent.resize_pos_embed_(20)
    assert permanent.pos_grid == 20 and on_the_fly.pos_grid == 14
    assert torch.equal(vit.positional_embedding, stored)              # the open_clip module is untouched
    assert torch.equal(permanent(images).tokens, on_the_fly(images).tokens)   # both routes agree at 320
    small = torch.randn(1, 3, 224, 224)
    assert not torch.allclose(permanent(small).tokens, on_the_fly(small).tokens)  # 20x20 -> 14x14 differs
    assert "pos_embed" not in permanent.state_dict()


def test_calibrated_visual_is_frozen_and_checks_input(tiny_clip):
    cal = CalibratedVisual(tiny_clip.visual)
    cal.train()
    assert not cal.training and not tiny_clip.visual.training
    assert all(not p.requires_grad for p in cal.parameters())
    with pytest.raises(ValueError, match="square"):
        cal(torch.zeros(1, 3, 64, 80))
    with pytest.raises(ValueError, match="num_blocks"):
        CalibratedVisual(tiny_clip.visual, num_svc_blocks=13)


# ------------------------------------------------------------------------------------------------- loading

def test_load_clip_tiny_and_tokenizer():
    model = load_clip("excel-tiny", None)
    assert not model.training and all(not p.requires_grad for p in model.parameters())
    assert model.visual.transformer.resblocks[0].mlp.gelu.__class__.__name__ == "QuickGELU"
    tokens = load_tokenizer("excel-tiny")(["a clean origami cat.", "Dog"])
    assert tokens.shape == (2, 77) and tokens[0, 0] == 49406


def test_load_clip_local_files(tmp_path, tiny_clip):
    ckpt = tmp_path / "tiny.pt"
    torch.save(tiny_clip.state_dict(), ckpt)
    loaded = load_clip("excel-tiny", str(ckpt))
    for (name, a), b in zip(tiny_clip.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    by_name = load_clip("excel-tiny", "tiny.pt", cache_dir=str(tmp_path))    # a file name inside the cache folder
    assert torch.equal(by_name.visual.proj, tiny_clip.visual.proj)
    # an OpenAI-style TorchScript archive holding fp16 weights -> fp32 model with fp16-rounded values
    half = load_clip("excel-tiny", str(ckpt)).half()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)                 # torch.jit deprecation notice
        scripted = torch.jit.script(half)
    scripted.save(str(tmp_path / "tiny_jit.pt"))
    from_jit = load_clip("excel-tiny", str(tmp_path / "tiny_jit.pt"))
    w = from_jit.visual.conv1.weight
    assert w.dtype == torch.float32
    assert torch.equal(w, tiny_clip.visual.conv1.weight.half().float())
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_clip("excel-tiny", str(tmp_path / "missing.pt"))


def test_load_clip_bad_names():
    with pytest.raises(ValueError, match="model.clip.name"):
        load_clip("no-such-arch", None)
    with pytest.raises(ValueError, match="tag"):
        load_clip("excel-tiny", "openai")


def test_load_clip_offline_error_says_what_to_pass(tmp_path):
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        pytest.skip("needs HF_HUB_OFFLINE=1 (set by conftest before huggingface_hub is imported)")
    with pytest.raises(RuntimeError, match=r"model.clip.pretrained=/path/to/ViT-B-16.pt"):
        load_clip("ViT-B-16", "openai", cache_dir=str(tmp_path))
