"""Pictures for people, drawn with PIL and OpenCV only: label overlays with a legend, LAM heat maps, captioned tile
rows (the TensorBoard sample grids and the report gallery), and the training curves (``curves.png``).

Label colours come from :mod:`excel.utils.palette` (VOC's colours for 0..20, distinct ones beyond), so an overlay's
or a tile's colours are those of the PNGs the tools write.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from excel.utils.io import atomic_path, atomic_save_png
from excel.utils.palette import colorize, palette_array, voc_palette
from excel.utils.tensors import grid_side

log = logging.getLogger(__name__)

__all__ = ["THUMB_SIDE", "CAPTION_BG", "overlay", "legend", "with_legend", "save_overlay", "heat_overlay",
           "save_lam_overlays", "TileRow", "fit_height", "label_tile", "tile_row", "sample_grid", "Series", "Axes",
           "render_curves", "read_jsonl", "write_curves"]

THUMB_SIDE = 160               # tile height of the gallery and TensorBoard grids, in pixels
CAPTION_H = 16                 # height of the caption bar above a tile
PAD = 2                        # white gap between tiles
CAPTION_BG = (38, 50, 56)      # caption bar colour (no palette entry uses it)
CAPTION_FG = (255, 255, 255)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


# ----------------------------------------------------------------------------- label overlays
def overlay(image: np.ndarray, label: np.ndarray, alpha: float = 0.5, skip_background: bool = True,
            palette: Sequence[int] | None = None) -> np.ndarray:
    """Blend the label colours over an RGB image.

    Args:
        image: (H, W, 3) uint8.
        label: (H, W) index mask.
        alpha: weight of the label colour, in [0, 1].
        skip_background: leave pixels labelled 0 (background) untouched.
    Returns:
        (H, W, 3) uint8.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"overlay expects an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    if image.shape[:2] != np.shape(label):
        raise ValueError(f"image {image.shape[:2]} and label {np.shape(label)} sizes differ")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colours = colorize(label, palette).astype(np.float32)
    blend = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    if skip_background:
        blend[np.asarray(label) == 0] = image[np.asarray(label) == 0]
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8)


def legend(class_names: Sequence[str], indices: Sequence[int], width: int | None = None, patch: int = 12,
           palette: Sequence[int] | None = None) -> np.ndarray:
    """An RGB strip (h, width, 3) uint8 with one colour patch and name per label index, wrapped into rows.

    ``class_names[i]`` names label index ``i`` (background included); indices out of range are named by number.
    """
    pal = palette_array(palette)
    font = ImageFont.load_default()
    pad = 4
    entries = []
    for idx in indices:
        name = class_names[idx] if 0 <= idx < len(class_names) else str(idx)
        text_w = int(np.ceil(font.getlength(name)))
        entries.append((int(idx), name, patch + pad + text_w + 2 * pad))
    width = width or max([e[2] for e in entries] + [64])
    rows, row, used = [], [], 0
    for entry in entries:
        if row and used + entry[2] > width:
            rows.append(row)
            row, used = [], 0
        row.append(entry)
        used += entry[2]
    if row:
        rows.append(row)
    line_h = patch + 2 * pad
    canvas = Image.new("RGB", (width, max(1, len(rows)) * line_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        x, y = pad, r * line_h + pad
        for idx, name, entry_w in row:
            draw.rectangle([x, y, x + patch - 1, y + patch - 1], fill=tuple(int(v) for v in pal[idx % 256]),
                           outline=(0, 0, 0))
            draw.text((x + patch + pad, y), name, fill=(0, 0, 0), font=font)
            x += entry_w
    return np.asarray(canvas)


def with_legend(image: np.ndarray, label: np.ndarray, class_names: Sequence[str],
                palette: Sequence[int] | None = None) -> np.ndarray:
    """Stack a legend of the labels present in ``label`` (ignore excluded) under ``image`` (H, W, 3) uint8."""
    present = [int(v) for v in np.unique(label) if v != 255]
    strip = legend(class_names, present, width=image.shape[1], palette=palette)
    return np.concatenate([np.asarray(image, dtype=np.uint8), strip], axis=0)


def save_overlay(path: str | Path, rgb: np.ndarray, label: np.ndarray, class_names: Sequence[str],
                 alpha: float = 0.5) -> None:
    """Write ``rgb`` (H, W, 3) uint8 with the colours of ``label`` (H, W) blended in and a legend strip below
    (:func:`excel.utils.palette.voc_palette`)."""
    palette = voc_palette()
    blended = overlay(rgb, label, alpha=alpha, palette=palette)
    atomic_save_png(with_legend(blended, label, list(class_names), palette=palette), path)


# ----------------------------------------------------------------------------- heat maps and tiles
def fit_height(image: np.ndarray, height: int, nearest: bool = False) -> np.ndarray:
    """Resize (H, W[, 3]) to (height, round(W * height / H)[, 3]), keeping the aspect ratio; nearest for labels."""
    h, w = image.shape[:2]
    width = max(1, int(round(w * height / h)))
    if (h, w) == (height, width):
        return np.ascontiguousarray(image)
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    return cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=interp)


def label_tile(label: np.ndarray, height: int, palette: Sequence[int]) -> np.ndarray:
    """An index mask (H, W) resized (nearest) to ``height`` and coloured: (height, W', 3) uint8."""
    return colorize(fit_height(np.asarray(label, dtype=np.uint8), height, nearest=True), palette)


def heat_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a JET heat map over an RGB image.

    Args:
        image: (H, W, 3) uint8.
        heat: (h, w) float in [0, 1] (e.g. a g x g LAM); resized bilinearly (half-pixel centres) to (H, W).
    Returns:
        (H, W, 3) uint8.
    """
    h, w = image.shape[:2]
    heat = np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0)
    if heat.shape != (h, w):
        heat = cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    return ((1.0 - alpha) * image + alpha * colour).astype(np.uint8)


def save_lam_overlays(folder: str | Path, name: str, rgb: np.ndarray, lam: np.ndarray, classes: Sequence[int],
                      class_names: Sequence[str]) -> None:
    """Write ``<folder>/<name>_<class>.jpg`` for each class index c in ``classes``: column c of the LAM
    ``lam`` (P, C_fg), a g x g map, blended over ``rgb`` (H, W, 3) uint8 as a heat map."""
    g = grid_side(lam.shape[0], "save_lam_overlays: lam.shape[0]")
    for c in classes:
        blend = heat_overlay(rgb, lam[:, c].reshape(g, g))
        safe = class_names[c].replace(" ", "_")
        with atomic_path(Path(folder) / f"{name}_{safe}.jpg") as tmp:
            Image.fromarray(blend).save(tmp, format="JPEG", quality=90)


@dataclass
class TileRow:
    """Tiles side by side under caption bars. ``boxes[i]`` = (top, left, height, width) of tile i's picture."""

    image: np.ndarray
    captions: list[str]
    boxes: list[tuple[int, int, int, int]]


def tile_row(tiles: Sequence[tuple[str, np.ndarray]], pad: int = PAD) -> TileRow:
    """Lay out (caption, (h, w_i, 3) uint8) tiles of one height left to right, each under a caption bar."""
    if not tiles:
        raise ValueError("tile_row needs at least one tile")
    height = tiles[0][1].shape[0]
    if any(t.shape[0] != height or t.ndim != 3 for _, t in tiles):
        raise ValueError(f"tiles must be (h, w, 3) of one height, got {[t.shape for _, t in tiles]}")
    width = sum(t.shape[1] for _, t in tiles) + pad * (len(tiles) + 1)
    canvas = Image.new("RGB", (width, CAPTION_H + height + 2 * pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _font(11)
    boxes, left = [], pad
    for caption, tile in tiles:
        w = tile.shape[1]
        draw.rectangle([left, pad, left + w - 1, pad + CAPTION_H - 1], fill=CAPTION_BG)
        text = caption
        while text and font.getlength(text) > w - 4:
            text = text[:-2] + "…" if len(text) > 2 else ""
        draw.text((left + 2, pad + 2), text, fill=CAPTION_FG, font=font)
        canvas.paste(Image.fromarray(np.ascontiguousarray(tile, dtype=np.uint8)), (left, pad + CAPTION_H))
        boxes.append((pad + CAPTION_H, left, height, w))
        left += w + pad
    return TileRow(np.asarray(canvas), [c for c, _ in tiles], boxes)


def sample_grid(rgb: np.ndarray, gt: np.ndarray | None, preds: Sequence[tuple[str, np.ndarray]],
                class_names: Sequence[str], lams: Sequence[tuple[int, np.ndarray]] = (),
                palette: Sequence[int] | None = None, height: int = THUMB_SIDE) -> TileRow:
    """The picture of one sample: image | LAM per class | each prediction | ground truth.

    Args:
        rgb: (H, W, 3) uint8 image.
        gt: (H, W) ground truth (0 = background, 255 = ignore), or None.
        preds: (title, (H, W) index mask) pairs, in display order.
        class_names: names of the label indices (background first).
        lams: (label index, (g, g) map in [0, 1]) pairs shown as heat maps captioned "LAM <class>".
    """
    palette = voc_palette() if palette is None else palette
    image = fit_height(rgb, height)
    tiles: list[tuple[str, np.ndarray]] = [("image", image)]
    for index, grid in lams:
        name = class_names[index] if 0 <= index < len(class_names) else str(index)
        tiles.append((f"LAM {name}", heat_overlay(image, grid)))
    tiles += [(title, label_tile(pred, height, palette)) for title, pred in preds]
    if gt is not None:
        tiles.append(("ground truth", label_tile(gt, height, palette)))
    return tile_row(tiles)


# ----------------------------------------------------------------------------- line charts
SERIES_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]
# further loss terms, after loss / seg_loss / aff_loss (SERIES_COLOURS 3 and 4 are the lr and pseudo-label lines)
MORE_LOSS_COLOURS = [(140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


@dataclass
class Series:
    """One line of a chart: ``xs`` and ``ys`` of equal length; ``markers`` draws a dot at every point."""

    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    colour: tuple[int, int, int]
    markers: bool = False


@dataclass
class Axes:
    """Pixel geometry of one chart panel: the plot area (left, top, right, bottom) and the data ranges."""

    box: tuple[int, int, int, int]
    x_range: tuple[float, float]
    y_range: tuple[float, float]

    def to_pixel(self, x: float, y: float) -> tuple[int, int]:
        left, top, right, bottom = self.box
        (x0, x1), (y0, y1) = self.x_range, self.y_range
        px = left + (x - x0) / (x1 - x0) * (right - left)
        py = bottom - (y - y0) / (y1 - y0) * (bottom - top)
        return int(round(px)), int(round(py))


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 5 x 10^k steps) covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _tick_text(value: float, step: float) -> str:
    if abs(value) < 1e-12:
        return "0"
    if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e5):
        return f"{value:.1e}"
    decimals = max(0, -int(math.floor(math.log10(step)))) if step > 0 else 0
    return f"{value:.{min(decimals, 4)}f}"


def _binned(xs: np.ndarray, ys: np.ndarray, axes: Axes) -> tuple[np.ndarray, np.ndarray]:
    """Average the points that fall into one pixel column (long loss curves become readable, short ones stay)."""
    cols = np.array([axes.to_pixel(x, 0.0)[0] for x in xs])
    keys, inverse = np.unique(cols, return_inverse=True)
    if len(keys) == len(xs):
        return xs, ys
    counts = np.bincount(inverse)
    return np.bincount(inverse, xs) / counts, np.bincount(inverse, ys) / counts


def _draw_panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str, series: Sequence[Series],
                x_range: tuple[float, float]) -> Axes:
    left, top, right, bottom = box
    font, small = _font(13), _font(11)
    draw.text((left, top - 20), title, fill=(0, 0, 0), font=font)
    ys = np.concatenate([np.asarray(s.ys, np.float64) for s in series if len(s.ys)] or [np.zeros(1)])
    ys = ys[np.isfinite(ys)] if np.isfinite(ys).any() else np.zeros(1)
    lo, hi = float(ys.min()), float(ys.max())
    margin = (hi - lo) * 0.05 if hi > lo else max(abs(hi) * 0.1, 1e-3)
    axes = Axes(box, x_range, (lo - margin, hi + margin))
    y_ticks = _nice_ticks(*axes.y_range)
    step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 1.0
    for tick in y_ticks:
        _, py = axes.to_pixel(x_range[0], tick)
        draw.line([(left, py), (right, py)], fill=(225, 225, 225))
        text = _tick_text(tick, step)
        draw.text((left - 6 - small.getlength(text), py - 6), text, fill=(60, 60, 60), font=small)
    for tick in _nice_ticks(*x_range, count=8):
        px, _ = axes.to_pixel(tick, axes.y_range[0])
        draw.line([(px, bottom), (px, bottom + 4)], fill=(0, 0, 0))
        text = f"{tick:g}"
        draw.text((px - small.getlength(text) / 2, bottom + 6), text, fill=(60, 60, 60), font=small)
    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    legend_x = right - 8
    for s in reversed(series):
        width = small.getlength(s.name) + 22
        legend_x -= width
        draw.line([(legend_x, top + 12), (legend_x + 14, top + 12)], fill=s.colour, width=3)
        draw.text((legend_x + 18, top + 5), s.name, fill=(0, 0, 0), font=small)
    for s in series:
        xs, vals = np.asarray(s.xs, np.float64), np.asarray(s.ys, np.float64)
        keep = np.isfinite(vals)
        xs, vals = _binned(xs[keep], vals[keep], axes) if keep.any() else (xs[:0], vals[:0])
        points = [axes.to_pixel(x, y) for x, y in zip(xs, vals)]
        if len(points) > 1:
            draw.line(points, fill=s.colour, width=2, joint="curve")
        if s.markers or len(points) == 1:
            for px, py in points:
                draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=s.colour)
    return axes


def render_curves(metrics: Sequence[dict], val: Sequence[dict], width: int = 900,
                  panel_height: int = 230) -> tuple[np.ndarray, list[Axes]]:
    """Three stacked panels against the iteration: losses, learning rate, validation mIoU (%) of the decoder and of
    the pseudo labels. Records are those of ``metrics.jsonl`` (iter, loss, one ``<term>_loss`` per loss term, lr)
    and ``val.jsonl`` (iter, seg_miou, pseudo_miou); the loss panel draws ``loss`` and every ``*_loss`` key, in the
    order they first appear. Returns the (H, W, 3) uint8 picture and the panels' geometry."""
    iters = [float(m["iter"]) for m in metrics] + [float(v["iter"]) for v in val]
    x_range = (min(iters, default=0.0), max(iters, default=1.0))
    if x_range[1] <= x_range[0]:
        x_range = (x_range[0], x_range[0] + 1.0)
    col = lambda rows, key: [float(r[key]) if r.get(key) is not None else math.nan for r in rows]  # noqa: E731
    steps = [float(m["iter"]) for m in metrics]
    val_steps = [float(v["iter"]) for v in val]
    names = list(dict.fromkeys(k for m in metrics for k in m if k == "loss" or k.endswith("_loss")))
    colours = SERIES_COLOURS[:3] + MORE_LOSS_COLOURS
    panels = [
        ("training losses", [Series(name, steps, col(metrics, name), colours[i % len(colours)])
                             for i, name in enumerate(names)]),
        ("learning rate", [Series("lr", steps, col(metrics, "lr"), SERIES_COLOURS[3])]),
        ("validation mIoU (%)", [
            Series("seg (decoder)", val_steps, [100 * v for v in col(val, "seg_miou")], SERIES_COLOURS[0], True),
            Series("pseudo label", val_steps, [100 * v for v in col(val, "pseudo_miou")], SERIES_COLOURS[4], True)]),
    ]
    margin_l, margin_r, head, foot = 78, 20, 30, 34
    canvas = Image.new("RGB", (width, len(panels) * panel_height + 24), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    axes = []
    for i, (title, series) in enumerate(panels):
        top = i * panel_height + head
        axes.append(_draw_panel(draw, (margin_l, top, width - margin_r, top + panel_height - head - foot), title,
                                series, x_range))
    label = "iteration"
    font = _font(12)
    draw.text(((width - font.getlength(label)) / 2, len(panels) * panel_height + 4), label, fill=(0, 0, 0), font=font)
    return np.asarray(canvas), axes


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSON-lines file; blank and unreadable lines (a write cut short by a kill) are skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s line %d is not JSON; skipped in the curves", path, number)
    return rows


def write_curves(work_dir: str | Path) -> Path | None:
    """Plot ``metrics.jsonl`` and ``val.jsonl`` of a training work dir into ``<work_dir>/curves.png`` (atomic).
    Returns the path, or None when there is nothing to plot yet."""
    work_dir = Path(work_dir)
    metrics, val = read_jsonl(work_dir / "metrics.jsonl"), read_jsonl(work_dir / "val.jsonl")
    if not metrics and not val:
        return None
    image, _ = render_curves(metrics, val)
    path = work_dir / "curves.png"
    atomic_save_png(image, path)
    return path
