"""Checkpoints: round trip, atomicity, rotation, RNG restore, prefix strip, compatibility and read errors."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from excel.engine.checkpoint import (CHECKPOINT_FORMAT, CheckpointError, capture_rng_states, check_compatible,
                                     checkpoint_meta, latest_checkpoint, load_checkpoint, periodic_checkpoint_path,
                                     restore_rng_states, save_checkpoint, strip_module_prefix)
from excel.engine.optim import PolyWarmupAdamW


def _model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    opt = PolyWarmupAdamW(model.parameters(), lr=1e-3, warmup_iters=2, max_iters=10)
    for _ in range(3):
        model(torch.randn(5, 3)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def test_round_trip_restores_model_optimizer_config_meta(tmp_path, tiny_cfg):
    model, opt = _model_and_optimizer()
    path = save_checkpoint(tmp_path / "a.pth", model.state_dict(), opt, 3, tiny_cfg, extra={"scaler": {"scale": 2.0}})
    assert path == tmp_path / "a.pth"
    ckpt = load_checkpoint(path)
    assert ckpt["format"] == CHECKPOINT_FORMAT and ckpt["iteration"] == 3 and ckpt["scaler"] == {"scale": 2.0}
    assert isinstance(ckpt["config"], dict) and ckpt["config"]["model"]["clip"]["name"] == "excel-tiny"
    assert ckpt["meta"]["num_classes"] == 21 and ckpt["meta"]["backbone"] == "excel-tiny"
    assert ckpt["meta"]["embed_dim"] == tiny_cfg.model.decoder.embed_dim and "git_revision" in ckpt["meta"]

    fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    fresh.load_state_dict(ckpt["model"])
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    fresh_opt = PolyWarmupAdamW(fresh.parameters(), lr=1e-3, warmup_iters=2, max_iters=10)
    fresh_opt.load_state_dict(ckpt["optimizer"])
    assert fresh_opt.global_step == 3
    assert torch.equal(fresh_opt.state[fresh[0].weight]["exp_avg"], opt.state[model[0].weight]["exp_avg"])


def test_save_is_atomic_and_a_failed_save_keeps_the_old_file(tmp_path):
    model, opt = _model_and_optimizer()
    path = save_checkpoint(tmp_path / "c.pth", model.state_dict(), opt, 1, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pth"]  # no temporary file left behind
    before = path.read_bytes()
    with pytest.raises(Exception):
        save_checkpoint(path, model.state_dict(), opt, 2, None, extra={"bad": lambda: 0})  # unpicklable
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pth"]
    assert load_checkpoint(path)["iteration"] == 1


def test_periodic_checkpoints_rotate_and_latest_is_found(tmp_path, tiny_cfg):
    model, opt = _model_and_optimizer()
    assert latest_checkpoint(tmp_path) is None
    for it in (2, 4, 6, 10):
        save_checkpoint(tmp_path, model.state_dict(), opt, it, tiny_cfg, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["iter_0000006.pth", "iter_0000010.pth"]
    assert latest_checkpoint(tmp_path) == periodic_checkpoint_path(tmp_path, 10)
    (tmp_path / "checkpoints" / "notes.txt").write_text("not a checkpoint")
    assert latest_checkpoint(tmp_path).name == "iter_0000010.pth"
    with pytest.raises(ValueError, match="keep_checkpoints"):
        save_checkpoint(tmp_path, model.state_dict(), opt, 12, tiny_cfg, keep=0)


def test_rng_states_round_trip(tmp_path):
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    path = save_checkpoint(tmp_path / "r.pth", {}, None, 0, None)
    first = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    restore_rng_states(load_checkpoint(path)["rng"])
    second = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1]) and first[2] == second[2]
    restore_rng_states(None)  # plain checkpoints carry no RNG state: a no-op
    # numpy's cached Gaussian (has_gauss) survives too.
    np.random.seed(2), np.random.standard_normal()
    states = capture_rng_states()
    a = np.random.standard_normal(2)
    restore_rng_states(states)
    assert np.array_equal(a, np.random.standard_normal(2))


def test_strip_module_prefix_and_saving_from_ddp_style_keys(tmp_path):
    state = {"module.decoder.w": torch.ones(1), "module.b": torch.zeros(1), "other": torch.ones(2)}
    assert list(strip_module_prefix(state)) == ["decoder.w", "b", "other"]
    path = save_checkpoint(tmp_path / "m.pth", state, None, 0, None)
    assert list(load_checkpoint(path)["model"]) == ["decoder.w", "b", "other"]


def test_check_compatible_names_the_mismatch(tiny_cfg):
    meta = checkpoint_meta(tiny_cfg)
    check_compatible(meta, dict(meta, git_revision="other", pretrained="openai"))  # informational keys only
    # counts in the user's terms: foreground classes, background apart
    with pytest.raises(CheckpointError, match=r"20 foreground classes \(\+ background\), but the config has 80 "):
        check_compatible(meta, dict(meta, num_classes=81))
    with pytest.raises(CheckpointError, match="backbone is 'excel-tiny'.*'ViT-B-16'"):
        check_compatible(meta, dict(meta, backbone="ViT-B-16"))
    check_compatible({}, meta)  # a plain state dict has no metadata to compare


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="folder"):
        load_checkpoint(tmp_path)
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(text)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(empty)
    model, opt = _model_and_optimizer()
    good = save_checkpoint(tmp_path / "good.pth", model.state_dict(), opt, 3, None)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(cut)
    other = tmp_path / "list.pth"
    torch.save([1, 2, 3], other)
    with pytest.raises(CheckpointError, match="not an excel checkpoint"):
        load_checkpoint(other)


def test_plain_state_dict_is_wrapped(tmp_path):
    raw = tmp_path / "raw.pth"
    torch.save({"module.decoder.w": torch.ones(2)}, raw)
    ckpt = load_checkpoint(raw)
    assert ckpt["format"] == "state_dict" and ckpt["iteration"] is None and ckpt["meta"] == {}
    assert torch.equal(strip_module_prefix(ckpt["model"])["decoder.w"], torch.ones(2))
