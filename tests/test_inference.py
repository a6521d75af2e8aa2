"""Segmentation inference (algorithm.md §9.2, §9.3, §9.5): multi-scale + flip logits against a slow per-view
reference, VOC val scoring with and without CRF, the test-set layout, COCO-style scoring, torchrun sharding and
checkpoint loading (prefixes, refusals). Real tiny open_clip model, real pydensecrf, real gloo."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from _collectives import checked_calls, checked_env
from excel.config import load_config
from excel.data import voc_palette
from excel.engine.checkpoint import (CheckpointError, build_seeded_model, load_checkpoint, load_model_weights,
                                     load_trained_model, save_checkpoint)
from excel.engine.inference import logit_size, multiscale_logits
from excel.evaluation import dense_crf
from _tools import load_tool

REPO = Path(__file__).resolve().parent.parent
MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)

infer_seg_coco, infer_seg_voc = load_tool("infer_seg_coco"), load_tool("infer_seg_voc")


# ----------------------------------------------------------------------------- slow references
def reference_logits(model, image, input_size, scales, flip_at_unit, out_size):
    """One forward per view (plain, mirrored), each upsampled on its own; the algorithm.md §9.2 / §9.3 averaging."""
    per_scale = []
    for s in scales:
        side = int(input_size * s)
        x = F.interpolate(image, size=(side, side), mode="bilinear", align_corners=False)
        views = [model(x).seg_logits]
        if s != 1.0 or flip_at_unit:
            views.append(model(x.flip(-1)).seg_logits.flip(-1))
        mean = torch.stack(views).mean(0)
        per_scale.append(F.interpolate(mean, size=tuple(out_size), mode="bilinear", align_corners=False)[0])
    return torch.stack(per_scale).mean(0)


def read_rgb(path):
    return np.array(Image.open(path).convert("RGB"))


def normalised(rgb):
    return torch.from_numpy(((rgb.astype(np.float32) - MEAN) / STD).transpose(2, 0, 1).copy())[None]


def reference_miou(preds, gts, num_classes):
    hist = np.zeros((num_classes, num_classes), dtype=np.int64)
    for p, g in zip(preds, gts):
        keep = g < num_classes
        hist += np.bincount(g[keep].astype(np.int64) * num_classes + p[keep], minlength=num_classes ** 2).reshape(
            num_classes, num_classes)
    tp = np.diag(hist).astype(float)
    rows, cols = hist.sum(1), hist.sum(0)
    iou = tp[rows > 0] / (rows + cols - tp)[rows > 0]
    return float(iou.mean())


def reference_predictions(model, root, names, cfg, crf, flip_at_unit=False, logit_scale=None):
    raw, refined = [], []
    for name in names:
        rgb = read_rgb(root / "JPEGImages" / f"{name}.jpg")
        h, w = rgb.shape[:2]
        size = (h, w) if logit_scale is None else (int(logit_scale * h), int(logit_scale * w))
        with torch.no_grad():
            logits = reference_logits(model, normalised(rgb), cfg.model.input_size, list(cfg.infer.scales),
                                      flip_at_unit, size)
            logits = F.interpolate(logits[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        raw.append(logits.argmax(0).numpy())
        if crf:
            refined.append(dense_crf(rgb, torch.softmax(logits, 0).numpy()).argmax(0))
    return raw, refined


@pytest.fixture(scope="module")
def ref_model(seg_checkpoint):
    """The checkpoint's model, loaded without excel.engine.inference: seeded build + plain state dict load."""
    cfg = seg_checkpoint["cfg"]
    model = build_seeded_model(cfg, mode="val")
    model.decoder.load_state_dict(torch.load(seg_checkpoint["path"], weights_only=True)["model"])
    return model.eval()


@pytest.fixture(scope="module")
def voc_val_run(seg_checkpoint, tmp_path_factory):
    """One VOC val run with CRF on one worker process (tools/infer_seg_voc.py main)."""
    out = tmp_path_factory.mktemp("voc_val")
    result = infer_seg_voc.main(["--config", str(REPO / "configs" / "test_tiny.yaml"), *seg_checkpoint["overrides"],
                                 f"infer.checkpoint={seg_checkpoint['path']}", f"infer.output_dir={out}",
                                 "infer.crf=true", "infer.crf_workers=1"])
    return result, out


# ----------------------------------------------------------------------------- logits
@pytest.mark.parametrize("flip_at_unit", [False, True])
def test_multiscale_logits_match_per_view_reference(ref_model, flip_at_unit):
    torch.manual_seed(0)
    image = torch.randn(1, 3, 40, 52)
    scales = [1.0, 0.75, 1.5]
    with torch.no_grad():
        expected = reference_logits(ref_model, image, 64, scales, flip_at_unit, (40, 52))
        small_expected = reference_logits(ref_model, image, 64, scales, flip_at_unit, (8, 10))
    got = multiscale_logits(ref_model, image, 64, scales, flip_at_unit, (40, 52))
    small = multiscale_logits(ref_model, image, 64, scales, flip_at_unit, (8, 10))
    assert got.shape == (21, 40, 52) and small.shape == (21, 8, 10)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(small, small_expected, atol=1e-4, rtol=1e-4)


def test_unit_scale_flip_is_ignored_for_voc_and_used_for_coco(ref_model):
    torch.manual_seed(1)
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        plain = ref_model(image).seg_logits[0]
        mirrored = ref_model(image.flip(-1)).seg_logits[0].flip(-1)
    assert not torch.allclose(plain, mirrored, atol=1e-3)  # the flip changes the logits of this model
    torch.testing.assert_close(multiscale_logits(ref_model, image, 64, [1.0], False, (4, 4)), plain)
    torch.testing.assert_close(multiscale_logits(ref_model, image, 64, [1.0], True, (4, 4)), (plain + mirrored) / 2,
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="scales"):
        multiscale_logits(ref_model, image, 64, [], False, (4, 4))


def test_logit_size():
    assert logit_size(375, 500, None) == (375, 500)
    assert logit_size(375, 500, 0.2) == (75, 100)
    assert logit_size(427, 640, 0.2) == (85, 128)  # int() truncates as in the reference
    with pytest.raises(ValueError, match="infer.logit_scale"):
        logit_size(10, 10, 1.5)


# ----------------------------------------------------------------------------- VOC val, test, COCO
def test_voc_val_scoring_raw_and_crf_match_reference(voc_val_run, ref_model, seg_checkpoint, mini_voc):
    result, out = voc_val_run
    cfg = seg_checkpoint["cfg"]
    names = (mini_voc / "lists" / "val.txt").read_text().split()
    raw, refined = reference_predictions(ref_model, mini_voc, names, cfg, crf=True)
    gts = [np.asarray(Image.open(mini_voc / "SegmentationClassAug" / f"{n}.png")) for n in names]
    assert result["num_images"] == len(names) == 4
    assert result["scores"]["raw"]["miou"] == pytest.approx(reference_miou(raw, gts, 21), abs=1e-9)
    assert result["scores"]["crf"]["miou"] == pytest.approx(reference_miou(refined, gts, 21), abs=1e-9)
    assert result["scores"]["raw"]["miou"] > 0.05  # the fitted checkpoint beats chance
    assert any((r != c).any() for r, c in zip(raw, refined))  # the CRF changed something
    saved = json.loads((out / "results.json").read_text())
    assert saved["scores"] == json.loads(json.dumps(result["scores"]))
    assert set(saved["scores"]["raw"]["iou"]) == {"background", *cfg.data.class_names}
    assert saved["timing"]["model_seconds_per_image"] > 0 and saved["crf_params"]["bi_xy_std"] == 67
    log = (out / "infer_seg_voc.log").read_text()
    assert "raw mIoU" in log and "CRF mIoU" in log and "m-IoU" in log
    assert not (out / "logits").exists()  # nothing written unless asked


def test_voc_val_without_crf_and_saved_logits(seg_checkpoint, voc_val_run, tmp_path):
    result = infer_seg_voc.main(["--config", str(REPO / "configs" / "test_tiny.yaml"), *seg_checkpoint["overrides"],
                                 f"infer.checkpoint={seg_checkpoint['path']}", f"infer.output_dir={tmp_path}",
                                 "infer.save_logits=true", "infer.save_overlays=true", "infer.max_images=2"])
    assert result["scores"]["crf"] is None and result["num_images"] == 2
    logits = sorted((tmp_path / "logits").glob("*.npy"))
    assert len(logits) == 2
    arr = np.load(logits[0])
    assert arr.dtype == np.float16 and arr.shape == (21, 96, 128)
    overlay = np.asarray(Image.open(sorted((tmp_path / "overlays").glob("*.png"))[0]))
    assert overlay.shape[1] == 128 and overlay.shape[0] > 96  # image plus legend strip


def test_test_split_writes_submission_layout_and_reruns_skip(seg_checkpoint, ref_model, mini_voc, tmp_path):
    argv = ["--config", str(REPO / "configs" / "test_tiny.yaml"), *seg_checkpoint["overrides"],
            f"infer.checkpoint={seg_checkpoint['path']}", f"infer.output_dir={tmp_path}", "infer.split=test"]
    result = infer_seg_voc.main(argv)
    names = (mini_voc / "lists" / "test.txt").read_text().split()
    folder = tmp_path / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls"
    assert sorted(p.stem for p in folder.glob("*.png")) == sorted(names)
    assert result["scores"] == {"raw": None, "crf": None}
    raw, _ = reference_predictions(ref_model, mini_voc, names, seg_checkpoint["cfg"], crf=False)
    for name, expected in zip(names, raw):
        img = Image.open(folder / f"{name}.png")
        assert img.mode == "P" and img.getpalette()[:63] == voc_palette()[:63]
        np.testing.assert_array_equal(np.asarray(img), expected)
    kept = folder / f"{names[0]}.png"
    stamp = kept.stat().st_mtime_ns
    (folder / f"{names[1]}.png").unlink()
    again = infer_seg_voc.main(argv)
    assert again["num_images"] == 1 and kept.stat().st_mtime_ns == stamp
    assert (folder / f"{names[1]}.png").is_file()


def test_coco_style_scoring_matches_reference(tmp_path):
    from excel.organism import make_synthetic_coco

    root = make_synthetic_coco(tmp_path / "coco", num_train=1, num_val=3, seed=0)
    overrides = [f"data.root={root}", "model.input_size=64", "model.clip.name=excel-tiny", "model.clip.pretrained=null",
                 "tse.enabled=false", "data.num_workers=0", "run.device=cpu", "infer.scales=[1.0,1.5]",
                 f"run.work_dir={tmp_path / 'work'}"]
    cfg = load_config([REPO / "configs" / "coco.yaml"], overrides)
    assert cfg.infer.flip_at_unit_scale and cfg.infer.logit_scale == 0.2
    model = build_seeded_model(cfg, mode="val").eval()
    with torch.no_grad():
        model.decoder.classifier.weight.mul_(40.0)
    ckpt = save_checkpoint(tmp_path / "coco.pth", model.decoder_state_dict(), None, 1, cfg, meta=model.meta())
    result = infer_seg_coco.main([*overrides,
                                  f"infer.checkpoint={ckpt}", "infer.crf=true", "infer.crf_workers=0"])
    names = (root / "lists" / "val.txt").read_text().split()
    images = [read_rgb(root / "JPEGImages" / "val" / f"{n}.jpg") for n in names]
    gts = [np.asarray(Image.open(root / "SegmentationClass" / "val" / f"{n[13:]}.png")) for n in names]
    raw, refined = [], []
    for rgb in images:
        h, w = rgb.shape[:2]
        with torch.no_grad():
            small = reference_logits(model, normalised(rgb), 64, [1.0, 1.5], True, (int(0.2 * h), int(0.2 * w)))
            logits = F.interpolate(small[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        raw.append(logits.argmax(0).numpy())
        refined.append(dense_crf(rgb, torch.softmax(logits, 0).numpy()).argmax(0))
    assert result["num_images"] == 3 and len(result["scores"]["raw"]["iou"]) == 81
    assert result["scores"]["raw"]["miou"] == pytest.approx(reference_miou(raw, gts, 81), abs=1e-9)
    assert result["scores"]["crf"]["miou"] == pytest.approx(reference_miou(refined, gts, 81), abs=1e-9)
    assert Path(result["output_dir"]) == tmp_path / "work" / "infer_seg_coco_val"
    # a VOC checkpoint is refused by the COCO config: the message names the class count
    with pytest.raises(CheckpointError, match=r"20 foreground classes \(\+ background\), but the config has 80 "):
        load_trained_model(cfg, _voc_ckpt_for(cfg, tmp_path), torch.device("cpu"))


def _voc_ckpt_for(cfg, tmp_path):
    state = {"classifier.weight": torch.zeros(21, 256, 1, 1)}
    meta = {"backbone": "excel-tiny", "num_classes": 21, "embed_dim": 256}
    return save_checkpoint(tmp_path / "voc_meta.pth", state, None, 1, None, meta=meta)


@pytest.mark.slow
def test_torchrun_two_processes_match_single_process(seg_checkpoint, voc_val_run, tmp_path):
    single, _ = voc_val_run
    report = tmp_path / "collectives.txt"
    env = checked_env(report, dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tools" / "infer_seg_voc.py"), "--config", str(REPO / "configs" / "test_tiny.yaml"),
           *seg_checkpoint["overrides"], f"infer.checkpoint={seg_checkpoint['path']}", f"infer.output_dir={tmp_path}",
           "infer.crf=true", "infer.crf_workers=0"]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["world_size"] == 2 and result["num_images"] == 4
    calls = checked_calls(report)        # pending list broadcast, timers and matrices reduced, all on cpu
    assert {r for r, *_ in calls} == {0, 1} and {d for _, _, d, _ in calls} == {"cpu"}
    assert {"broadcast_object_list", "all_reduce"} <= {name for _, name, _, _ in calls}
    for kind in ("raw", "crf"):
        assert result["scores"][kind]["miou"] == pytest.approx(single["scores"][kind]["miou"], abs=1e-12)


# ----------------------------------------------------------------------------- checkpoint loading
def test_checkpoint_prefixes_and_refusals(seg_checkpoint, ref_model, tmp_path):
    cfg = seg_checkpoint["cfg"]
    state = load_checkpoint(seg_checkpoint["path"])["model"]
    model = build_seeded_model(cfg, mode="val")
    load_model_weights(model, {f"module.{k}": v for k, v in state.items()})  # DDP prefix
    for k, v in model.decoder.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    full = {f"module.decoder.{k}": v for k, v in state.items()}
    full.update({f"module.visual.vit.{k}": v for k, v in ref_model.visual.vit.state_dict().items()})
    full["module.visual.vit.positional_embedding"] = torch.zeros(5, 3)  # discarded, whatever its shape
    load_model_weights(model, full)
    other = dict(state, **{"classifier.weight": torch.zeros(81, 256, 1, 1), "classifier.bias": torch.zeros(81)})
    with pytest.raises(CheckpointError, match=r"predicts 81 classes, i.e. 80 foreground classes \(\+ background\), but the config has 20 "):
        load_model_weights(model, other)
    wide = dict(state, **{"fusion.fc1_weight": torch.zeros(12, 256, 768)})
    with pytest.raises(CheckpointError, match=r"width 768 .*model.clip.name"):
        load_model_weights(model, wide)
    with pytest.raises(CheckpointError, match="missing"):
        load_model_weights(model, {k: v for k, v in state.items() if not k.startswith("classifier")})
    plain = tmp_path / "plain.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, plain)  # a bare DDP state dict, no metadata
    loaded = load_trained_model(cfg, plain, torch.device("cpu"))
    torch.testing.assert_close(loaded.decoder.classifier.weight, state["classifier.weight"])
    # quirk 8: only a split name containing "train" resizes the stored positional grid for good (64 px -> 4x4)
    assert loaded.visual.pos_grid == 14
    assert load_trained_model(cfg, plain, torch.device("cpu"), mode="train").visual.pos_grid == 4
    ckpt = load_checkpoint(seg_checkpoint["path"])
    bad = tmp_path / "vitb.pth"
    save_checkpoint(bad, ckpt["model"], None, 2, None, meta=dict(ckpt["meta"], backbone="ViT-B-16"))
    with pytest.raises(CheckpointError, match="backbone is 'ViT-B-16' in the checkpoint but 'excel-tiny'"):
        load_trained_model(cfg, bad, torch.device("cpu"))


def test_segment_needs_a_checkpoint(seg_checkpoint):
    with pytest.raises(ValueError, match="infer.checkpoint"):
        infer_seg_voc.main(["--config", str(REPO / "configs" / "test_tiny.yaml"), *seg_checkpoint["overrides"]])


# ----------------------------------------------------------------------------- the checkpoint's own config
def test_inference_follows_the_config_stored_in_the_checkpoint(seg_checkpoint, voc_val_run, tmp_path):
    """No --config: the model (excel-tiny, 64 px), the classes, the data root and the TSE bank come from the
    training run's stored config, and the raw scores equal those of the run given the whole config stack."""
    out = tmp_path / "own"
    result = infer_seg_voc.main([f"infer.checkpoint={seg_checkpoint['path']}", f"infer.output_dir={out}"])
    assert result["num_images"] == 4 and result["scales"] == [1.0, 1.5]  # test_tiny's scales, from the checkpoint
    assert result["scores"]["raw"] == voc_val_run[0]["scores"]["raw"]
    # a key on the command line still overrides the stored config
    result = infer_seg_voc.main([f"infer.checkpoint={seg_checkpoint['path']}", f"infer.output_dir={out}",
                                 "infer.scales=[1.0]", "infer.max_images=1"])
    assert result["scales"] == [1.0] and result["num_images"] == 1


def test_inference_tools_print_one_error_line(tmp_path, capsys):
    from excel.engine.cli import run_cli

    missing = tmp_path / "no_such.pth"
    assert run_cli(infer_seg_voc.main, [f"infer.checkpoint={missing}"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: checkpoint not found: {missing}\n"
