"""The organism benchmarks' shared setup (benchmarks/_organism.py): run folders, generated data and weight choice."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import _organism as org


def _mean_fg(root: Path) -> float:
    masks = sorted((root / "SegmentationClassAug").glob("*.png"))
    return float(np.mean([(np.array(Image.open(m)) % 255 > 0).mean() for m in masks]))


def test_world_run_tags_the_folder_and_selects_the_weights(tmp_path):
    parser = org.world_parser("test", str(tmp_path), "skip")
    base = parser.parse_args(["--seed", "5", "--num-train", "1", "--num-val", "6"])
    out, data, overrides = org.world_run(base)
    assert out == tmp_path.resolve() / "seed5" and data == out / "data"
    assert overrides == ["model.clip.pretrained=organism"]
    big = parser.parse_args(["--seed", "5", "--num-train", "1", "--num-val", "6", "--object-scale", "2",
                             "--weights", "cands/org_big.pt"])
    out2, data2, overrides2 = org.world_run(big)
    assert out2.name == "seed5_objects2_org_big"
    assert overrides2 == [f"model.clip.pretrained={Path('cands/org_big.pt').resolve()}"]
    # the same scenes with objects of twice the side: clearly more foreground
    assert (data / "lists" / "val.txt").read_text() == (data2 / "lists" / "val.txt").read_text()
    assert _mean_fg(data2) > 2.0 * _mean_fg(data)
    varied = parser.parse_args(["--seed", "5", "--num-train", "1", "--num-val", "6", "--varied-backdrops", "1"])
    out3, data3, _ = org.world_run(varied)
    assert out3.name == "seed5_backdrops1"
    smooth = parser.parse_args(["--seed", "5", "--num-train", "1", "--num-val", "1", "--varied-backdrops", "1",
                                "--backdrop-kinds", "blend", "gradient"])
    assert org.world_run(smooth)[0].name == "seed5_backdrops1-blend-gradient"
    # the same classes on other backgrounds (the background draws differ, so the objects land elsewhere)
    first = [np.array(Image.open(p)) for p in sorted((data / "JPEGImages").glob("*.jpg"))]
    other = [np.array(Image.open(p)) for p in sorted((data3 / "JPEGImages").glob("*.jpg"))]
    assert len(first) == len(other) and all(a.shape != b.shape or np.abs(a.astype(float) - b).mean() > 10
                                            for a, b in zip(first, other))


def test_ablation_rows_are_cached_by_key(tmp_path):
    from organism_ablations import cached

    calls = []

    def compute():
        calls.append(1)
        return {"miou": 0.5}

    assert cached(tmp_path, "row", "k1", compute) == {"key": "k1", "miou": 0.5}
    assert cached(tmp_path, "row", "k1", compute)["miou"] == 0.5 and len(calls) == 1   # resumed, not recomputed
    cached(tmp_path, "row", "k2", compute)                                           # other weights: recomputed
    assert len(calls) == 2


def test_ablation_summary_and_the_papers_signs_by_hand():
    from organism_ablations import PSEUDO, SEG, claims, summarise

    def seed(full, svc, aff, tse, lvc):
        return {"rows": [(PSEUDO, "full", full, 0.5), (PSEUDO, "SVC off", svc, None),
                         (PSEUDO, "affinity refinement off", aff, None), (PSEUDO, "TSE off", tse, None),
                         (SEG, "full", 0.6, 0.62), (SEG, "LVC off", lvc, None)], "zero_shot_map": 0.9}

    table = summarise({1: seed(0.40, 0.20, 0.38, 0.42, 0.61), 2: seed(0.50, 0.40, 0.52, 0.50, 0.55)})
    full = table[0]
    assert full["per_seed"] == {1: 40.0, 2: 50.0} and full["mean"] == 45.0 and full["spread"] == 5.0
    assert full["crf_mean"] == 50.0 and table[1]["crf_mean"] is None
    verdict = {text.split(" <=")[0]: holds for text, _, _, holds in claims(table)}
    # SVC off: 30 vs 45 - 15 holds at equality; affinity off 45 <= 45; TSE off 46 <= 46; LVC off 58 <= 60
    assert verdict == {"SVC off": True, "affinity refinement off": True, "TSE off": True, "LVC off": True}
    worse = summarise({1: seed(0.40, 0.30, 0.45, 0.45, 0.65)})
    assert {t.split(" <=")[0]: h for t, _, _, h in claims(worse)} == {
        "SVC off": False, "affinity refinement off": False, "TSE off": False, "LVC off": False}


def test_world_run_with_parts_selects_the_part_knowledge_base(tmp_path):
    parser = org.world_parser("test", str(tmp_path), "skip")
    out, data, overrides = org.world_run(parser.parse_args(["--seed", "5", "--num-train", "1", "--num-val", "3",
                                                            "--parts"]))
    assert out.name == "seed5_parts" and (data / "lists" / "val.txt").is_file()
    assert overrides == ["model.clip.pretrained=organism",
                         "tse.knowledge_base=excel/knowledge/organism_parts_knowledge_base.json"]


def test_backdrop_split_by_hand(tmp_path):
    """backdrop_split's groups are the scenes drawn on an unnamed backdrop, and its mIoU is pooled per group."""
    from backdrop_split import backdrop_flags, split_miou
    from excel.organism.synthetic import WORLD_SIZE, voc_scene
    from excel.organism.world import World

    flags = backdrop_flags(7, 2, 12, 0.5)
    assert flags == [voc_scene(7, 3 + k, WORLD_SIZE, World(varied_backdrops=0.5)).stuff == [] for k in range(12)]
    assert 2 <= sum(flags) <= 10 and backdrop_flags(7, 2, 12, 0.0) == [False] * 12
    # hand-made maps: 4 images of 2 x 2 pixels, two per group, two classes
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir(), pred_dir.mkdir()
    gt = np.array([[0, 1], [1, 2]], np.uint8)
    preds = {"a": gt, "b": gt, "c": np.array([[0, 1], [2, 2]], np.uint8), "d": gt}
    for name, pred in preds.items():
        Image.fromarray(gt).save(gt_dir / f"{name}.png")
        Image.fromarray(pred).save(pred_dir / f"{name}.png")
    result = split_miou(gt_dir, pred_dir, ["a", "b", "c", "d"], [True, True, False, False], 2)
    assert result["backdrop"] == pytest.approx(1.0)
    # named group, pooled: background 2/2; class 1: tp 3, fp 0, fn 1 -> 3/4; class 2: tp 2, fp 1 -> 2/3
    assert result["named"] == pytest.approx((1 + 3 / 4 + 2 / 3) / 3)
    assert np.isnan(split_miou(gt_dir, pred_dir, ["a"], [False], 2)["backdrop"])
    # the segmentation split: the argmax of kept logits (3 labels, 2 x 2), no inference when they are all there
    from types import SimpleNamespace

    from backdrop_split import absent_class_share, split_segmentation

    seg = tmp_path / "seg"
    (seg / "logits").mkdir(parents=True)
    for name, pred in preds.items():
        np.save(seg / "logits" / f"{name}.npy", np.eye(3, dtype=np.float16)[pred].transpose(2, 0, 1) * 4 - 1)
    cfg = SimpleNamespace(data=SimpleNamespace(class_names=["one", "two"]))
    split = split_segmentation(cfg, tmp_path / "unused.pth", seg, ["a", "b", "c", "d"], [True, True, False, False],
                               gt_dir)
    assert split["miou"] == result
    # absent classes: image "c" holds classes 1 and 2, so its one changed pixel (1 -> 2) names a held class
    assert split["absent"] == {"backdrop": 0.0, "named": 0.0}
    Image.fromarray(np.array([[0, 0], [1, 1]], np.uint8)).save(gt_dir / "g.png")     # holds 1 only
    Image.fromarray(np.array([[2, 1], [2, 0]], np.uint8)).save(pred_dir / "g.png")   # 2 (absent) twice
    absent = absent_class_share(gt_dir, pred_dir, ["g", "a"], [True, False], 2)
    assert absent["backdrop"] == pytest.approx(2 / 2) and absent["named"] == 0.0
