"""Build and check the split lists and ``cls_labels_onehot.npy`` of a VOC or COCO folder (tools/prepare_*.py).

Nothing is written when a problem is found, unless ``drop_bad`` (then the bad ids are left out of every list).
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from excel.data.coco import PREFIXES, coco_label_path, find_coco_folders
from excel.data.loader import TEST_ROOT_FILE
from excel.data.sbd import convert_sbd
from excel.data.classes import VOC_CLASSES
from excel.data.voc import DatasetError, load_image, load_label, multi_hot, read_list, save_cls_labels
from excel.utils.io import atomic_write_text

log = logging.getLogger(__name__)

VOC_LISTS = ("train", "val", "test", "trainval")
ANNOTATION_DIR = "Annotations"  # VOC's per-image XML files (every object's class name)


@dataclass
class PrepareReport:
    """What was found: list sizes written, and the bad ids per problem kind (with one message each)."""

    written: dict[str, int] = field(default_factory=dict)
    problems: dict[str, dict[str, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    dropped: dict[str, list[str]] = field(default_factory=dict)  # list name -> ids left out on purpose (no object)
    disagreements: dict[str, str] = field(default_factory=dict)  # id -> how its XML and mask labels differ

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, kind: str, name: str, message: str) -> None:
        self.problems.setdefault(kind, {})[name] = message

    def bad_ids(self) -> set[str]:
        return {n for group in self.problems.values() for n in group}

    def format(self, first: int = 5) -> str:
        lines = list(self.notes)
        for kind, group in self.problems.items():
            names = list(group)
            lines.append(f"{kind}: {len(names)} (first: {', '.join(names[:first])})")
            lines.extend(f"    {group[n]}" for n in names[:first])
        lines.extend(f"wrote {name}: {count} entries" for name, count in self.written.items())
        return "\n".join(lines) if lines else "nothing to report"


def _image_size(path: Path, deep: bool) -> tuple[int, int]:
    """(H, W) from the header (``deep``: after a full decode). Raises DatasetError."""
    if not path.is_file():
        raise DatasetError(f"image file not found: {path}")
    if deep:
        return load_image(path).shape[:2]  # type: ignore[return-value]
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DatasetError(f"cannot read image {path}: {err}") from err


def _scan(report: PrepareReport, names: Iterable[str], image_of: Callable[[str], Path],
          label_of: Callable[[str], Path] | None, num_classes: int, deep: bool,
          read_masks: bool) -> dict[str, np.ndarray]:
    """Check each id's image (and mask); return the multi-hot labels of the ids whose mask was read."""
    labels: dict[str, np.ndarray] = {}
    for name in names:
        path = image_of(name)
        if not path.is_file():
            report.add("missing images", name, f"{path} does not exist")
            continue
        try:
            size = _image_size(path, deep)
        except DatasetError as err:
            report.add("unreadable images", name, str(err))
            continue
        if label_of is None:
            continue
        lpath = label_of(name)
        if not lpath.is_file():
            report.add("missing masks", name, f"{lpath} does not exist")
        elif read_masks:
            try:
                labels[name] = multi_hot(load_label(lpath, num_classes, size=size), num_classes)
            except DatasetError as err:
                report.add("bad masks", name, str(err))
    return labels


def _write(out: Path, lists: dict[str, list[str]], labels: dict[str, np.ndarray] | None,
           report: PrepareReport, drop_bad: bool) -> None:
    if not report.ok and not drop_bad:
        report.notes.append(f"problems found: nothing written to {out} (fix the files or pass --drop-bad)")
        return
    bad = report.bad_ids()
    for list_name, names in lists.items():
        kept = [n for n in names if n not in bad]
        atomic_write_text(out / f"{list_name}.txt", "".join(f"{n}\n" for n in kept))
        report.written[f"{list_name}.txt"] = len(kept)
    if labels is not None:
        save_cls_labels({k: v for k, v in labels.items() if k not in bad}, out / "cls_labels_onehot.npy")
        report.written["cls_labels_onehot.npy"] = len(labels) - len(bad & set(labels))


def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{what} folder not found: {path}")
    return path


def prepare_voc(root: str | os.PathLike, out: str | os.PathLike | None = None,
                sbd_root: str | os.PathLike | None = None, image_dir: str = "JPEGImages",
                label_dir: str = "SegmentationClassAug", num_classes: int | None = None, deep: bool = False,
                drop_bad: bool = False, class_names: Sequence[str] | None = None, val_fraction: float = 0.2,
                seed: int = 0, test_root: str | os.PathLike | None = None) -> PrepareReport:
    """Write VOC lists and ``cls_labels_onehot.npy`` into ``out`` (default ``<root>/lists``).

    ``num_classes`` (foreground classes C, mask values 1..C) None: C is the highest mask value found (255 = ignore),
    named in the report. Without ``ImageSets/Segmentation/val.txt`` a seeded split is written (see
    :func:`seeded_split`): ``val_fraction`` of the ids with a mask (of ``train.txt`` when that exists) go to val.

    Image-level labels come from ``<root>/Annotations/<id>.xml`` (every object's name, in ``class_names`` order,
    default the 20 VOC classes) when that folder exists, as in the field's usual label file, else from the masks
    (see :func:`annotation_labels`).

    ``train_aug`` = (SBD ids | VOC train) - VOC val - VOC test, where the SBD ids are ``<sbd_root>/{train,val}.txt``
    (both, as in the usual 10582-image set), or the ids of ``<sbd_root>/SegmentationClassAug/*.png``, or, without
    ``sbd_root``, every mask in ``<root>/<label_dir>``. When ``<sbd_root>/cls`` holds SBD's ``.mat`` files, the
    missing masks of ``<root>/<label_dir>`` are first converted from them (:func:`excel.data.sbd.convert_sbd`).
    ``train``/``val``/``test``/``trainval`` are copied from ``ImageSets/Segmentation`` when present.

    ``test_root``: the VOC 2012 test download (``<test_root>/JPEGImages``, ``<test_root>/ImageSets/Segmentation/
    test.txt``); its ids become ``test.txt`` and its path is written to ``test_root.txt`` in the lists folder, where
    the datasets look for the test images when ``data.test_root`` is unset. Raises DatasetError for a missing
    folder.
    """
    root = _need_dir(Path(root), "VOC root")
    images = _need_dir(root / image_dir, "image")
    report = PrepareReport()
    if sbd_root is not None and (Path(sbd_root) / "cls").is_dir():
        report.notes.append(convert_sbd(root, sbd_root, root / label_dir).note(root / label_dir))
    masks = _need_dir(root / label_dir, "label")
    out = Path(out) if out is not None else root / "lists"
    lists: dict[str, list[str]] = {}
    for name in VOC_LISTS:
        path = root / "ImageSets" / "Segmentation" / f"{name}.txt"
        if path.is_file():
            lists[name] = read_list(path)
    test_images = images
    if test_root is not None:
        test_root = _need_dir(Path(test_root), "VOC test root").resolve()
        test_list = test_root / "ImageSets" / "Segmentation" / "test.txt"
        if not test_list.is_file():
            raise DatasetError(f"VOC test list not found: {test_list} (the VOC 2012 test download has it)")
        lists["test"] = read_list(test_list)
        test_images = _need_dir(test_root / image_dir, "test image")
        report.notes.append(f"test: {len(lists['test'])} ids from {test_list}, images in {test_images}")
    if "val" not in lists:
        seeded_split(lists, sorted(p.stem for p in masks.glob("*.png")), val_fraction, seed, report,
                     root / "ImageSets" / "Segmentation")
    if sbd_root is not None:
        sbd = _need_dir(Path(sbd_root), "SBD root")
        sbd_lists = [sbd / f"{s}.txt" for s in ("train", "val") if (sbd / f"{s}.txt").is_file()]
        if sbd_lists:
            aug = [n for p in sbd_lists for n in read_list(p)]
        elif (sbd / "SegmentationClassAug").is_dir():
            aug = sorted(p.stem for p in (sbd / "SegmentationClassAug").glob("*.png"))
        else:
            raise DatasetError(f"SBD root {sbd} has neither train.txt/val.txt nor a SegmentationClassAug folder")
        report.notes.append(f"SBD ids: {len(set(aug))} from {sbd}")
    else:
        aug = sorted(p.stem for p in masks.glob("*.png"))
    held_out = set(lists.get("val", [])) | set(lists.get("test", []))
    lists["train_aug"] = sorted((set(aug) | set(lists.get("train", []))) - held_out)
    if not lists["train_aug"]:
        raise DatasetError(f"train_aug would be empty: no masks in {masks} and no SBD / VOC train ids")
    test = set(lists.get("test", []))
    with_masks = sorted({n for k, v in lists.items() for n in v if k != "test"} - test)
    labels = _scan(report, with_masks, lambda n: images / f"{n}.jpg", lambda n: masks / f"{n}.png",
                   MAX_MASK_VALUE if num_classes is None else num_classes, deep, read_masks=True)
    _scan(report, sorted(test), lambda n: test_images / f"{n}.jpg", None, 0, deep, read_masks=False)
    if num_classes is None:
        num_classes = inferred_class_count(labels, masks, report)
        labels = {k: v[:num_classes] for k, v in labels.items()}
    else:
        _hint_class_count(report, masks, num_classes)
    labels = annotation_labels(root / ANNOTATION_DIR, labels, class_names, report)
    _write(out, lists, labels, report, drop_bad)
    if test_root is not None and report.written:
        atomic_write_text(out / TEST_ROOT_FILE, f"{test_root}\n")
        report.written[TEST_ROOT_FILE] = 1
    return report


def seeded_split(lists: dict[str, list[str]], mask_ids: Sequence[str], val_fraction: float, seed: int,
                 report: PrepareReport, image_sets: Path) -> None:
    """Fill in the ``val`` list (and ``train``, ``trainval`` when absent) of a dataset without ``val.txt``.

    The pool is ``lists["train"]`` when it exists, else every id with a mask minus the test ids; round(
    ``val_fraction`` * n) of it (at least 1, at most n - 1), drawn with ``random.Random(seed)``, become val and the
    rest train. The same files and arguments always give the same split. Raises DatasetError when the pool has
    fewer than 2 ids or the fraction is not in (0, 1).
    """
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"--val-fraction {val_fraction}: expected a fraction between 0 and 1 (e.g. 0.2)")
    test = set(lists.get("test", []))
    pool = list(lists["train"]) if "train" in lists else [n for n in mask_ids if n not in test]
    if len(pool) < 2:
        raise DatasetError(f"no {image_sets / 'val.txt'} and only {len(pool)} image(s) with a mask to split into "
                           f"train and val; add images or write the lists yourself")
    k = min(len(pool) - 1, max(1, round(val_fraction * len(pool))))
    val = set(random.Random(seed).sample(sorted(pool), k))
    source = f"{image_sets / 'train.txt'}" if "train" in lists else "the ids with a mask"
    lists["val"] = sorted(val)
    lists["train"] = sorted(n for n in pool if n not in val)
    lists.setdefault("trainval", sorted(pool))
    report.notes.append(f"no {image_sets / 'val.txt'}: wrote a seeded split of {source} ({len(pool)} ids): "
                        f"train {len(lists['train'])}, val {len(lists['val'])} (--val-fraction {val_fraction}, "
                        f"--seed {seed}; the same files and arguments give the same split)")


MAX_MASK_VALUE = 254  # the largest class index a mask can hold (255 = ignore)


def inferred_class_count(labels: dict[str, np.ndarray], masks: Path, report: PrepareReport) -> int:
    """C = the highest foreground value in the masks read (``labels``: id -> (MAX_MASK_VALUE,) multi-hot), noted
    in the report with the values never seen. Raises DatasetError when no mask has a foreground pixel."""
    seen = np.zeros(MAX_MASK_VALUE, dtype=bool)
    for vec in labels.values():
        seen |= vec > 0
    if not seen.any():
        raise DatasetError(f"no foreground pixel (value 1..{MAX_MASK_VALUE}) in any mask of {masks}: index masks "
                           f"hold 0 = background, 1..C = the classes, 255 = ignore")
    count = int(np.flatnonzero(seen).max()) + 1
    unseen = [int(v) + 1 for v in np.flatnonzero(~seen[:count])]
    report.notes.append(
        f"found {count} foreground classes (+ background) in the masks (values 1..{count}"
        + (f"; never seen: {unseen}" if unseen else "") + f"): data.class_names needs {count} names, in mask-value "
        f"order. If a class has no pixel in any mask, rerun with --num-classes C")
    return count


def _hint_class_count(report: PrepareReport, masks: Path, num_classes: int) -> None:
    """After a run with ``--num-classes``: when bad masks hold values above it, say which count would fit."""
    highest = 0
    for name in report.problems.get("bad masks", {}):
        try:
            mask = load_label(masks / f"{name}.png", MAX_MASK_VALUE)
        except DatasetError:
            continue  # unreadable: its own message says so
        values = mask[mask != 255]
        highest = max(highest, int(values.max()) if values.size else 0)
    if highest > num_classes:
        report.notes.append(f"masks hold values up to {highest} but --num-classes is {num_classes} ({num_classes} "
                            f"foreground classes + background): rerun with --num-classes {highest}, or without it "
                            f"to take the count from the masks")


def _xml_object_names(path: Path) -> list[str]:
    """The ``<object><name>`` of every object in a VOC annotation file (parts' names excluded)."""
    try:
        tree = ET.parse(path)
    except (ET.ParseError, OSError) as err:
        raise DatasetError(f"cannot read annotation {path}: {err}") from err
    return [(obj.findtext("name") or "").strip() for obj in tree.getroot().findall("object")]


def _label_diff(xml: np.ndarray, mask: np.ndarray, names: Sequence[str]) -> str:
    only_xml = [names[c] for c in np.flatnonzero((xml > 0) & (mask == 0))]
    only_mask = [names[c] for c in np.flatnonzero((mask > 0) & (xml == 0))]
    return f"XML only: {', '.join(only_xml) or '-'}; mask only: {', '.join(only_mask) or '-'}"


def annotation_labels(folder: Path, mask_labels: dict[str, np.ndarray], class_names: Sequence[str] | None,
                      report: PrepareReport) -> dict[str, np.ndarray]:
    """Image-level labels from VOC XML annotations, falling back to the mask-derived ``mask_labels``.

    With ``folder`` present, an id's label marks every class named by an ``<object>`` of ``<folder>/<id>.xml``
    (difficult and truncated objects included); ids without an XML file keep their mask label. The ids whose XML
    and mask labels differ go to ``report.disagreements``; an unreadable file or an unknown object name is a
    problem ("bad annotations"). Without the folder, or without class names for the mask's class count, the mask
    labels are returned as they are, with a note.

    Args:
        folder: ``<root>/Annotations``.
        mask_labels: id -> float32 (C_fg,) multi-hot from the masks (also fixes C_fg).
        class_names: the C_fg names, in label order; None = the 20 VOC classes when C_fg is 20.
    Returns:
        id -> float32 (C_fg,) multi-hot, for the ids of ``mask_labels``.
    """
    if not folder.is_dir():
        note = f"image-level labels: from the masks (no {folder} folder)"
        log.info(note)
        report.notes.append(note)
        return mask_labels
    num_classes = len(next(iter(mask_labels.values()))) if mask_labels else len(class_names or VOC_CLASSES)
    names = list(class_names) if class_names is not None else list(VOC_CLASSES)
    if len(names) != num_classes:
        note = (f"image-level labels: from the masks ({folder} holds class names, but {len(names)} names are known "
                f"for {num_classes} classes)")
        log.info(note)
        report.notes.append(note)
        return mask_labels
    index = {n: i for i, n in enumerate(names)}
    labels, from_masks = {}, []
    for name, mask_label in mask_labels.items():
        path = folder / f"{name}.xml"
        if not path.is_file():
            labels[name] = mask_label
            from_masks.append(name)
            continue
        try:
            objects = _xml_object_names(path)
        except DatasetError as err:
            report.add("bad annotations", name, str(err))
            continue
        unknown = sorted({o for o in objects if o not in index})
        if unknown:
            report.add("bad annotations", name, f"{path}: object names {unknown} are not among the {num_classes} "
                                                f"classes ({', '.join(names[:4])}, ...)")
            continue
        label = np.zeros(num_classes, dtype=np.float32)
        label[[index[o] for o in objects]] = 1.0
        labels[name] = label
        if not np.array_equal(label, mask_label):
            report.disagreements[name] = _label_diff(label, mask_label, names)
    report.notes.append(f"image-level labels: from {folder} for {len(labels) - len(from_masks)} images"
                        + (f", from the masks for {len(from_masks)} without an XML file (first: "
                           f"{', '.join(from_masks[:3])})" if from_masks else ""))
    if report.disagreements:
        first = list(report.disagreements)[:3]
        report.notes.append(f"XML and mask labels disagree on {len(report.disagreements)} images (the XML ones are "
                            f"written): " + "; ".join(f"{n}: {report.disagreements[n]}" for n in first))
    else:
        report.notes.append("XML and mask labels agree on every image")
    return labels


def prepare_coco(root: str | os.PathLike, out: str | os.PathLike | None = None, image_dir: str = "JPEGImages",
                 label_dir: str = "SegmentationClass", num_classes: int = 80, val_part: int = 5000,
                 cls_labels: bool = True, deep: bool = False, drop_bad: bool = False,
                 keep_empty: bool = False) -> PrepareReport:
    """Write COCO ``train``/``val``/``val_part`` (first ``val_part`` of val) lists and, with ``cls_labels``,
    ``cls_labels_onehot.npy`` (keyed by full name) into ``out`` (default ``<root>/lists``). Either layout of
    algorithm.md §10.2 / the README is accepted. Raises DatasetError when no image folder is found.

    The lists hold only images with at least one annotated object, i.e. a foreground pixel (1..num_classes) in
    the mask, as the standard lists do (82,081 train and 40,137 val images); ``keep_empty`` keeps the others.
    The dropped ids are in ``report.dropped`` and counted in the notes."""
    root = _need_dir(Path(root), "COCO root")
    out = Path(out) if out is not None else root / "lists"
    report = PrepareReport()
    lists: dict[str, list[str]] = {}
    labels: dict[str, np.ndarray] = {}
    for subset, prefix in PREFIXES.items():
        image_folder, label_folder = find_coco_folders(root, subset, image_dir, label_dir)
        if image_folder is None:
            report.notes.append(f"no COCO {subset} image folder under {root}: {subset}.txt not written")
            continue
        if label_folder is None:
            raise DatasetError(f"no COCO {subset} label folder under {root}: expected {label_dir}/{subset}/ or "
                               f"{label_dir}/{subset}2014/")
        names = sorted(p.stem for p in image_folder.glob(f"{prefix}*.jpg"))
        if not names:
            raise DatasetError(f"no {prefix}*.jpg images in {image_folder}")
        report.notes.append(f"{subset}: {len(names)} images in {image_folder}, masks in {label_folder}")
        found = _scan(report, names, lambda n, f=image_folder: f / f"{n}.jpg",
                      lambda n, f=label_folder: coco_label_path(f, n), num_classes, deep,
                      read_masks=cls_labels or not keep_empty)
        lists[subset] = _without_empty(report, subset, names, found, keep_empty)
        labels.update({n: found[n] for n in lists[subset] if n in found})
    if not lists:
        raise DatasetError(f"no COCO image folder under {root}: expected {image_dir}/{{train,val}}/ or "
                           f"{{train,val}}2014/")
    if "val" in lists:
        lists["val_part"] = lists["val"][:val_part]
    _write(out, lists, labels if cls_labels else None, report, drop_bad)
    return report


def _without_empty(report: PrepareReport, subset: str, names: list[str], labels: dict[str, np.ndarray],
                    keep_empty: bool) -> list[str]:
    """``names`` without the ids whose mask has no foreground pixel (unless ``keep_empty``), with a note."""
    empty = [n for n in names if n in labels and not labels[n].any()]
    if keep_empty:
        if empty:
            report.notes.append(f"{subset}: kept {len(empty)} images without any annotated object (--keep-empty)")
        return names
    report.dropped[subset] = empty
    report.notes.append(f"{subset}: dropped {len(empty)} of {len(names)} images without any annotated object (no "
                        f"foreground pixel in the mask; the standard lists leave them out; --keep-empty keeps them)"
                        + (f", first: {', '.join(empty[:3])}" if empty else ""))
    gone = set(empty)
    return [n for n in names if n not in gone]


def add_common_arguments(parser: argparse.ArgumentParser, image_dir: str, label_dir: str) -> None:
    """The options shared by tools/prepare_voc.py and tools/prepare_coco.py."""
    parser.add_argument("--root", required=True, help="dataset folder")
    parser.add_argument("--out", default=None, help="lists folder to write (default: <root>/lists)")
    parser.add_argument("--image-dir", default=image_dir, help=f"image folder under root (default {image_dir})")
    parser.add_argument("--label-dir", default=label_dir, help=f"mask folder under root (default {label_dir})")
    parser.add_argument("--deep", action="store_true", help="decode every image fully (slow) instead of its header")
    parser.add_argument("--drop-bad", action="store_true", help="write the lists without the bad ids")


def run_and_report(job: Callable[[], PrepareReport]) -> int:
    """Run a prepare job, print its report; 0 = all good (or bad ids dropped), 1 = problems, 2 = missing folders."""
    try:
        report = job()
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.format())
    if report.ok:
        return 0
    return 0 if report.written else 1
