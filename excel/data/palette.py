"""Label colours: the VOC palette (algorithm.md §9.5), colourised masks, overlays and a legend strip.

Index 0..20 get the standard PASCAL VOC colours, 255 (ignore) the VOC border colour, every other index grey.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

NUM_VOC_COLOURS = 21
GREY = (192, 192, 192)          # indices 21..254 (algorithm.md §9.5: "the rest of the palette is grey")
IGNORE_COLOUR = (224, 224, 192)  # index 255, the colour of VOC's ignore border


def _voc_colour(index: int) -> tuple[int, int, int]:
    """The VOC colour of ``index``: bits 0, 1, 2 of each 3-bit group go to the top bits of R, G, B."""
    r = g = b = 0
    c = index
    for shift in range(7, -1, -1):
        r |= (c & 1) << shift
        g |= ((c >> 1) & 1) << shift
        b |= ((c >> 2) & 1) << shift
        c >>= 3
    return r, g, b


def voc_palette() -> list[int]:
    """A flat PIL palette of 768 ints: VOC colours for 0..20, grey for 21..254, the VOC border colour for 255."""
    colours = [_voc_colour(i) for i in range(NUM_VOC_COLOURS)]
    colours += [GREY] * (255 - NUM_VOC_COLOURS)
    colours.append(IGNORE_COLOUR)
    return [v for rgb in colours for v in rgb]


def full_palette() -> list[int]:
    """A flat 768-int PIL palette with the PASCAL colour map for all 256 indices (0..20 equal ``voc_palette``;
    unlike it, 21..254 get distinct colours so that COCO's 81 classes or a long vocabulary stay readable)."""
    return [v for i in range(256) for v in _voc_colour(i)]


def palette_array(palette: Sequence[int] | None = None) -> np.ndarray:
    """The palette as a (256, 3) uint8 array (``voc_palette()`` when None)."""
    pal = np.asarray(voc_palette() if palette is None else palette, dtype=np.int64)
    if pal.size != 768:
        raise ValueError(f"a palette needs 768 values (256 RGB triples), got {pal.size}")
    return pal.reshape(256, 3).astype(np.uint8)


def colorize(label: np.ndarray, palette: Sequence[int] | None = None) -> np.ndarray:
    """Map an index mask (H, W) with values in 0..255 to RGB colours (H, W, 3) uint8."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"colorize expects an (H, W) index mask, got shape {label.shape}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"label values must lie in 0..255, got range [{label.min()}, {label.max()}]")
    return palette_array(palette)[label.astype(np.int64)]


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
