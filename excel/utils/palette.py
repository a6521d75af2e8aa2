"""Label colours: one palette for every mask, overlay, tile and report (algorithm.md §9.5), and colourised masks.

Indices 0..20 get the standard PASCAL VOC colours and 255 (ignore) VOC's border colour, so the PNGs are VOC masks;
every other index gets a colour chosen far from all earlier ones (farthest-point order over an RGB grid), so that
COCO's 81 classes, or a long vocabulary, stay apart (the first indices after 20 are the most distinct). The
pictures built from them (overlays, legends, tiles) are in :mod:`excel.utils.vis`.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

NUM_VOC_COLOURS = 21
IGNORE_COLOUR = (224, 224, 192)  # index 255, the colour of VOC's ignore border
_GRID_LEVELS = np.arange(0, 256, 17)  # 16 levels per channel: the candidates for indices 21..254


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


@lru_cache(maxsize=1)
def _colours() -> tuple[tuple[int, int, int], ...]:
    fixed = [_voc_colour(i) for i in range(NUM_VOC_COLOURS)]
    grid = np.stack(np.meshgrid(_GRID_LEVELS, _GRID_LEVELS, _GRID_LEVELS, indexing="ij"), -1).reshape(-1, 3)
    grid = grid.astype(np.float64)
    taken = np.array(fixed + [IGNORE_COLOUR], dtype=np.float64)
    nearest = np.sqrt(((grid[:, None, :] - taken[None]) ** 2).sum(-1)).min(1)  # distance to the closest taken colour
    extra = []
    for _ in range(255 - NUM_VOC_COLOURS):
        pick = int(nearest.argmax())  # the first of the farthest: deterministic
        extra.append(tuple(int(v) for v in grid[pick]))
        nearest = np.minimum(nearest, np.sqrt(((grid - grid[pick]) ** 2).sum(-1)))
    return tuple(fixed + extra + [IGNORE_COLOUR])


def voc_palette() -> list[int]:
    """The flat 768-int PIL palette: VOC colours for 0..20, distinct colours for 21..254, VOC's border for 255."""
    return [v for rgb in _colours() for v in rgb]


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
