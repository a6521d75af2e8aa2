"""Shared fixtures: the tiny config, a tiny random-init open_clip model, and the generated mini dataset."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent

# EXCEL_TEST_DEVICE=cuda runs the device-parametrised tests (marked `cuda`, fixture `device`) on the GPU; without it
# they run on the CPU like every other test. `pytest -m cuda` selects just them (benchmarks/gpu_check.sh does).
TEST_DEVICE = os.environ.get("EXCEL_TEST_DEVICE", "cpu")


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: device-parametrised: runs on EXCEL_TEST_DEVICE (default cpu)")


@pytest.fixture()
def device():
    """The device of the device-parametrised tests: EXCEL_TEST_DEVICE (cpu unless set); skips when it is absent."""
    import torch

    dev = torch.device(TEST_DEVICE)
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"EXCEL_TEST_DEVICE={TEST_DEVICE} but no CUDA device is visible")
    return dev


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture()
def tiny_cfg():
    """A fresh struct-mode config for the tiny random-init setup (safe to mutate)."""
    from excel.config import load_config

    return load_config([REPO / "configs" / "voc.yaml", REPO / "configs" / "test_tiny.yaml"])


@pytest.fixture(scope="session")
def tiny_clip():
    """A random-init ``excel-tiny`` open_clip model (seed 0), frozen, shared by the session (do not mutate)."""
    import torch

    from excel.backbone import load_clip

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return load_clip("excel-tiny", None)


@pytest.fixture(scope="session")
def mini_voc(tmp_path_factory) -> Path:
    """The generated VOC-layout mini dataset (8 train, 4 val, 2 test images of 96x128, seed 2:
    its masks show class 20, so tools that count classes from the masks find 20); do not modify it."""
    from excel.organism.synthetic import make_synthetic_voc

    return make_synthetic_voc(tmp_path_factory.mktemp("mini_voc"), num_train=8, num_val=4, num_test=2, seed=2)


@pytest.fixture(scope="session")
def seg_checkpoint(mini_voc, tmp_path_factory):
    """A decoder-only checkpoint of the tiny model for ``mini_voc`` whose classifier is
    fitted in closed form (ridge regression of the one-hot grid labels of the train images on the decoder
    features), so that predictions are better than chance; plus the overrides that rebuild the same model.

    Returns dict(path, overrides (key=value list; TSE cache and work dir in a temp folder), cfg).
    """
    import torch
    import torch.nn.functional as F

    from excel.config import load_config
    from excel.data import build_dataset
    from excel.engine.checkpoint import build_seeded_model, save_checkpoint

    tmp = tmp_path_factory.mktemp("seg_ckpt")
    overrides = [f"data.root={mini_voc}", f"tse.cache_dir={tmp / 'banks'}", f"run.work_dir={tmp / 'work'}"]
    cfg = load_config([REPO / "configs" / "voc.yaml", REPO / "configs" / "test_tiny.yaml"], overrides)
    model = build_seeded_model(cfg, mode="train").eval()
    items = [it for it in build_dataset(cfg, "train", stage="val")]
    num_classes = len(cfg.data.class_names) + 1
    feats, labels = [], []
    with torch.no_grad():
        for side in (64, 96):
            x = torch.cat([F.interpolate(it["image"][None], size=(side, side), mode="bilinear", align_corners=False) for it in items])
            f = model.decoder.transformer(model.decoder.fusion(model.encode(x).features))
            grid = [F.interpolate(it["label"][None, None].float(), size=f.shape[-2:], mode="nearest") for it in items]
            feats.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]))
            labels.append(torch.cat(grid).long().reshape(-1))
        feat, label = torch.cat(feats).double(), torch.cat(labels)
        feat, label = feat[label != 255], label[label != 255]
        mean, target = feat.mean(0), F.one_hot(label, num_classes).double()
        centred = feat - mean
        eye = torch.eye(feat.shape[1], dtype=torch.float64)
        weight = torch.linalg.solve(centred.T @ centred + eye, centred.T @ (target - target.mean(0))).T.float() * 5
        model.decoder.classifier.weight.copy_(weight[:, :, None, None])
        model.decoder.classifier.bias.copy_(5 * target.mean(0).float() - weight @ mean.float())
    path = save_checkpoint(tmp / "tiny_seg.pth", model.decoder_state_dict(), None, 2, cfg, meta=model.meta())
    return {"path": path, "overrides": overrides, "cfg": cfg}
