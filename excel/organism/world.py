"""The generated world: 20 object classes with a visual signature each, rendered on textured scenes.

Every class is written once as data (:data:`VOC_SIGNATURES`): a colour, a shape family, a surface pattern, a
typical size and a typical surrounding. No two classes share both colour and shape, so the classes are separable
at a glance, while shared attributes (two classes per colour, shapes and patterns reused) give the knowledge base
real attributes to add. The VOC background names are textures of this world (sky, grass, water, road, wall, ...),
so background prompts mean something. Scenes follow PASCAL VOC 2012's statistics (1-3 classes, 1-4 instances
of a class, about 30 % foreground; overlaps and truncation allowed) on a two-part background with
distractor blobs in colours no class uses. Everything is a function of the random generator passed in.

The same world gives captions for the organism CLIP's pretraining (:meth:`World.caption`) and the organism's
knowledge base (:meth:`World.knowledge_base`), so the words the model learns are the words the pipeline uses.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from excel.data.classes import VOC_PROMPT_NAMES

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35), "orange": (245, 135, 25), "yellow": (245, 215, 35), "green": (50, 185, 60),
    "cyan": (40, 205, 215), "blue": (35, 65, 210), "purple": (135, 50, 190), "pink": (240, 110, 190),
    "white": (245, 245, 240), "black": (30, 30, 30),
}
SHAPES = ("disc", "box", "triangle", "star", "cross", "ring", "diamond", "hexagon", "crescent", "bar", "corner",
          "heart", "arrow")
PATTERNS = ("plain", "stripes", "spots", "checks")
# Scene statistics, set to PASCAL VOC 2012's (docs/organism.md; `python benchmarks/world_stats.py` prints both):
# a lone object's median share of the image by its signature's size word; the log-normal spread of that share;
# how the share shrinks with the number of objects n in the scene (divided by n ** CROWDING); the chances of 1, 2,
# 3 classes in a scene and of 1..4 instances of a class; how much more often "person" appears than any other class.
SIZES: dict[str, float] = {"small": 0.06, "medium": 0.16, "large": 0.31}
AREA_SPREAD = 1.7
CROWDING = 0.8
CLASSES_PER_SCENE = (0.62, 0.27, 0.11)
INSTANCES_PER_CLASS = (0.64, 0.21, 0.09, 0.06)
PERSON_WEIGHT = 6.0

# Words for each attribute: (adjective, noun phrase)
SHAPE_WORDS: dict[str, tuple[str, str]] = {
    "disc": ("round", "a disc"), "box": ("rectangular", "a wide box"), "triangle": ("triangular", "a triangle"),
    "star": ("star-shaped", "a five-pointed star"), "cross": ("cross-shaped", "a plus sign"),
    "ring": ("ring-shaped", "a ring with a hole in the middle"), "diamond": ("diamond-shaped", "a diamond"),
    "hexagon": ("hexagonal", "a hexagon"), "crescent": ("crescent-shaped", "a crescent moon"),
    "bar": ("tall and thin", "an upright bar"), "corner": ("l-shaped", "the letter l"),
    "heart": ("heart-shaped", "a heart"), "arrow": ("arrow-shaped", "an arrow"),
}
PATTERN_WORDS: dict[str, str] = {"plain": "a plain surface without marks", "stripes": "dark diagonal stripes",
                                 "spots": "dark round spots", "checks": "a checkered pattern of squares"}

# Background stuff: kind -> the VOC background names that describe it (algorithm.md §2.2).
STUFF_WORDS: dict[str, tuple[str, ...]] = {
    "sky": ("sky",), "cloud": ("cloud",), "grass": ("grass",), "water": ("water", "lake", "river", "sea", "ocean"),
    "road": ("road", "street"), "ground": ("ground", "land"), "wall": ("wall",), "building": ("building", "house"),
    "tree": ("tree",), "mountain": ("mountain", "rock", "valley"), "railway": ("railway", "railroad"),
    "bridge": ("bridge",), "keyboard": ("keyboard",), "sign": ("sign",), "helmet": ("helmet",),
}
HABITAT_PHRASES: dict[str, str] = {"sky": "up in the sky", "water": "on the water", "road": "on a road",
                                   "grass": "on green grass", "wall": "in front of a wall",
                                   "railway": "on a railway", "ground": "on bare ground"}
TOPS = ("sky", "mountain", "building", "tree")
BOTTOMS = ("grass", "water", "road", "ground", "railway")
DISTRACTOR_COLOURS = ((120, 120, 50), (190, 170, 130), (95, 105, 125), (110, 45, 45), (130, 130, 130),
                      (160, 140, 90))


@dataclass(frozen=True)
class Signature:
    """The look of one class: colour, shape, pattern, size and habitat are keys of the tables above."""
    name: str
    colour: str
    shape: str
    pattern: str
    size: str
    habitat: str


VOC_SIGNATURES: tuple[Signature, ...] = tuple(Signature(*row) for row in (
    ("aeroplane", "white", "cross", "plain", "large", "sky"),
    ("bicycle", "black", "ring", "plain", "medium", "road"),
    ("bird", "yellow", "triangle", "plain", "small", "sky"),
    ("boat", "orange", "crescent", "plain", "medium", "water"),
    ("bottle", "green", "bar", "plain", "small", "wall"),
    ("bus", "yellow", "box", "stripes", "large", "road"),
    ("car", "red", "box", "plain", "medium", "road"),
    ("cat", "orange", "disc", "stripes", "medium", "wall"),
    ("chair", "purple", "corner", "checks", "medium", "wall"),
    ("cow", "white", "disc", "spots", "large", "grass"),
    ("diningtable", "pink", "hexagon", "checks", "large", "wall"),
    ("dog", "red", "heart", "spots", "medium", "grass"),
    ("horse", "purple", "triangle", "stripes", "large", "grass"),
    ("motorbike", "black", "diamond", "stripes", "medium", "road"),
    ("person", "blue", "bar", "plain", "medium", "road"),
    ("pottedplant", "green", "star", "spots", "small", "wall"),
    ("sheep", "cyan", "disc", "checks", "medium", "grass"),
    ("sofa", "pink", "box", "plain", "large", "wall"),
    ("train", "blue", "arrow", "stripes", "large", "railway"),
    ("tvmonitor", "cyan", "diamond", "plain", "medium", "wall"),
))
COCO_ALIASES = {"airplane": "aeroplane", "motorcycle": "motorbike", "couch": "sofa", "potted plant": "pottedplant",
                "dining table": "diningtable", "tv": "tvmonitor"}

# Parts (``World(parts=True)``): pieces attached to a class's body, each with one look of its own, whatever the
# body's colour, that several classes share, as VOC's wheels, legs and wings are shared by its classes. A part is
# labelled as its object's class. The knowledge base names them, so a part world's attributes reach pixels a class
# name alone may miss. Part -> (colour, three sentences in the knowledge base's style).
PART_LOOKS: dict[str, tuple[tuple[int, int, int], tuple[str, str, str]]] = {
    "wheels": ((25, 25, 25), ("it has two round black wheels.", "it rolls on black wheels with grey hubs.",
                              "its wheels are black discs at the bottom.")),
    "legs": ((110, 72, 40), ("it has thin brown legs.", "it stands on long brown legs.",
                             "its brown legs reach down from its body.")),
    "wings": ((175, 180, 192), ("it has wings that extend out from both sides of its body.",
                                "its grey wings are pointed.", "it spreads two grey wings.")),
    "windows": ((175, 220, 245), ("it has a row of pale blue windows.", "its windows are small pale blue squares.",
                                  "it shows windows along its side.")),
    "head": ((235, 190, 150), ("it has a round head on top.", "its head is a pale skin-coloured disc.",
                               "its round head sits above its body.")),
    "pot": ((185, 95, 60), ("it grows out of a brown clay pot.", "it has a clay pot at the bottom.",
                            "its pot is wider at the top than at the bottom.")),
    "cap": ((150, 150, 158), ("it has a small grey cap on top.", "its top is closed with a grey cap.",
                              "it wears a grey cap on its neck.")),
    "stand": ((70, 70, 78), ("it rests on a thin dark grey stand.", "it has a stand with a flat base.",
                             "its dark stand holds it up.")),
    "sail": ((250, 250, 235), ("it has a tall white sail.", "its triangular sail is white.",
                               "it carries a white sail high above it.")),
}
CLASS_PARTS: dict[str, tuple[str, ...]] = {
    "aeroplane": ("wings", "windows"), "bicycle": ("wheels",), "bird": ("wings", "legs"), "boat": ("sail",),
    "bottle": ("cap",), "bus": ("wheels", "windows"), "car": ("wheels", "windows"), "cat": ("legs",),
    "chair": ("legs",), "cow": ("legs",), "diningtable": ("legs",), "dog": ("legs",), "horse": ("legs",),
    "motorbike": ("wheels",), "person": ("head", "legs"), "pottedplant": ("pot",), "sheep": ("legs",),
    "sofa": ("legs",), "train": ("wheels", "windows"), "tvmonitor": ("stand",),
}
PART_PHRASES: dict[str, str] = {"wheels": "black wheels", "legs": "brown legs", "wings": "grey wings",
                                "windows": "pale blue windows", "head": "a round head", "pot": "a clay pot",
                                "cap": "a grey cap", "stand": "a dark stand", "sail": "a white sail"}
PARTS_BEHIND = ("legs", "wings", "stand", "sail")   # drawn before the body; the others on top of it
PART_NAMING = 0.2   # a part world's captions name a class by one of its parts ("a thing with black wheels") this often


def signatures_for(class_names: Sequence[str]) -> tuple[Signature, ...]:
    """Signatures for any class list: VOC classes (and their COCO spellings) keep theirs, others get unused
    (colour, shape, pattern) triples in a fixed order, so a COCO-sized world (80 classes) is still fully distinct."""
    known = {s.name: s for s in VOC_SIGNATURES}
    known.update({alias: known[voc] for alias, voc in COCO_ALIASES.items()})
    used = {(known[n].colour, known[n].shape, known[n].pattern) for n in class_names if n in known}
    free = [(c, sh, p) for p in PATTERNS for sh in SHAPES for c in COLOURS if (c, sh, p) not in used]
    sizes, habitats = tuple(SIZES), tuple(HABITAT_PHRASES)
    out, k = [], 0
    for i, name in enumerate(class_names):
        if name in known:
            out.append(Signature(name, *[getattr(known[name], f) for f in
                                         ("colour", "shape", "pattern", "size", "habitat")]))
            continue
        if k >= len(free):
            raise ValueError(f"the world has {len(free)} spare looks; {len(class_names)} classes is too many")
        c, sh, p = free[(k * 37) % len(free)] if len(free) > 37 else free[k]
        free.remove((c, sh, p))
        out.append(Signature(name, c, sh, p, sizes[i % 3], habitats[i % len(habitats)]))
    return tuple(out)


# ----------------------------------------------------------------------------------------------------------------
# Shapes: polygons on the unit box [-1, 1]^2 (x right, y down); cut-outs are drawn with 0.

def _ngon(n: int, r: float = 1.0, phase: float = -np.pi / 2, cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
    a = phase + np.arange(n) * 2 * np.pi / n
    return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1)


def _shape_polygons(shape: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(filled polygons, cut-out polygons) of a shape family, each (P, 2) in [-1, 1]."""
    if shape in ("disc", "ring", "crescent"):
        fill = [_ngon(40)]
        cut = {"disc": [], "ring": [_ngon(40, 0.5)], "crescent": [_ngon(40, 0.85, cx=0.45, cy=-0.15)]}[shape]
        return fill, cut
    if shape in ("box", "bar"):
        return [np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float)], []
    if shape == "triangle":
        return [np.array([[0, -1], [1, 1], [-1, 1]], float)], []
    if shape == "star":
        outer, inner = _ngon(5), _ngon(5, 0.42, phase=-np.pi / 2 + np.pi / 5)
        return [np.stack([outer, inner], 1).reshape(-1, 2)], []
    if shape == "cross":
        t = 0.34
        return [np.array([[-t, -1], [t, -1], [t, -t], [1, -t], [1, t], [t, t], [t, 1], [-t, 1], [-t, t], [-1, t],
                          [-1, -t], [-t, -t]], float)], []
    if shape == "diamond":
        return [np.array([[0, -1], [1, 0], [0, 1], [-1, 0]], float)], []
    if shape == "hexagon":
        return [_ngon(6, phase=0.0)], []
    if shape == "corner":
        return [np.array([[-1, -1], [-0.3, -1], [-0.3, 0.3], [1, 0.3], [1, 1], [-1, 1]], float)], []
    if shape == "heart":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        x, y = 16 * np.sin(t) ** 3, -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return [np.stack([x / 16.5, (y + 2.5) / 14.5], 1)], []
    if shape == "arrow":
        return [np.array([[-1, -0.3], [0.2, -0.3], [0.2, -1], [1, 0], [0.2, 1], [0.2, 0.3], [-1, 0.3]], float)], []
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


_ASPECT = {"box": (0.5, 0.75), "bar": (2.0, 2.8), "arrow": (0.55, 0.8)}  # height / width ranges


@dataclass(frozen=True)
class Pose:
    """A random pose of one instance: height/width ratio of its box and rotation (radians)."""
    aspect: float
    angle: float


def _pose(rng: np.random.Generator, shape: str) -> Pose:
    lo, hi = _ASPECT.get(shape, (0.8, 1.25))
    return Pose(float(rng.uniform(lo, hi)), float(np.deg2rad(rng.uniform(-20, 20))))


def _posed_polygons(shape: str, pose: Pose, side: float) -> tuple[list[np.ndarray], int]:
    """The shape's polygons (filled first, then cut-outs) in pixels for a larger box side of ``side``, and the
    number of filled ones."""
    half_w, half_h = (side / 2, side / 2 * pose.aspect) if pose.aspect <= 1 else (side / 2 / pose.aspect, side / 2)
    rot = np.array([[np.cos(pose.angle), -np.sin(pose.angle)], [np.sin(pose.angle), np.cos(pose.angle)]])
    fill, cut = _shape_polygons(shape)
    return [(p * [half_w, half_h]) @ rot.T for p in fill + cut], len(fill)


def _polygon_area(p: np.ndarray) -> float:
    """Area of a simple polygon (P, 2) (shoelace)."""
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def side_for_area(shape: str, pose: Pose, area: float) -> float:
    """The larger box side (px) at which an instance of ``shape`` in ``pose`` covers about ``area`` pixels."""
    polys, n_fill = _posed_polygons(shape, pose, 1.0)
    unit = sum(_polygon_area(p) for p in polys[:n_fill]) - sum(_polygon_area(p) for p in polys[n_fill:])
    return float(np.sqrt(max(area, 1.0) / max(unit, 1e-6)))


def _raster(shape: str, pose: Pose, side: float) -> np.ndarray:
    """(bh, bw) bool mask of ``shape`` in ``pose`` whose larger box side is about ``side`` px."""
    polys, n_fill = _posed_polygons(shape, pose, side)
    allpts = np.concatenate(polys)
    lo_xy = allpts.min(0)
    bw, bh = (np.ceil(allpts.max(0) - lo_xy) + 1).astype(int)
    canvas = Image.new("L", (max(bw, 1), max(bh, 1)), 0)
    draw = ImageDraw.Draw(canvas)
    for i, p in enumerate(polys):
        draw.polygon([tuple(q) for q in (p - lo_xy)], fill=1 if i < n_fill else 0)
    return np.asarray(canvas, dtype=bool)


def _shape_mask(rng: np.random.Generator, shape: str, side: float) -> np.ndarray:
    """(bh, bw) bool mask of one randomly posed instance whose larger box side is about ``side`` px."""
    return _raster(shape, _pose(rng, shape), side)


def _shade(rgb: tuple[int, int, int]) -> np.ndarray:
    """The pattern colour that goes with a body colour: black on white, light grey on black, else a dark shade."""
    if rgb == COLOURS["white"]:
        return np.array([30.0, 30.0, 30.0])
    if rgb == COLOURS["black"]:
        return np.array([170.0, 170.0, 170.0])
    return np.asarray(rgb, float) * 0.42


def _object_texture(rng: np.random.Generator, sig: Signature, bh: int, bw: int) -> np.ndarray:
    """(bh, bw, 3) float32 body colour with the class pattern, a soft light gradient and noise."""
    base = np.asarray(COLOURS[sig.colour], float) + rng.uniform(-14, 14, 3)
    yy, xx = np.arange(bh, dtype=np.float32)[:, None], np.arange(bw, dtype=np.float32)[None, :]
    light = 1.08 - 0.16 * (yy / max(bh, 1) + xx / max(bw, 1)) / 2
    tex = base[None, None] * light[..., None]
    dark = _shade(COLOURS[sig.colour])
    scale = max(min(bh, bw), 8)
    if sig.pattern == "stripes":
        period = max(scale / 3.2, 6.0)
        on = ((xx + yy * rng.choice([-1, 1])) % period) < period * 0.45
        tex[on] = dark
    elif sig.pattern == "checks":
        cell = max(scale / 3.5, 4.0)
        on = ((xx // cell + yy // cell) % 2) == 1
        tex[on] = dark
    elif sig.pattern == "spots":
        for _ in range(int(rng.integers(4, 8))):
            cy, cx, r = rng.uniform(0, bh), rng.uniform(0, bw), rng.uniform(0.09, 0.15) * scale + 1
            tex[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = dark
    return tex + _noise(rng, 5, (bh, bw, 1))


def _part_polygons(part: str, top: float, bottom: float, left: float, right: float) -> list[np.ndarray]:
    """Polygons (P, 2) in pixels (x, y) of ``part`` for a body whose mask spans rows [top, bottom] and columns
    [left, right]. Everything is proportional to the body's box, so the sprite's area scales with its side."""
    w, h = right - left, bottom - top
    cx, cy, short = (left + right) / 2, (top + bottom) / 2, min(w, h)
    rect = lambda x0, y0, x1, y1: np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)  # noqa: E731
    if part == "legs":
        n, width = (2, 0.22 * w) if w < 0.6 * h else (4, 0.09 * w)
        length = 0.3 * h if n == 2 else 0.4 * h
        xs = np.linspace(left + 0.2 * w, right - 0.2 * w, n)
        return [rect(x - width / 2, cy, x + width / 2, bottom + length) for x in xs]
    if part == "wheels":
        r = min(0.15 * w, 0.22 * h)
        return [_ngon(24, r, cx=x, cy=bottom - 0.05 * h) for x in (left + 0.27 * w, right - 0.27 * w)]
    if part == "wings":
        return [np.array([[cx, cy - 0.12 * h], [cx, cy + 0.18 * h], [x, cy + 0.1 * h]], float)
                for x in (left - 0.35 * w, right + 0.35 * w)]
    if part == "windows":
        side = 0.16 * short
        n = int(np.clip(round(w / (2.2 * side)), 2, 5))
        xs = np.linspace(left + 0.2 * w, right - 0.2 * w, n)
        y = top + 0.3 * h
        return [rect(x - side / 2, y - side / 2, x + side / 2, y + side / 2) for x in xs]
    if part == "head":
        r = 0.48 * short
        return [_ngon(24, r, cx=cx, cy=top - 0.6 * r)]
    if part == "pot":
        return [np.array([[cx - 0.35 * w, bottom - 0.1 * h], [cx + 0.35 * w, bottom - 0.1 * h],
                          [cx + 0.22 * w, bottom + 0.4 * h], [cx - 0.22 * w, bottom + 0.4 * h]], float)]
    if part == "cap":
        return [rect(cx - 0.25 * w, top - 0.12 * h, cx + 0.25 * w, top + 0.04 * h)]
    if part == "stand":
        return [rect(cx - 0.06 * w, cy, cx + 0.06 * w, bottom + 0.3 * h),
                rect(cx - 0.3 * w, bottom + 0.27 * h, cx + 0.3 * w, bottom + 0.34 * h)]
    if part == "sail":
        return [np.array([[cx - 0.05 * w, top + 0.1 * h], [cx - 0.05 * w, top - 0.9 * h],
                          [cx + 0.45 * w, top + 0.05 * h]], float)]
    raise ValueError(f"unknown part {part!r}; known: {tuple(PART_LOOKS)}")


def with_parts(body: np.ndarray, texture: np.ndarray, parts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Attach ``parts`` to a body: (bh, bw) bool mask and (bh, bw, 3) texture -> the sprite's (H, W) bool mask and
    (H, W, 3) texture, cropped to the sprite. Parts in :data:`PARTS_BEHIND` go under the body, the others on top;
    windows stay inside the body; wheels get a grey hub. No random draw: a part is a function of its body."""
    if not parts or not body.any():
        return body, texture
    bh, bw = body.shape
    pad = int(np.ceil(max(bh, bw))) + 2
    ch, cw = bh + 2 * pad, bw + 2 * pad
    rows, cols = np.nonzero(body.any(1))[0], np.nonzero(body.any(0))[0]
    box = (pad + rows[0], pad + rows[-1] + 1, pad + cols[0], pad + cols[-1] + 1)   # top, bottom, left, right
    canvas_mask = np.zeros((ch, cw), bool)
    canvas_tex = np.zeros((ch, cw, 3), np.float32)

    def fill(polys: Sequence[np.ndarray]) -> np.ndarray:
        layer = Image.new("L", (cw, ch), 0)
        pen = ImageDraw.Draw(layer)
        for p in polys:
            pen.polygon([tuple(q) for q in p], fill=1)
        return np.asarray(layer, dtype=bool)

    def draw(part: str) -> None:
        polys = _part_polygons(part, *box)
        m = fill(polys)
        if part == "windows":
            inside = np.zeros((ch, cw), bool)
            inside[pad:pad + bh, pad:pad + bw] = body
            m &= inside
        canvas_mask[m] = True
        canvas_tex[m] = PART_LOOKS[part][0]
        if part == "wheels":
            hubs = fill([p.mean(0) + 0.4 * (p - p.mean(0)) for p in polys])
            canvas_tex[hubs & m] = (150, 150, 155)

    for part in parts:
        if part in PARTS_BEHIND:
            draw(part)
    region = (slice(pad, pad + bh), slice(pad, pad + bw))
    canvas_mask[region] |= body
    canvas_tex[region][body] = texture[body]
    for part in parts:
        if part not in PARTS_BEHIND:
            draw(part)
    rows, cols = np.nonzero(canvas_mask.any(1))[0], np.nonzero(canvas_mask.any(0))[0]
    crop = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    return canvas_mask[crop], canvas_tex[crop]


def parts_of(name: str) -> tuple[str, ...]:
    """The parts of class ``name`` (a VOC name or its COCO spelling; other classes have none)."""
    return CLASS_PARTS.get(COCO_ALIASES.get(name, name), ())


_PART_AREA: dict[tuple[str, tuple[str, ...]], float] = {}


def part_area_factor(shape: str, parts: Sequence[str]) -> float:
    """(body + parts) area / body area of an upright instance in the shape's middle aspect (cached)."""
    key = (shape, tuple(parts))
    if key not in _PART_AREA:
        lo, hi = _ASPECT.get(shape, (0.8, 1.25))
        body = _raster(shape, Pose((lo + hi) / 2, 0.0), 120.0)
        sprite, _ = with_parts(body, np.zeros(body.shape + (3,), np.float32), parts)
        _PART_AREA[key] = float(sprite.sum()) / max(float(body.sum()), 1.0)
    return _PART_AREA[key]


# ----------------------------------------------------------------------------------------------------------------
# Background stuff textures, each (h, w, 3) float32 on 0..255.

def _noise(rng: np.random.Generator, std: float, shape: tuple) -> np.ndarray:
    """Gaussian noise in float32 (fast)."""
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int, amp: float) -> np.ndarray:
    """Low-frequency noise: a coarse random grid upsampled bilinearly to (h, w, 1)."""
    gh, gw = max(2, h * cells // max(h, w) + 2), max(2, w * cells // max(h, w) + 2)
    grid = Image.fromarray(_noise(rng, 1, (gh, gw)).astype(np.float32), mode="F")
    return amp * np.asarray(grid.resize((w, h), Image.BILINEAR))[..., None]


def _stuff(rng: np.random.Generator, kind: str, h: int, w: int) -> np.ndarray:
    yy, xx = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    jitter = rng.uniform(-12, 12, 3)
    if kind == "sky":
        top, bottom = np.array([95, 150, 225.0]), np.array([185, 210, 240.0])
        t = (yy / max(h - 1, 1))[..., None]
        return np.broadcast_to(top * (1 - t) + bottom * t + jitter * 0.5, (h, w, 3)).copy()
    if kind == "grass":
        base = np.array([85, 150, 55.0]) + jitter
        streak = _noise(rng, 14, (1, w, 1)) + _noise(rng, 9, (h, w, 1))
        return base + streak + _smooth_noise(rng, h, w, 6, 10)
    if kind == "water":
        base = np.array([40, 100, 170.0]) + jitter
        waves = 16 * np.sin(yy / rng.uniform(3, 6) + 2 * np.sin(xx / rng.uniform(12, 25)))
        return base + waves[..., None] * np.array([0.6, 0.8, 1.0])
    if kind == "road":
        tex = np.array([78, 78, 84.0]) + jitter * 0.3 + _noise(rng, 7, (h, w, 1))
        y0 = int(h * rng.uniform(0.35, 0.65))
        lane = (np.abs(yy - y0) < max(1.5, h * 0.03)) & ((xx // max(8, w // 10)) % 2 == 0)
        tex[lane] = (235, 215, 90) if rng.uniform() < 0.5 else (235, 235, 235)
        return tex
    if kind == "ground":
        return np.array([150, 115, 75.0]) + jitter + _smooth_noise(rng, h, w, 10, 16) + _noise(rng, 6, (h, w, 1))
    if kind == "wall":
        mortar, brick = np.array([200, 195, 185.0]), np.array([165, 95, 75.0]) + jitter
        bh = rng.uniform(9, 16)
        row = yy // bh
        tex = np.broadcast_to(brick, (h, w, 3)).copy() + _noise(rng, 6, (h, w, 1))
        seam = ((yy % bh) < 1.6) | (((xx + (row % 2) * bh * 1.25) % (bh * 2.5)) < 1.6)
        tex[seam] = mortar
        return tex
    if kind == "building":
        tex = np.array([140, 140, 150.0]) + jitter * 0.5 + _noise(rng, 5, (h, w, 1))
        cell = rng.uniform(12, 20)
        win = ((yy % cell) > cell * 0.35) & ((xx % cell) > cell * 0.4)
        tex[win] = (60, 70, 90)
        return tex
    if kind == "tree":
        return (np.array([40, 95, 40.0]) + jitter * 0.5 + _smooth_noise(rng, h, w, 14, 20)
                + _noise(rng, 8, (h, w, 1)))
    if kind == "mountain":
        tex = _stuff(rng, "sky", h, w)
        peaks = int(rng.integers(2, 4))
        ridge = np.full(w, float(h))
        for _ in range(peaks):
            px, py, slope = rng.uniform(0, w), rng.uniform(0.05, 0.5) * h, rng.uniform(0.6, 1.4)
            ridge = np.minimum(ridge, py + slope * np.abs(np.arange(w) - px))
        rock = np.array([120, 115, 110.0]) + jitter * 0.5 + _smooth_noise(rng, h, w, 8, 14)
        below = yy >= ridge[None, :]
        tex[below] = rock[below]
        return tex
    if kind == "railway":
        tex = _stuff(rng, "ground", h, w)
        gap = max(6.0, h * 0.22)
        y0 = rng.uniform(0.25, 0.45) * h
        sleepers = (yy > y0 - 3) & (yy < y0 + gap + 3) & ((xx % max(6.0, w / 16)) < 3)
        tex[sleepers] = (95, 70, 45)
        for yr in (y0, y0 + gap):
            tex[(np.abs(yy - yr) < 1.5) & (xx >= 0)] = (170, 170, 175)
        return tex
    raise ValueError(f"unknown stuff kind {kind!r}")


# ----------------------------------------------------------------------------------------------------------------

BACKDROP_KINDS = ("blend", "bands", "gradient", "tiles")


def _backdrop(rng: np.random.Generator, h: int, w: int, kinds: Sequence[str] = BACKDROP_KINDS) -> np.ndarray:
    """An unnamed background (H, W, 3) float32 on 0..255: two random muted colours in one of ``kinds`` (of
    :data:`BACKDROP_KINDS`: a smooth blend, wavy bands at a random angle, a gradient, large faint tiles) with
    random scales, so that no look recurs across scenes as the named stuff kinds do. No background name describes
    it."""
    yy, xx = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    a, b = (rng.uniform(60, 190) + rng.uniform(-45, 45, 3) for _ in range(2))     # muted, as stuff is
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "blend":
        t = np.clip(0.5 + _smooth_noise(rng, h, w, int(rng.integers(3, 9)), 0.6), 0, 1)
    elif kind == "bands":
        angle, period = rng.uniform(0, np.pi), rng.uniform(0.08, 0.35) * max(h, w)
        u = xx * np.cos(angle) + yy * np.sin(angle)
        t = (0.5 + 0.5 * np.sin(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi)))[..., None]
    elif kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        u = xx * np.cos(angle) + yy * np.sin(angle)
        t = ((u - u.min()) / max(float(u.max() - u.min()), 1.0))[..., None]
    else:
        cell = rng.uniform(0.12, 0.3) * max(h, w)
        t = (((yy // cell) + (xx // cell)) % 2)[..., None] * rng.uniform(0.15, 0.4)   # fainter than "checks"
    return (a * (1 - t) + b * t + _noise(rng, rng.uniform(2, 10), (h, w, 1))).astype(np.float32)


@dataclass
class Scene:
    """One rendered scene: ``image`` (H, W, 3) uint8, ``mask`` (H, W) uint8 (0 background, c+1 class c, no
    ignore band), the visible classes (ascending), the background stuff kinds, the props drawn and the visible
    instances as (class, visible pixels) in drawing order."""
    image: np.ndarray
    mask: np.ndarray
    classes: list[int]
    stuff: list[str]
    props: list[str] = field(default_factory=list)
    instances: list[tuple[int, int]] = field(default_factory=list)


class World:
    """A world of ``class_names`` (default: the 20 VOC classes) with the VOC prompt names for captions.

    ``object_scale`` multiplies every object's side (its area by the square). 1.0 is the world the shipped organism
    learned, with VOC's statistics; the random draws are the same at any scale, so a scene differs across scales
    only in its objects' sizes (and in what they hide).

    ``parts`` attaches to each object the parts of :data:`CLASS_PARTS` (wheels, legs, wings, ...: looks that
    several classes share, whatever the body's colour), labelled as the object; an instance keeps its drawn share
    of the image with its parts. The knowledge base then describes the parts, and captions at times name an object
    by one of them. A scene draws the same classes, instances, sizes and background as without parts; where the
    objects land differs.

    ``varied_backdrops`` is the chance that a scene's background is an unnamed backdrop (:func:`_backdrop`: random
    colours and pattern) instead of the named stuff kinds, so that the background is not the same few looks in
    every image, as it is not in VOC. Its caption then names no background. At 0 no draw is taken, so every scene
    is the one the shipped organism learned. ``backdrop_kinds`` limits the backdrops to some of
    :data:`BACKDROP_KINDS` (e.g. the smooth ones, "blend" and "gradient", without the bands and tiles that look
    like striped and checked objects); which scenes get a backdrop does not depend on it.
    """

    def __init__(self, class_names: Sequence[str] | None = None, prompt_names: Sequence[str] | None = None,
                 object_scale: float = 1.0, parts: bool = False, varied_backdrops: float = 0.0,
                 backdrop_kinds: Sequence[str] = BACKDROP_KINDS):
        if not 0.0 < float(object_scale) <= 4.0:
            raise ValueError(f"object_scale must be in (0, 4], got {object_scale}")
        if not 0.0 <= float(varied_backdrops) <= 1.0:
            raise ValueError(f"varied_backdrops must be a probability in [0, 1], got {varied_backdrops}")
        self.varied_backdrops = float(varied_backdrops)
        unknown = [k for k in backdrop_kinds if k not in BACKDROP_KINDS]
        if unknown or not backdrop_kinds:
            raise ValueError(f"backdrop_kinds must be a non-empty choice of {list(BACKDROP_KINDS)}, got "
                             f"{list(backdrop_kinds)}")
        self.backdrop_kinds = tuple(backdrop_kinds)
        self.object_scale = float(object_scale)
        self.parts = bool(parts)
        self.signatures = signatures_for(class_names or [s.name for s in VOC_SIGNATURES])
        self.class_names = [s.name for s in self.signatures]
        if prompt_names is None:
            voc = dict(zip((s.name for s in VOC_SIGNATURES), VOC_PROMPT_NAMES))
            prompt_names = [voc.get(n, n) for n in self.class_names]
        if len(prompt_names) != len(self.class_names):
            raise ValueError(f"{len(prompt_names)} prompt names for {len(self.class_names)} classes")
        self.prompt_names = list(prompt_names)

    @property
    def num_classes(self) -> int:
        return len(self.signatures)

    # -- rendering -------------------------------------------------------------------------------------------
    def _layout(self, rng: np.random.Generator, classes: Sequence[int]) -> tuple[str, str | None]:
        habitat = self.signatures[int(rng.choice(classes))].habitat if rng.uniform() < 0.5 else None
        if habitat == "wall" or (habitat is None and rng.uniform() < 0.25):
            return "wall", ("ground" if rng.uniform() < 0.5 else None)
        if habitat == "sky":
            return "sky", (str(rng.choice(BOTTOMS)) if rng.uniform() < 0.6 else None)
        bottom = habitat if habitat in BOTTOMS else str(rng.choice(BOTTOMS))
        return str(rng.choice(TOPS)), bottom

    def _draw_classes(self, rng: np.random.Generator, max_classes: int) -> list[int]:
        """1..``max_classes`` distinct classes, with :data:`CLASSES_PER_SCENE` odds and person more frequent."""
        odds = np.asarray(CLASSES_PER_SCENE[:max(1, max_classes)], float)
        n = min(int(rng.choice(len(odds), p=odds / odds.sum())) + 1, self.num_classes)
        weight = np.array([PERSON_WEIGHT if name == "person" else 1.0 for name in self.class_names])
        return [int(c) for c in rng.choice(self.num_classes, size=n, replace=False, p=weight / weight.sum())]

    def render(self, rng: np.random.Generator, h: int, w: int, max_objects: int = 3,
               classes: Sequence[int] | None = None) -> Scene:
        """Draw a scene of size (h, w): 1..``max_objects`` classes with 1-4 instances each (VOC's statistics), or
        exactly one instance of each class in ``classes``. Instances may overlap and run over the image border."""
        if classes is None:
            classes = self._draw_classes(rng, max_objects)
            odds = np.asarray(INSTANCES_PER_CLASS, float)
            instances = [c for c in classes for _ in range(int(rng.choice(len(odds), p=odds / odds.sum())) + 1)]
        else:
            instances = [int(c) for c in classes]
        img = np.empty((h, w, 3), np.float32)
        stuff: list[str] = []
        props: list[str] = []
        top = None
        if self.varied_backdrops > 0 and rng.uniform() < self.varied_backdrops:
            img[:] = _backdrop(rng, h, w, self.backdrop_kinds)
            horizon = h
        else:
            top, bottom = self._layout(rng, classes)
            horizon = int(h * rng.uniform(0.35, 0.6)) if bottom else h
            img[:horizon] = _stuff(rng, top, horizon, w)
            stuff.append(top)
            if bottom:
                img[horizon:] = _stuff(rng, bottom, h - horizon, w)
                stuff.append(bottom)
        if top == "sky" and rng.uniform() < 0.5:
            props.append("cloud")
            for _ in range(int(rng.integers(1, 4))):
                cy, cx = rng.uniform(0, horizon * 0.7), rng.uniform(0, w)
                ry, rx = rng.uniform(0.04, 0.09) * h, rng.uniform(0.08, 0.2) * w
                yy, xx = np.ogrid[0:h, 0:w]
                blob = np.clip(1.3 - ((yy - cy) / ry) ** 2 - ((xx - cx) / rx) ** 2, 0, 1)[..., None]
                img = img * (1 - blob) + 245.0 * blob
        short = min(h, w)
        for _ in range(int(rng.integers(0, 4))):           # distractor blobs in colours no class uses
            m = _shape_mask(rng, str(rng.choice(["disc", "hexagon", "diamond", "box"])),
                            rng.uniform(0.08, 0.2) * short)
            y0, x0 = int(rng.integers(0, max(1, h - m.shape[0]))), int(rng.integers(0, max(1, w - m.shape[1])))
            m = m[:h - y0, :w - x0]
            col = np.asarray(DISTRACTOR_COLOURS[int(rng.integers(len(DISTRACTOR_COLOURS)))], float)
            img[y0:y0 + m.shape[0], x0:x0 + m.shape[1]][m] = col + rng.normal(0, 5, (int(m.sum()), 3))
        # each instance: a pose and an area share of the image, drawn before any is placed; the larger are drawn
        # first, so the smaller stay visible on top of them
        crowd = len(instances) ** CROWDING
        posed = []
        for c in instances:
            sig = self.signatures[c]
            pose = _pose(rng, sig.shape)
            share = min(SIZES[sig.size] * float(np.exp(AREA_SPREAD * rng.standard_normal())) / crowd, 0.85)
            side = side_for_area(sig.shape, pose, share * h * w) * self.object_scale
            if self.parts:
                side /= np.sqrt(part_area_factor(sig.shape, parts_of(sig.name)))
            posed.append((side, c, pose))
        mask = np.zeros((h, w), np.uint8)
        ids = np.zeros((h, w), np.int16)                   # instance k + 1 where instance k is on top
        drawn: dict[int, int] = {}
        order = sorted(posed, key=lambda t: -t[0])
        for k, (side, c, pose) in enumerate(order):
            sig = self.signatures[c]
            m = _raster(sig.shape, pose, min(side, 1.6 * max(h, w)))
            bh, bw = m.shape
            if self.parts:
                m, sprite = with_parts(m, _object_texture(rng, sig, bh, bw), parts_of(sig.name))
                bh, bw = m.shape
            # the box may run over each border by up to a quarter of its side (VOC's truncated objects)
            y0 = int(rng.integers(min(0, h - bh) - bh // 4, max(0, h - bh) + bh // 4 + 1))
            x0 = int(rng.integers(min(0, w - bw) - bw // 4, max(0, w - bw) + bw // 4 + 1))
            ys, xs = slice(max(y0, 0), min(y0 + bh, h)), slice(max(x0, 0), min(x0 + bw, w))
            m = m[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]
            tex = (sprite if self.parts else _object_texture(rng, sig, bh, bw))[ys.start - y0:ys.stop - y0,
                                                                                xs.start - x0:xs.stop - x0]
            img[ys, xs][m] = tex[m]
            mask[ys, xs][m] = c + 1
            ids[ys, xs][m] = k + 1
            drawn[c] = drawn.get(c, 0) + int(m.sum())
        img += _noise(rng, 3, (h, w, 1))
        counts = np.bincount(mask.ravel(), minlength=self.num_classes + 1)
        visible = sorted(c for c, area in drawn.items() if area > 0 and counts[c + 1] >= max(0.25 * area, 1))
        for c in set(drawn) - set(visible):                # mostly hidden objects are not labelled
            mask[mask == c + 1] = 0
        left = np.bincount(ids.ravel(), minlength=len(order) + 1)[1:]
        instances = [(c, int(n)) for (_, c, _), n in zip(order, left) if c in visible and n > 0]
        return Scene(np.clip(img, 0, 255).astype(np.uint8), mask, visible, stuff, props, instances)

    # -- words -----------------------------------------------------------------------------------------------
    def attribute_sentences(self, c: int) -> list[str]:
        """21 sentences about class ``c``'s look, each starting "it ..." (the knowledge base's style). In a part
        world, three sentences per part take the place of the size and habitat sentences (these fill the rest)."""
        s = self.signatures[c]
        adj, noun = SHAPE_WORDS[s.shape]
        pat = PATTERN_WORDS[s.pattern]
        where = HABITAT_PHRASES[s.habitat]
        stuff = STUFF_WORDS[s.habitat][0]
        sentences = [
            f"it is {s.colour}.", f"it has a bright {s.colour} colour.", f"its surface is mostly {s.colour}.",
            f"it looks {s.colour} from every side.",
            f"it has a {adj} shape.", f"its outline looks like {noun}.", f"it is shaped like {noun}.",
            f"its silhouette is {adj}.",
            f"it has {pat}.", f"its surface shows {pat}.", f"its {s.colour} body has {pat}.",
            f"it is covered with {pat}." if s.pattern != "plain" else "it has no stripes, spots or squares.",
            f"it is usually {s.size}.", f"it takes up a {s.size} part of the picture.",
            f"its size is {s.size} next to other objects.",
            f"it is often seen {where}.", f"it usually appears {where}.", f"its typical surrounding is {stuff}.",
            f"it is {_a(s.colour)} {adj} object.", f"it is a {s.size} {s.colour} thing shaped like {noun}.",
            f"its {adj} body is {s.colour} with {pat}.",
        ]
        if not self.parts:
            return sentences
        about_parts = [t for part in parts_of(s.name)[:2] for t in PART_LOOKS[part][1]]
        context = sentences[12:18]                      # size and habitat
        return sentences[:12] + about_parts + context[:6 - len(about_parts)] + sentences[18:]

    def knowledge_base(self, prefix: str = "a clean origami {}. ") -> dict[str, list[str]]:
        """{class name: [prefix + attribute sentence, ...]} in the format of the shipped knowledge bases."""
        return {name: [prefix.format(name) + t for t in self.attribute_sentences(c)]
                for c, name in enumerate(self.class_names)}

    def caption(self, rng: np.random.Generator, classes: Sequence[int], stuff: Sequence[str] = (),
                background_prob: float = 0.3, template_prob: float = 0.0) -> str:
        """A caption naming ``classes`` (prompt or plain names, in several templates), at times one class's
        attribute in the knowledge base's words and, with probability ``background_prob``, the background
        ``stuff`` kinds by their VOC names (a caption of a view without classes names only them). With
        probability ``template_prob`` a caption in another lead calls its objects by the text bank's template
        too ("a photo of a clean origami dog."), so that the template's words come with objects only."""
        classes = list(classes)
        rng.shuffle(classes)
        names = [self.prompt_names[c] if rng.uniform() < 0.7 else self.class_names[c] for c in classes]
        if self.parts:   # a class named by one of its parts: "a thing with black wheels"
            for i, c in enumerate(classes):
                own = parts_of(self.class_names[c])
                if own and rng.uniform() < PART_NAMING:
                    names[i] = "thing with " + PART_PHRASES[own[int(rng.integers(len(own)))]]
        if not names:
            if not stuff:                                      # a view of an unnamed backdrop
                return "a photo of a plain background."
            return "a photo of " + " and ".join(_a(str(rng.choice(STUFF_WORDS[k]))) for k in stuff) + "."
        kind = int(rng.integers(5))
        if kind == 0:                                          # the text bank's template, once per class
            text = " and ".join("a clean origami " + n for n in names) + "."
        else:
            lead = ("a photo of ", "a picture of ", "an image of ", "")[kind - 1]
            if template_prob > 0 and rng.uniform() < template_prob:   # no draw at 0: the default stream stays
                names = ["clean origami " + n for n in names]
            text = lead + " and ".join(_a(n) for n in names) + "."
        if rng.uniform() < 0.35:
            c = int(rng.choice(classes))
            sentence = str(rng.choice(self.attribute_sentences(c)))
            subject = "it" if len(classes) == 1 else f"the {self.class_names[c]}"
            text += " " + subject + sentence[2:]
        if stuff and rng.uniform() < background_prob:
            words = [str(rng.choice(STUFF_WORDS[k])) for k in stuff]
            text += " " + " and ".join(words) + (" are" if len(words) > 1 else " is") + " in the background."
        return text


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun
