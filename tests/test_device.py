"""Device-parametrised tests: they run on the CPU in the normal suite and on the GPU with EXCEL_TEST_DEVICE=cuda
(``pytest -m cuda``; ``benchmarks/gpu_check.sh`` runs them). Precision: ``train.amp`` autocasts the decoder only; the
frozen CLIP runs as ``model.clip.autocast`` says, and the LVC map is computed in fp32 whatever the decoder ran in."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from excel.model import build_model

pytestmark = pytest.mark.cuda
REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "configs" / "test_tiny.yaml")


def _model(tiny_cfg, tiny_clip, device):
    tiny_cfg.tse.enabled = False
    model = build_model(tiny_cfg, copy.deepcopy(tiny_clip)).to(device)   # a copy: the session's model stays on CPU
    return model.eval()


def _images(device, n=2, side=64):
    gen = torch.Generator().manual_seed(3)
    return (torch.randn(n, 3, side, side, generator=gen) * 50).to(device)


def test_decoder_autocast_leaves_the_frozen_clip_in_fp32(tiny_cfg, tiny_clip, device):
    model = _model(tiny_cfg, tiny_clip, device)
    x = _images(device)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast(device.type, dtype=torch.bfloat16):          # what train.amp=bf16 wraps the forward in
            out = model(x)
        lvc = model.calibrated_lam(out, out.fused)                         # bf16 fused: crashed before the fix
        lvc_ref = model.calibrated_lam(ref, out.fused.float())
    assert out.fused.dtype == torch.bfloat16 and out.seg_logits.dtype == torch.bfloat16    # the decoder did autocast
    assert out.lam.dtype == torch.float32 and out.encoded.features.dtype == torch.float32
    assert torch.equal(out.lam, ref.lam) and torch.equal(out.attn, ref.attn)               # the frozen part did not
    assert lvc.dtype == torch.float32 and torch.equal(lvc, lvc_ref)
    assert lvc.min() >= 0 and lvc.max() <= 1


def test_device_forward_matches_the_cpu(tiny_cfg, tiny_clip, device):
    if device.type == "cpu":
        pytest.skip("compares another device with the CPU")
    model_dev = _model(tiny_cfg, tiny_clip, device)
    model_cpu = _model(tiny_cfg, tiny_clip, torch.device("cpu"))
    model_cpu.decoder.load_state_dict(model_dev.decoder.state_dict())
    x = _images(torch.device("cpu"))
    with torch.no_grad():
        a, b = model_dev(x.to(device)), model_cpu(x)
        lvc_a, lvc_b = model_dev.calibrated_lam(a, a.fused), model_cpu.calibrated_lam(b, b.fused)
    torch.testing.assert_close(a.lam.cpu(), b.lam, rtol=0, atol=2e-3)
    torch.testing.assert_close(lvc_a.cpu(), lvc_b, rtol=0, atol=2e-3)
    torch.testing.assert_close(a.seg_logits.cpu(), b.seg_logits, rtol=1e-3, atol=2e-3)


@pytest.mark.parametrize("amp", ["bf16", "none"])
def test_six_iterations_through_the_lvc_switch(mini_voc, tmp_path, device, amp):
    from scripts.train_voc import main

    work = tmp_path / "wd"
    result = main(["--config", TINY, f"data.root={mini_voc}", f"run.work_dir={work}", f"run.device={device}",
                   f"tse.cache_dir={tmp_path / 'banks'}", f"train.amp={amp}", "train.max_iters=6",
                   "train.eval_iters=6"])
    metrics = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert [m["lvc"] for m in metrics] == [False] * 3 + [True] * 3           # LVC from iteration 3 (tiny config)
    assert all(torch.isfinite(torch.tensor(m["loss"])) and m["step_s"] > 0 for m in metrics)
    assert 0 <= result["seg_miou"] <= 1 and 0 <= result["pseudo_miou"] <= 1
    assert (work / "checkpoints" / "iter_0000006.pth").is_file()
    if device.type == "cuda":
        assert "peak CUDA memory" in (work / "train.log").read_text()
