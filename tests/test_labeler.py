"""PseudoLabeler: the labels of the pure pipeline bit for bit, the stage thresholds, the affinity-source registry."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from excel.cam import (AFFINITY_SOURCES, PAR, PseudoLabeler, affinity_source, make_pseudo_labels,
                       pseudo_label_scores)
from excel.config import ConfigError

G, C_FG = 6, 5
P = G * G


def inputs(seed: int, label_sets):
    gen = torch.Generator().manual_seed(seed)
    b = len(label_sets)
    lam = torch.rand(b, P, C_FG, generator=gen)
    attn = torch.softmax(torch.randn(12, b, P + 1, P + 1, generator=gen), dim=-1)
    cls = torch.zeros(b, C_FG)
    for i, classes in enumerate(label_sets):
        cls[i, list(classes)] = 1
    images = torch.randn(b, 3, 40, 40, generator=gen)
    q = torch.sigmoid(torch.randn(b, P, P, generator=gen))
    return SimpleNamespace(lam=lam, attn=attn), cls, images, q


SETTINGS = dict(box_threshold=0.6, affinity_layers=(5, 7, 11), sinkhorn_iters=2, bg_power=1.5)


@pytest.mark.parametrize("use_q", [False, True])
@pytest.mark.parametrize("refine", [True, False])
def test_labeler_equals_the_pure_function_bit_for_bit(use_q, refine):
    enc, cls, images, q = inputs(1, [(0, 3), (), (1, 2, 4), (2,)])  # padded slots and an image without classes
    q = q if use_q else None
    par = PAR(dilations=(1, 2), num_iter=5)
    labeler = PseudoLabeler(par, affinity_source="attention" if refine else None, **SETTINGS)
    expected = make_pseudo_labels(enc.lam, enc.attn, cls, images, (24, 20), attn_pred=q, par=par,
                                  use_affinity=refine, **SETTINGS)
    got = labeler(enc, cls, images, (24, 20), q)
    assert torch.equal(got, expected)
    scores, lut = pseudo_label_scores(enc.lam, enc.attn, cls, images, (24, 20), q, par=par, use_affinity=refine,
                                      **SETTINGS)
    after = labeler.scores(enc, cls, images, (24, 20), q)
    assert torch.equal(after.scores, scores) and torch.equal(after.lut, lut) and after.after_par
    # before PAR, then PAR: the same stack; before PAR equals zero PAR rounds
    before = labeler.scores(enc, cls, images, (24, 20), q, before_par=True)
    assert not before.after_par and torch.equal(labeler.refine(images, before).scores, scores)
    unrefined, _ = pseudo_label_scores(enc.lam, enc.attn, cls, images, (24, 20), q, par=PAR(num_iter=0),
                                       use_affinity=refine, **SETTINGS)
    assert torch.equal(before.scores, unrefined)
    # a LAM handed in replaces encoded.lam
    other = torch.rand_like(enc.lam)
    assert torch.equal(labeler(enc, cls, images, (24, 20), q, lam=other),
                       make_pseudo_labels(other, enc.attn, cls, images, (24, 20), attn_pred=q, par=par,
                                          use_affinity=refine, **SETTINGS))


def test_from_config_reads_each_stage_threshold_and_cam(tiny_cfg):
    tiny_cfg.cam.box_threshold, tiny_cfg.eval.box_threshold, tiny_cfg.infer.box_threshold = 0.5, 0.6, 0.7
    tiny_cfg.cam.par.num_iter, tiny_cfg.cam.affinity_layers = 3, [9, 10]
    got = {s: PseudoLabeler.from_config(tiny_cfg, s) for s in ("train", "val", "infer")}
    assert {s: l.box_threshold for s, l in got.items()} == {"train": 0.5, "val": 0.6, "infer": 0.7}
    assert got["train"].par.num_iter == 3 and got["train"].affinity_layers == (9, 10)
    assert got["train"].source_name == "attention"
    tiny_cfg.cam.affinity_refine = False
    assert PseudoLabeler.from_config(tiny_cfg, "train").source is None
    with pytest.raises(ConfigError, match="stage"):
        PseudoLabeler.from_config(tiny_cfg, "test")


def test_unknown_source_names_the_key_and_the_choices(tiny_cfg):
    tiny_cfg.cam.affinity.source = "dino"
    with pytest.raises(ConfigError, match=r"cam.affinity.source='dino'.*'attention'"):
        PseudoLabeler.from_config(tiny_cfg, "train")


def test_a_registered_source_is_what_the_labels_propagate_along():
    """An identity affinity has the identity transition matrix (Sinkhorn, symmetrise and square keep it), so its
    labels are those of the refinement switched off, bit for bit, and differ from the attention source's."""
    @affinity_source("identity_for_test")
    def identity(encoded, layers, attn_pred):
        b, p, _ = encoded.lam.shape
        return torch.eye(p).expand(b, p, p)

    try:
        with pytest.raises(ValueError, match="already registered"):
            affinity_source("identity_for_test")(identity)
        enc, cls, images, q = inputs(2, [(1, 3), (0,)])
        par = PAR(dilations=(1, 2), num_iter=3)
        got = PseudoLabeler(par, affinity_source="identity_for_test", **SETTINGS)(enc, cls, images, (24, 24), q)
        off = PseudoLabeler(par, affinity_source=None, **SETTINGS)(enc, cls, images, (24, 24), q)
        attention = PseudoLabeler(par, **SETTINGS)(enc, cls, images, (24, 24), q)
        assert torch.equal(got, off) and not torch.equal(got, attention)
    finally:
        AFFINITY_SOURCES.pop("identity_for_test")
