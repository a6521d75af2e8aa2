"""What a person looks at: report.html of the inference tools (table, heat map, worst-first gallery, links that
resolve), the TensorBoard sample grids and curves.png of training, and the page in headless Chromium."""
from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image

from excel.config import load_config
from excel.data import build_dataset
from excel.evaluation import ConfusionMatrix
from excel.evaluation.report import Gallery, image_miou
from excel.utils.palette import colorize, voc_palette
from excel.utils.vis import (CAPTION_BG, SERIES_COLOURS, fit_height, heat_overlay, label_tile, render_curves,
                             sample_grid, write_curves)
from _tools import load_tool

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "configs" / "test_tiny.yaml")
TINY_STACK = [str(REPO / "configs" / "voc.yaml"), TINY]  # test_tiny is an overlay (no _base_)
VOC_NAMES = ["background", *load_config(TINY_STACK).data.class_names]


class Page(HTMLParser):
    """The parts of a report page the tests read: tables by id (rows of cell texts) and every href / src."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.links: list[str] = []
        self.images: list[dict[str, str]] = []
        self.scripts = 0
        self._table: list[str | None] = []
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table.append(attrs.get("id"))
            if attrs.get("id"):
                self.tables[attrs["id"]] = []
        elif tag == "tr" and self._table and self._table[-1]:
            self.tables[self._table[-1]].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag in ("br", "a", "span") and self._cell is not None:
            self._cell.append(" ")
        elif tag in ("script", "link"):
            self.scripts += 1
        for key in ("href", "src"):
            if key in attrs:
                self.links.append(attrs[key])
        if tag == "img":
            self.images.append(attrs)

    def handle_endtag(self, tag):
        if tag == "table":
            self._table.pop()
        elif tag in ("td", "th") and self._cell is not None:
            if self._table and self._table[-1]:
                self.tables[self._table[-1]][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def read_page(folder: Path) -> Page:
    page = Page((folder / "report.html").read_text(encoding="utf-8"))
    assert page.scripts == 0  # self-contained: no scripts, no external style sheets
    for link in page.links:
        assert not link.startswith(("http:", "https:", "/", "file:")), link
        assert (folder / unquote(link)).is_file(), f"report links to a missing file: {link}"
    return page


def body_rows(page: Page, table: str) -> list[list[str]]:
    return page.tables[table][1:]


def pct(value: float) -> str:
    return "–" if not math.isfinite(value) else f"{100 * value:.2f}"


# ----------------------------------------------------------------------------------------------- pure parts
def test_image_miou_by_hand():
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 2, 2]])
    # class 0: 3 / 4, class 1: 2 / 4, class 2 (predicted, not in the GT; the ignored pixel does not count): 0 / 1
    assert image_miou(pred, gt, 3) == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    assert image_miou(np.zeros((2, 2)), np.zeros((2, 2)), 3) == 1.0
    assert math.isnan(image_miou(np.zeros((2, 2)), np.full((2, 2), 255), 3))


def test_gallery_refuses_a_negative_image_count(tmp_path):
    from excel.errors import UsageError

    with pytest.raises(UsageError, match="infer.report_max_images=-1"):
        Gallery(tmp_path, VOC_NAMES, max_images=-1)


def test_sample_grid_has_the_expected_tiles():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    gt = np.zeros((48, 64), np.int64)
    gt[10:30, 20:50] = 15
    gt[:, :2] = 255
    pseudo, pred = np.where(gt == 255, 0, gt), np.full((48, 64), 3)
    lam = rng.random((4, 4)).astype(np.float32)
    grid = sample_grid(rgb, gt, [("pseudo label (training-free)", pseudo), ("decoder", pred)], VOC_NAMES,
                       lams=[(15, lam)], height=96)
    assert grid.captions == ["image", "LAM person", "pseudo label (training-free)", "decoder", "ground truth"]
    tiles = [grid.image[t:t + h, l:l + w] for t, l, h, w in grid.boxes]
    assert all(tile.shape == (96, 128, 3) for tile in tiles)
    image = fit_height(rgb, 96)
    np.testing.assert_array_equal(tiles[0], image)
    np.testing.assert_array_equal(tiles[1], heat_overlay(image, lam))
    np.testing.assert_array_equal(tiles[3], np.broadcast_to(np.array(voc_palette()[9:12], np.uint8), (96, 128, 3)))
    expected_gt = colorize(np.kron(gt, np.ones((2, 2), np.int64)), voc_palette())  # 2x nearest upscale
    np.testing.assert_array_equal(tiles[4], expected_gt)
    assert (tiles[4][:, :4] == (224, 224, 192)).all()  # the ignore band in the VOC border colour
    # caption bars sit above the tiles
    top, left = grid.boxes[2][:2]
    assert tuple(grid.image[top - 14, left + 100]) == CAPTION_BG


def test_curves_put_each_value_where_it_belongs(tmp_path):
    metrics = [{"iter": i, "loss": 1.0 - 0.05 * i, "seg_loss": 0.5 - 0.02 * i, "aff_loss": 2.0, "lr": 1e-3 * (1 - i / 20)}
               for i in range(10)]
    val = [{"iter": 5, "seg_miou": 0.5, "pseudo_miou": 0.25}, {"iter": 10, "seg_miou": 0.6, "pseudo_miou": 0.3}]
    image, axes = render_curves(metrics, val)
    at = lambda ax, x, y: tuple(image[ax.to_pixel(x, y)[1], ax.to_pixel(x, y)[0]])  # noqa: E731
    assert axes[0].x_range == axes[2].x_range == (0.0, 10.0)  # the panels share the iteration axis
    assert at(axes[0], 4, 0.8) == SERIES_COLOURS[0]  # loss
    assert at(axes[0], 4, 0.42) == SERIES_COLOURS[1]  # seg_loss
    assert at(axes[1], 6, 1e-3 * 0.7) == SERIES_COLOURS[3]  # lr
    assert at(axes[2], 5, 50.0) == SERIES_COLOURS[0] and at(axes[2], 10, 30.0) == SERIES_COLOURS[4]  # mIoU %
    assert write_curves(tmp_path) is None  # nothing to plot yet
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics) + '{"iter": 10, "lo')
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(v) + "\n" for v in val))
    path = write_curves(tmp_path)  # a line cut short by a kill is skipped
    np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), image)


@pytest.fixture(scope="module")
def synthetic_report(tmp_path_factory):
    """A report of 30 made-up images (3 classes + background, 4 shown) whose per-image mIoU is known by design."""
    out = tmp_path_factory.mktemp("report")
    names = ["background", "cat", "dog", "bird"]
    gallery = Gallery(out, names, max_images=4, variants=["prediction", "prediction + CRF"])
    cm, crf_cm = ConfusionMatrix(4, device="cpu"), ConfusionMatrix(4, device="cpu")
    rng = np.random.default_rng(1)
    expected = {}
    for k in range(30):
        gt = np.zeros((40, 60), np.int64)
        gt[:, 30:] = 1 + k % 3
        crf = gt.copy()
        crf[:, 30:30 + k] = 0  # k columns of the object lost: the later images are worse
        pred = np.zeros_like(gt)
        name = f"im{k:02d}"
        (out / "labels").mkdir(exist_ok=True)
        Image.fromarray(crf.astype(np.uint8)).save(out / "labels" / f"{name}.png")
        gallery.add(name, pred, rgb=rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), gt=gt,
                    links={"label": f"labels/{name}.png", "missing file": f"nowhere/{name}.png"})
        gallery.add(name, crf, variant="prediction + CRF")
        cm.update(torch.from_numpy(pred), torch.from_numpy(gt))
        crf_cm.update(torch.from_numpy(crf), torch.from_numpy(gt))
        expected[name] = image_miou(crf, gt, 4)
        if k == 12:  # while the run goes on, only a bounded number of thumbnails are on disk
            assert len(list((out / "report_files").glob("*.png"))) <= 4 + 8
    (out / "report_files" / "stale_from_an_earlier_run.png").write_bytes(b"")
    path = gallery.finish("test run", "mIoU whatever", {"prediction": cm, "prediction + CRF": crf_cm})
    return {"out": out, "path": path, "expected": expected, "cm": {"prediction": cm, "prediction + CRF": crf_cm},
            "names": names}


def test_report_table_heat_map_and_worst_first_gallery(synthetic_report):
    out, names = synthetic_report["out"], synthetic_report["names"]
    assert synthetic_report["path"] == out / "report.html"
    page = read_page(out)
    rows = body_rows(page, "iou-table")
    assert [r[1] for r in rows[:len(names)]] == names  # every class, in label order
    scores = {t: cm.compute() for t, cm in synthetic_report["cm"].items()}
    for i, row in enumerate(rows[:len(names)]):
        assert row[2] == pct(scores["prediction"]["iou"][i]) and row[5] == pct(scores["prediction + CRF"]["iou"][i])
    heat = page.tables["confusion-prediction-crf"]
    assert len(heat) == 1 + len(names) and all(len(r) == 1 + len(names) for r in heat)
    mat = synthetic_report["cm"]["prediction + CRF"].matrix
    assert heat[1][1] == f"{100 * mat[0, 0] / mat[0].sum():.0f}"  # row-normalised percentages
    gallery = body_rows(page, "gallery")
    expected = sorted(synthetic_report["expected"].items(), key=lambda kv: (kv[1], kv[0]))[:4]
    assert [r[1].split()[0] for r in gallery] == [name for name, _ in expected]  # worst first
    assert [r[2] for r in gallery] == [pct(v) for _, v in expected]
    assert [img["src"] for img in page.images] == [f"report_files/{name}.png" for name, _ in expected]
    assert sorted(p.name for p in (out / "report_files").glob("*.png")) == sorted(f"{n}.png" for n, _ in expected)
    assert "nowhere" not in (out / "report.html").read_text()  # a link to a file that is not there is dropped
    # each thumbnail: image | ground truth | prediction | CRF, the ground-truth tile in the label colours
    name = expected[0][0]
    thumb = np.asarray(Image.open(out / "report_files" / f"{name}.png").convert("RGB"))
    gt = np.zeros((40, 60), np.int64)
    gt[:, 30:] = 1 + int(name[2:]) % 3
    tile = label_tile(gt, 128, voc_palette())
    assert thumb.shape[1] == 4 * tile.shape[1] + 5 * 2
    np.testing.assert_array_equal(thumb[-2 - 128:-2, 2 + tile.shape[1] + 2:2 + 2 * tile.shape[1] + 2], tile)


# ----------------------------------------------------------------------------------------------- the tools
def test_finish_merges_the_parts_of_several_ranks(tmp_path):
    """Each rank's gallery leaves its part and waits at the barrier it is given; rank 0 merges the parts, worst
    first, and removes them. Run here in one process: rank 1 finishes before rank 0, as the barrier would order it."""
    names, waits = ["background", "cat"], []
    parts = [Gallery(tmp_path, names, max_images=10) for _ in range(2)]
    for k in range(4):
        gt = np.zeros((8, 8), np.int64)
        gt[:, 4:] = 1
        pred = gt.copy()
        pred[:, 4:4 + k] = 0  # im3 is the worst
        parts[k % 2].add(f"im{k}", pred, rgb=np.zeros((8, 8, 3), np.uint8), gt=gt)
    with pytest.raises(ValueError, match="barrier"):
        parts[1].finish("run", "summary", rank=1, world_size=2)
    assert parts[1].finish("run", "summary", rank=1, world_size=2, barrier=lambda: waits.append(1)) is None
    path = parts[0].finish("run", "summary", rank=0, world_size=2, barrier=lambda: waits.append(0))
    assert waits == [1, 0] and path == tmp_path / "report.html"
    gallery = path.read_text().split('id="gallery"')[1]
    assert [gallery.index(f"im{k}") for k in (3, 2, 1, 0)] == sorted(gallery.index(f"im{k}") for k in range(4))
    assert not list((tmp_path / "report_files").glob(".shard_*"))


def test_infer_lam_report_scores_the_files_it_links(mini_voc, tmp_path):
    main = load_tool("infer_lam").main

    out = tmp_path / "lam"
    summary = main(["--config", TINY, f"data.root={mini_voc}", f"tse.cache_dir={tmp_path / 'banks'}",
                    f"infer.output_dir={out}", "infer.split=train", "infer.crf=true", "infer.crf_workers=0",
                    "infer.report_max_images=5"])
    assert summary["report"] == str(out / "report.html")
    page = read_page(out)
    rows = body_rows(page, "iou-table")
    assert [r[1] for r in rows[:21]] == VOC_NAMES
    assert page.tables["iou-table"][-3][1:3] == ["mIoU (classes in the ground truth)", f"{100 * summary['miou']:.2f}"]
    assert len(page.tables["confusion-pseudo-label"]) == 22 and len(page.tables["confusion-pseudo-label-crf"]) == 22
    gallery = body_rows(page, "gallery")
    assert len(gallery) == 5
    dataset = build_dataset(load_config(TINY_STACK, [f"data.root={mini_voc}"]), "train", stage="val")
    per_image = {}
    for i in range(len(dataset)):
        name, gt = dataset.names[i], dataset[i]["label"].numpy()
        per_image[name] = image_miou(np.array(Image.open(out / "pseudo_labels_crf" / f"{name}.png")), gt, 21)
    worst = sorted(per_image.items(), key=lambda kv: (kv[1], kv[0]))[:5]
    assert [r[1].split()[0] for r in gallery] == [n for n, _ in worst]
    assert [r[2] for r in gallery] == [pct(v) for _, v in worst]
    assert all(f"pseudo_labels_crf/{n}.png" in page.links for n, _ in worst)


def test_infer_seg_voc_report_matches_results(seg_checkpoint, tmp_path):
    infer_seg_voc = load_tool("infer_seg_voc")

    out = tmp_path / "seg"
    result = infer_seg_voc.main(["--config", TINY, *seg_checkpoint["overrides"], f"infer.output_dir={out}",
                                 f"infer.checkpoint={seg_checkpoint['path']}", "infer.report_max_images=3"])
    assert result["report"] == str(out / "report.html")
    assert json.loads((out / "results.json").read_text())["report"] == result["report"]
    page = read_page(out)
    rows = body_rows(page, "iou-table")
    assert [r[1] for r in rows[:21]] == VOC_NAMES
    raw = result["scores"]["raw"]
    assert [r[2] for r in rows[:21]] == ["–" if v is None else f"{100 * v:.2f}" for v in raw["iou"].values()]
    gallery = body_rows(page, "gallery")
    assert len(gallery) == 3 and [float(r[2]) for r in gallery] == sorted(float(r[2]) for r in gallery)
    assert len(page.images) == 3


def test_predict_report_without_ground_truth(mini_voc, tmp_path):
    predict_tool = load_tool("predict")

    images = sorted((mini_voc / "JPEGImages").glob("*.jpg"))[:3]
    records = predict_tool.main([*map(str, images), "--out", str(tmp_path), "--classes", "cat, dog", "--labels",
                                 "all", "--config", TINY, f"tse.cache_dir={tmp_path / 'banks'}"])
    page = read_page(tmp_path)
    assert "iou-table" not in page.tables and "gallery" in page.tables
    rows = body_rows(page, "class-table")
    assert [r[1] for r in rows] == ["background", "cat", "dog"]
    found = [sum(name in r["classes"] for r in records) for name in ("cat", "dog")]
    assert [int(r[2]) for r in rows[1:]] == found
    assert [r[1].split()[0] for r in body_rows(page, "gallery")] == sorted(r["name"] for r in records)
    assert {f"labels/{r['name']}.png" for r in records} <= set(page.links)


# ----------------------------------------------------------------------------------------------- training
def test_training_logs_grids_and_scalars_to_tensorboard_and_writes_curves(mini_voc, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from scripts.train_voc import main

    work = tmp_path / "wd"
    main(["--config", TINY, f"data.root={mini_voc}", f"run.work_dir={work}", f"tse.cache_dir={tmp_path / 'banks'}",
          "train.max_iters=3", "train.eval_iters=3", "run.tensorboard=true", "run.vis_samples=2"])
    assert (work / "curves.png").is_file()
    events = EventAccumulator(str(work / "tb"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert {"train/loss", "train/seg_loss", "train/aff_loss", "train/lr", "val/seg_miou", "val/pseudo_miou"} <= \
        set(events.Tags()["scalars"])
    cfg = load_config(TINY_STACK, [f"data.root={mini_voc}"])
    val = build_dataset(cfg, "val", stage="val")
    tags = sorted(events.Tags()["images"])
    assert tags == [f"val_samples/00_{val.names[0]}", f"val_samples/01_{val.names[len(val) - 1]}"]
    for tag, index in zip(tags, (0, len(val) - 1)):
        (record,) = events.Images(tag)
        assert record.step == 3
        grid = np.asarray(Image.open(io.BytesIO(record.encoded_image_string)).convert("RGB"))
        item = val[index]
        gt = item["label"].numpy()
        present = [c + 1 for c in torch.nonzero(item["cls_label"] > 0).flatten().tolist()]
        layout = sample_grid(np.zeros((*gt.shape, 3), np.uint8), gt, [("a", gt), ("b", gt)], VOC_NAMES,
                             lams=[(c, np.zeros((4, 4))) for c in present[:3]])
        assert grid.shape == layout.image.shape  # image | LAM per class (3 at most) | pseudo | decoder | GT
        t, l, h, w = layout.boxes[-1]
        np.testing.assert_array_equal(grid[t:t + h, l:l + w], label_tile(gt, h, voc_palette()))
        t, l, h, w = layout.boxes[-3]  # training-free pseudo label: background and the image's own classes only
        colours = {tuple(c) for c in grid[t:t + h, l:l + w].reshape(-1, 3)}
        allowed = {tuple(voc_palette()[3 * c:3 * c + 3]) for c in [0, *present]}
        assert colours <= allowed


# ----------------------------------------------------------------------------------------------- the browser
def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "chrome")) if p),
                None)


@pytest.mark.skipif(_chromium() is None and os.environ.get("EXCEL_REQUIRE_CHROMIUM") != "1",
                    reason="headless Chromium is not installed (CI installs it and sets EXCEL_REQUIRE_CHROMIUM=1)")
def test_report_renders_in_headless_chromium(synthetic_report, tmp_path):
    assert _chromium() is not None, "EXCEL_REQUIRE_CHROMIUM=1 but no chromium on PATH (apt-get install chromium)"
    url = (synthetic_report["out"] / "report.html").as_uri()
    shot = tmp_path / "shot.png"
    # no background networking: this machine's closed network refuses it, many connections at a time
    args = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2200"]
    subprocess.run([*args, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True)
    dom = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    assert 'id="iou-table"' in dom and 'id="gallery"' in dom and "im29" in dom
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)

    def shown(colour) -> bool:
        return bool((np.abs(pixels - np.array(colour)).max(1) <= 3).any())

    assert shown(CAPTION_BG)  # the thumbnails loaded (their caption bars are in the PNGs only)
    assert shown((183, 28, 28))  # a 100 % cell of the heat map
