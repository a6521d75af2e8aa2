"""The generated world: distinct class looks, renders that follow the signatures, captions and knowledge base."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from excel.data.classes import COCO_CLASSES, VOC_CLASSES
from excel.organism.world import COLOURS, SHAPES, STUFF_WORDS, VOC_SIGNATURES, World, signatures_for

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
        assert {c for c, _ in scene.instances} == set(scene.classes)
        assert sum(n for _, n in scene.instances) == int((scene.mask > 0).sum())   # instances tile the foreground
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
    # one object per scene, so nothing hides it: its side doubles, so an object clear of the border at scale 1
    # about quadruples its area (objects may run over the border, which then cuts them)
    area = np.array([(s.mask > 0).sum() for s in base], float)
    area2 = np.array([(s.mask > 0).sum() for s in big], float)
    clear = np.array([not (s.mask[[0, -1]].any() or s.mask[:, [0, -1]].any()) for s in base])
    assert clear.sum() >= 4 and np.median(area2[clear] / area[clear]) > 3.0
    assert [s.classes for s in big] == [s.classes for s in base] == [[i % 20] for i in range(20)]
    assert [s.stuff for s in big] == [s.stuff for s in base]          # same draws: the same background
    with pytest.raises(ValueError, match="object_scale"):
        World(object_scale=0.0)


def test_scene_statistics_are_voc_like():
    """The default world's scene statistics are in VOC 2012's ranges (benchmarks/world_stats.py prints them)."""
    from excel.organism.synthetic import WORLD_SIZE, voc_scene
    from excel.organism.stats import scene_statistics, within_voc

    world = World()
    stats = scene_statistics((voc_scene(5, i, WORLD_SIZE, world) for i in range(1, 161)), world.class_names)
    assert stats["images"] == 160 and stats["objects"] == round(stats["objects_per_image"] * 160)
    assert all(within_voc(stats).values()), stats
    shares = stats["class_image_share"]
    assert shares["person"] > 2 * max(v for k, v in shares.items() if k != "person")   # person leads, as in VOC


def test_scene_statistics_by_hand():
    from excel.organism.world import Scene
    from excel.organism.stats import scene_statistics

    mask = np.zeros((10, 10), np.uint8)
    mask[:2, :5] = 1                        # class 0: one instance of 10 px
    mask[5:, 5:] = 2                        # class 1: two instances of 15 + 10 px
    one = Scene(np.zeros((10, 10, 3), np.uint8), mask, [0, 1], [], [], [(0, 10), (1, 15), (1, 10)])
    two = Scene(np.zeros((10, 20, 3), np.uint8), np.zeros((10, 20), np.uint8), [], [], [], [])
    stats = scene_statistics([one, two], ["a", "b"])
    assert stats["foreground_share"] == pytest.approx((0.35 + 0.0) / 2)
    assert stats["classes_per_image"] == 1.0 and stats["objects_per_image"] == 1.5
    assert stats["area_median"] == pytest.approx(0.10) and stats["area_q1"] == pytest.approx(0.10)
    assert stats["area_q3"] == pytest.approx(0.125)
    assert stats["long_side"] == 15 and stats["class_image_share"] == {"a": 0.5, "b": 0.5}


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


def test_the_shipped_voc_config_spells_the_names_of_excel_data_classes():
    from omegaconf import OmegaConf

    from excel.data.classes import VOC_BACKGROUND_NAMES, VOC_PROMPT_NAMES

    voc = OmegaConf.load(REPO / "configs" / "voc.yaml").data
    assert tuple(voc.class_names) == VOC_CLASSES and tuple(voc.prompt_names) == VOC_PROMPT_NAMES
    assert tuple(voc.background_names) == VOC_BACKGROUND_NAMES
    coco = OmegaConf.load(REPO / "configs" / "coco.yaml").data
    assert tuple(coco.class_names) == COCO_CLASSES


def test_parts_attach_to_the_body_by_hand():
    """A 20 x 40 box body: four legs of 0.09 * 40 = 3.6 px, centred at 8, 16, 24, 32, reach 0.4 * 20 = 8 rows
    below it (PIL fills polygon edges inclusively: 4 px wide, 9 rows); windows stay inside the body; wheels get a
    grey hub; the body's own pixels keep its texture."""
    from excel.organism.world import PART_LOOKS, with_parts

    body = np.ones((20, 40), bool)
    texture = np.full((20, 40, 3), 200.0, np.float32)
    mask, tex = with_parts(body, texture, ("legs",))
    assert mask.shape == (29, 40) and mask[:20].all()
    assert list(np.nonzero(mask[-1])[0]) == [6, 7, 8, 9, 14, 15, 16, 17, 22, 23, 24, 25, 30, 31, 32, 33]
    assert (tex[20:][mask[20:]] == PART_LOOKS["legs"][0]).all() and (tex[:20] == 200).all()   # legs go behind
    mask, tex = with_parts(body, texture, ("windows",))
    assert mask.shape == (20, 40) and mask.all()                        # inside the body: no new pixels
    assert (tex == PART_LOOKS["windows"][0]).all(-1).sum() > 0
    mask, tex = with_parts(body, texture, ("wheels",))
    colours = {tuple(c) for c in tex[mask].reshape(-1, 3).tolist()}
    assert colours == {(200.0, 200.0, 200.0), tuple(map(float, PART_LOOKS["wheels"][0])), (150.0, 150.0, 155.0)}
    assert with_parts(body, texture, ())[0] is body                    # no parts: the body as it is


def test_part_world_labels_parts_as_their_object_and_keeps_the_layout():
    from excel.organism.world import PART_LOOKS, parts_of

    plain, parted = World(), World(parts=True)
    car = VOC_CLASSES.index("car")
    wheel = np.asarray(PART_LOOKS["wheels"][0], float)
    found = 0
    for i in range(12):
        a = plain.render(np.random.default_rng([4, i]), 200, 240, classes=[car])
        b = parted.render(np.random.default_rng([4, i]), 200, 240, classes=[car])
        assert a.stuff == b.stuff                                      # the same draws: the same background
        if b.classes:
            on_car = b.image[b.mask == car + 1].astype(float)
            found += int((np.abs(on_car - wheel).max(1) < 30).sum() > 0)   # wheel pixels are labelled car
    assert found >= 8
    assert parts_of("car") == ("wheels", "windows") and parts_of("airplane") == ("wings", "windows")
    assert parts_of("toaster") == ()


def test_part_world_is_voc_like_and_its_words_name_the_parts():
    from excel.organism.synthetic import WORLD_SIZE, voc_scene
    from excel.organism.stats import scene_statistics, within_voc

    world = World(parts=True)
    stats = scene_statistics((voc_scene(5, i, WORLD_SIZE, world) for i in range(1, 161)), world.class_names)
    assert all(within_voc(stats).values()), stats
    kb = world.knowledge_base()
    for name, sentences in kb.items():
        assert len(sentences) == 21 and len(set(sentences)) == 21
        assert all(s.startswith(f"a clean origami {name}. it") for s in sentences)
    assert "a clean origami car. it has two round black wheels." in kb["car"]
    assert "a clean origami person. it has a round head on top." in kb["person"]
    assert any("usually" in s for s in kb["bottle"])                   # one part: habitat sentences fill up
    shipped = json.loads((REPO / "excel" / "knowledge" / "organism_parts_knowledge_base.json").read_text())
    assert shipped == kb
    rng = np.random.default_rng(0)
    captions = [world.caption(rng, [VOC_CLASSES.index("car")], ["road"]) for _ in range(200)]
    named_by_part = [t for t in captions if "thing with black wheels" in t or "thing with pale blue windows" in t]
    assert 20 <= len(named_by_part) <= 70                              # PART_NAMING = 0.2 of 200
    assert not any("thing with" in World().caption(rng, [6], ["road"]) for _ in range(100))


def test_make_synthetic_and_world_stats_take_the_part_world(tmp_path, capsys):
    """``--parts`` reaches the generated data and the statistics: the written masks are the part world's scenes."""
    from PIL import Image

    from _tools import load_script, load_tool
    from excel.organism.synthetic import WORLD_SIZE, ignore_band, voc_scene

    for flag, root in (([], tmp_path / "plain"), (["--parts"], tmp_path / "parts")):
        assert load_tool("make_synthetic").main(["--root", str(root), "--num-train", "2", "--num-val", "1",
                                                 "--num-test", "0", "--seed", "3", *flag]) == 0
    world = World(parts=True)
    for index, name in enumerate(["2007_000001", "2007_000002", "2007_000003"], start=1):
        written = np.array(Image.open(tmp_path / "parts" / "SegmentationClassAug" / f"{name}.png"))
        assert np.array_equal(written, ignore_band(voc_scene(3, index, WORLD_SIZE, world).mask))
    plain = [np.array(Image.open(p)) for p in sorted((tmp_path / "plain" / "SegmentationClassAug").glob("*.png"))]
    parts = [np.array(Image.open(p)) for p in sorted((tmp_path / "parts" / "SegmentationClassAug").glob("*.png"))]
    assert any(a.shape != b.shape or not np.array_equal(a, b) for a, b in zip(plain, parts))
    capsys.readouterr()
    assert load_script("benchmarks/world_stats.py").main(["--parts", "--seed", "3", "--num-train", "2",
                                                          "--num-val", "1"]) == 0
    assert "objects with parts" in capsys.readouterr().out


def test_varied_backdrops_replace_the_named_stuff_and_leave_the_default_stream():
    """At 0 every scene is the shipped organism's; at 1 every background is an unnamed backdrop whose look changes
    from scene to scene (the backdrop's draws come first, so the objects land elsewhere than at 0)."""
    from excel.organism.world import _backdrop

    plain = [World().render(np.random.default_rng([4, i]), 120, 160) for i in range(12)]
    zero = [World(varied_backdrops=0.0).render(np.random.default_rng([4, i]), 120, 160) for i in range(12)]
    assert all(np.array_equal(a.image, b.image) and a.stuff == b.stuff for a, b in zip(plain, zero))
    varied = [World(varied_backdrops=1.0).render(np.random.default_rng([4, i]), 120, 160) for i in range(30)]
    assert all(s.stuff == [] and s.props == [] for s in varied)
    assert all(np.all(s.mask < 21) and len(s.classes) >= 1 for s in varied)
    # the named stuff repeats a few looks, backdrops do not: the median distance from a scene's mean background
    # colour to the nearest other scene's (7.8 for the named stuff, 18.3 for backdrops over these 40 scenes)
    def nearest_colour_distance(world):
        scenes = [world.render(np.random.default_rng([4, i]), 120, 160) for i in range(40)]
        colour = np.array([s.image[s.mask == 0].reshape(-1, 3).mean(axis=0) for s in scenes])
        d = np.linalg.norm(colour[:, None] - colour[None], axis=-1) + np.diag(np.full(len(colour), np.inf))
        return float(np.median(d.min(axis=1)))
    assert nearest_colour_distance(World(varied_backdrops=1.0)) > 2 * nearest_colour_distance(World())
    # each kind, by hand: values stay on 0..255 (plus noise) and two colours are mixed
    for seed in range(12):
        tex = _backdrop(np.random.default_rng(seed), 40, 50)
        assert tex.shape == (40, 50, 3) and tex.dtype == np.float32
        assert -40 < tex.min() and tex.max() < 300 and tex.std() > 1
    assert World(varied_backdrops=0.5).caption(np.random.default_rng(0), [], []) == "a photo of a plain background."
    with pytest.raises(ValueError, match="varied_backdrops"):
        World(varied_backdrops=1.5)


def test_make_synthetic_and_world_stats_take_varied_backdrops(tmp_path, capsys):
    from PIL import Image

    from _tools import load_script, load_tool
    from excel.organism.synthetic import WORLD_SIZE, voc_scene

    root = tmp_path / "varied"
    assert load_tool("make_synthetic").main(["--root", str(root), "--num-train", "2", "--num-val", "1",
                                             "--num-test", "0", "--seed", "3", "--varied-backdrops", "1"]) == 0
    world = World(varied_backdrops=1.0)
    for index, name in enumerate(["2007_000001", "2007_000002", "2007_000003"], start=1):
        image = np.array(Image.open(root / "JPEGImages" / f"{name}.jpg")).astype(float)
        scene = voc_scene(3, index, WORLD_SIZE, world)
        assert scene.stuff == [] and np.abs(image - scene.image).mean() < 6       # the JPEG of that scene
    capsys.readouterr()
    assert load_script("benchmarks/world_stats.py").main(["--varied-backdrops", "0.5", "--seed", "3",
                                                          "--num-train", "2", "--num-val", "4"]) == 0
    assert "unnamed backdrops in 50% of scenes" in capsys.readouterr().out


def test_backdrop_kinds_choose_the_look_not_the_scenes(tmp_path):
    """``backdrop_kinds`` limits the backdrops' kinds; which scenes stand on a backdrop stays the same, and the
    dataset tool passes the choice on."""
    from PIL import Image

    from _tools import load_tool
    from excel.organism.world import BACKDROP_KINDS

    every, smooth = World(varied_backdrops=0.5), World(varied_backdrops=0.5, backdrop_kinds=("blend", "gradient"))
    assert every.backdrop_kinds == BACKDROP_KINDS and smooth.backdrop_kinds == ("blend", "gradient")
    a = [every.render(np.random.default_rng([9, i]), 60, 80) for i in range(16)]
    b = [smooth.render(np.random.default_rng([9, i]), 60, 80) for i in range(16)]
    assert [s.stuff == [] for s in a] == [s.stuff == [] for s in b] and 3 <= sum(s.stuff == [] for s in a) <= 13
    # the scenes on named stuff are drawn exactly as before
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b) if x.stuff)
    with pytest.raises(ValueError, match="backdrop_kinds"):
        World(varied_backdrops=0.5, backdrop_kinds=("stripes",))
    with pytest.raises(ValueError, match="backdrop_kinds"):
        World(backdrop_kinds=())
    roots = {}
    for kinds in (["blend"], ["tiles"]):
        roots[kinds[0]] = tmp_path / kinds[0]
        assert load_tool("make_synthetic").main(["--root", str(roots[kinds[0]]), "--num-train", "3", "--num-val", "0",
                                                 "--num-test", "0", "--seed", "3", "--varied-backdrops", "1",
                                                 "--backdrop-kinds", *kinds]) == 0
    images = [[np.asarray(Image.open(roots[k] / "JPEGImages" / f"2007_00000{i}.jpg"), float) for i in (1, 2, 3)]
              for k in ("blend", "tiles")]
    assert all(x.shape != y.shape or np.abs(x - y).mean() > 3 for x, y in zip(*images))
