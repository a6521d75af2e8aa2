"""Datasets, augmentation (algorithm.md §8.4), the evaluation sampler, palette, and errors on bad data."""
from __future__ import annotations

import random
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from excel.data import (AugmentConfig, COCODataset, DatasetError, VOCDataset, build_dataset, check_dataset,
                        denormalize, multi_hot, voc_palette)
from excel.data.loader import ShardSampler
from excel.organism import make_synthetic_coco
from excel.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, crop_box, normalize, normalize_on_device,
                                   train_transform)
from excel.utils.palette import colorize
from excel.utils.vis import legend, overlay, with_legend

MEAN, STD = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)


def raw(root, name):
    image = np.asarray(Image.open(root / "JPEGImages" / f"{name}.jpg").convert("RGB"))
    mask_path = root / "SegmentationClassAug" / f"{name}.png"
    return image, (np.asarray(Image.open(mask_path)) if mask_path.exists() else None)


@pytest.fixture()
def voc_copy(mini_voc, tmp_path):
    """A private copy of the mini dataset that a test may break."""
    return shutil.copytree(mini_voc, tmp_path / "voc")


# ----------------------------------------------------------------------------------------------------- items
def test_val_item_is_the_normalised_full_image(mini_voc):
    ds = VOCDataset(mini_voc, "val", stage="val")
    item = ds[1]
    image, mask = raw(mini_voc, item["name"])
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, *image.shape[:2])
    assert item["label"].dtype == torch.int64
    np.testing.assert_allclose(denormalize(item["image"].numpy()), image, atol=1e-3)
    np.testing.assert_array_equal(item["label"].numpy(), mask)
    table = np.load(mini_voc / "lists" / "cls_labels_onehot.npy", allow_pickle=True).item()
    np.testing.assert_array_equal(item["cls_label"].numpy(), table[item["name"]])
    np.testing.assert_array_equal(item["cls_label"].numpy(), multi_hot(mask, 20))


def test_cls_label_derived_from_mask_without_npy(voc_copy):
    (voc_copy / "lists" / "cls_labels_onehot.npy").unlink()
    ds = VOCDataset(voc_copy, "train", stage="val")
    for i in range(len(ds)):
        _, mask = raw(voc_copy, ds.names[i])
        expected = np.zeros(20, np.float32)
        for v in set(mask.reshape(-1).tolist()) - {0, 255}:
            expected[v - 1] = 1
        np.testing.assert_array_equal(ds[i]["cls_label"].numpy(), expected)


def test_test_stage_dummy_label_is_first_channel(mini_voc):
    ds = VOCDataset(mini_voc, "test", stage="test")
    item = ds[0]
    image, mask = raw(mini_voc, item["name"])
    assert mask is None
    np.testing.assert_array_equal(item["label"].numpy(), image[..., 0].astype(np.int64))
    assert item["cls_label"].sum() == 0


# ------------------------------------------------------------------------------------------- augmentation
def reference_augment(image, label, crop, seed, ratio_max=0.75, tries=10):
    """algorithm.md §8.4 written out step by step (python random / numpy global, same draw order)."""
    random.seed(seed)
    np.random.seed(seed)
    r = random.uniform(0.5, 2.0)
    h, w = label.shape
    size = (int(r * w), int(r * h))
    image = np.array(Image.fromarray(image).resize(size, Image.BILINEAR))
    label = np.array(Image.fromarray(label).resize(size, Image.NEAREST))
    if random.random() > 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    h, w = label.shape
    H, W = max(crop, h), max(crop, w)
    canvas = np.zeros((H, W, 3))
    lcanvas = np.ones((H, W)) * 255
    dy = np.random.randint(H - h + 1)
    dx = np.random.randint(W - w + 1)
    canvas[dy:dy + h, dx:dx + w] = image
    lcanvas[dy:dy + h, dx:dx + w] = label
    for _ in range(tries):
        y = random.randrange(0, H - crop + 1)
        x = random.randrange(0, W - crop + 1)
        counts = Counter(v for v in lcanvas[y:y + crop, x:x + crop].reshape(-1).tolist() if v != 255)
        if counts and max(counts.values()) / sum(counts.values()) < ratio_max:
            break
    out = (canvas[y:y + crop, x:x + crop] - MEAN) / STD
    return out.transpose(2, 0, 1), lcanvas[y:y + crop, x:x + crop]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_train_augmentation_matches_step_by_step_reference(mini_voc, seed):
    ds = VOCDataset(mini_voc, "train", stage="train", augment={"crop_size": 80})
    name = ds.names[seed]
    image, mask = raw(mini_voc, name)
    exp_img, exp_lbl = reference_augment(image, mask, 80, seed)
    random.seed(seed)
    np.random.seed(seed)
    item = ds[seed]
    # a training item ships what training reads: the uint8 crop (normalised on the device) and the class labels
    assert set(item) == {"name", "image", "cls_label"}
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 80, 80)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    on_device = normalize_on_device(item["image"][None], mean, std)[0]
    np.testing.assert_allclose(on_device.numpy(), exp_img, atol=1e-5)
    # the same float32 arithmetic as the numpy normalisation of the loader before: equal bit for bit
    assert np.array_equal(on_device.numpy(), normalize(item["image"].numpy().transpose(1, 2, 0)))
    random.seed(seed)
    np.random.seed(seed)
    _, label = train_transform(image, mask, ds.aug)   # the crop's mask, which guided the crop box
    np.testing.assert_array_equal(label, exp_lbl)


def test_padding_is_black_before_normalisation_and_ignored(mini_voc):
    aug = AugmentConfig(crop_size=160, scale_range=None, hflip=False)
    ds = VOCDataset(mini_voc, "train", stage="train", augment=aug)
    image, mask = raw(mini_voc, ds.names[0])
    np.random.seed(0)
    random.seed(0)
    pixels, lbl = train_transform(image, mask, aug)
    np.random.seed(0)
    random.seed(0)
    assert np.array_equal(ds[0]["image"].numpy(), pixels)
    pad = np.ones((160, 160), bool)
    # the paste offset: where the 96x128 mask sits whole inside the 160x160 crop
    found = [(y, x) for y in range(160 - 96 + 1) for x in range(160 - 128 + 1)
             if np.array_equal(lbl[y:y + 96, x:x + 128], mask)]
    assert found, "the mask is not pasted whole into the padded crop"
    y, x = found[0]
    pad[y:y + 96, x:x + 128] = False
    assert np.all(pixels[:, pad] == 0)
    img = normalize(pixels.transpose(1, 2, 0))
    np.testing.assert_allclose(img[:, pad], np.broadcast_to((-MEAN / STD)[:, None], (3, pad.sum())), atol=1e-6)
    assert np.all(lbl[pad] == 255)
    np.testing.assert_allclose(denormalize(img)[y:y + 96, x:x + 128], image, atol=1e-3)


def test_crop_box_gt_guided_hand_case():
    # columns 0-3 class 1; columns 4-7 class 2 (rows 0-1) and 3 (rows 2-3). A 4x4 window at left L has
    # dominant ratios 1.0, .75, .5, .375, .5 for L = 0..4, so it is accepted iff L >= 2.
    label = np.ones((4, 8), np.uint8)
    label[:2, 4:] = 2
    label[2:, 4:] = 3
    rejected_first = 0
    for seed in range(30):
        random.seed(seed)
        draws = [(random.randrange(0, 1), random.randrange(0, 5)) for _ in range(10)]
        expected = next((d for d in draws if d[1] >= 2), draws[-1])
        rejected_first += draws[0][1] < 2
        random.seed(seed)
        assert crop_box(label, 4, 0.75, 10) == expected
        random.seed(seed)
        assert crop_box(label, 4, 0.75, 10, use_gt=False) == draws[0]  # quirk 16 switch: the first box
    assert rejected_first > 0
    random.seed(0)
    all_ignore = np.full((4, 8), 255, np.uint8)
    boxes = [(random.randrange(0, 1), random.randrange(0, 5)) for _ in range(10)]
    random.seed(0)
    assert crop_box(all_ignore, 4, 0.75, 10) == boxes[-1]  # never accepted -> the last box drawn


# ----------------------------------------------------------------------------------------- COCO / builders
@pytest.mark.parametrize("layout", ["reference", "readme"])
def test_coco_layouts_give_identical_items(tmp_path, layout):
    root = make_synthetic_coco(tmp_path / layout, num_train=3, num_val=2, layout=layout)
    ref = make_synthetic_coco(tmp_path / "ref", num_train=3, num_val=2, layout="reference")
    a = COCODataset(root, "train", stage="val")
    b = COCODataset(ref, "train", stage="val")
    for i in range(len(a)):
        ia, ib = a[i], b[i]
        assert ia["name"].startswith("COCO_train2014_") and ia["cls_label"].shape == (80,)
        torch.testing.assert_close(ia["image"], ib["image"])
        torch.testing.assert_close(ia["label"], ib["label"])
        assert int(ia["label"][ia["label"] != 255].max()) <= 80
    grey = denormalize(a[1]["image"].numpy())  # the second training image is greyscale: stacked channels
    np.testing.assert_allclose(grey[..., 0], grey[..., 2], atol=1e-3)
    assert len(COCODataset(root, "val_part", stage="val")) == 2


def test_build_dataset_and_loader_from_config(tiny_cfg, mini_voc, tmp_path):
    tiny_cfg.data.root = str(mini_voc)
    train = build_dataset(tiny_cfg, stage="train")
    assert isinstance(train, VOCDataset) and train.split == "train" and train.aug.crop_size == 64
    batch = next(iter(DataLoader(train, batch_size=2)))
    assert batch["image"].shape == (2, 3, 64, 64) and batch["image"].dtype == torch.uint8 and "label" not in batch
    assert batch["cls_label"].shape == (2, 20) and len(batch["name"]) == 2
    val = build_dataset(tiny_cfg, stage="val")
    assert val.split == "val" and val.stage == "val"
    assert build_dataset(tiny_cfg, stage="test").split == "test"
    tiny_cfg.data.test_root = str(tmp_path / "voc_test")  # test images come from data.test_root
    with pytest.raises(DatasetError, match="voc_test"):
        build_dataset(tiny_cfg, stage="test")
    tiny_cfg.quirks.crop_without_gt = True
    assert build_dataset(tiny_cfg, stage="train").aug.crop_without_gt
    coco = make_synthetic_coco(tmp_path / "coco", num_train=2, num_val=2)
    tiny_cfg.data.name, tiny_cfg.data.root, tiny_cfg.data.label_dir = "coco", str(coco), "SegmentationClass"
    tiny_cfg.data.class_names = []
    ds = build_dataset(tiny_cfg, split="val", stage="val")
    assert isinstance(ds, COCODataset) and ds.num_classes == 80
    tiny_cfg.data.name = "imagenet"
    with pytest.raises(DatasetError, match="imagenet"):
        build_dataset(tiny_cfg, stage="val")


def test_evaluation_shards_cover_the_split_once(mini_voc):
    """ShardSampler (validation and inference over several processes): rank r of w gets r, r + w, ...; no padding."""
    ds = VOCDataset(mini_voc, "train", stage="val")
    shards = [list(ShardSampler(ds, r, 3)) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4, 7], [2, 5]] and [len(ShardSampler(ds, r, 3)) for r in range(3)] == [3, 3, 2]


# ----------------------------------------------------------------------------------------------- bad data
def test_missing_root_list_and_empty_list(voc_copy, tmp_path):
    with pytest.raises(DatasetError, match="root folder not found"):
        VOCDataset(tmp_path / "nope", "train")
    with pytest.raises(DatasetError, match="train_xx.txt"):
        VOCDataset(voc_copy, "train_xx")
    (voc_copy / "lists" / "empty.txt").write_text("\n\n")
    with pytest.raises(DatasetError, match="empty"):
        VOCDataset(voc_copy, "empty")
    with pytest.raises(DatasetError, match="stage"):
        VOCDataset(voc_copy, "train", stage="eval")
    shutil.rmtree(voc_copy / "SegmentationClassAug")
    with pytest.raises(DatasetError, match="label folder"):
        VOCDataset(voc_copy, "train", stage="val")
    assert len(VOCDataset(voc_copy, "test", stage="test")) == 2  # the test stage needs no masks


def test_bad_files_are_named_lazily_and_by_check_dataset(voc_copy):
    ds = VOCDataset(voc_copy, "train", stage="val")
    names = ds.names
    (voc_copy / "JPEGImages" / f"{names[0]}.jpg").unlink()
    (voc_copy / "JPEGImages" / f"{names[1]}.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    png = voc_copy / "SegmentationClassAug" / f"{names[2]}.png"
    png.write_bytes(png.read_bytes()[: len(png.read_bytes()) // 2])
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(voc_copy / "SegmentationClassAug" / f"{names[3]}.png")
    bad = np.asarray(Image.open(voc_copy / "SegmentationClassAug" / f"{names[4]}.png")).copy()
    bad[0, 0] = 37
    Image.fromarray(bad).save(voc_copy / "SegmentationClassAug" / f"{names[4]}.png")
    Image.new("RGB", (128, 96)).save(voc_copy / "SegmentationClassAug" / f"{names[5]}.png")
    expected = [(0, "does not exist"), (1, "cannot read image"), (2, "cannot read label"), (3, "10x12"),
                (4, r"\[37\]"), (5, "mode RGB")]
    for index, pattern in expected:
        with pytest.raises(DatasetError, match=pattern) as info:
            ds[index]
        assert names[index] in str(info.value)
    problems = check_dataset(ds, raise_on_error=False)
    assert len(problems) == 6 and all(names[i] in p for (i, _), p in zip(expected, problems))
    with pytest.raises(DatasetError, match="6 of 8 items"):
        check_dataset(ds)
    assert check_dataset(VOCDataset(voc_copy, "val", stage="val")) == []


def test_bad_cls_label_file(voc_copy):
    np.save(voc_copy / "lists" / "cls_labels_onehot.npy", {"2007_000001": np.ones(5)}, allow_pickle=True)
    with pytest.raises(DatasetError, match="5 values, expected 20"):
        VOCDataset(voc_copy, "train")


# ---------------------------------------------------------------------------------------------------- palette
def test_palette_colours_and_overlays():
    pal = voc_palette()
    assert len(pal) == 768 and all(0 <= v <= 255 for v in pal)
    rgb = np.array(pal).reshape(256, 3)
    assert rgb[0].tolist() == [0, 0, 0] and rgb[1].tolist() == [128, 0, 0] and rgb[2].tolist() == [0, 128, 0]
    assert rgb[15].tolist() == [192, 128, 128] and rgb[20].tolist() == [0, 64, 128]
    assert len({tuple(c) for c in rgb[:21]}) == 21
    assert rgb[255].tolist() == [224, 224, 192] and len({tuple(c) for c in rgb}) == 256
    # COCO's 81 labels are at least 60 RGB units apart (VOC's bit map puts index 64 at (32, 0, 0), next to black)
    coco = rgb[:81].astype(np.float64)
    assert (np.sqrt(((coco[:, None] - coco[None]) ** 2).sum(-1)) + np.eye(81) * 1e9).min() >= 60
    label = np.array([[0, 1], [15, 255]])
    np.testing.assert_array_equal(colorize(label)[1, 0], [192, 128, 128])
    image = np.full((2, 2, 3), 100, np.uint8)
    np.testing.assert_array_equal(overlay(image, label, alpha=0.0), image)
    full = overlay(image, label, alpha=1.0)
    np.testing.assert_array_equal(full[0, 0], [100, 100, 100])  # background untouched
    np.testing.assert_array_equal(full[0, 1], [128, 0, 0])
    np.testing.assert_array_equal(overlay(image, label, 0.5)[0, 1], [114, 50, 50])
    strip = legend(["background", "aeroplane"], [1], width=120)
    assert strip.shape[1] == 120 and (strip.reshape(-1, 3) == [128, 0, 0]).all(1).any()
    stacked = with_legend(np.zeros((20, 160, 3), np.uint8), np.array([[0, 1]]), ["bg", "aeroplane"])
    assert stacked.shape[1] == 160 and stacked.shape[0] > 20
    with pytest.raises(ValueError, match="0..255"):
        colorize(np.array([[300]]))
