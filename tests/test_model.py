"""The assembled model: text bank, frozen CLIP, decoder gradients, the LVC shortcut, the positional rule."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from excel import build_model, load_config
from excel.backbone import load_tokenizer, lvc_bias
from excel.cam import feature_surgery_lam, normalize_tokens
from excel.model import EncodeOutput, ExCEL, ForwardOutput
from excel.text import build_text_bank, encode_prompts


def tiny(tiny_cfg, **overrides):
    for key, value in overrides.items():
        node = tiny_cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return tiny_cfg


def images(b=2, side=64, seed=0):
    return torch.randn(b, 3, side, side, generator=torch.Generator().manual_seed(seed))


def test_text_bank_from_prompts(tiny_cfg, tiny_clip):
    cfg = tiny(tiny_cfg, **{"tse.enabled": False})
    model = build_model(cfg, tiny_clip)
    bank = model.text_bank
    assert bank.shape == (45, 32)
    torch.testing.assert_close(bank.norm(dim=-1), torch.ones(45))
    tok = load_tokenizer("excel-tiny")
    fg = encode_prompts(tiny_clip, tok, list(cfg.data.prompt_names), ["a clean origami {}."])
    torch.testing.assert_close(bank[:20], fg)                           # fg rows first, in class order
    assert "text_bank" not in model.state_dict()


def test_text_bank_with_tse_bank_file(tiny_cfg, tiny_clip, tmp_path):
    gen = torch.Generator().manual_seed(0)
    centers = 0.98 * F.normalize(torch.randn(32, 24, generator=gen), dim=0)
    flags = torch.zeros(20, 24)
    flags[torch.arange(24) % 20, torch.arange(24)] = 1
    torch.save([centers, flags], tmp_path / "bank.pth")
    cfg = tiny(tiny_cfg, **{"tse.enabled": True, "tse.bank_file": str(tmp_path / "bank.pth"), "tse.num_clusters": 24})
    model = build_model(cfg, tiny_clip)
    tok = load_tokenizer("excel-tiny")
    fg = encode_prompts(tiny_clip, tok, list(cfg.data.prompt_names), list(cfg.text.templates))
    bg = encode_prompts(tiny_clip, tok, list(cfg.data.background_names), list(cfg.text.templates))
    torch.testing.assert_close(model.text_bank, build_text_bank(fg, bg, centers, 0.9))
    assert not torch.allclose(model.text_bank[:20], fg)                # TSE changed the class rows
    torch.testing.assert_close(model.text_bank[20:], bg)
    # tse.mix picks a part of the attribute mix; a name that is not a part is refused
    cfg.tse.mix = "class_specific"
    torch.testing.assert_close(build_model(cfg, tiny_clip).text_bank,
                               build_text_bank(fg, bg, centers, 0.9, mix="class_specific"))
    cfg.tse.mix = "attributes"
    with pytest.raises(ValueError, match="tse.mix='attributes'.*full, class_specific, shared"):
        build_model(cfg, tiny_clip)


def test_forward_outputs_and_frozen_clip(tiny_cfg, tiny_clip):
    model = build_model(tiny(tiny_cfg, **{"tse.enabled": False}), tiny_clip)
    model.train()
    assert model.decoder.training and not model.visual.training and not model.visual.vit.training
    assert all(not p.requires_grad for p in model.visual.parameters())
    assert {id(p) for p in model.trainable_parameters()} == {id(p) for p in model.parameters() if p.requires_grad}
    x = images()
    out = model(x)
    assert isinstance(out, ForwardOutput) and isinstance(out.encoded, EncodeOutput)
    assert out.seg_logits.shape == (2, 21, 4, 4) and out.fused.shape == (2, 256, 4, 4)
    assert out.lam.shape == (2, 16, 20) and out.attn.shape == (12, 2, 17, 17) and out.attn_pred.shape == (2, 16, 16)
    assert out.lam.min() >= 0 and out.lam.max() <= 1
    assert out.encoded.dense.shape == (2, 17, 32)
    torch.testing.assert_close(out.encoded.dense.norm(dim=1), torch.ones(2, 32))    # over tokens (quirk 5)
    loss = out.seg_logits.square().mean() + out.attn_pred.mean()
    loss.backward()
    assert all(p.grad is None for p in tiny_clip.parameters())
    for name, p in model.decoder.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert not out.lam.requires_grad and not out.encoded.features.requires_grad


@pytest.mark.parametrize("overrides", [
    {},
    {"quirks.svc_head_mean": True},
    {"quirks.per_sample_batch_mean": True, "quirks.channel_normalize": True},
])
def test_calibrated_lam_equals_literal_second_forward(tiny_cfg, tiny_clip, overrides):
    model = build_model(tiny(tiny_cfg, **{"tse.enabled": False, **overrides}), tiny_clip)
    model.train()                                                      # fused after Dropout2d, as in training
    x = images(4, 64, seed=1)
    out = model(x)
    fast = model.calibrated_lam(out, out.fused)
    assert torch.equal(fast, model.calibrated_lam(out.encoded, out.fused))
    bias = lvc_bias(out.fused.detach(), per_sample=bool(overrides.get("quirks.per_sample_batch_mean")))
    literal = model.visual(x, ex_bias=bias)
    over = "channels" if overrides.get("quirks.channel_normalize") else "tokens"
    slow = feature_surgery_lam(normalize_tokens(literal.tokens, over), model.text_bank, 20)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-5)
    assert (fast - out.lam).abs().max() > 1e-3                         # LVC does change the map
    assert fast.min() >= 0 and fast.max() <= 1


def test_decoder_state_roundtrip_and_meta(tiny_cfg, tiny_clip):
    cfg = tiny(tiny_cfg, **{"tse.enabled": False})
    with torch.random.fork_rng():
        torch.manual_seed(1)
        trained = build_model(cfg, tiny_clip)
        torch.manual_seed(2)
        fresh = build_model(cfg, tiny_clip)
    assert fresh.meta() == {"backbone": "excel-tiny", "pretrained": None, "num_classes": 21, "embed_dim": 256}
    x = images()
    trained.eval()
    fresh.eval()
    assert not torch.allclose(fresh(x).seg_logits, trained(x).seg_logits)
    fresh.load_decoder_state(trained.decoder_state_dict())
    assert torch.equal(fresh(x).seg_logits, trained(x).seg_logits)
    other_clip = load_clip_tiny(seed=3)
    own_pos = other_clip.visual.positional_embedding.detach().clone()
    other = build_model(cfg, other_clip)
    other.load_decoder_state(trained.state_dict())        # full state dict: CLIP weights come too, except positions
    for name, value in trained.visual.vit.state_dict().items():
        expected = own_pos if name == "positional_embedding" else value
        assert torch.equal(other.visual.vit.state_dict()[name], expected), name
    for name, value in trained.decoder.state_dict().items():
        assert torch.equal(other.decoder.state_dict()[name], value), name
    with pytest.raises(RuntimeError):
        fresh.load_decoder_state({"fusion.nothing": torch.zeros(1)})


def load_clip_tiny(seed):
    from excel.backbone import load_clip

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return load_clip("excel-tiny", None)


def test_mode_controls_permanent_pos_resize(tiny_cfg, tiny_clip):
    stored = tiny_clip.visual.positional_embedding.detach().clone()
    cfg = tiny(tiny_cfg, **{"tse.enabled": False})
    assert build_model(cfg, tiny_clip, mode="train_aug").visual.pos_grid == 4        # 64 / 16
    assert build_model(cfg, tiny_clip, mode="val").visual.pos_grid == 14
    cfg.model.clip.permanent_pos_resize = False
    assert build_model(cfg, tiny_clip, mode="train").visual.pos_grid == 14
    assert torch.equal(tiny_clip.visual.positional_embedding, stored)


def test_svc_off_gives_plain_clip_lam(tiny_cfg, tiny_clip):
    model = build_model(tiny(tiny_cfg, **{"tse.enabled": False, "model.svc.enabled": False}), tiny_clip)
    x = images()
    enc = model.encode(x)
    vit = tiny_clip.visual
    plain_tokens = vit.ln_post(enc.features[11]) @ vit.proj
    expected = feature_surgery_lam(normalize_tokens(plain_tokens), model.text_bank, 20)
    torch.testing.assert_close(enc.lam, expected, rtol=1e-5, atol=1e-5)


def test_config_errors(tiny_cfg, tiny_clip):
    cfg = tiny(tiny_cfg, **{"tse.enabled": False})
    cfg.data.prompt_names = ["cat", "dog"]
    with pytest.raises(ValueError, match="data.prompt_names"):
        build_model(cfg, tiny_clip)
    cfg = tiny(load_config(tiny_cfg_path()), **{"tse.enabled": False, "model.input_size": 72})
    with pytest.raises(ValueError, match="model.input_size"):
        build_model(cfg, tiny_clip)


def tiny_cfg_path():
    from excel.config import CONFIG_DIR

    return [CONFIG_DIR / "voc.yaml", CONFIG_DIR / "test_tiny.yaml"]  # test_tiny is an overlay (no _base_)


def test_no_hard_coded_cuda_in_library(repo_root):
    offenders = []
    for path in sorted((repo_root / "excel").rglob("*.py")):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\.cuda\(", line):
                offenders.append(f"{path.relative_to(repo_root)}:{lineno}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.slow
def test_vit_b16_architecture_encodes_320(tiny_cfg):
    """The real ViT-B-16-quickgelu architecture (random init): shapes, attention scales, LAM range."""
    cfg = tiny(tiny_cfg, **{"tse.enabled": False, "model.clip.name": "ViT-B-16-quickgelu",
                            "model.input_size": 320, "data.class_names": ["cat", "dog"],
                            "data.prompt_names": ["cat", "dog"], "data.background_names": ["ground"]})
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(cfg, mode="train")
    assert isinstance(model, ExCEL) and model.visual.pos_grid == 20 and model.text_bank.shape == (3, 512)
    vit = model.visual.vit
    assert vit.transformer.resblocks[0].mlp.gelu.__class__.__name__ == "QuickGELU"
    x = images(1, 320, seed=5)
    model.attn_layers = None               # every layer's weights (by default encode skips the unread ones)
    enc = model.encode(x)
    assert enc.lam.shape == (1, 400, 2) and enc.features.shape == (12, 1, 401, 768)
    assert enc.attn.shape == (12, 1, 401, 401) and enc.dense.shape == (1, 401, 512)
    rows = enc.attn.sum(-1)
    torch.testing.assert_close(rows[:7], torch.ones_like(rows[:7]), rtol=0, atol=1e-4)
    torch.testing.assert_close(rows[7:], torch.full_like(rows[7:], 12.0), rtol=0, atol=1e-4)   # head sum
    assert enc.lam.min() >= 0 and enc.lam.max() <= 1
    assert torch.equal(enc.features[6], enc.visual.new_tokens)
    with torch.no_grad():                                              # blocks 0..6 bit-exact vs open_clip
        h = model.visual.embed(x)
        for i in range(6):
            h = vit.transformer.resblocks[i](h)
            assert torch.equal(enc.features[i], h), f"block {i}"


@pytest.mark.parametrize("overrides", [{}, {"model.svc.enabled": False}, {"quirks.decoder_clean_features": True}])
def test_segment_path_equals_the_full_forward(tiny_cfg, tiny_clip, overrides):
    """Inference's short path (fused attention, no weights, no LAM) gives the logits of the full forward."""
    model = build_model(tiny(tiny_cfg, **{"tse.enabled": False, **overrides}), tiny_clip).eval()
    x = images(3, 64, seed=2)
    with torch.no_grad():
        full = model(x).seg_logits
        short = model.segment(x)
        assert model.visual(x, need_attn=False).attn is None
    torch.testing.assert_close(short, full, rtol=1e-4, atol=1e-5)


def test_unread_attention_layers_are_skipped_without_changing_pseudo_labels(tiny_cfg, tiny_clip):
    """encode computes attention weights only for cam.affinity_layers; the pseudo labels stay the same."""
    from excel.cam import make_pseudo_labels

    model = build_model(tiny(tiny_cfg, **{"tse.enabled": False}), tiny_clip).eval()
    assert model.attn_layers == frozenset(range(6, 12))
    x = images(2, 64, seed=4)
    with torch.no_grad():
        lean = model.encode(x)
        model.attn_layers = None
        full = model.encode(x)
    assert lean.attn.shape == full.attn.shape == (12, 2, 17, 17)
    assert torch.equal(lean.attn[:6], torch.zeros_like(lean.attn[:6]))
    torch.testing.assert_close(lean.attn[6:], full.attn[6:], rtol=0, atol=1e-6)
    torch.testing.assert_close(lean.lam, full.lam, rtol=0, atol=1e-6)
    cls = torch.tensor([[1.0] * 3 + [0.0] * 17, [0.0] * 5 + [1.0] * 2 + [0.0] * 13])
    a = make_pseudo_labels(lean.lam, lean.attn, cls, x / 255, (64, 64), affinity_layers=range(6, 12))
    b = make_pseudo_labels(full.lam, full.attn, cls, x / 255, (64, 64), affinity_layers=range(6, 12))
    assert torch.equal(a, b)
