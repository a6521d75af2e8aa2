"""tools/infer_lam.py and infer_lam.sh: training-free and checkpoint modes, CRF, overlays, sharding over 2 ranks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from PIL import Image

from _collectives import checked_calls, checked_env
from excel.config import load_config
from excel.engine.infer_lam import lam_inputs
from excel.engine.checkpoint import load_trained_model

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "configs" / "test_tiny.yaml")
TINY_STACK = [str(REPO / "configs" / "voc.yaml"), TINY]  # test_tiny is an overlay (no _base_)


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return env


@pytest.mark.slow
def test_infer_lam_sh_writes_labels_overlays_crf_and_table(mini_voc, tmp_path):
    """The reference's usage: bash infer_lam.sh TOOL GPU NGPU SPLIT CKPT [overrides]; on CPU it says so and runs."""
    out = tmp_path / "lam"
    cmd = ["bash", str(REPO / "infer_lam.sh"), "tools/infer_lam.py", "0", "1", "train", "", "--config", TINY,
           f"data.root={mini_voc}", f"tse.cache_dir={tmp_path / 'banks'}", f"infer.output_dir={out}",
           "infer.save_overlays=true", "infer.crf=true", "infer.crf_workers=0"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    gpu = torch.cuda.is_available()                  # the launcher says which it found; either way the run works
    assert ("[excel] GPUs 0, 1 process(es)" if gpu else "no GPU found: running on CPU") in proc.stdout
    names = (mini_voc / "lists" / "train.txt").read_text().split()
    for name in names:
        label = np.array(Image.open(out / "pseudo_labels" / f"{name}.png"))
        gt = np.array(Image.open(mini_voc / "SegmentationClassAug" / f"{name}.png"))
        assert label.shape == gt.shape
        present = {int(v) for v in np.unique(gt) if v not in (0, 255)}
        assert set(np.unique(label).tolist()) <= {0} | present  # only bg and the image's own classes
        assert (out / "pseudo_labels_crf" / f"{name}.png").exists() and (out / "overlays" / f"{name}.png").exists()
    assert list((out / "overlays" / "cams").glob("*.jpg"))
    result = json.loads((out / "results.json").read_text())
    assert result["mode"] == "training-free" and 0 <= result["miou"] <= 1 and 0 <= result["crf_miou"] <= 1
    log = (out / "infer_lam.log").read_text()
    assert "background" in log and "m-IoU" in log and "aeroplane" in log


def test_checkpoint_mode_lam_is_flip_merged_and_renormalised(seg_checkpoint):
    """algorithm.md §9.4: LAM = max(LAM_x, unflip LAM_flip), then per class (lam - min) / (max + 1e-5); Q is
    attn_pred of the plain forward of x alone (not of the pair, whose batch mean sees the mirror)."""
    cfg = load_config(TINY_STACK, seg_checkpoint["overrides"])
    model = load_trained_model(cfg, seg_checkpoint["path"], torch.device("cpu"), mode="train")
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    enc, q = lam_inputs(model, x, with_checkpoint=True)
    lam, attn = enc.lam, enc.attn
    out = model(torch.cat([x, x.flip(-1)]))
    pair = model.calibrated_lam(out, out.fused)
    g, c = 4, pair.shape[-1]
    merged = torch.maximum(pair[0], pair[1].view(g, g, c).flip(1).reshape(g * g, c))
    expected = (merged - merged.min(0).values) / ((merged - merged.min(0).values).max(0).values + 1e-5)
    torch.testing.assert_close(lam[0], expected)
    assert lam.min() == 0 and lam.max() < 1
    torch.testing.assert_close(attn, out.attn[:, :1])
    alone = model(x)
    torch.testing.assert_close(q, alone.attn_pred)
    torch.testing.assert_close(attn, alone.attn)
    assert (q - out.attn_pred[:1]).abs().max() > 1e-3  # the pair's Q differs (quirk 9): the test can tell them apart
    # a mirror-symmetric image gives a mirror-symmetric merged LAM
    sym = torch.cat([x[..., :32], x[..., :32].flip(-1)], dim=-1)
    enc_sym, _ = lam_inputs(model, sym, with_checkpoint=True)
    grid = enc_sym.lam[0].view(g, g, c)
    torch.testing.assert_close(grid, grid.flip(1), atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_two_ranks_give_the_single_process_scores(mini_voc, tmp_path):
    def run(nproc: int, out: Path) -> dict:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={nproc}"] if nproc > 1 else [sys.executable]
        cmd = launcher + [str(REPO / "tools" / "infer_lam.py"), "--config", TINY, f"data.root={mini_voc}",
                          f"tse.cache_dir={tmp_path / 'banks'}", f"infer.output_dir={out}", "infer.split=val"]
        env = checked_env(out.with_suffix(".collectives"), _env())
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return json.loads((out / "results.json").read_text())

    one, two = run(1, tmp_path / "one"), run(2, tmp_path / "two")
    calls = checked_calls(tmp_path / "two.collectives")   # the confusion matrices (CRF one too) reduced on cpu
    assert {r for r, *_ in calls} == {0, 1} and {d for _, _, d, _ in calls} == {"cpu"}
    assert any(name == "all_reduce" and caller == "excel.evaluation.metrics" for _, name, _, caller in calls)
    assert one["miou"] == pytest.approx(two["miou"], abs=1e-12) and one["num_images"] == two["num_images"] == 4
    for png in sorted((tmp_path / "one" / "pseudo_labels").glob("*.png")):
        assert np.array_equal(np.array(Image.open(png)), np.array(Image.open(tmp_path / "two" / "pseudo_labels" / png.name)))
    # the report merges both ranks' galleries into the single-process one (worst first, same thumbnails)
    gallery = [(tmp_path / d / "report.html").read_text().split('id="gallery"')[1] for d in ("one", "two")]
    assert gallery[0] == gallery[1] and gallery[0].count("<img ") == 4
    assert sorted(p.name for p in (tmp_path / "two" / "report_files").iterdir()) == \
        sorted(p.name for p in (tmp_path / "one" / "report_files").iterdir())


def test_batched_training_free_forward_gives_the_same_labels(mini_voc, tmp_path):
    """infer.batch_size groups images into one CLIP forward; every image's LAM and labels stay the same."""
    from excel.engine.infer_lam import run_infer_lam

    def run(batch_size: int) -> tuple[dict, Path]:
        out = tmp_path / f"b{batch_size}"
        cfg = load_config(TINY_STACK, [f"data.root={mini_voc}", f"tse.cache_dir={tmp_path / 'banks'}",
                                 f"infer.output_dir={out}", "infer.split=train", f"infer.batch_size={batch_size}"])
        return run_infer_lam(cfg), out

    (one, out1), (three, out3) = run(1), run(3)
    assert one["num_images"] == three["num_images"] == 8 and one["miou"] == pytest.approx(three["miou"], abs=1e-12)
    for png in sorted((out1 / "pseudo_labels").glob("*.png")):
        assert np.array_equal(np.array(Image.open(png)), np.array(Image.open(out3 / "pseudo_labels" / png.name)))


def _reference_image(model, item: dict, cfg, with_checkpoint: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image step by step (algorithm.md §9.4): (labels after PAR, CRF labels from the scores before PAR, CRF
    labels from the scores after PAR, which is what the CRF must *not* read)."""
    from excel.cam import PAR, build_par, pseudo_label_scores
    from excel.data.transforms import to_uint8_rgb
    from excel.engine.inference import resize_square
    from excel.evaluation import crf_params, dense_crf

    x = resize_square(item["image"][None], int(cfg.model.input_size))
    with torch.no_grad():
        if with_checkpoint:
            pair = model(torch.cat([x, x.flip(-1)]))
            both = model.calibrated_lam(pair, pair.fused)
            g, c = int(round(both.shape[1] ** 0.5)), both.shape[-1]
            lam = torch.maximum(both[:1], both[1:].view(1, g, g, c).flip(2).reshape(1, g * g, c))
            lam = lam - lam.amin(1, keepdim=True)
            lam = lam / (lam.amax(1, keepdim=True) + 1e-5)
            alone = model(x)  # Q from the plain forward of x by itself
            attn, q = alone.attn, alone.attn_pred
        else:
            enc = model.encode(x)
            lam, attn, q = enc.lam, enc.attn, None
        before_par = dict(box_threshold=cfg.infer.box_threshold, par=PAR(num_iter=0),  # zero rounds: unrefined
                          affinity_layers=tuple(cfg.cam.affinity_layers), sinkhorn_iters=cfg.cam.sinkhorn_iters,
                          bg_power=cfg.cam.bg_power)
        raw, lut = pseudo_label_scores(lam, attn, item["cls_label"][None], x, tuple(item["label"].shape),
                                       attn_pred=q, **before_par)
        refined = build_par(cfg)(x, raw)
    rgb, params, lut = to_uint8_rgb(item["image"], cfg.data.augment.mean, cfg.data.augment.std), \
        crf_params(cfg.infer.crf_params), lut[0].numpy()
    labels = lut[refined[0].argmax(0).numpy()]
    crf = lut[dense_crf(rgb, raw[0].numpy(), **params).argmax(0)]
    crf_after_par = lut[dense_crf(rgb, refined[0].numpy(), **params).argmax(0)]
    return labels, crf, crf_after_par


@pytest.mark.parametrize("mode", ["training-free", "checkpoint"])
def test_labels_and_crf_match_per_image_references(mini_voc, seg_checkpoint, tmp_path, mode):
    """Every written label and CRF label equals the per-image reference: Q from x alone (checkpoint mode) and the
    CRF on the [bg, r_c] stack before PAR (both modes)."""
    from excel.data import build_dataset
    from excel.engine.infer_lam import run_infer_lam

    ckpt = seg_checkpoint["path"] if mode == "checkpoint" else None
    out = tmp_path / mode
    cfg = load_config(TINY_STACK, [*seg_checkpoint["overrides"], f"infer.output_dir={out}", "infer.split=val",
                             "infer.crf=true", "infer.crf_workers=0", f"infer.checkpoint={ckpt or 'null'}"])
    summary = run_infer_lam(cfg)
    assert summary["mode"] == mode and summary["num_images"] == 4
    model = load_trained_model(cfg, ckpt, torch.device("cpu"), mode="val")
    unlike_after_par = 0
    for item in build_dataset(cfg, "val", stage="val"):
        labels, crf, crf_after_par = _reference_image(model, item, cfg, with_checkpoint=ckpt is not None)
        written = np.array(Image.open(out / "pseudo_labels" / f"{item['name']}.png"))
        written_crf = np.array(Image.open(out / "pseudo_labels_crf" / f"{item['name']}.png"))
        np.testing.assert_array_equal(written, labels)
        np.testing.assert_array_equal(written_crf, crf)
        unlike_after_par += int((crf != crf_after_par).sum())
    assert unlike_after_par > 0  # the CRF input matters: scores after PAR would give other labels


def test_the_split_is_checked_before_the_weights_are_read(tmp_path):
    """A missing list is named first, not the CLIP weights that building the model would look for next."""
    from excel.data import DatasetError
    from excel.engine.infer_lam import run_infer_lam

    cfg = load_config(TINY_STACK, [f"data.root={tmp_path}", "model.clip.name=ViT-B-16",
                                   f"model.clip.pretrained={tmp_path / 'no_weights.pt'}",
                                   f"infer.output_dir={tmp_path / 'out'}", "infer.split=val"])
    with pytest.raises(DatasetError, match=f"split list file not found: {tmp_path / 'lists' / 'val.txt'}"):
        run_infer_lam(cfg)
