"""Dense CRF (real pydensecrf): it cleans noisy scores along image edges, keeps confident ones, and the pool
returns what the inline call returns."""
from __future__ import annotations


import numpy as np
import pytest

from excel.evaluation import CRF_DEFAULTS, CRFPool, crf_params, dense_crf
from excel.evaluation.crf import kept_labels
from _tools import load_script

many_label_scores = load_script("benchmarks/bench_inference.py").many_label_scores


def two_region_case(seed: int = 0, h: int = 36, w: int = 44):
    """A dark left / bright right image, its truth, and noisy 2-class probabilities (~75% argmax accuracy)."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((h, w), dtype=np.int64)
    truth[:, w // 2:] = 1
    image = np.where(truth[..., None] == 1, 210, 40).astype(np.uint8).repeat(3, axis=2)
    p1 = np.clip(0.3 + 0.4 * truth + rng.normal(0, 0.3, size=(h, w)), 0.01, 0.99).astype(np.float32)
    return image, truth, np.stack([1 - p1, p1])


def test_crf_cleans_noisy_two_region_probabilities():
    image, truth, probs = two_region_case()
    before = (probs.argmax(0) == truth).mean()
    q = dense_crf(image, probs, **CRF_DEFAULTS)
    after = (q.argmax(0) == truth).mean()
    assert 0.6 < before < 0.85
    assert after > 0.99 and after > before + 0.15
    assert q.shape == probs.shape and q.dtype == np.float32
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-4)


def test_confident_argmax_is_kept():
    h, w = 30, 40
    labels = np.zeros((h, w), dtype=np.int64)
    labels[5:20, 4:18] = 1
    labels[12:28, 22:37] = 2
    colours = np.array([[30, 90, 30], [200, 40, 40], [40, 40, 220]], dtype=np.uint8)
    image = colours[labels]
    probs = np.full((3, h, w), 0.0005, dtype=np.float32)
    np.put_along_axis(probs, labels[None], 0.999, axis=0)
    q = dense_crf(image, probs)
    np.testing.assert_array_equal(q.argmax(0), labels)


def test_raw_unary_equals_softmax_unary_and_errors():
    image, _, probs = two_region_case(seed=1, h=12, w=14)
    energy = -np.log(np.clip(probs, 1e-5, 1.0))
    np.testing.assert_allclose(dense_crf(image, probs, iter_max=3), dense_crf(image, energy, iter_max=3, unary="raw"),
                               atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        dense_crf(image.astype(np.float32), probs)
    with pytest.raises(ValueError, match="matching the image"):
        dense_crf(image, probs[:, :5])
    with pytest.raises(ValueError, match="unary"):
        dense_crf(image, probs, unary="logits")
    with pytest.raises(ValueError, match="unknown CRF parameter"):
        crf_params({"iters": 3})
    assert crf_params({"iter_max": 3})["bi_w"] == 4


def test_crf_pool_matches_inline_in_submission_order():
    cases = [two_region_case(seed=s, h=16 + s, w=20) for s in range(3)]
    expected = [dense_crf(img, p, iter_max=4) for img, _, p in cases]
    with CRFPool(num_workers=1, iter_max=4) as pool:
        for i, (img, _, p) in enumerate(cases):
            pool.submit(img, p, meta=f"img{i}")
        got = list(pool.results())
    assert [m for m, _ in got] == ["img0", "img1", "img2"]
    for (_, q), e in zip(got, expected):
        np.testing.assert_allclose(q, e, atol=1e-6)
    with CRFPool(num_workers=0, labels_only=True, iter_max=4) as inline:
        inline.submit(cases[0][0], cases[0][2], meta=0)
        (meta, lab), = list(inline.ready())
    assert meta == 0 and lab.dtype == np.uint8
    np.testing.assert_array_equal(lab, expected[0].argmax(0))


def test_dense_crf_accepts_a_read_only_image():
    """np.asarray of a PIL image is read-only; pydensecrf needs a writable buffer, so dense_crf copies it."""
    from PIL import Image

    from excel.evaluation.crf import dense_crf

    image = np.asarray(Image.fromarray(np.zeros((6, 7, 3), np.uint8)))
    assert not image.flags.writeable
    probs = np.stack([np.full((6, 7), 0.8, np.float32), np.full((6, 7), 0.2, np.float32)])
    q = dense_crf(image, probs)
    assert q.shape == (2, 6, 7) and np.allclose(q.sum(0), 1, atol=1e-4) and (q.argmax(0) == 0).all()


def many_label_case(seed: int, num_classes: int, h: int = 40, w: int = 48, sharp: float = 3.0):
    """Sharpened random logits (smooth 8x8-cell noise + a little pixel noise) where background and three other
    classes dominate, each winning inside its own 14 x 16 box; the image colours follow the boxes (the CRF
    benchmark's generator)."""
    return many_label_scores(num_classes, h, w, seed=seed, sharp=sharp, box=(14, 16))


def test_pruned_crf_equals_full_when_dropped_labels_are_tiny():
    image, _, two = two_region_case(seed=2, h=20, w=24)
    tiny = np.full((4, 20, 24), 1e-7, dtype=np.float32)  # clipped to 1e-5: a unary of 11.5 everywhere
    probs = np.concatenate([two[:1], tiny[:2], two[1:], tiny[2:]])  # labels 0 and 3 carry the image
    np.testing.assert_array_equal(kept_labels(probs, 1e-3), [0, 3])
    full = dense_crf(image, probs, iter_max=5)
    pruned = dense_crf(image, probs, iter_max=5, prune_below=1e-3)
    assert pruned.shape == full.shape and pruned.dtype == np.float32
    assert (pruned[[1, 2, 4, 5]] < 1e-3).all()                  # their share of the rest label
    np.testing.assert_allclose(pruned.sum(0), 1.0, atol=1e-4)
    np.testing.assert_allclose(pruned, full, atol=1e-3)  # the dropped labels hold < 1e-3 of the full Q
    np.testing.assert_array_equal(pruned.argmax(0), full.argmax(0))
    # background stays even when it is tiny; a threshold of 0 keeps every label
    np.testing.assert_array_equal(kept_labels(probs[[1, 3]], 1e-3), [0, 1])
    np.testing.assert_array_equal(kept_labels(probs, 0.0), np.arange(6))
    with pytest.raises(ValueError, match="prune_below"):
        kept_labels(probs, 1.5)


def test_prune_below_none_is_the_old_full_crf_exactly():
    image, probs = many_label_case(seed=3, num_classes=21, h=24, w=32)
    energy = -np.log(np.clip(probs, 1e-5, 1.0))
    expected = dense_crf(image, energy, iter_max=4, unary="raw")  # the full CRF, no pruning involved
    np.testing.assert_array_equal(dense_crf(image, probs, iter_max=4, prune_below=None), expected)
    np.testing.assert_array_equal(dense_crf(image, probs, iter_max=4), expected)  # None is the default
    assert crf_params(None)["prune_below"] == CRF_DEFAULTS["prune_below"] == 0.05
    assert crf_params({"prune_below": None})["prune_below"] is None


@pytest.mark.parametrize("num_classes", [21, 81])
def test_pruned_crf_agrees_with_full_on_random_many_label_scores(num_classes):
    image, probs = many_label_case(seed=num_classes, num_classes=num_classes)
    keep = kept_labels(probs, CRF_DEFAULTS["prune_below"])
    assert 4 <= len(keep) < num_classes  # the case does prune, and keeps the dominant classes
    full = dense_crf(image, probs).argmax(0)
    pruned = dense_crf(image, probs, prune_below=CRF_DEFAULTS["prune_below"]).argmax(0)
    assert (full == pruned).mean() >= 0.999


def test_crf_pool_passes_prune_below_and_ships_only_kept_labels():
    image, probs = many_label_case(seed=5, num_classes=21, h=24, w=32)
    keep = kept_labels(probs, 1e-2)
    assert len(keep) < 21
    expected = dense_crf(image, probs, iter_max=4, prune_below=1e-2)
    with CRFPool(num_workers=0, iter_max=4, prune_below=1e-2) as inline:
        assert inline.params["prune_below"] == 1e-2
        inline.submit(image, probs.astype(np.float64), meta="a")
        (_, q), = list(inline.results())
    np.testing.assert_allclose(q, expected, atol=1e-6)
    with CRFPool(num_workers=1, labels_only=True, iter_max=4, prune_below=1e-2) as pool:
        pool.submit(image, probs, meta="b")
        (_, lab), = list(pool.results())
    np.testing.assert_array_equal(lab, expected.argmax(0))
    # a labels-only job carries the kept labels' and the rest's energies and two maps, not the 21 score planes
    from excel.evaluation.crf import _crf_job, pruned_job_inputs
    kept, energy, best = pruned_job_inputs(probs, 1e-2)
    np.testing.assert_array_equal(kept, keep)
    assert energy.shape == (len(keep) + 1, 24, 32) and energy.dtype == np.float32 and best.shape == (2, 24, 32)
    np.testing.assert_array_equal(_crf_job(image, energy, kept, best, crf_params({"iter_max": 4})),
                                  expected.argmax(0))
    # a dropped label wins where the rest's marginal times its share beats every kept label
    seen = np.clip(probs[np.setdiff1d(np.arange(21), keep)], 1e-5, 1)           # the scores as the CRF sees them
    np.testing.assert_array_equal(best[0], np.setdiff1d(np.arange(21), keep)[seen.argmax(0)])
    np.testing.assert_allclose(best[1], seen.max(0) / seen.sum(0), rtol=1e-5)


def test_rest_label_by_hand_and_closer_to_full_than_dropping():
    from excel.evaluation.crf import rest_energy

    energy = -np.log(np.array([[[0.02]], [[0.03]], [[1e-7]]], dtype=np.float32))   # the last clips to 1e-5 in
    np.testing.assert_allclose(rest_energy(energy), -np.log(0.02 + 0.03 + 1e-7), rtol=1e-5)
    # diffuse scores (median top probability 0.25): the rest label keeps each pixel's normalisation, so the
    # pruned CRF matches the full one here, while simply dropping the faint labels moves 0.5 % of the pixels
    image, probs = many_label_scores(81, 60, 80, seed=2, sharp=0.5, box=(20, 24))
    keep = kept_labels(probs, 0.05)
    assert 4 <= len(keep) <= 12
    full = dense_crf(image, probs).argmax(0)
    pruned_q = dense_crf(image, probs, prune_below=0.05)
    np.testing.assert_allclose(pruned_q.sum(0), 1.0, atol=1e-4)
    assert (pruned_q.argmax(0) == full).mean() >= 0.9999
    dropping = keep[dense_crf(image, probs[keep]).argmax(0)]
    assert (dropping == full).mean() < 0.998


def test_single_label_is_one_everywhere_as_in_pydensecrf():
    import pydensecrf.densecrf as dcrf

    image, _, _ = two_region_case(seed=4, h=18, w=22)
    probs = np.random.default_rng(4).uniform(0.2, 0.9, size=(1, 18, 22)).astype(np.float32)
    q = dense_crf(image, probs, iter_max=3)
    assert q.shape == (1, 18, 22) and q.dtype == np.float32
    np.testing.assert_array_equal(q, 1.0)
    crf = dcrf.DenseCRF2D(22, 18, 1)               # what the shortcut skips gives the same marginals
    crf.setUnaryEnergy(np.ascontiguousarray(-np.log(probs).reshape(1, -1)))
    crf.addPairwiseGaussian(sxy=1, compat=3)
    crf.addPairwiseBilateral(sxy=67, srgb=3, rgbim=np.ascontiguousarray(image), compat=4)
    np.testing.assert_allclose(np.asarray(crf.inference(3)).reshape(1, 18, 22), q, atol=1e-6)
