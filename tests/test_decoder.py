"""Decoder (algorithm.md §6): shapes, the fusion head and transformer against naive references, attn_pred, grads."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from excel.model.decoder import DecoderOutput, FusionHead, SegDecoder, TransformerDecoder, attn_pred, build_decoder

L, B, W, E, HEADS = 12, 2, 16, 32, 4  # tiny sizes; g = 3 -> P = 9, N = 10


def _features(g: int = 3, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(L, B, 1 + g * g, W, generator=gen)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ----------------------------------------------------------------------------- attn_pred by hand
def _two_direction_batch() -> torch.Tensor:
    """(2, 2, 2, 2): image 0 has patches [2 e1, e2; 3 e1, e2] (row-major), image 1 has e1 everywhere."""
    f = torch.zeros(2, 2, 2, 2)
    f[0, 0, 0, 0], f[0, 1, 0, 1], f[0, 0, 1, 0], f[0, 1, 1, 1] = 2.0, 1.0, 3.0, 0.5  # lengths vanish after L2 norm
    f[1, 0] = 1.0
    return f


def test_attn_pred_hand_case_single_image():
    # Patches e1, e2, e1, e2 -> G = [[1,0,1,0],[0,1,0,1],[1,0,1,0],[0,1,0,1]], mean G = 8/16 = 0.5,
    # P = sigmoid(3 * (1 - 0.5)) = sigmoid(1.5) = 0.8175745 where equal, sigmoid(-1.5) = 0.1824255 where orthogonal.
    p = attn_pred(_two_direction_batch()[:1])
    same = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]], dtype=torch.bool)
    expected = torch.where(same, torch.tensor(0.8175744762), torch.tensor(0.1824255238))
    torch.testing.assert_close(p[0], expected)


def test_attn_pred_whole_batch_mean_quirk_and_per_sample_fix():
    # Batch G sums: image 0 -> 8, image 1 (all e1) -> 16; whole-batch mean = 24/32 = 0.75 (quirk 9).
    # Image 0: sigmoid(3*0.25) = sigmoid(0.75) = 0.6791787, sigmoid(3*-0.75) = sigmoid(-2.25) = 0.0953495.
    # Image 1: sigmoid(0.75) everywhere. Per-sample means: image 0 as alone (0.5), image 1 mean 1 -> sigmoid(0) = 0.5.
    f = _two_direction_batch()
    p = attn_pred(f)
    same = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]], dtype=torch.bool)
    torch.testing.assert_close(p[0], torch.where(same, torch.tensor(_sigmoid(0.75)), torch.tensor(_sigmoid(-2.25))))
    torch.testing.assert_close(p[1], torch.full((4, 4), _sigmoid(0.75)))
    q = attn_pred(f, per_sample=True)
    torch.testing.assert_close(q[0], attn_pred(f[:1])[0])
    torch.testing.assert_close(q[1], torch.full((4, 4), 0.5))


def test_attn_pred_invariants_on_random_features():
    f = torch.randn(3, 8, 4, 4)
    p = attn_pred(f)
    assert p.shape == (3, 16, 16)
    torch.testing.assert_close(p, p.transpose(1, 2))
    assert bool(((p > 0) & (p < 1)).all())
    # The diagonal has G = 1, the maximum of a cosine, so it is each row's largest value.
    torch.testing.assert_close(p.diagonal(dim1=1, dim2=2), p.amax(dim=2))
    with pytest.raises(ValueError, match="B, E, g, g"):
        attn_pred(f.flatten(2))


# ----------------------------------------------------------------------------- fusion head
def _naive_fusion(head: FusionHead, features: torch.Tensor) -> torch.Tensor:
    """Slow reference: per layer and per token MLP, concat in layer order, 1x1 conv, (eval: no dropout)."""
    num_layers, batch, n, _ = features.shape
    g = math.isqrt(n - 1)
    maps = []
    for l in range(num_layers):
        x = features[l, :, 1:]  # (B, P, W)
        h = torch.relu(x @ head.fc1_weight[l].T + head.fc1_bias[l])
        y = h @ head.fc2_weight[l].T + head.fc2_bias[l]  # (B, P, E)
        maps.append(y.transpose(1, 2).reshape(batch, -1, g, g))
    return head.fuse(torch.cat(maps, dim=1))


def test_fusion_head_matches_naive_reference():
    head = FusionHead(W, num_layers=L, embed_dim=E).eval()
    feats = _features()
    out = head(feats)
    assert out.shape == (B, E, 3, 3)
    torch.testing.assert_close(out, _naive_fusion(head, feats), rtol=1e-5, atol=1e-5)


def test_fusion_head_ignores_cls_and_uses_row_major_patches():
    head = FusionHead(W, num_layers=L, embed_dim=E).eval()
    feats = _features()
    changed = feats.clone()
    changed[:, :, 0] = 1e3  # CLS token is dropped
    torch.testing.assert_close(head(changed), head(feats))
    changed = feats.clone()
    changed[:, 1, 1 + 5] += 1.0  # patch 5 of image 1 = row 1, col 2 of the 3x3 grid
    diff = (head(changed) - head(feats)).abs().sum(dim=1)  # (B, g, g)
    assert diff[0].max() == 0 and diff[1, 1, 2] > 0 and diff[1].sum() == diff[1, 1, 2]


def test_fusion_head_init_bounds_and_dropout_in_training():
    head = FusionHead(W, num_layers=L, embed_dim=E, dropout=0.5)
    assert head.fc1_weight.abs().max() <= 1 / math.sqrt(W) and head.fc2_weight.abs().max() <= 1 / math.sqrt(E)
    # Every layer has its own MLP (not one shared copy).
    assert not torch.equal(head.fc1_weight[0], head.fc1_weight[1])
    head.train()
    out = head(_features())
    zero_channels = (out.flatten(2).abs().sum(-1) == 0).sum()
    assert zero_channels > 0  # Dropout2d drops whole channels
    with pytest.raises(ValueError, match="FusionHead expects"):
        head(_features()[:, :, :, :8])
    with pytest.raises(ValueError, match="square grid"):
        head(_features()[:, :, :9])


# ----------------------------------------------------------------------------- transformer decoder
def _naive_block(block, x: torch.Tensor, heads: int) -> torch.Tensor:
    h = block.norm1(x)
    dim = x.shape[-1]
    qkv = h @ block.attn.in_proj_weight.T + block.attn.in_proj_bias
    q, k, v = qkv.split(dim, dim=-1)
    split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, dim // heads).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim // heads), dim=-1)
    o = (a @ v).transpose(1, 2).reshape(x.shape)
    x = x + o @ block.attn.out_proj.weight.T + block.attn.out_proj.bias
    h = block.norm2(x)
    h = h @ block.mlp[0].weight.T + block.mlp[0].bias
    h = h * torch.sigmoid(1.702 * h)  # QuickGELU
    return x + h @ block.mlp[2].weight.T + block.mlp[2].bias


@pytest.mark.parametrize("train_mode, grad", [(False, True), (True, True), (False, False)])  # no grad: fused MHA path
def test_transformer_decoder_matches_naive_pre_ln_blocks(train_mode, grad):
    dec = TransformerDecoder(dim=E, depth=3, num_heads=HEADS, mlp_ratio=4).train(train_mode)
    for block in dec.blocks:  # non-zero biases, so a missing bias term would show
        torch.nn.init.normal_(block.attn.in_proj_bias)
        torch.nn.init.normal_(block.attn.out_proj.bias)
    f = torch.randn(B, E, 3, 3)
    x = f.flatten(2).transpose(1, 2)
    for block in dec.blocks:
        x = _naive_block(block, x, HEADS)
    expected = x.transpose(1, 2).reshape(B, E, 3, 3)  # no final LN
    with torch.set_grad_enabled(grad):
        got = dec(f)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_transformer_decoder_default_init_and_sizes():
    dec = TransformerDecoder(dim=E, depth=3, num_heads=HEADS, mlp_ratio=4)
    assert len(dec.blocks) == 3
    for block in dec.blocks:
        assert block.attn.num_heads == HEADS and block.attn.batch_first
        assert torch.count_nonzero(block.attn.in_proj_bias) == 0
        assert torch.count_nonzero(block.attn.out_proj.bias) == 0
        bound = math.sqrt(6 / (E + 3 * E))  # xavier_uniform on the packed (3E, E) in_proj
        assert block.attn.in_proj_weight.abs().max() <= bound
        assert block.mlp[0].out_features == 4 * E
        torch.testing.assert_close(block.norm1.weight, torch.ones(E))
    with pytest.raises(ValueError, match="divisible"):
        TransformerDecoder(dim=30, num_heads=4)


# ----------------------------------------------------------------------------- full decoder
def _decoder(**kw) -> SegDecoder:
    return SegDecoder(W, num_layers=L, embed_dim=E, depth=2, num_heads=HEADS, num_classes=5, **kw)


def test_seg_decoder_outputs_and_shared_fused_feature():
    torch.manual_seed(0)
    dec = _decoder().train()
    out = dec(_features(g=4))
    assert isinstance(out, DecoderOutput)
    assert out.seg_logits.shape == (B, 5, 4, 4) and out.fused.shape == (B, E, 4, 4)
    assert out.attn_pred.shape == (B, 16, 16)
    # attn_pred comes from the very (post-dropout) fused tensor that is returned, and keeps its graph.
    torch.testing.assert_close(out.attn_pred, attn_pred(out.fused))
    assert out.attn_pred.requires_grad and out.fused.requires_grad
    # And the logits are the classifier on the transformer of that same f.
    torch.testing.assert_close(out.seg_logits, dec.classifier(dec.transformer(out.fused)))


def test_seg_decoder_per_sample_mean_switch():
    torch.manual_seed(0)
    dec = _decoder(per_sample_mean=True).eval()
    out = dec(_features())
    torch.testing.assert_close(out.attn_pred, attn_pred(out.fused, per_sample=True))


def test_every_decoder_parameter_gets_a_finite_gradient():
    torch.manual_seed(0)
    dec = _decoder().train()
    out = dec(_features())
    labels = torch.randint(0, 5, (B, 3, 3))
    loss = F.cross_entropy(out.seg_logits, labels) + out.attn_pred.mean()
    loss.backward()
    for name, p in dec.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_attn_pred_gradient_reaches_only_the_fusion_head():
    torch.manual_seed(0)
    dec = _decoder().train()
    dec(_features()).attn_pred.sum().backward()
    for name, p in dec.named_parameters():
        if name.startswith("fusion."):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_build_decoder_from_tiny_config(tiny_cfg):
    tiny_cfg.quirks.per_sample_batch_mean = True
    dec = build_decoder(tiny_cfg, in_dim=W)
    assert dec.classifier.out_channels == len(tiny_cfg.data.class_names) + 1 == 21
    assert dec.fusion.embed_dim == tiny_cfg.model.decoder.embed_dim
    assert len(dec.transformer.blocks) == tiny_cfg.model.decoder.depth
    assert dec.transformer.blocks[0].attn.num_heads == tiny_cfg.model.decoder.num_heads
    assert dec.per_sample_mean is True
