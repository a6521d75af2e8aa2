"""``report.html`` of an inference run: the summary line, the per-class IoU table, the confusion matrix as a heat
map, and a gallery of thumbnails (image | ground truth | prediction [| CRF]) sorted worst-first by per-image mIoU
(by name when there is no ground truth), each with the classes present.

The page is one self-contained file: inline CSS, no scripts, relative links only (the thumbnails it writes under
``report_files/`` and the label PNGs and overlays the run wrote). The gallery holds at most
``infer.report_max_images`` images: a thumbnail is written only while its image is among the worst so far, and
memory holds no pictures beyond the few images whose predictions are still in flight (the CRF runs elsewhere).

A runner makes a :class:`Gallery`, calls :meth:`Gallery.add` for every image (on every rank under torchrun) and
:meth:`Gallery.finish` once at the end on every rank, giving it the rank, the number of processes and the barrier
of its process group; rank 0 writes the page.
"""
from __future__ import annotations

import html
import json
import logging
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import quote

import numpy as np

from excel.errors import UsageError
from excel.evaluation.metrics import ConfusionMatrix
from excel.utils.io import atomic_save_png, atomic_write_json, atomic_write_text
from excel.utils.numbers import percent
from excel.utils.palette import palette_array, voc_palette
from excel.utils.vis import fit_height, label_tile, tile_row

log = logging.getLogger(__name__)

__all__ = ["REPORT_NAME", "FILES_DIR", "image_miou", "Gallery", "GalleryEntry", "render_report"]

REPORT_NAME = "report.html"
FILES_DIR = "report_files"
GALLERY_HEIGHT = 128           # thumbnail tile height in the gallery, in pixels
LOWEST_MARKED = 5              # the table shows up to this many lowest IoUs per column in red (a quarter at most)
DASH = "–"                     # how the tables write a figure that has no value


def image_miou(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> float:
    """The mIoU of one image: mean IoU over the classes in its ground truth or its prediction.

    Only pixels whose ground truth lies in [0, num_classes) count (255 is ignored); a class predicted but absent
    from the ground truth scores 0, so false positives lower the figure. NaN when no pixel is scored.

    Args:
        pred, gt: (H, W) integer masks.
    """
    gt = np.asarray(gt).astype(np.int64).ravel()
    pred = np.asarray(pred).astype(np.int64).ravel()
    valid = (gt >= 0) & (gt < num_classes)
    gt, pred = gt[valid], pred[valid]
    if gt.size == 0:
        return math.nan
    inside = (pred >= 0) & (pred < num_classes)
    inter = np.bincount(gt[pred == gt], minlength=num_classes)
    union = np.bincount(gt, minlength=num_classes) + np.bincount(pred[inside], minlength=num_classes) - inter
    present = union > 0
    return float((inter[present] / union[present]).mean())


def _classes(label: np.ndarray, num_classes: int) -> list[int]:
    """Foreground label indices present in a mask (background 0 and out-of-range values such as 255 left out)."""
    return [int(v) for v in np.unique(label) if 0 < v < num_classes]


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]", "_", name) or "_"


@dataclass
class GalleryEntry:
    """One image of the gallery: per-image mIoU (None without ground truth), classes, links, thumbnail file."""

    name: str
    score: float | None
    gt_classes: list[int] | None
    pred_classes: list[int]
    links: dict[str, str] = field(default_factory=dict)
    thumb_file: str | None = None
    thumb_size: tuple[int, int] = (0, 0)   # (width, height)

    def key(self) -> tuple[float, str]:
        """Sort key: worst first with ground truth (NaN last), by name without."""
        if self.score is None:
            return 0.0, self.name
        return (math.inf if math.isnan(self.score) else self.score), self.name


class Gallery:
    """Collects the per-image results of a run for :func:`render_report` (see the module docstring).

    Args:
        out_dir: the run's output folder; the page is ``out_dir/report.html``.
        class_names: names of the label indices, background first.
        max_images: the most images shown (``infer.report_max_images``); 0 shows none (tables only).
        variants: titles of the predictions of each image in display order, e.g. ("prediction", "+ CRF"); the
            last one is the final prediction, the one scored and sorted by.
        palette: colours of the label tiles (:func:`excel.utils.palette.voc_palette` by default).
    """

    def __init__(self, out_dir: str | Path, class_names: Sequence[str], max_images: int,
                 variants: Sequence[str] = ("prediction",), palette: Sequence[int] | None = None,
                 height: int = GALLERY_HEIGHT) -> None:
        if int(max_images) < 0:
            raise UsageError(f"infer.report_max_images={max_images}: expected 0 or a positive number of images")
        self.out_dir = Path(out_dir)
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.max_images = int(max_images)
        self.variants = list(variants)
        self.palette = list(voc_palette() if palette is None else palette)
        self.height = int(height)
        self.kept: list[GalleryEntry] = []       # this rank's candidates, thumbnails written
        self._cutoff: tuple[float, str] | None = None  # sort key an image must beat to be kept
        self.scores: list[float] = []
        self.count = 0
        self.pixel_counts = np.zeros(self.num_classes, dtype=np.int64)   # final predictions, all images
        self.image_counts = np.zeros(self.num_classes, dtype=np.int64)
        self._pending: dict[str, dict[str, Any]] = {}

    def add(self, name: str, pred: np.ndarray, variant: str | None = None, rgb: np.ndarray | None = None,
            gt: np.ndarray | None = None, links: dict[str, str] | None = None) -> None:
        """Record one prediction of image ``name``.

        Args:
            pred: (H, W) label mask of ``variant`` (default: the first variant).
            rgb: (H, W, 3) uint8 image; give it with the first call for the image.
            gt: (H, W) ground truth, or None on an unlabelled split.
            links: {text: path relative to out_dir} of the files the run wrote for this image (kept when they
                exist at the end).
        """
        variant = self.variants[0] if variant is None else variant
        if variant not in self.variants:
            raise ValueError(f"unknown gallery variant {variant!r}; expected one of {self.variants}")
        item = self._pending.setdefault(name, {"image": None, "gt": None, "tiles": {}, "links": {}})
        show = self.max_images > 0
        if rgb is not None and show:
            item["image"] = fit_height(np.asarray(rgb, dtype=np.uint8), self.height)
        if gt is not None:
            item["gt"] = np.asarray(gt)
        item["links"].update(links or {})
        item["tiles"][variant] = label_tile(pred, self.height, self.palette) if show else None
        if variant == self.variants[-1]:
            item["final"] = np.asarray(pred)
        if len(item["tiles"]) == len(self.variants):
            self._complete(name)

    def _complete(self, name: str) -> None:
        item = self._pending.pop(name)
        final, gt = item.get("final"), item["gt"]
        if final is None:
            log.warning("report: %s has no %r result; shown without it", name, self.variants[-1])
        score = image_miou(final, gt, self.num_classes) if gt is not None and final is not None else None
        pred_classes = _classes(final, self.num_classes) if final is not None else []
        if final is not None:
            counts = np.bincount(np.asarray(final, dtype=np.int64).ravel(), minlength=256)[:self.num_classes]
            self.pixel_counts += counts
            self.image_counts += counts > 0
        self.count += 1
        if score is not None:
            self.scores.append(score)
        entry = GalleryEntry(name, score, None if gt is None else _classes(gt, self.num_classes), pred_classes,
                             dict(item["links"]))
        if self.max_images == 0 or (self._cutoff is not None and entry.key() >= self._cutoff):
            return  # it would never be shown: no thumbnail
        tiles = [("image", item["image"])] if item["image"] is not None else []
        if gt is not None:
            tiles.append(("ground truth", label_tile(gt, self.height, self.palette)))
        tiles += [(v, item["tiles"][v]) for v in self.variants if item["tiles"].get(v) is not None]
        thumb = tile_row(tiles).image
        entry.thumb_file = f"{FILES_DIR}/{_safe(name)}.png"
        entry.thumb_size = (int(thumb.shape[1]), int(thumb.shape[0]))
        atomic_save_png(thumb, self.out_dir / entry.thumb_file)
        self.kept.append(entry)
        if len(self.kept) > self.max_images + max(self.max_images // 4, 8):
            self._prune()

    def _prune(self) -> None:
        """Keep the ``max_images`` first entries (their thumbnails are on disk already), delete the others'."""
        self.kept.sort(key=GalleryEntry.key)
        for entry in self.kept[self.max_images:]:
            if entry.thumb_file:
                (self.out_dir / entry.thumb_file).unlink(missing_ok=True)
        del self.kept[self.max_images:]
        if len(self.kept) == self.max_images and self.kept:
            self._cutoff = self.kept[-1].key()

    # ------------------------------------------------------------------------------------------- the end
    def finish(self, title: str, summary: str, matrices: dict[str, ConfusionMatrix] | None = None,
               notes: Sequence[str] = (), rank: int = 0, world_size: int = 1,
               barrier: Callable[[], None] | None = None) -> Path | None:
        """Write ``report.html`` (every rank must call this; rank 0 writes the page and returns its path).

        With several processes each rank leaves its part of the gallery in ``report_files/``, waits at
        ``barrier`` (the process group's, e.g. :func:`excel.engine.dist.barrier`) and rank 0 merges the parts.

        Args:
            title: the page heading, e.g. "infer_seg_voc on val".
            summary: the one-line result, e.g. "mIoU 71.20 (CRF 72.05) on 1449 images".
            matrices: {variant title: all-reduced ConfusionMatrix} for a labelled split, None otherwise.
            notes: further lines shown under the summary (checkpoint, settings).
            rank, world_size, barrier: this process's place in the run's process group (0, 1, None alone).
        """
        if world_size > 1 and barrier is None:
            raise ValueError("Gallery.finish: a run of several processes needs the process group's barrier")
        for name in list(self._pending):
            self._complete(name)
        self._prune()
        shard = {"entries": [asdict(e) for e in self.kept], "scores": self.scores, "count": self.count,
                 "pixel_counts": self.pixel_counts.tolist(), "image_counts": self.image_counts.tolist()}
        files = self.out_dir / FILES_DIR
        if world_size > 1:
            atomic_write_json(files / f".shard_{rank}.json", shard)
            barrier()
            if rank != 0:
                return None
            shards = []
            for r in range(world_size):
                path = files / f".shard_{r}.json"
                shards.append(json.loads(path.read_text(encoding="utf-8")))
                path.unlink()
        else:
            shards = [shard]
        entries = [GalleryEntry(**{**e, "thumb_size": tuple(e["thumb_size"])}) for s in shards for e in s["entries"]]
        entries.sort(key=GalleryEntry.key)
        entries = entries[:self.max_images]
        self._remove_stale_thumbnails({e.thumb_file for e in entries})
        for e in entries:
            e.links = {text: rel for text, rel in e.links.items() if (self.out_dir / rel).is_file()}
        page = render_report(
            title=title, summary=summary, notes=list(notes), class_names=self.class_names, palette=self.palette,
            matrices=matrices or {}, entries=entries, total_images=sum(s["count"] for s in shards),
            image_scores=[v for s in shards for v in s["scores"]], final_variant=self.variants[-1],
            pixel_counts=np.sum([s["pixel_counts"] for s in shards], axis=0),
            image_counts=np.sum([s["image_counts"] for s in shards], axis=0))
        path = self.out_dir / REPORT_NAME
        atomic_write_text(path, page)
        log.info("report: %s (open it in a browser)", path)
        return path

    def _remove_stale_thumbnails(self, keep: set[str | None]) -> None:
        folder = self.out_dir / FILES_DIR
        if folder.is_dir():
            for png in folder.glob("*.png"):
                if f"{FILES_DIR}/{png.name}" not in keep:
                    png.unlink()


# ----------------------------------------------------------------------------------------------- HTML
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1500px;
  padding:0 16px;color:#212121}
h1{font-size:21px;margin:0 0 8px} h2{font-size:16px;margin:28px 0 8px;padding-bottom:3px;border-bottom:1px solid #ddd}
.summary{font-size:15px;background:#f3f5f7;padding:8px 12px;border-left:4px solid #546e7a;margin:6px 0}
.note{color:#555;margin:2px 0} .explain{color:#555;font-size:13px;margin:4px 0 8px}
table{border-collapse:collapse} th,td{padding:2px 8px;text-align:right;white-space:nowrap}
th{background:#eceff1;font-weight:600} td.name,th.name{text-align:left}
table.iou tr:nth-child(even) td{background:#fafafa} table.iou tfoot td{font-weight:600;border-top:1px solid #999}
.chip{display:inline-block;width:11px;height:11px;border:1px solid #444;margin-right:5px;vertical-align:-1px}
.bar{display:inline-block;height:9px;background:#78909c;margin-left:6px;vertical-align:0}
.low{color:#c62828;font-weight:600}
table.heat td{width:24px;min-width:24px;height:22px;padding:0;text-align:center;font-size:10px}
table.heat.small td{width:9px;min-width:9px;height:9px;font-size:0}
table.heat th{font-weight:normal;font-size:11px;background:none;padding:1px 6px}
table.heat th.col{writing-mode:vertical-rl;transform:rotate(180deg);padding:4px 0;text-align:left}
table.heat td.empty{background:#f5f5f5} .heatbox{display:inline-block;vertical-align:top;margin-right:32px}
table.gallery td{vertical-align:top;text-align:left;border-bottom:1px solid #e0e0e0;padding:6px 8px}
table.gallery td.score{font-weight:600;text-align:right} table.gallery td.tags{white-space:normal;max-width:260px}
table.gallery a{font-size:12px;margin-right:6px}
.tag{display:inline-block;padding:0 6px;margin:1px 2px;border-radius:3px;font-size:12px;background:#eceff1}
.tag.missed{background:#ffcdd2} .tag.extra{background:#ffe9a8}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _chip(index: int, palette: np.ndarray) -> str:
    r, g, b = (int(v) for v in palette[index % 256])
    return f'<span class="chip" style="background:rgb({r},{g},{b})"></span>'


def _name(index: int, names: Sequence[str]) -> str:
    return names[index] if 0 <= index < len(names) else str(index)


def _lowest(values: np.ndarray, count: int) -> set[int]:
    finite = [i for i in np.argsort(values) if math.isfinite(values[i])]
    return set(int(i) for i in finite[:count])


def _iou_table(names: Sequence[str], pal: np.ndarray, matrices: dict[str, ConfusionMatrix]) -> str:
    scores = {title: cm.compute() for title, cm in matrices.items()}
    first = next(iter(matrices.values())).matrix
    gt_share = first.sum(1) / max(first.sum(), 1)
    head = "".join(f"<th>IoU % ({_esc(t)})</th><th>precision %</th><th>recall %</th>" for t in scores)
    rows = []
    marked = max(1, min(LOWEST_MARKED, len(names) // 4))
    low = {t: _lowest(s["iou"], marked) for t, s in scores.items()}
    for i, name in enumerate(names):
        cells = []
        for t, s in scores.items():
            iou = s["iou"][i]
            bar = f'<span class="bar" style="width:{max(0.0, 60 * iou):.0f}px"></span>' if math.isfinite(iou) else ""
            cls = ' class="low"' if i in low[t] else ""
            cells.append(f"<td{cls}>{percent(iou, DASH)}{bar}</td><td>{percent(s['precision'][i], DASH)}</td>"
                         f"<td>{percent(s['recall'][i], DASH)}</td>")
        rows.append(f'<tr><td>{i}</td><td class="name">{_chip(i, pal)}{_esc(name)}</td>{"".join(cells)}'
                    f"<td>{percent(gt_share[i], DASH)}</td></tr>")
    foot = []
    for label, key in (("mIoU (classes in the ground truth)", "miou"), ("m-IoU (plain mean)", "miou_plain"),
                       ("pixel accuracy", "pixel_acc")):
        cells = "".join(f"<td>{percent(s[key], DASH)}</td><td></td><td></td>" for s in scores.values())
        foot.append(f'<tr><td></td><td class="name">{label}</td>{cells}<td></td></tr>')
    return (f'<table class="iou" id="iou-table"><thead><tr><th>#</th><th class="name">class</th>{head}'
            f'<th>GT pixels %</th></tr></thead><tbody>{"".join(rows)}</tbody><tfoot>{"".join(foot)}</tfoot></table>')


def _heat_colour(fraction: float) -> tuple[str, str]:
    """Background (white to dark red) and text colour of a heat-map cell holding ``fraction`` in [0, 1]."""
    target = (183, 28, 28)
    r, g, b = (int(round(255 - fraction * (255 - c))) for c in target)
    return f"rgb({r},{g},{b})", ("#fff" if fraction > 0.5 else "#222")


def _heat_map(title: str, names: Sequence[str], pal: np.ndarray, cm: ConfusionMatrix) -> str:
    mat = cm.matrix
    rows_sum = mat.sum(1)
    small = len(names) > 30
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "prediction"
    head = "".join(f'<th class="col" title="{_esc(n)}">{i} {_esc(n) if not small else ""}</th>'
                   for i, n in enumerate(names))
    rows = []
    for g, name in enumerate(names):
        cells = []
        for p, pname in enumerate(names):
            if rows_sum[g] == 0:
                cells.append('<td class="empty"></td>')
                continue
            frac = mat[g, p] / rows_sum[g]
            bg, fg = _heat_colour(float(frac))
            text = f"{100 * frac:.0f}" if frac >= 0.005 else ""
            tip = (f"ground truth {name} → predicted {pname}: {int(mat[g, p])} px "
                   f"({100 * frac:.1f}% of the {name} pixels)")
            cells.append(f'<td style="background:{bg};color:{fg}" title="{_esc(tip)}">{text}</td>')
        rows.append(f'<tr><th class="name">{_chip(g, pal)}{g} {_esc(name)}</th>{"".join(cells)}</tr>')
    return (f'<table class="heat{" small" if small else ""}" id="confusion-{slug}"><thead><tr><th></th>{head}</tr>'
            f'</thead><tbody>{"".join(rows)}</tbody></table>')


def _found_table(names: Sequence[str], pal: np.ndarray, pixel_counts: np.ndarray, image_counts: np.ndarray,
                 total: int) -> str:
    share = pixel_counts / max(int(pixel_counts.sum()), 1)
    rows = "".join(f'<tr><td>{i}</td><td class="name">{_chip(i, pal)}{_esc(n)}</td><td>{int(image_counts[i])}</td>'
                   f"<td>{percent(share[i], DASH)}</td></tr>" for i, n in enumerate(names))
    return (f'<table class="iou" id="class-table"><thead><tr><th>#</th><th class="name">class</th>'
            f"<th>images with it (of {total})</th><th>predicted pixels %</th></tr></thead><tbody>{rows}</tbody>"
            "</table>")


def _tags(entry: GalleryEntry, names: Sequence[str], pal: np.ndarray) -> str:
    tag = lambda i, kind="": f'<span class="tag {kind}">{_chip(i, pal)}{_esc(_name(i, names))}</span>'  # noqa: E731
    if entry.gt_classes is None:
        return "".join(tag(i) for i in entry.pred_classes) or '<span class="tag">background only</span>'
    pred = set(entry.pred_classes)
    out = [tag(i, "" if i in pred else "missed") for i in entry.gt_classes]
    out += [tag(i, "extra") for i in entry.pred_classes if i not in entry.gt_classes]
    return "".join(out) or '<span class="tag">background only</span>'


def _gallery(entries: Sequence[GalleryEntry], names: Sequence[str], pal: np.ndarray, has_gt: bool) -> str:
    rows = []
    for rank, e in enumerate(entries, 1):
        links = "".join(f'<a href="{_esc(quote(rel))}">{_esc(text)}</a>' for text, rel in e.links.items())
        img = ""
        if e.thumb_file:
            w, h = e.thumb_size
            img = (f'<img src="{_esc(quote(e.thumb_file))}" width="{w}" height="{h}" loading="lazy" '
                   f'alt="{_esc(e.name)}">')
        score = f'<td class="score">{percent(e.score, DASH)}</td>' if has_gt else ""
        rows.append(f'<tr><td>{rank}</td><td class="name"><b>{_esc(e.name)}</b><br>{links}</td>{score}'
                    f'<td class="tags">{_tags(e, names, pal)}</td><td>{img}</td></tr>')
    score_head = "<th>mIoU %</th>" if has_gt else ""
    return (f'<table class="gallery" id="gallery"><thead><tr><th>#</th><th class="name">image</th>{score_head}'
            f'<th class="name">classes</th><th class="name">thumbnails</th></tr></thead><tbody>{"".join(rows)}'
            "</tbody></table>")


def render_report(title: str, summary: str, notes: Sequence[str], class_names: Sequence[str],
                  palette: Sequence[int], matrices: dict[str, ConfusionMatrix], entries: Sequence[GalleryEntry],
                  total_images: int, image_scores: Sequence[float], final_variant: str,
                  pixel_counts: np.ndarray, image_counts: np.ndarray) -> str:
    """The HTML page (a str) of a run; ``entries`` in display order, ``matrices`` empty without ground truth."""
    pal = palette_array(palette)
    has_gt = bool(matrices)
    parts = [f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
             f"<style>{_CSS}</style></head><body>", f"<h1>{_esc(title)}</h1>",
             f'<p class="summary" id="summary">{_esc(summary)}</p>']
    parts += [f'<p class="note">{_esc(n)}</p>' for n in notes]
    if has_gt:
        parts.append("<h2>Per-class IoU</h2>")
        parts.append('<p class="explain">The lowest IoUs of each column are in red; the bars are proportional to '
                     "the IoU.</p>")
        parts.append(_iou_table(class_names, pal, matrices))
        parts.append("<h2>Confusion matrix</h2>")
        parts.append('<p class="explain">Rows: ground truth; columns: prediction; each row is normalised to 100% of '
                     "its ground-truth pixels (hover a cell for the pixel count).</p>")
        for t, cm in matrices.items():
            parts.append(f'<div class="heatbox"><h3>{_esc(t)}</h3>{_heat_map(t, class_names, pal, cm)}</div>')
    else:
        parts.append("<h2>Classes found</h2><p class=\"explain\">No ground truth for these images: nothing is "
                     "scored.</p>")
        parts.append(_found_table(class_names, pal, pixel_counts, image_counts, total_images))
    shown = len(entries)
    finite = [v for v in image_scores if math.isfinite(v)]
    if has_gt:
        heading = f"Images, worst first ({shown} of {total_images} shown)"
        explain = (f"Sorted by the per-image mIoU of the {final_variant}: the mean IoU over the classes in the image's "
                   "ground truth or prediction (a class predicted but absent scores 0). Red tags: classes of the "
                   "ground truth the prediction misses; yellow: classes predicted but not in the ground truth.")
        if finite:
            explain += f" Mean per-image mIoU {100 * float(np.mean(finite)):.2f}%."
    else:
        heading = f"Images ({shown} of {total_images} shown, by name)"
        explain = "Tags: the classes found in the prediction."
    parts += [f"<h2>{_esc(heading)}</h2>", f'<p class="explain">{_esc(explain)}</p>',
              _gallery(entries, class_names, pal, has_gt) if entries else "<p>No images in the gallery "
              "(infer.report_max_images=0 or no image).</p>", "</body></html>\n"]
    return "\n".join(parts)
