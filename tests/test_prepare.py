"""tools/prepare_coco.py lists only images with an annotated object; tools/prepare_voc.py takes image-level labels
from Annotations/*.xml (algorithm.md §10.1, §10.2). Generated data, with masks emptied and XML files written here."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from excel.data import VOC_CLASSES
from excel.organism import make_synthetic_coco
from excel.data.prepare import prepare_coco

from _tools import REPO, load_tool, read_lines  # noqa: E402


def load_table(path: Path) -> dict[str, np.ndarray]:
    return np.load(path, allow_pickle=True).item()


# ----------------------------------------------------------------------------------------------------- COCO
def _empty_mask(path: Path) -> None:
    """Set every foreground pixel of a mask to background; the ignore pixels (255) stay."""
    mask = np.array(Image.open(path))
    mask[(mask >= 1) & (mask <= 80)] = 0
    Image.fromarray(mask).save(path)


def test_prepare_coco_drops_images_without_an_annotated_object(tmp_path, capsys):
    root = make_synthetic_coco(tmp_path / "coco", num_train=6, num_val=5, layout="reference", seed=0)
    shutil.rmtree(root / "lists")
    train = sorted(p.stem for p in (root / "JPEGImages" / "train").glob("*.jpg"))
    val = sorted(p.stem for p in (root / "JPEGImages" / "val").glob("*.jpg"))
    tool = load_tool("prepare_coco")

    # untouched generated data: every image has an object, nothing is dropped
    assert tool.main(["--root", str(root), "--val-part", "2"]) == 0
    out = capsys.readouterr().out
    assert "train: dropped 0 of 6 images without any annotated object" in out
    assert "val: dropped 0 of 5 images" in out
    assert read_lines(root / "lists" / "train.txt") == train and read_lines(root / "lists" / "val.txt") == val

    # three masks lose their objects (one keeps ignore pixels only): they leave every list and the label table
    emptied = {"train": [train[1], train[4]], "val": [val[0]]}
    for subset, names in emptied.items():
        for name in names:
            _empty_mask(root / "SegmentationClass" / subset / f"{name[len(f'COCO_{subset}2014_'):]}.png")
    assert tool.main(["--root", str(root), "--val-part", "2"]) == 0
    out = capsys.readouterr().out
    assert f"train: dropped 2 of 6 images without any annotated object (no foreground pixel in the mask" in out
    assert f"val: dropped 1 of 5 images" in out and "--keep-empty keeps them" in out
    kept_train = [n for n in train if n not in emptied["train"]]
    kept_val = [n for n in val if n not in emptied["val"]]
    assert read_lines(root / "lists" / "train.txt") == kept_train
    assert read_lines(root / "lists" / "val.txt") == kept_val
    assert read_lines(root / "lists" / "val_part.txt") == kept_val[:2]  # the first N of the sorted, filtered list
    table = load_table(root / "lists" / "cls_labels_onehot.npy")
    assert sorted(table) == sorted(kept_train + kept_val) and all(v.sum() >= 1 for v in table.values())

    report = prepare_coco(root, tmp_path / "lists_api", val_part=2)
    assert report.dropped == emptied and report.ok

    # --keep-empty lists them all again (their label rows are all zero), and says so
    assert tool.main(["--root", str(root), "--val-part", "2", "--keep-empty"]) == 0
    out = capsys.readouterr().out
    assert "train: kept 2 images without any annotated object (--keep-empty)" in out
    assert read_lines(root / "lists" / "train.txt") == train and read_lines(root / "lists" / "val.txt") == val
    table = load_table(root / "lists" / "cls_labels_onehot.npy")
    assert table[emptied["val"][0]].sum() == 0 and len(table) == 11

    # without cls_labels_onehot.npy the masks are still read to find the empty ones
    assert tool.main(["--root", str(root), "--out", str(tmp_path / "l3"), "--no-cls-labels"]) == 0
    assert read_lines(tmp_path / "l3" / "train.txt") == kept_train
    assert not (tmp_path / "l3" / "cls_labels_onehot.npy").exists()


# ------------------------------------------------------------------------------------------------------ VOC
def _write_xml(path: Path, objects: list[str], parts: tuple[str, ...] = ()) -> None:
    """A VOC-style annotation: one <object> per name (the first marked difficult); ``parts`` go inside the first."""
    rows = []
    for i, name in enumerate(objects):
        inner = "".join(f"<part><name>{p}</name><bndbox><xmin>1</xmin></bndbox></part>" for p in parts) if i == 0 \
            else ""
        rows.append(f"<object><name> {name} </name><pose>Left</pose><truncated>1</truncated>"
                    f"<difficult>{int(i == 0)}</difficult><bndbox><xmin>1</xmin></bndbox>{inner}</object>")
    path.write_text(f"<annotation><folder>VOC2012</folder><filename>{path.stem}.jpg</filename>"
                    f"<size><width>128</width><height>96</height><depth>3</depth></size>{''.join(rows)}</annotation>")


def _mask_classes(root: Path, name: str) -> list[str]:
    mask = np.array(Image.open(root / "SegmentationClassAug" / f"{name}.png"))
    return [VOC_CLASSES[v - 1] for v in np.unique(mask) if 1 <= v <= 20]


def test_prepare_voc_labels_come_from_the_xml_annotations(mini_voc, tmp_path, capsys):
    root = shutil.copytree(mini_voc, tmp_path / "voc")
    shutil.rmtree(root / "lists")
    tool = load_tool("prepare_voc")

    # no Annotations folder: labels from the masks, with a line saying so
    assert tool.main(["--root", str(root)]) == 0
    assert "image-level labels: from the masks (no " in capsys.readouterr().out
    from_masks = load_table(root / "lists" / "cls_labels_onehot.npy")

    # XML files that name exactly the mask's classes: the same table, no disagreement
    names = sorted(from_masks)
    (root / "Annotations").mkdir()
    for name in names:
        _write_xml(root / "Annotations" / f"{name}.xml", _mask_classes(root, name), parts=("hand", "head"))
    assert tool.main(["--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"image-level labels: from {root / 'Annotations'} for {len(names)} images" in out
    assert "XML and mask labels agree on every image" in out
    table = load_table(root / "lists" / "cls_labels_onehot.npy")
    assert all(np.array_equal(table[n], from_masks[n]) for n in names)

    # the XML names an object the mask lacks, omits one the mask has, and one image has no XML file
    extra, fewer, no_xml = names[0], names[1], names[2]
    absent = next(c for c in VOC_CLASSES if c not in _mask_classes(root, extra))
    _write_xml(root / "Annotations" / f"{extra}.xml", _mask_classes(root, extra) + [absent, absent])
    dropped_class = _mask_classes(root, fewer)[-1]
    _write_xml(root / "Annotations" / f"{fewer}.xml", _mask_classes(root, fewer)[:-1])
    (root / "Annotations" / f"{no_xml}.xml").unlink()
    assert tool.main(["--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"from {root / 'Annotations'} for {len(names) - 1} images, from the masks for 1 without an XML file " \
           f"(first: {no_xml})" in out
    assert "XML and mask labels disagree on 2 images (the XML ones are written)" in out
    assert f"{extra}: XML only: {absent}; mask only: -" in out
    assert f"{fewer}: XML only: -; mask only: {dropped_class}" in out
    table = load_table(root / "lists" / "cls_labels_onehot.npy")
    expected = from_masks[extra].copy()
    expected[VOC_CLASSES.index(absent)] = 1.0
    assert np.array_equal(table[extra], expected)
    assert table[fewer][VOC_CLASSES.index(dropped_class)] == 0 and table[fewer].sum() == from_masks[fewer].sum() - 1
    assert np.array_equal(table[no_xml], from_masks[no_xml])
    assert sorted(table) == names

    # an object name that is not a class, or a broken file, is a problem naming the file: nothing is written
    _write_xml(root / "Annotations" / f"{extra}.xml", ["aeroplane", "unicorn"])
    (root / "Annotations" / f"{fewer}.xml").write_text("<annotation><object>")
    shutil.rmtree(root / "lists")
    assert tool.main(["--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "bad annotations: 2" in out and "['unicorn'] are not among the 20 classes" in out
    assert f"cannot read annotation {root / 'Annotations' / f'{fewer}.xml'}" in out
    assert not (root / "lists").exists()


# ----------------------------------------------------------------------------------- a dataset of one's own
def test_prepare_voc_from_images_and_masks_alone(tmp_path, capsys):
    """No ImageSets, no --num-classes: a seeded train/val split and the class count read from the masks."""
    import random

    from _custom import user_dataset

    root = user_dataset(tmp_path / "my_data")
    ids = sorted(p.stem for p in (root / "SegmentationClassAug").glob("*.png"))
    tool = load_tool("prepare_voc")
    assert tool.main(["--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "found 3 foreground classes (+ background) in the masks (values 1..3)" in out
    assert "wrote a seeded split of the ids with a mask (12 ids): train 10, val 2 (--val-fraction 0.2, --seed 0" in out
    val = read_lines(root / "lists" / "val.txt")
    assert val == sorted(random.Random(0).sample(ids, 2))  # round(0.2 * 12) ids drawn with --seed 0
    assert read_lines(root / "lists" / "train.txt") == [n for n in ids if n not in val]
    assert read_lines(root / "lists" / "train_aug.txt") == read_lines(root / "lists" / "train.txt")
    assert read_lines(root / "lists" / "trainval.txt") == ids
    table = load_table(root / "lists" / "cls_labels_onehot.npy")
    for name in ids:  # 3 values per image: the classes of its mask
        mask = np.array(Image.open(root / "SegmentationClassAug" / f"{name}.png"))
        expected = np.zeros(3, np.float32)
        expected[[v - 1 for v in np.unique(mask) if 1 <= v <= 3]] = 1
        assert np.array_equal(table[name], expected)

    # the same files and arguments give the same split; another seed or fraction another one
    assert tool.main(["--root", str(root)]) == 0 and read_lines(root / "lists" / "val.txt") == val
    assert tool.main(["--root", str(root), "--val-fraction", "0.5", "--seed", "3"]) == 0
    assert read_lines(root / "lists" / "val.txt") == sorted(random.Random(3).sample(ids, 6))
    assert tool.main(["--root", str(root), "--val-fraction", "1.5"]) == 2
    assert "--val-fraction 1.5: expected a fraction between 0 and 1" in capsys.readouterr().err


def test_prepare_voc_class_count_messages(tmp_path, capsys):
    from _custom import user_dataset

    root = user_dataset(tmp_path / "my_data")
    tool = load_tool("prepare_voc")
    # --num-classes smaller than the masks: the bad masks are named, with the count that fits
    assert tool.main(["--root", str(root), "--num-classes", "2"]) == 1
    out = capsys.readouterr().out
    assert "bad masks:" in out and "outside 0..2" in out
    assert "masks hold values up to 3 but --num-classes is 2 (2 foreground classes + background): rerun with " \
           "--num-classes 3, or without it" in out
    # a class that no mask shows below the highest value is named
    for path in (root / "SegmentationClassAug").glob("*.png"):
        mask = np.array(Image.open(path))
        mask[mask == 2] = 0
        Image.fromarray(mask).save(path)
    assert tool.main(["--root", str(root)]) == 0
    assert "found 3 foreground classes (+ background) in the masks (values 1..3; never seen: [2])" in \
        capsys.readouterr().out
    assert load_table(root / "lists" / "cls_labels_onehot.npy")[read_lines(root / "lists" / "val.txt")[0]].shape == (3,)
