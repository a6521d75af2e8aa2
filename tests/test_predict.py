"""tools/predict.py: trained-checkpoint and training-free (open-vocabulary) prediction on folders, files and globs;
label PNGs equal to the library's predictions, overlays with a legend, class files and knowledge bases."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from excel.cam import PAR, make_pseudo_labels
from excel.data import voc_palette
from excel.engine.checkpoint import load_trained_model
from _tools import load_tool
from excel.engine.inference import multiscale_logits
from excel.text.knowledge import KnowledgeBaseError
from excel.engine.predict import (Predictor, _output_names, collect_images, parse_class_list, predict_config,
                                  read_class_file)

REPO = Path(__file__).resolve().parent.parent
predict_tool = load_tool("predict")

MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)


def normalised(rgb):
    return torch.from_numpy(((rgb.astype(np.float32) - MEAN) / STD).transpose(2, 0, 1).copy())[None]


@pytest.fixture(scope="module")
def photo_dir(mini_voc, tmp_path_factory):
    """A folder of three images (one PNG in a subfolder), as a user would have them."""
    folder = tmp_path_factory.mktemp("photos")
    images = sorted((mini_voc / "JPEGImages").glob("*.jpg"))[:3]
    shutil.copy(images[0], folder / "a.jpg")
    shutil.copy(images[1], folder / "b.jpg")
    (folder / "sub").mkdir()
    Image.open(images[2]).save(folder / "sub" / "c.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_trained_checkpoint_on_a_folder(seg_checkpoint, photo_dir, tmp_path):
    out = tmp_path / "out"
    records = predict_tool.main([str(photo_dir), "--out", str(out), "--checkpoint", str(seg_checkpoint["path"])])
    assert [r["name"] for r in records] == ["a", "b", "c"]
    # the checkpoint's stored config rebuilt the model: same classes, same scales, same predictions
    model = load_trained_model(seg_checkpoint["cfg"], seg_checkpoint["path"], torch.device("cpu"))
    names = ["background", *seg_checkpoint["cfg"].data.class_names]
    assert json.loads((out / "classes.json").read_text()) == {str(i): n for i, n in enumerate(names)}
    for record in records:
        rgb = np.asarray(Image.open(record["file"]).convert("RGB"))
        expected = multiscale_logits(model, normalised(rgb), 64, [1.0, 1.5], False, rgb.shape[:2]).argmax(0).numpy()
        label = Image.open(out / "labels" / f"{record['name']}.png")
        assert label.mode == "P" and label.getpalette()[:63] == voc_palette()[:63]
        np.testing.assert_array_equal(np.asarray(label), expected)
        assert record["classes"] == [names[v] for v in np.unique(expected) if v > 0]
        overlay = np.asarray(Image.open(out / "overlays" / f"{record['name']}.png"))
        assert overlay.shape[1] == rgb.shape[1] and overlay.shape[0] > rgb.shape[0]  # image + legend strip
        np.testing.assert_array_equal(overlay[:rgb.shape[0]][expected == 0], rgb[expected == 0])  # bg untouched
    assert json.loads((out / "predictions.json").read_text()) == records


def test_trained_checkpoint_with_crf_on_a_glob(seg_checkpoint, photo_dir, tmp_path):
    records = predict_tool.main([str(photo_dir / "*.jpg"), "--out", str(tmp_path), "--crf",
                                 "--checkpoint", str(seg_checkpoint["path"]), "infer.scales=[1.0]"])
    assert [r["name"] for r in records] == ["a", "b"]
    label = np.asarray(Image.open(tmp_path / "labels" / "a.png"))
    assert label.shape == (96, 128) and label.max() <= 20


def test_training_free_plain_prompts_all_present_matches_pipeline(photo_dir, tmp_path):
    argv = [str(photo_dir / "a.jpg"), "--out", str(tmp_path), "--classes", "cat, dog", "--labels", "all",
            "--config", str(REPO / "configs" / "test_tiny.yaml"), f"tse.cache_dir={tmp_path / 'banks'}"]
    records = predict_tool.main(argv)
    assert records[0]["label_vector"] == ["cat", "dog"]
    assert sum(records[0]["cls_scores"].values()) == pytest.approx(1.0, abs=1e-5)
    cfg = predict_config([REPO / "configs" / "test_tiny.yaml"], [], vocabulary={"class_names": ["cat", "dog"]})
    assert not cfg.tse.enabled and list(cfg.data.prompt_names) == ["cat", "dog"]
    predictor = Predictor(cfg, labels="all")
    assert predictor.model.text_bank.shape[0] == 2 + len(cfg.data.background_names)
    rgb = np.asarray(Image.open(photo_dir / "a.jpg").convert("RGB"))
    x = torch.nn.functional.interpolate(normalised(rgb), size=(64, 64), mode="bilinear", align_corners=False)
    enc = predictor.model.encode(x)
    expected = make_pseudo_labels(enc.lam, enc.attn, torch.ones(1, 2), x, rgb.shape[:2], box_threshold=0.79,
                                  par=PAR())[0].numpy()
    label = np.asarray(Image.open(tmp_path / "labels" / "a.png"))
    np.testing.assert_array_equal(label, expected)
    assert set(np.unique(label)) <= {0, 1, 2}


def test_cls_probabilities_and_thresholded_label_vector():
    cfg = predict_config([REPO / "configs" / "test_tiny.yaml"], [], vocabulary={"class_names": ["cat", "dog", "car"]})
    predictor = Predictor(cfg, labels="cls", cls_threshold=1.0)  # only the top class survives this threshold
    tokens = torch.randn(1, 5, predictor.model.text_bank.shape[1])
    probs = predictor.cls_probabilities(tokens)
    cls = tokens[0, 0] / tokens[0, 0].norm()
    logits = torch.tensor([predictor.logit_scale * float(cls @ predictor.model.text_bank[k]) for k in range(3)])
    torch.testing.assert_close(probs, torch.softmax(logits, 0))
    assert predictor.logit_scale == pytest.approx(1 / 0.07, rel=1e-4)  # CLIP's init value for random weights
    rgb = (np.random.default_rng(0).uniform(0, 255, size=(48, 40, 3))).astype(np.uint8)
    pred = predictor(rgb)
    assert len(pred.label_vector) == 1 and pred.label.shape == (48, 40)
    assert pred.label_vector[0] == max(pred.cls_scores, key=pred.cls_scores.get)
    assert set(np.unique(pred.label)) <= {0, ["cat", "dog", "car"].index(pred.label_vector[0]) + 1}


def test_training_free_with_knowledge_base_and_class_file(photo_dir, tmp_path):
    kb = {"kitten": [f"a clean origami kitten. it has {p}." for p in ("whiskers", "soft fur", "a tail", "paws")],
          "puppy": [f"a clean origami puppy. it has {p}." for p in ("floppy ears", "a wet nose", "a tail", "paws")]}
    (tmp_path / "kb.json").write_text(json.dumps(kb))
    (tmp_path / "classes.yaml").write_text("class_names: [kitten, puppy]\nbackground_names: [grass, sky]\n")
    out = tmp_path / "out"
    records = predict_tool.main([str(photo_dir / "sub"), "--out", str(out), "--classes-file",
                                 str(tmp_path / "classes.yaml"), "--knowledge-base", str(tmp_path / "kb.json"),
                                 "--config", str(REPO / "configs" / "test_tiny.yaml"),
                                 f"tse.cache_dir={tmp_path / 'banks'}", "tse.min_sentences=4"])
    assert [r["name"] for r in records] == ["c"] and set(records[0]["cls_scores"]) == {"kitten", "puppy"}
    assert len(list((tmp_path / "banks").glob("*.pth"))) == 1  # the TSE bank was built on the fly and cached
    cfg = predict_config([REPO / "configs" / "test_tiny.yaml"], ["tse.min_sentences=4"],
                         vocabulary=read_class_file(tmp_path / "classes.yaml"), knowledge_base=str(tmp_path / "kb.json"))
    assert cfg.tse.enabled and cfg.tse.num_clusters == 3  # ceil(8 sentences * 112 / 400)
    assert list(cfg.data.background_names) == ["grass", "sky"]
    kept = predict_config([REPO / "configs" / "test_tiny.yaml"], ["tse.num_clusters=5", "tse.min_sentences=4"],
                          vocabulary={"class_names": ["kitten", "puppy"]}, knowledge_base=str(tmp_path / "kb.json"))
    assert kept.tse.num_clusters == 5
    with pytest.raises(KnowledgeBaseError, match="'kitten' has 4, 'puppy' has 4"):  # below the default of 10
        predict_config([REPO / "configs" / "test_tiny.yaml"], [], vocabulary={"class_names": ["kitten", "puppy"]},
                       knowledge_base=str(tmp_path / "kb.json"))


def test_inputs_vocabulary_and_argument_errors(photo_dir, seg_checkpoint, tmp_path):
    assert [p.name for p in collect_images([str(photo_dir)])] == ["a.jpg", "b.jpg", "c.png"]
    assert [p.name for p in collect_images([str(photo_dir / "*.jpg"), str(photo_dir / "a.jpg")])] == ["a.jpg", "b.jpg"]
    with pytest.raises(FileNotFoundError, match="nothing.jpg"):
        collect_images([str(photo_dir / "nothing.jpg")])
    assert _output_names([Path("x/a.jpg"), Path("y/a.png"), Path("y/a.jpg")]) == ["a", "y_a", "y_a_2"]
    assert parse_class_list(" cat,traffic light ") == ["cat", "traffic light"]
    with pytest.raises(ValueError, match="comma-separated"):
        parse_class_list("cat,,dog")
    (tmp_path / "list.yaml").write_text("[cat, dog]\n")
    assert read_class_file(tmp_path / "list.yaml") == {"class_names": ["cat", "dog"]}
    (tmp_path / "bad.yaml").write_text("names: [cat]\n")
    with pytest.raises(ValueError, match="class_names"):
        read_class_file(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="not both"):
        predict_config([], [], checkpoint=seg_checkpoint["path"], vocabulary={"class_names": ["cat"]})
    with pytest.raises(ValueError, match="--classes"):
        predict_config([], [])
    with pytest.raises(ValueError, match="give a checkpoint"):
        Predictor(seg_checkpoint["cfg"], checkpoint=None, crf=True)


def test_inputs_are_checked_before_the_weights(tmp_path):
    """A missing image folder is reported first, not the absent checkpoint or CLIP weights it would load next."""
    missing_folder, missing_ckpt = tmp_path / "photos", tmp_path / "ckpt.pth"
    with pytest.raises(FileNotFoundError, match="'.*photos' is not an image file, a folder"):
        predict_tool.main([str(missing_folder), "--out", str(tmp_path / "o"), "--checkpoint", str(missing_ckpt)])
    with pytest.raises(FileNotFoundError, match="photos"):
        predict_tool.main([str(missing_folder), "--out", str(tmp_path / "o"), "--classes", "cat",
                           "model.clip.name=ViT-B-16", "model.clip.pretrained=/no/weights.pt"])
    (tmp_path / "photos").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "photos" / "a.png")
    with pytest.raises(FileNotFoundError, match="--checkpoint .*ckpt.pth: file not found"):
        predict_tool.main([str(missing_folder), "--out", str(tmp_path / "o"), "--checkpoint", str(missing_ckpt)])
