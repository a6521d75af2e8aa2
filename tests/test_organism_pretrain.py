"""Organism pretraining (resumable, deterministic) and the shipped-weight format, on the tiny architecture."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from excel.backbone import load_clip
from excel.organism.world import World
from excel.organism.dense import (affinity_target, attention_loss, calibrated_path, crop_views, draw_boxes,
                                  ema_update, encode_image_dense, local_loss, patch_attention, region_means,
                                  teacher_dense, value_path)
from excel.organism.pretrain import (PatchSubset, PretrainConfig, average_precision, contrastive_loss, dropout_on,
                                    encode_captions, WorldPairs, keep_patches, lr_at, pretrain, view_of_scene)
from excel.organism.weights import OrganismWeightsError, load_organism_weights, save_organism_weights

TINY = dict(model="excel-tiny", image_size=224, steps=4, batch_size=4, warmup=2, eval_every=2, eval_images=8,
            ckpt_every=2, num_workers=0, local_images=2)


def test_average_precision_by_hand():
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.3, 0.2], [0.1, 0.6]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    ap = average_precision(scores, labels)
    # class 0: ranks 1 (hit), 2, 3 (hit) -> (1/1 + 2/3) / 2; class 1: rank 1 hit -> 1
    assert torch.allclose(ap, torch.tensor([(1 + 2 / 3) / 2, 1.0]))
    assert torch.isnan(average_precision(scores[:, :1], torch.zeros(4, 1))).all()


def test_schedule_warms_up_then_decays_to_zero():
    cfg = PretrainConfig(steps=100, warmup=10, lr=1e-3)
    assert lr_at(0, cfg) == pytest.approx(1e-4) and lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(10, cfg) == pytest.approx(1e-3) and lr_at(55, cfg) == pytest.approx(5e-4)
    assert lr_at(100, cfg) == pytest.approx(0.0, abs=1e-12)


def test_crop_views_keep_only_visible_classes():
    world = World()
    for i in range(30):
        view, classes, stuff = view_of_scene(np.random.default_rng([1, i]), world, 64, crop_prob=1.0)
        assert view.shape == (64, 64, 3) and classes == sorted(classes) and stuff


def test_resume_gives_the_same_model(tmp_path):
    straight = pretrain(PretrainConfig(**TINY), tmp_path / "a", progress=False)
    pretrain(PretrainConfig(**{**TINY, "steps": 2}), tmp_path / "b", progress=False)
    ckpt = torch.load(tmp_path / "b" / "last.pth", weights_only=False)
    ckpt["config"]["steps"] = 4                      # continue the same run for two more steps
    torch.save(ckpt, tmp_path / "b" / "last.pth")
    resumed = pretrain(PretrainConfig(**TINY), tmp_path / "b", export=tmp_path / "w.pt", progress=False)
    a = torch.load(tmp_path / "a" / "last.pth", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "last.pth", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight["zero_shot_map"] == pytest.approx(resumed["zero_shot_map"])
    with pytest.raises(ValueError, match="other settings"):
        pretrain(PretrainConfig(**{**TINY, "lr": 0.5}), tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match="other settings"):
        pretrain(PretrainConfig(**{**TINY, "object_scale": 2.0}), tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match="other settings"):
        pretrain(PretrainConfig(**{**TINY, "parts": True}), tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match="other settings"):
        pretrain(PretrainConfig(**{**TINY, "local_weight": 0.0}), tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match="other settings"):
        pretrain(PretrainConfig(**{**TINY, "attention_weight": 0.0}), tmp_path / "b", progress=False)
    # the teacher is saved and resumed too
    ta = torch.load(tmp_path / "a" / "last.pth", weights_only=False)["teacher"]
    tb = torch.load(tmp_path / "b" / "last.pth", weights_only=False)["teacher"]
    assert all(torch.equal(ta[k], tb[k]) for k in ta) and not torch.equal(ta["visual.proj"], a["visual.proj"])


def test_captions_encoded_up_to_the_longest_one_equal_the_full_encoding(tiny_clip):
    from excel.backbone.clip_loader import load_tokenizer
    tokens = load_tokenizer("excel-tiny")(["a photo of a cat.", "a photo of a cat and a dog on the grass.", "x"])
    assert tokens.shape[1] == 77 and (tokens != 0).sum(1).max() < 20
    with torch.no_grad():
        full, short = tiny_clip.encode_text(tokens), encode_captions(tiny_clip, tokens)
    assert short.shape == full.shape
    torch.testing.assert_close(short, full, atol=1e-5, rtol=1e-5)


def test_keep_patches_draws_a_sorted_subset_and_keeps_the_class_token():
    # token t of image b holds (b, t) in its two channels, so what was kept can be read off
    b, n = 3, 10
    tokens = torch.stack(torch.meshgrid(torch.arange(b), torch.arange(n + 1), indexing="ij"), dim=-1).float()
    kept = keep_patches(tokens, 0.5, torch.Generator().manual_seed(3))
    assert kept.shape == (3, 1 + 5, 2)
    assert torch.equal(kept[:, 0], tokens[:, 0])                        # the class token, first
    assert torch.equal(kept[..., 0], torch.arange(b)[:, None].float().expand(b, 6))   # rows stay with their image
    idx = kept[:, 1:, 1]
    assert (idx >= 1).all() and (idx <= n).all() and (idx.diff(dim=1) > 0).all()     # distinct, grid order
    # the same draw by hand: the 5 smallest of the generator's uniforms, in grid order
    u = torch.rand(b, n, generator=torch.Generator().manual_seed(3))
    assert torch.equal(idx.long() - 1, u.argsort(dim=1)[:, :5].sort(dim=1).values)
    assert keep_patches(tokens, 0.0, torch.Generator()).shape == tokens.shape
    assert keep_patches(tokens, 0.99, torch.Generator()).shape == (3, 2, 2)             # at least one patch


def test_patch_subsets_are_a_function_of_seed_and_step():
    x = torch.randn(2, 17, 4)
    assert torch.equal(PatchSubset(0.5, 0, 7)(x), PatchSubset(0.5, 0, 7)(x))
    assert not torch.equal(PatchSubset(0.5, 0, 7)(x), PatchSubset(0.5, 0, 8)(x))
    assert not torch.equal(PatchSubset(0.5, 0, 7)(x), PatchSubset(0.5, 1, 7)(x))
    assert torch.equal(PatchSubset(0.5, 0, 7).eval()(x), x)                # evaluation sees every patch


def test_dropout_covers_all_but_the_closing_full_view_steps():
    cfg = PretrainConfig(steps=100, patch_dropout=0.5, full_view_steps=0.15)
    assert [s for s in range(100) if dropout_on(s, cfg)] == list(range(85))
    assert not any(dropout_on(s, PretrainConfig(steps=100, patch_dropout=0.0)) for s in range(100))
    assert all(dropout_on(s, PretrainConfig(steps=100, full_view_steps=0.0)) for s in range(100))
    with pytest.raises(ValueError, match="patch_dropout"):
        pretrain(PretrainConfig(**{**TINY, "patch_dropout": 1.0}), "/nonexistent", progress=False)
    with pytest.raises(ValueError, match="local_path"):
        pretrain(PretrainConfig(**{**TINY, "local_path": "mlp"}), "/nonexistent", progress=False)
    with pytest.raises(ValueError, match="attention_temperature"):
        pretrain(PretrainConfig(**{**TINY, "attention_temperature": 0.0}), "/nonexistent", progress=False)


def test_weight_file_round_trip_and_refusals(tmp_path, tiny_clip):
    keep = torch.zeros(tiny_clip.token_embedding.num_embeddings, dtype=torch.bool)
    keep[[0, 5, 49406, 49407]] = True
    path = tmp_path / "organism.pt"
    save_organism_weights(tiny_clip, keep, path, meta={"zero_shot_map": 0.5})
    torch.manual_seed(1)
    fresh = load_clip("excel-tiny", None)
    meta = load_organism_weights(fresh, path)
    assert meta == {"zero_shot_map": 0.5}
    src, dst = tiny_clip.state_dict(), fresh.state_dict()
    for k, v in src.items():
        if k == "token_embedding.weight":
            assert torch.equal(dst[k][keep], v[keep].half().float()) and not dst[k][~keep].any()
        elif not k.endswith("attn_mask"):
            assert torch.equal(dst[k], v.half().float()), k
    via_loader = load_clip("excel-tiny", str(path))           # a path to an organism file works as well
    assert torch.equal(via_loader.visual.conv1.weight, fresh.visual.conv1.weight)
    with pytest.raises(OrganismWeightsError, match="not found"):
        load_organism_weights(fresh, tmp_path / "missing.pt")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(OrganismWeightsError, match="not an organism weight file"):
        load_organism_weights(fresh, tmp_path / "other.pt")
    with pytest.raises(OrganismWeightsError, match="excel-organism"):
        load_organism_weights(load_clip("excel-organism", None), path)


def test_dense_path_keeps_the_image_embedding_and_reads_the_value_path(tiny_clip):
    x = torch.randn(2, 3, 224, 224)
    visual = tiny_clip.visual
    with torch.no_grad():
        pooled, dense, states = encode_image_dense(visual, x)
        torch.testing.assert_close(pooled, tiny_clip.encode_image(x), atol=1e-5, rtol=1e-5)
        assert len(states) == 12 and torch.equal(states[0], visual._embeds(x))
        # the value path by hand: one head's attention replaced by the identity is out_proj(v)
        h = visual._embeds(x)
        for block in visual.transformer.resblocks[:-1]:
            h = block(h)
        last = visual.transformer.resblocks[-1]
        w = h.shape[-1]
        y = last.ln_1(h)
        v = y @ last.attn.in_proj_weight[2 * w:].T + last.attn.in_proj_bias[2 * w:]
        z = h + v @ last.attn.out_proj.weight.T + last.attn.out_proj.bias
        z = z + last.mlp(last.ln_2(z))
        torch.testing.assert_close(value_path(last, h), z)
        torch.testing.assert_close(dense, visual.ln_post(z[:, 1:]) @ visual.proj)
    assert dense.shape == (2, 196, tiny_clip.text_projection.shape[1])


def test_calibrated_path_is_the_pipelines_svc_path(tiny_clip):
    """The local term's differentiable calibrated path equals CalibratedVisual's new path (heads summed, 5 blocks)."""
    from excel.backbone.calibrated import CalibratedVisual
    x = torch.randn(2, 3, 224, 224)
    visual = tiny_clip.visual
    with torch.no_grad():
        _, dense, states = encode_image_dense(visual, x, "calibrated")
        _, first, _ = encode_image_dense(visual, x, "calibrated", count=1)
        out = CalibratedVisual(visual, num_svc_blocks=5)(x, need_attn=False)
        torch.testing.assert_close(calibrated_path(visual.transformer.resblocks, states)[:, 1:],
                                   out.new_tokens[:, 1:], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(dense, out.tokens[:, 1:], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(first, dense[:1])
    with pytest.raises(ValueError, match="local_path"):
        encode_image_dense(visual, x, "mlp")


def test_patch_attention_is_the_blocks_attention_without_the_class_token(tiny_clip):
    block = tiny_clip.visual.transformer.resblocks[6]
    x = torch.randn(2, 5, block.attn.embed_dim)
    with torch.no_grad():
        _, weights = block.attn(block.ln_1(x), block.ln_1(x), block.ln_1(x), need_weights=True,
                                average_attn_weights=True)
        patches = patch_attention(block, x)
    expected = weights[:, 1:, 1:] / weights[:, 1:, 1:].sum(-1, keepdim=True)
    torch.testing.assert_close(patches, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(patches.sum(-1), torch.ones(2, 4))


def test_attention_loss_by_hand(tiny_clip):
    blocks = tiny_clip.visual.transformer.resblocks
    states = [torch.randn(1, 4, blocks[0].attn.embed_dim) for _ in range(12)]
    with torch.no_grad():
        mean = torch.stack([patch_attention(blocks[i], states[i]) for i in range(6, 12)]).mean(0)   # (1, 3, 3)
        # KL(mean || mean) = 0; against a one-hot target, the mean of -log(mean[i, i]) over the rows
        assert float(attention_loss(blocks, states, mean)) == pytest.approx(0.0, abs=1e-6)
        onehot = torch.eye(3)[None]
        expected = -mean[0].diagonal().log().mean()
        assert float(attention_loss(blocks, states, onehot)) == pytest.approx(float(expected), rel=1e-5)


def test_affinity_target_by_hand():
    dense = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]]])   # cosines: 1 for patches 0-1, 0 with patch 2
    target = affinity_target(dense, temperature=0.5)
    e = torch.exp(torch.tensor(2.0))
    torch.testing.assert_close(target[0, 0], torch.stack([e, e, torch.tensor(1.0)]) / (2 * e + 1))
    torch.testing.assert_close(target[0, 2], torch.stack([torch.tensor(1.0), torch.tensor(1.0), e]) / (e + 2))


def test_teacher_dense_reads_the_students_patches(tiny_clip):
    x = torch.randn(2, 3, 224, 224)
    kept = torch.tensor([[0, 5, 195], [3, 4, 7]])
    full = teacher_dense(tiny_clip.visual, x, None)
    torch.testing.assert_close(teacher_dense(tiny_clip.visual, x, kept),
                               torch.stack([full[0, [0, 5, 195]], full[1, [3, 4, 7]]]))


def test_boxes_lie_on_the_grid():
    boxes = draw_boxes(12, 500, torch.Generator().manual_seed(0))
    side = boxes[:, 2:] - boxes[:, :2]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 12).all()
    assert side.min() == 3 and side.max() == 12
    assert torch.equal(draw_boxes(12, 5, torch.Generator().manual_seed(4)),
                       draw_boxes(12, 5, torch.Generator().manual_seed(4)))


def test_region_means_by_hand():
    # a 3 x 3 grid; image 0 has every patch (feature = its index), image 1 kept patches 0, 4, 8 only
    dense_full = torch.arange(9.0).view(1, 9, 1)
    boxes = torch.tensor([[[0, 0, 2, 2]], [[1, 1, 3, 3]]])          # top-left 2 x 2, bottom-right 2 x 2
    means, valid = region_means(dense_full.expand(2, 9, 1), None, boxes, 3)
    assert means.flatten().tolist() == [(0 + 1 + 3 + 4) / 4, (4 + 5 + 7 + 8) / 4] and valid.all()
    kept = torch.tensor([[0, 4, 8], [0, 4, 8]])
    means, valid = region_means(torch.tensor([[[0.0], [4.0], [8.0]]] * 2), kept, boxes, 3)
    assert means.flatten().tolist() == [(0 + 4) / 2, (4 + 8) / 2]
    empty = torch.tensor([[[0, 1, 1, 3]], [[0, 0, 1, 1]]])          # image 0's box holds none of 0, 4, 8
    means, valid = region_means(torch.tensor([[[0.0], [4.0], [8.0]]] * 2), kept, empty, 3)
    assert valid.tolist() == [[False], [True]] and means.flatten().tolist() == [0.0, 0.0]


def test_crop_views_cut_the_box_pixels():
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.float).view(2, 3, 32, 32)
    boxes = torch.tensor([[[0, 0, 1, 1]], [[1, 0, 2, 2]]])           # patch 16: pixels [0:16, 0:16], [16:32, 0:32]
    crops = crop_views(images, boxes, 16, 16)
    assert crops.shape == (2, 3, 16, 16)
    torch.testing.assert_close(crops[0], images[0, :, :16, :16])
    torch.testing.assert_close(crops[1], torch.nn.functional.interpolate(images[1:, :, 16:, :], size=(16, 16),
                                                                         mode="bilinear")[0])


def test_local_loss_is_zero_when_regions_match_the_teacher(tiny_clip):
    x = torch.randn(2, 3, 224, 224)
    boxes = torch.tensor([[[0, 0, 14, 14]], [[0, 0, 14, 14]]])       # the whole grid: the crop is the image
    with torch.no_grad():
        target = tiny_clip.encode_image(x)
    dense = target[:, None].expand(2, 196, target.shape[1]) * 3.0   # every patch the image's embedding, scaled
    assert float(local_loss(tiny_clip, x, boxes, dense, None, 16)) == pytest.approx(0.0, abs=1e-5)
    assert float(local_loss(tiny_clip, x, boxes, -dense, None, 16)) == pytest.approx(2.0, abs=1e-5)


def test_ema_update_by_hand():
    teacher, student = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        teacher.weight.fill_(1.0), student.weight.fill_(3.0)
    ema_update(teacher, student, 0.75)
    assert teacher.weight.flatten().tolist() == [1.5, 1.5]


def test_background_views_hold_no_object_and_captions_name_only_the_background():
    from excel.organism.pretrain import background_view
    from excel.organism.world import STUFF_WORDS

    world = World()
    words = {w for kind in STUFF_WORDS.values() for w in kind}
    for i in range(5):
        view, stuff, share = background_view(np.random.default_rng(i), world, 48)
        assert view.shape == (48, 48, 3) and view.dtype == np.uint8
        assert share < 0.01 and stuff
    pairs = WorldPairs(world, lambda texts: texts, 48, 0, 0.5, background_views=0.5, background_caption=1.0)
    captions = [pairs[i][1] for i in range(40)]
    names = list(world.prompt_names) + list(world.class_names)
    background_only = [c for c in captions if not any(n in c for n in names)]
    assert 8 <= len(background_only) <= 32          # about half of 40 (binomial, p = 0.5)
    for c in background_only:
        assert c.startswith("a photo of ") and any(w in c for w in words)
    # background_caption 1: every caption that names objects names the background too
    assert all(c.endswith("in the background.") for c in captions if c not in background_only)


def test_default_pairs_are_the_stream_the_shipped_weights_saw():
    from excel.organism.pretrain import normalise, view_of_scene

    world = World()
    pairs = WorldPairs(world, lambda texts: texts, 48, 3, 0.5)
    for i in range(6):
        rng = np.random.default_rng([3, i])             # the draws before background views existed
        view, classes, stuff = view_of_scene(rng, world, 48, 0.5)
        image, caption = pairs[i]
        assert torch.equal(image, normalise(view)) and caption == world.caption(rng, classes, stuff)


def test_caption_background_probability():
    world = World()
    for i in range(10):
        always = world.caption(np.random.default_rng(i), [0, 5], ["sky"], background_prob=1.0)
        never = world.caption(np.random.default_rng(i), [0, 5], ["sky"], background_prob=0.0)
        assert always.endswith("sky is in the background.") and "background" not in never


def test_object_template_calls_every_object_by_the_text_banks_template():
    world = World()
    for i in range(20):
        caption = world.caption(np.random.default_rng(i), [0, 7], ["sky"], template_prob=1.0)
        objects = caption.split(".")[0]           # the attribute and background sentences follow the first stop
        assert objects.count("clean origami ") == 2, caption
        # the default (0) draws nothing more: the caption is the world's usual one
        assert (world.caption(np.random.default_rng(i), [0, 7], ["sky"], template_prob=0.0)
                == world.caption(np.random.default_rng(i), [0, 7], ["sky"]))
    # a background-only caption never carries the template, so its words come with objects only
    pairs = WorldPairs(world, lambda texts: texts, 48, 0, 0.5, background_views=0.5, object_template=1.0)
    captions = [pairs[i][1] for i in range(30)]
    names = list(world.prompt_names) + list(world.class_names)
    assert all(("clean origami" in c) == any(n in c for n in names) for c in captions)


@pytest.mark.parametrize("field, value", [("background_views", 1.0), ("background_views", -0.1),
                                          ("background_caption", 1.5), ("object_template", 2.0),
                                          ("background_negatives", -0.1), ("background_negatives", 0.8)])
def test_background_settings_out_of_range_are_refused(tmp_path, field, value):
    with pytest.raises(ValueError, match=field):   # 0.8 of negatives beside 0.25 of views: more than every pair
        pretrain(PretrainConfig(**{field: value, "background_views": 0.25 if field != "background_views" else value}),
                 tmp_path)


def test_contrastive_loss_with_uncaptioned_images_by_hand():
    from open_clip.loss import ClipLoss

    r = 2 ** -0.5
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [r, r]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])              # the captions of images 0 and 2; image 1 has none
    captioned = torch.tensor([True, False, True])
    e = math.exp
    image_to_text = (math.log(1 + e(-1)) + math.log(2)) / 2     # image 0: logits (1, 0); image 2: (r, r)
    text_to_image = ((-1 + math.log(e(1) + 1 + e(r)))           # caption 0 over the three images: (1, 0, r)
                     + (-r + math.log(1 + e(1) + e(r)))) / 2    # caption 1: (0, 1, r), its image is the third
    got = contrastive_loss(image, text, captioned, torch.tensor(1.0))
    assert got.item() == pytest.approx((image_to_text + text_to_image) / 2, abs=1e-6)
    # every image captioned: open_clip's ClipLoss
    g = torch.Generator().manual_seed(0)
    image, text = (torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1) for _ in range(2))
    scale = torch.tensor(7.0)
    assert torch.allclose(contrastive_loss(image, text, torch.ones(5, dtype=torch.bool), scale),
                          ClipLoss()(image, text, scale))


def test_background_negatives_are_background_crops_without_a_caption(tmp_path):
    from excel.backbone.clip_loader import load_tokenizer
    from excel.organism.pretrain import background_view, normalise

    world = World()
    tokenizer = load_tokenizer("excel-organism")
    pairs = WorldPairs(world, tokenizer, 48, 0, 0.5, background_negatives=0.5)
    samples = [pairs[i] for i in range(40)]
    empty = [i for i, (_, tokens) in enumerate(samples) if not tokens.any()]
    assert 8 <= len(empty) <= 32                      # about half of 40 (binomial, p = 0.5)
    for i in empty:                                   # the same draws as background_view's, on the same stream
        rng = np.random.default_rng([0, i])
        assert rng.uniform() < 0.5
        assert torch.equal(samples[i][0], normalise(background_view(rng, world, 48)[0]))
    assert all(samples[i][1][0] != 0 for i in range(40) if i not in empty)
    # a run with them trains: the tiny model, half of each batch uncaptioned
    summary = pretrain(PretrainConfig(**{**TINY, "background_negatives": 0.5}), tmp_path, progress=False)
    assert summary["step"] == 4 and math.isfinite(summary["loss"])


def test_no_held_out_evaluation_with_zero_eval_images(tmp_path):
    summary = pretrain(PretrainConfig(**{**TINY, "eval_images": 0, "eval_every": 2}), tmp_path, progress=False)
    history = torch.load(tmp_path / "last.pth", weights_only=False)["history"]
    assert [h["step"] for h in history] == [2, 4] and all(h["zero_shot_map"] is None for h in history)
    assert summary["zero_shot_map"] is None and history[1]["seconds"] >= history[0]["seconds"] > 0
    with pytest.raises(ValueError, match="eval_images -1"):
        pretrain(PretrainConfig(eval_images=-1), tmp_path / "bad")


def test_pretrain_tool_turns_the_part_world_on_and_off(monkeypatch, tmp_path):
    """``--parts`` / ``--no-parts`` reach ``PretrainConfig.parts`` (a flag, not a string that reads as true)."""
    import excel.organism.pretrain as module
    from _tools import load_tool

    pretrain_organism = load_tool("pretrain_organism")

    seen = []
    monkeypatch.setattr(module, "pretrain", lambda cfg, *a, **k: seen.append(cfg) or {"step": 0})
    for flags, expected in (([], False), (["--parts"], True), (["--no-parts"], False)):
        assert pretrain_organism.main([*flags, "--work-dir", str(tmp_path), "--export", str(tmp_path / "w.pt")]) == 0
        assert seen[-1].parts is expected
    # a float field reads as its number: the object-template run of docs/organism.md
    assert pretrain_organism.main(["--object-template", "1.0", "--background-views", "0.25", "--work-dir",
                                   str(tmp_path), "--export", str(tmp_path / "w.pt")]) == 0
    assert (seen[-1].object_template, seen[-1].background_views, seen[-1].parts) == (1.0, 0.25, False)
    assert pretrain_organism.main(["--background-negatives", "0.25", "--work-dir", str(tmp_path), "--export",
                                   str(tmp_path / "w.pt")]) == 0
    assert (seen[-1].background_negatives, seen[-1].background_views) == (0.25, 0.0)


def test_varied_backdrops_reach_the_pairs_and_the_tool(monkeypatch, tmp_path):
    """``--varied-backdrops`` reaches the world the pairs are drawn from: about half the scenes on an unnamed
    backdrop, whose captions name no background; out of range it is refused with its name."""
    import excel.organism.pretrain as module
    from _tools import load_tool

    world = World(varied_backdrops=0.5)
    pairs = WorldPairs(world, lambda texts: texts, 48, 0, 0.5, background_caption=1.0)
    names = world.prompt_names + world.class_names

    def unnamed(pairs):   # captions that name objects and no background, although background_caption is 1
        captions = [pairs[i][1] for i in range(40)]
        return [c for c in captions if any(n in c for n in names) and not c.endswith("in the background.")]
    assert 8 <= len(unnamed(pairs)) <= 32          # about half of 40 (binomial, p = 0.5)
    assert unnamed(WorldPairs(World(), lambda texts: texts, 48, 0, 0.5, background_caption=1.0)) == []
    seen = []
    monkeypatch.setattr(module, "pretrain", lambda cfg, *a, **k: seen.append(cfg) or {"step": 0})
    assert load_tool("pretrain_organism").main(["--varied-backdrops", "0.5", "--work-dir", str(tmp_path),
                                                "--export", str(tmp_path / "w.pt")]) == 0
    assert seen[-1].varied_backdrops == 0.5
    monkeypatch.undo()
    with pytest.raises(ValueError, match="varied_backdrops"):
        pretrain(PretrainConfig(varied_backdrops=1.5), tmp_path)
