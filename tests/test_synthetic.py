"""The generated mini dataset, and tools/prepare_voc.py / prepare_coco.py on it (and on broken copies)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from excel.organism import make_synthetic_coco, make_synthetic_voc
from excel.organism.synthetic import ignore_band

from _tools import REPO, load_tool, read_lines  # noqa: E402


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_lists(mini_voc):
    lists = mini_voc / "lists"
    train, val, test = (read_lines(lists / f"{s}.txt") for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (8, 4, 2)
    assert read_lines(lists / "train_aug.txt") == train
    assert read_lines(lists / "trainval.txt") == train + val
    assert read_lines(mini_voc / "ImageSets" / "Segmentation" / "val.txt") == val
    assert not set(train) & set(val) and not set(val) & set(test)
    for name in train + val + test:
        with Image.open(mini_voc / "JPEGImages" / f"{name}.jpg") as img:
            assert img.format == "JPEG" and img.size == (128, 96)
    for name in test:
        assert not (mini_voc / "SegmentationClassAug" / f"{name}.png").exists()
    table = np.load(lists / "cls_labels_onehot.npy", allow_pickle=True).item()
    assert sorted(table) == sorted(train + val)
    for name in train + val:
        mask_img = Image.open(mini_voc / "SegmentationClassAug" / f"{name}.png")
        assert mask_img.mode == "P"
        mask = np.asarray(mask_img)
        values = set(np.unique(mask).tolist())
        assert values <= set(range(21)) | {255} and values - {0, 255}
        expected = np.zeros(20, np.float32)
        expected[[v - 1 for v in values - {0, 255}]] = 1
        assert table[name].dtype == np.float32
        np.testing.assert_array_equal(table[name], expected)


def test_ignore_band_separates_regions(mini_voc):
    for name in read_lines(mini_voc / "lists" / "trainval.txt"):
        mask = np.asarray(Image.open(mini_voc / "SegmentationClassAug" / f"{name}.png")).astype(int)
        for a, b in ((mask[:, 1:], mask[:, :-1]), (mask[1:], mask[:-1])):  # 4-neighbours
            touching = (a != 255) & (b != 255)
            assert np.all(a[touching] == b[touching]), f"{name}: two labels touch without an ignore band"
        assert 0 < (mask == 255).mean() < 0.2
    hand = np.zeros((5, 6), np.uint8)
    hand[1:4, 2:5] = 7
    expected = np.full((5, 6), 255, np.uint8)  # every pixel within Chebyshev distance 1 of the other label
    expected[:, 0] = 0
    expected[2, 3] = 7
    np.testing.assert_array_equal(ignore_band(hand), expected)


def test_deterministic_from_seed_and_size_range(tmp_path):
    a = all_files(make_synthetic_voc(tmp_path / "a", 3, 2, 1, seed=5))
    b = all_files(make_synthetic_voc(tmp_path / "b", 3, 2, 1, seed=5))
    c = all_files(make_synthetic_voc(tmp_path / "c", 3, 2, 1, seed=6))
    assert a == b
    assert a["JPEGImages/2007_000001.jpg"] != c["JPEGImages/2007_000001.jpg"]
    root = make_synthetic_voc(tmp_path / "r", 6, 0, 0, size=((64, 72), (80, 100)))
    sizes = {Image.open(p).size for p in (root / "JPEGImages").glob("*.jpg")}
    assert len(sizes) > 1 and all(80 <= w <= 100 and 64 <= h <= 72 for w, h in sizes)
    with pytest.raises(ValueError, match="split sizes"):
        make_synthetic_voc(tmp_path / "x", -1)


@pytest.mark.parametrize("layout", ["reference", "readme"])
def test_synthetic_coco_layouts(tmp_path, layout):
    root = make_synthetic_coco(tmp_path, num_train=3, num_val=2, layout=layout)
    train = read_lines(root / "lists" / "train.txt")
    assert train[0] == "COCO_train2014_000000000009"
    if layout == "reference":
        assert (root / "JPEGImages" / "train" / f"{train[0]}.jpg").is_file()
        assert (root / "SegmentationClass" / "train" / "000000000009.png").is_file()
    else:
        assert (root / "train2014" / f"{train[0]}.jpg").is_file()
        assert (root / "SegmentationClass" / "train2014" / f"{train[0]}.png").is_file()
    table = np.load(root / "lists" / "cls_labels_onehot.npy", allow_pickle=True).item()
    assert len(table) == 5 and all(v.shape == (80,) for v in table.values())


# ------------------------------------------------------------------------------------------- prepare tools
def test_prepare_voc_rebuilds_the_lists(mini_voc, tmp_path):
    tool = load_tool("prepare_voc")
    out = tmp_path / "lists"
    assert tool.main(["--root", str(mini_voc), "--out", str(out)]) == 0
    for name in ("train", "val", "test", "trainval", "train_aug"):
        assert read_lines(out / f"{name}.txt") == read_lines(mini_voc / "lists" / f"{name}.txt")
    got = np.load(out / "cls_labels_onehot.npy", allow_pickle=True).item()
    ref = np.load(mini_voc / "lists" / "cls_labels_onehot.npy", allow_pickle=True).item()
    assert sorted(got) == sorted(ref) and all(np.array_equal(got[k], ref[k]) for k in ref)


def test_prepare_voc_with_sbd_lists(mini_voc, tmp_path):
    val = read_lines(mini_voc / "lists" / "val.txt")
    train = read_lines(mini_voc / "lists" / "train.txt")
    sbd = tmp_path / "sbd"
    sbd.mkdir()
    (sbd / "train.txt").write_text("\n".join(train[:3] + val[:2]) + "\n")  # SBD overlaps VOC val
    (sbd / "val.txt").write_text(train[5] + "\n")
    out = tmp_path / "lists"
    assert load_tool("prepare_voc").main(["--root", str(mini_voc), "--sbd-root", str(sbd), "--out", str(out)]) == 0
    assert read_lines(out / "train_aug.txt") == sorted(train)  # (SBD | VOC train) - val


def test_prepare_voc_reports_a_broken_copy(mini_voc, tmp_path, capsys):
    root = shutil.copytree(mini_voc, tmp_path / "voc")
    shutil.rmtree(root / "lists")
    train = read_lines(root / "ImageSets" / "Segmentation" / "train.txt")
    (root / "JPEGImages" / f"{train[0]}.jpg").unlink()
    (root / "JPEGImages" / f"{train[1]}.jpg").write_bytes(b"garbage")
    png = root / "SegmentationClassAug" / f"{train[2]}.png"
    png.write_bytes(png.read_bytes()[:60])
    tool = load_tool("prepare_voc")
    assert tool.main(["--root", str(root)]) == 1
    report = capsys.readouterr().out
    assert f"missing images: 1 (first: {train[0]})" in report
    assert f"unreadable images: 1 (first: {train[1]})" in report
    assert f"bad masks: 1 (first: {train[2]})" in report and "nothing written" in report
    assert not (root / "lists").exists()
    assert tool.main(["--root", str(root), "--drop-bad"]) == 0
    assert read_lines(root / "lists" / "train.txt") == train[3:]
    assert tool.main(["--root", str(tmp_path / "missing")]) == 2
    assert "VOC root folder not found" in capsys.readouterr().err


@pytest.mark.parametrize("layout", ["reference", "readme"])
def test_prepare_coco_both_layouts_and_broken(tmp_path, layout, capsys):
    root = make_synthetic_coco(tmp_path / "coco", num_train=3, num_val=3, layout=layout)
    ref_table = np.load(root / "lists" / "cls_labels_onehot.npy", allow_pickle=True).item()
    shutil.rmtree(root / "lists")
    tool = load_tool("prepare_coco")
    assert tool.main(["--root", str(root), "--val-part", "2"]) == 0
    val = read_lines(root / "lists" / "val.txt")
    assert len(read_lines(root / "lists" / "train.txt")) == 3 and read_lines(root / "lists" / "val_part.txt") == val[:2]
    table = np.load(root / "lists" / "cls_labels_onehot.npy", allow_pickle=True).item()
    assert sorted(table) == sorted(ref_table) and all(np.array_equal(table[k], ref_table[k]) for k in table)
    next((root / "SegmentationClass").rglob("*.png")).unlink()
    assert tool.main(["--root", str(root), "--out", str(tmp_path / "l2"), "--no-cls-labels"]) == 1
    assert "missing masks: 1" in capsys.readouterr().out
    assert tool.main(["--root", str(tmp_path)]) == 2
