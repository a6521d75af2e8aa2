"""Label colours: the VOC palette (algorithm.md §9.5), the full PASCAL colour map and colourised masks.

Index 0..20 get the standard PASCAL VOC colours, 255 (ignore) the VOC border colour, every other index grey.
The pictures built from them (overlays, legends, tiles) are in :mod:`excel.utils.vis`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

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


def palette_for(num_classes: int) -> list[int]:
    """The flat 768-int palette for a label set of ``num_classes`` (background included): VOC's up to 21."""
    return voc_palette() if num_classes <= NUM_VOC_COLOURS else full_palette()
