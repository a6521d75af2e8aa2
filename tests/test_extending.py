"""docs/extending.md: its two examples, run from the page's own code blocks, do what the page says."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from excel.cam import AFFINITY_SOURCES, PseudoLabeler, score_stack
from excel.config import load_config
from excel.losses import LOSS_TERMS
from excel.utils.vis import MORE_LOSS_COLOURS

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "extending.md"
TINY_STACK = [str(REPO / "configs" / "voc.yaml"), str(REPO / "configs" / "test_tiny.yaml")]


def blocks(section: str, language: str) -> list[str]:
    """The ``language`` code blocks of the doc's ``## <section>`` section."""
    text = DOC.read_text(encoding="utf-8")
    part = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", part, flags=re.S)


def with_key(cfg, yaml_text: str):
    """``cfg`` with the doc's YAML merged in: what adding the key to configs/base.yaml does."""
    OmegaConf.set_struct(cfg, False)
    merged = OmegaConf.merge(cfg, OmegaConf.create(yaml_text))
    OmegaConf.set_struct(merged, True)
    return merged


def test_the_loss_term_example_reaches_metrics_and_curves(mini_voc, tmp_path):
    from excel.engine.train import train

    (code,), (key,) = blocks("A new loss term", "python"), blocks("A new loss term", "yaml")
    exec(compile(code, str(DOC), "exec"), {})
    try:
        assert list(LOSS_TERMS)[-1] == "entropy"
        work = tmp_path / "wd"
        cfg = load_config(TINY_STACK, [f"data.root={mini_voc}", f"run.work_dir={work}",
                                       f"tse.cache_dir={tmp_path / 'banks'}", "train.max_iters=3",
                                       "train.eval_iters=3"])
        cfg = with_key(cfg, key)
        assert cfg.loss.entropy_weight == 0.0
        cfg.loss.entropy_weight = 0.05  # loss.entropy_weight=0.05, as the page runs it
        train(cfg)
        metrics = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
        assert len(metrics) == 3
        num_classes = 21
        for m in metrics:
            # the entropy of a distribution over 21 classes lies in [0, log 21]; the total adds 0.05 of it
            assert 0 < m["entropy_loss"] <= np.log(num_classes) + 1e-6
            assert m["loss"] == pytest.approx(m["seg_loss"] + 0.1 * m["aff_loss"] + 0.05 * m["entropy_loss"],
                                              rel=1e-5)
        curves = np.asarray(Image.open(work / "curves.png").convert("RGB"))
        top = curves[: curves.shape[0] // 3]  # the loss panel: its legend and line in the fourth loss colour
        assert (top.reshape(-1, 3) == MORE_LOSS_COLOURS[0]).all(1).sum() > 20
    finally:
        LOSS_TERMS.pop("entropy", None)


def test_the_affinity_source_example_is_what_the_pseudo_labels_use(tiny_cfg, tiny_clip):
    from excel.model import build_model

    (code,), (key,) = blocks("A new affinity source", "python"), blocks("A new affinity source", "yaml")
    space: dict = {}
    exec(compile(code, str(DOC), "exec"), space)
    try:
        tiny_cfg.tse.enabled = False
        cfg = with_key(tiny_cfg, key)
        assert cfg.cam.affinity.source == "token_similarity"
        labeler = PseudoLabeler.from_config(cfg, "infer")
        attention = PseudoLabeler.from_config(with_key(cfg, "cam: {affinity: {source: attention}}"), "infer")
        model = build_model(cfg, tiny_clip).eval()
        gen = torch.Generator().manual_seed(3)
        x = torch.randn(2, 3, 64, 64, generator=gen)
        cls = torch.zeros(2, 20)
        cls[0, [2, 7]] = 1
        cls[1, 11] = 1
        with torch.no_grad():
            enc = model.encode(x)
        got = labeler(enc, cls, x, (64, 64))
        source = space["token_similarity"]
        expected = score_stack(enc.lam, cls, x, (64, 64), lambda: source(enc, cfg.cam.affinity_layers, None),
                               labeler.par, cfg.infer.box_threshold, cfg.cam.sinkhorn_iters, cfg.cam.bg_power)
        assert torch.equal(got, expected.labels())
        assert not torch.equal(got, attention(enc, cls, x, (64, 64)))
    finally:
        AFFINITY_SOURCES.pop("token_similarity", None)
