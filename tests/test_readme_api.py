"""The README's Python API section, run on the tiny random-init model: every name and shape it states holds."""
from __future__ import annotations

import torch

from excel import build_model, load_config
from excel.cam import make_pseudo_labels


def test_readme_api_snippet(repo_root, tiny_clip):
    cfg = load_config([repo_root / "configs" / "voc.yaml", repo_root / "configs" / "test_tiny.yaml"],
                      ["tse.enabled=false"])
    model = build_model(cfg, clip_model=tiny_clip, mode="train")
    assert [n for n, p in model.named_parameters() if p.requires_grad] and all(
        n.startswith("decoder.") for n, p in model.named_parameters() if p.requires_grad)
    assert model.text_bank.shape == (20 + 25, 32)  # excel-tiny embeds in 32 dims (ViT-B/16: 512)
    assert torch.allclose(model.text_bank.norm(dim=-1), torch.ones(45), atol=1e-5)
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64)
    enc = model.encode(images)
    g, n = 4, 17
    assert enc.lam.shape == (2, g * g, 20) and 0 <= enc.lam.min() and enc.lam.max() <= 1
    assert enc.attn.shape == (12, 2, n, n) and enc.features.shape == (12, 2, n, 64) and enc.dense.shape == (2, n, 32)
    out = model(images)
    assert out.seg_logits.shape == (2, 21, g, g) and out.fused.shape == (2, 256, g, g)
    assert out.attn_pred.shape == (2, g * g, g * g)
    lam_lvc = model.calibrated_lam(out, out.fused)
    assert lam_lvc.shape == enc.lam.shape
    cls_labels = torch.zeros(2, 20)
    cls_labels[0, 3] = cls_labels[1, 7] = cls_labels[1, 11] = 1
    labels = make_pseudo_labels(lam_lvc, out.attn, cls_labels, images, (64, 64), attn_pred=out.attn_pred,
                                box_threshold=0.79)
    assert labels.shape == (2, 64, 64) and labels.dtype == torch.long
    assert set(labels[0].unique().tolist()) <= {0, 4} and set(labels[1].unique().tolist()) <= {0, 8, 12}
