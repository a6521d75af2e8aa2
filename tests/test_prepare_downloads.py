"""Data preparation from the files as downloaded: SBD's cls/*.mat into SegmentationClassAug, the VOC 2012 test tar's
layout (--test-root), and COCO's masks from instances_*2014.json (pycocotools). The input files are written here;
the expected masks are written out by hand."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from excel.data.voc import DatasetError

from _tools import REPO, load_tool, read_lines  # noqa: E402


# ------------------------------------------------------------------------------------------------- SBD
def _write_sbd_mat(path: Path, segmentation: np.ndarray) -> None:
    from scipy.io import savemat

    path.parent.mkdir(parents=True, exist_ok=True)
    present = np.unique(segmentation[(segmentation > 0) & (segmentation < 255)]).astype(np.uint8)
    savemat(path, {"GTcls": {"Segmentation": segmentation, "Boundaries": np.zeros((1, 20), object),
                             "CategoriesPresent": present}})


def test_read_sbd_mask_on_a_hand_made_file(tmp_path):
    from excel.data.sbd import read_sbd_mask

    seg = np.array([[0, 0, 15], [3, 3, 15]], np.uint8)
    _write_sbd_mat(tmp_path / "cls" / "2008_000001.mat", seg)
    out = read_sbd_mask(tmp_path / "cls" / "2008_000001.mat")
    assert out.dtype == np.uint8 and out.tolist() == [[0, 0, 15], [3, 3, 15]]
    from scipy.io import savemat

    savemat(tmp_path / "other.mat", {"something": np.zeros((2, 2))})
    with pytest.raises(DatasetError, match=r"other\.mat has no 2-D GTcls\.Segmentation"):
        read_sbd_mask(tmp_path / "other.mat")
    _write_sbd_mat(tmp_path / "bad.mat", np.array([[0, 21]], np.uint8))
    with pytest.raises(DatasetError, match=r"bad\.mat: GTcls\.Segmentation holds values 0\.\.21"):
        read_sbd_mask(tmp_path / "bad.mat")


def test_prepare_voc_converts_sbd_into_segmentation_class_aug(mini_voc, tmp_path, capsys):
    """VOC as downloaded (SegmentationClass for some ids, palette PNGs with a 255 border) + SBD (cls/*.mat): the
    SegmentationClassAug masks are VOC's where VOC has one, else SBD's, and the lists follow."""
    from excel.data.palette import voc_palette

    root = shutil.copytree(mini_voc, tmp_path / "VOC2012")
    shutil.rmtree(root / "lists")
    original = {p.stem: np.array(Image.open(p)) for p in (root / "SegmentationClassAug").glob("*.png")}
    shutil.rmtree(root / "SegmentationClassAug")
    ids = sorted(original)
    voc_ids, sbd_only = ids[:3], ids[3:]
    (root / "SegmentationClass").mkdir()
    for name in voc_ids:                       # VOC's own masks: palette PNGs, a 255 border on the first row
        mask = original[name].copy()
        mask[0, :] = 255
        original[name] = mask
        img = Image.fromarray(mask, mode="L").convert("P")
        img.putpalette(voc_palette())
        img.save(root / "SegmentationClass" / f"{name}.png")
    sbd = tmp_path / "benchmark_RELEASE" / "dataset"
    for name in ids[1:]:                       # SBD covers every id but the first; its masks have no border
        seg = original[name].copy()
        seg[seg == 255] = 0
        _write_sbd_mat(sbd / "cls" / f"{name}.mat", seg)
    half = len(ids[1:]) // 2
    (sbd / "train.txt").write_text("".join(f"{n}\n" for n in ids[1:][:half]))
    (sbd / "val.txt").write_text("".join(f"{n}\n" for n in ids[1:][half:]))

    tool = load_tool("prepare_voc")
    assert tool.main(["--root", str(root), "--sbd-root", str(sbd)]) == 0
    out = capsys.readouterr().out
    assert f"{len(sbd_only)} masks converted from SBD's cls/*.mat, 3 copied from VOC's SegmentationClass, 0 " \
           f"already there" in out
    aug = root / "SegmentationClassAug"
    for name in ids:
        written = Image.open(aug / f"{name}.png")
        assert written.mode == "L"
        expected = original[name] if name in voc_ids else np.where(original[name] == 255, 0, original[name])
        np.testing.assert_array_equal(np.array(written), expected, err_msg=name)
    val = set(read_lines(root / "lists" / "val.txt"))
    assert read_lines(root / "lists" / "train_aug.txt") == sorted((set(ids[1:]) | set(
        read_lines(root / "ImageSets" / "Segmentation" / "train.txt"))) - val)

    # a rerun keeps what is there (an interrupted conversion finishes; a downloaded SegmentationClassAug stays)
    (aug / f"{sbd_only[0]}.png").unlink()
    assert tool.main(["--root", str(root), "--sbd-root", str(sbd)]) == 0
    assert f"1 masks converted from SBD's cls/*.mat, 0 copied from VOC's SegmentationClass, {len(ids) - 1} " \
           f"already there (kept)" in capsys.readouterr().out

    # an SBD id with neither a .mat file nor a VOC mask is named
    (sbd / "val.txt").write_text("2099_000001\n")
    assert tool.main(["--root", str(root), "--sbd-root", str(sbd)]) == 2
    assert "1 SBD ids have neither" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------- VOC test
def test_prepare_voc_test_root_and_infer_seg_voc_finds_the_images(mini_voc, seg_checkpoint, tmp_path, capsys):
    """The VOC 2012 test tar's layout in its own folder: lists/test.txt and lists/test_root.txt are written, and
    infer_seg_voc with infer.split=test reads the images from there without data.test_root."""
    from excel.config import load_config
    from excel.data import build_dataset

    root = shutil.copytree(mini_voc, tmp_path / "VOC2012")
    shutil.rmtree(root / "lists")
    test_ids = read_lines(root / "ImageSets" / "Segmentation" / "test.txt")
    (root / "ImageSets" / "Segmentation" / "test.txt").unlink()   # the trainval tar has no test list
    test_dir = tmp_path / "VOC2012_test"
    (test_dir / "JPEGImages").mkdir(parents=True)
    (test_dir / "ImageSets" / "Segmentation").mkdir(parents=True)
    for name in test_ids:
        shutil.move(str(root / "JPEGImages" / f"{name}.jpg"), test_dir / "JPEGImages" / f"{name}.jpg")
    (test_dir / "ImageSets" / "Segmentation" / "test.txt").write_text("".join(f"{n}\n" for n in test_ids))

    tool = load_tool("prepare_voc")
    assert tool.main(["--root", str(root), "--test-root", str(test_dir), "--num-classes", "20"]) == 0
    assert f"test: {len(test_ids)} ids from {test_dir / 'ImageSets' / 'Segmentation' / 'test.txt'}" in \
        capsys.readouterr().out
    assert read_lines(root / "lists" / "test.txt") == test_ids
    assert (root / "lists" / "test_root.txt").read_text().strip() == str(test_dir.resolve())
    assert not set(test_ids) & set(read_lines(root / "lists" / "train_aug.txt"))

    cfg = load_config([REPO / "configs" / "voc.yaml", REPO / "configs" / "test_tiny.yaml"], [f"data.root={root}"])
    dataset = build_dataset(cfg, "test", stage="test")
    assert len(dataset) == len(test_ids) and dataset[0]["image"].ndim == 3

    infer_seg_voc = load_tool("infer_seg_voc")
    out = tmp_path / "seg"
    result = infer_seg_voc.main(["--config", str(REPO / "configs" / "test_tiny.yaml"), *seg_checkpoint["overrides"],
                                 f"data.root={root}", f"infer.checkpoint={seg_checkpoint['path']}",
                                 f"infer.output_dir={out}", "infer.split=test"])
    folder = out / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls"
    assert result["num_images"] == len(test_ids) and sorted(p.stem for p in folder.glob("*.png")) == test_ids

    # a test folder without its list is named
    (test_dir / "ImageSets" / "Segmentation" / "test.txt").unlink()
    assert tool.main(["--root", str(root), "--test-root", str(test_dir), "--num-classes", "20"]) == 2
    assert "VOC test list not found" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ COCO
def test_coco_category_order():
    from excel.data.coco_masks import COCO_CATEGORY_IDS, category_index

    assert len(COCO_CATEGORY_IDS) == 80 and list(COCO_CATEGORY_IDS) == sorted(set(COCO_CATEGORY_IDS))
    assert (category_index(1), category_index(11), category_index(13), category_index(18), category_index(90)) == \
        (1, 11, 12, 17, 80)
    assert not {12, 26, 29, 30, 45, 66, 68, 69, 71, 83} & set(COCO_CATEGORY_IDS)
    with pytest.raises(ValueError, match="COCO category id 12 is not one of the 80"):
        category_index(12)


def _rle(region: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(region.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _coco_download(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """A COCO root with three images (two train, one val), their instances_*2014.json and the masks expected."""
    root, ann_dir = tmp_path / "COCO", tmp_path / "COCO" / "annotations"
    ann_dir.mkdir(parents=True)
    images = {"train": [("COCO_train2014_000000000009.jpg", 9, 6, 8), ("COCO_train2014_000000000025.jpg", 25, 5, 4)],
              "val": [("COCO_val2014_000000000042.jpg", 42, 8, 8)]}
    for subset, rows in images.items():
        (root / f"{subset}2014").mkdir(parents=True)
        for file_name, _, h, w in rows:
            Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(root / f"{subset}2014" / file_name)

    def box(h, w, rows, cols):
        region = np.zeros((h, w), bool)
        region[rows, cols] = True
        return region

    person = box(6, 8, slice(1, 3), slice(1, 4))                 # 6 px, category 1 -> 1
    toothbrush = box(6, 8, slice(0, 4), slice(0, 6))             # 24 px, category 90 -> 80, under the person
    crowd = box(6, 8, slice(3, 6), slice(4, 8))                  # dog crowd, 255 where no object lies
    train_anns = [
        {"id": 1, "image_id": 9, "category_id": 1, "iscrowd": 0, "area": 6.0, "segmentation": _rle(person)},
        {"id": 2, "image_id": 9, "category_id": 90, "iscrowd": 0, "area": 24.0, "segmentation": _rle(toothbrush)},
        {"id": 3, "image_id": 9, "category_id": 18, "iscrowd": 1, "area": 12.0, "segmentation": _rle(crowd)},
    ]
    # only three categories listed, in no particular order: the values follow the standard ids all the same
    categories = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]
    tie = box(8, 8, slice(6, 8), slice(0, 2))
    val_anns = [
        {"id": 10, "image_id": 42, "category_id": 1, "iscrowd": 0, "area": 4.0, "segmentation": _rle(tie)},
        {"id": 11, "image_id": 42, "category_id": 2, "iscrowd": 0, "area": 4.0, "segmentation": _rle(tie)},
        {"id": 12, "image_id": 42, "category_id": 18, "iscrowd": 0, "area": 16.0,
         "segmentation": [[1.0, 1.0, 5.0, 1.0, 5.0, 5.0, 1.0, 5.0]]},   # a polygon
    ]
    for subset, anns in (("train", train_anns), ("val", val_anns)):
        doc = {"images": [{"id": i, "file_name": f, "height": h, "width": w} for f, i, h, w in images[subset]],
               "annotations": anns, "categories": categories}
        (ann_dir / f"instances_{subset}2014.json").write_text(json.dumps(doc))
    expected = np.zeros((6, 8), np.uint8)
    expected[toothbrush] = 80
    expected[person] = 1                                     # the smaller object wins the overlap
    expected[crowd & ~toothbrush] = 255                      # crowd: ignore, except under an object
    val = np.zeros((8, 8), np.uint8)
    val[tie] = 2                                             # equal areas: the later annotation id wins
    return root, ann_dir, {"COCO_train2014_000000000009": expected,
                           "COCO_train2014_000000000025": np.zeros((5, 4), np.uint8), "COCO_val2014_000000000042": val}


def test_prepare_coco_makes_the_masks_from_the_annotations(tmp_path, capsys):
    from excel.data.coco import COCODataset

    root, ann_dir, expected = _coco_download(tmp_path)
    tool = load_tool("prepare_coco")
    assert tool.main(["--root", str(root), "--annotations", str(ann_dir)]) == 0
    out = capsys.readouterr().out
    assert "train: 2 masks written to" in out and "1 images without any annotated object" in out
    for name, mask in expected.items():
        subset = "train" if "train" in name else "val"
        path = root / "SegmentationClass" / f"{subset}2014" / f"{name}.png"
        written = np.array(Image.open(path))
        if subset == "train":
            np.testing.assert_array_equal(written, mask, err_msg=name)
        else:   # the polygon's inside is dog (17); the tie is bicycle (2); the far corner background
            assert written[3, 3] == 17 and written[0, 7] == 0 and written[7, 7] == 0
            np.testing.assert_array_equal(written[6:, :2], mask[6:, :2])
    # then the lists as usual: the image without an object is left out
    assert read_lines(root / "lists" / "train.txt") == ["COCO_train2014_000000000009"]
    assert read_lines(root / "lists" / "val.txt") == ["COCO_val2014_000000000042"]
    table = np.load(root / "lists" / "cls_labels_onehot.npy", allow_pickle=True).item()
    assert np.flatnonzero(table["COCO_train2014_000000000009"]).tolist() == [0, 79]   # person, toothbrush
    item = COCODataset(root, "train", stage="val")[0]
    np.testing.assert_array_equal(item["label"].numpy(), expected["COCO_train2014_000000000009"])

    # a rerun keeps the masks; a category outside the standard 80 is an error naming the file and image
    assert tool.main(["--root", str(root), "--annotations", str(ann_dir)]) == 0
    assert "train: 0 masks written to" in capsys.readouterr().out
    doc = json.loads((ann_dir / "instances_val2014.json").read_text())
    doc["annotations"][0]["category_id"] = 12
    (ann_dir / "instances_val2014.json").write_text(json.dumps(doc))
    shutil.rmtree(root / "SegmentationClass" / "val2014")
    assert tool.main(["--root", str(root), "--annotations", str(ann_dir)]) == 2
    err = capsys.readouterr().err
    assert "instances_val2014.json, image COCO_val2014_000000000042.jpg: COCO category id 12" in err
    assert tool.main(["--root", str(root), "--annotations", str(tmp_path / "none")]) == 2
    assert "COCO annotations folder not found" in capsys.readouterr().err
