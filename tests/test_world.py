"""The generated world: distinct class looks, renders that follow the signatures, captions and knowledge base."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from excel.data.synthetic import COCO_CLASSES, VOC_CLASSES
from excel.data.world import COLOURS, SHAPES, STUFF_WORDS, VOC_SIGNATURES, World, signatures_for

REPO = Path(__file__).resolve().parent.parent


def test_every_class_has_a_distinct_look():
    assert [s.name for s in VOC_SIGNATURES] == list(VOC_CLASSES)
    looks = {(s.colour, s.shape) for s in VOC_SIGNATURES}
    assert len(looks) == 20                                    # separable at a glance: colour and shape
    per_colour = {c: sum(s.colour == c for s in VOC_SIGNATURES) for c in COLOURS}
    assert set(per_colour.values()) == {2}                     # every colour shared by exactly two classes
    coco = signatures_for(COCO_CLASSES)
    assert len({(s.colour, s.shape, s.pattern) for s in coco}) == 80
    assert coco[COCO_CLASSES.index("airplane")].shape == "cross"   # COCO spellings keep the VOC look
    with pytest.raises(ValueError, match="too many"):
        signatures_for([f"c{i}" for i in range(len(COLOURS) * len(SHAPES) * 4 + 1)])


def test_render_follows_the_signature():
    world = World()
    hits = []
    for i in range(40):
        rng = np.random.default_rng([3, i])
        scene = world.render(rng, 240, 320)
        assert scene.image.shape == (240, 320, 3) and scene.image.dtype == np.uint8
        assert 1 <= len(scene.classes) <= 3 and scene.classes == sorted(scene.classes)
        assert set(np.unique(scene.mask)) - {0} == {c + 1 for c in scene.classes}
        img = scene.image.astype(float)
        for c in scene.classes:
            pixels = img[scene.mask == c + 1]
            body = np.asarray(COLOURS[world.signatures[c].colour], float)
            near = (np.abs(pixels - body).max(1) < 45).mean()  # share of the object's pixels in its body colour
            hits.append(near)
    # plain bodies are nearly all body colour, stripes/checks/spots at least about half
    assert min(hits) > 0.3 and np.median(hits) > 0.6


def test_render_is_a_function_of_the_generator():
    world = World()
    a = world.render(np.random.default_rng(5), 100, 120)
    b = world.render(np.random.default_rng(5), 100, 120)
    c = world.render(np.random.default_rng(6), 100, 120)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.image, c.image)


def test_object_scale_grows_the_objects_only():
    def scenes(world):
        return [world.render(np.random.default_rng([11, i]), 160, 200, classes=[i % 20]) for i in range(20)]

    base, same, big = scenes(World()), scenes(World(object_scale=1.0)), scenes(World(object_scale=2.0))
    assert all(np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask) for a, b in zip(base, same))
    # one object per scene, so nothing hides it: its side doubles, its area about quadruples (capped at the short
    # side, and the shapes' own proportions vary with the side only through rounding)
    area = np.array([(s.mask > 0).sum() for s in base], float)
    area2 = np.array([(s.mask > 0).sum() for s in big], float)
    assert np.median(area2 / area) > 3.0 and (area2 > area).all()
    assert [s.classes for s in big] == [s.classes for s in base] == [[i % 20] for i in range(20)]
    assert [s.stuff for s in big] == [s.stuff for s in base]          # same draws: the same background
    with pytest.raises(ValueError, match="object_scale"):
        World(object_scale=0.0)


def test_captions_name_the_classes_and_use_pipeline_words():
    world = World()
    rng = np.random.default_rng(0)
    captions = [world.caption(rng, [7, 11], ["wall", "ground"]) for _ in range(200)]
    assert all(("cat" in t) and ("dog" in t) for t in captions)
    assert any(t.startswith("a clean origami cat and a clean origami dog.")
               or t.startswith("a clean origami dog and a clean origami cat.") for t in captions)
    assert any("wall" in t for t in captions) and any("the cat " in t or "the dog " in t for t in captions)
    assert world.caption(rng, [], ["sky"]) == "a photo of a sky."
    voc_background = {w for words in STUFF_WORDS.values() for w in words}
    assert {"ground", "grass", "sky", "water", "road", "wall", "railway", "cloud"} <= voc_background


def test_shipped_knowledge_base_is_the_worlds():
    shipped = json.loads((REPO / "excel" / "knowledge" / "organism_knowledge_base.json").read_text())
    assert shipped == World().knowledge_base()
    assert list(shipped) == list(VOC_CLASSES)
    for name, sentences in shipped.items():
        assert len(sentences) >= 20 and len(set(sentences)) == len(sentences)
        assert all(s.startswith(f"a clean origami {name}. it") for s in sentences)
    cow = " ".join(shipped["cow"])
    assert "white" in cow and "round" in cow and "spots" in cow and "grass" in cow
