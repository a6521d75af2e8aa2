"""Box masks (algorithm.md §5.2, quirk 11): hand-made grids for each quirk and parity with a cv2 reference."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from excel.cam.boxes import box_masks, connected_components, quantize_maps
from _reference import box_mask_reference

G = 20




def one_map(cam: np.ndarray, threshold: float = 0.79) -> np.ndarray:
    lam = torch.from_numpy(cam.astype(np.float32)).reshape(1, 1, G, G)
    return box_masks(lam, torch.ones(1, 1), threshold)[0, 0].numpy()


def grid(points: dict[tuple[int, int], float]) -> np.ndarray:
    cam = np.zeros((G, G), np.float32)
    for (y, x), v in points.items():
        cam[y, x] = v
    return cam


def test_strict_greater_than():
    # max u = 100 -> θ = int(0.79 * 100) = 79: u = 79 is background, u = 80 is foreground.
    cam = grid({(2, 2): 100.5 / 255, (2, 6): 79.5 / 255, (8, 8): 80.5 / 255})
    mask = one_map(cam)
    assert mask[2, 2] == 1 and mask[8, 8] == 1 and mask[2, 6] == 0
    assert mask.sum() == 2


def test_uint8_truncation():
    # 255 * 0.3137 = 79.99 truncates to 79 (rounding would give 80 and make it foreground).
    cam = grid({(2, 2): 100.5 / 255, (5, 5): 0.3137})
    assert int(np.float32(0.3137) * 255) == 79
    mask = one_map(cam)
    assert mask[5, 5] == 0 and mask.sum() == 1


def test_threshold_uses_python_float_semantics():
    # int(0.7 * 90) = 62 in float64 (0.7 * 90 = 62.99999999999999), but 63 in float32; u = 63 is foreground.
    assert int(0.7 * 90) == 62 and int(np.float32(0.7) * np.float32(90)) == 63
    cam = grid({(2, 2): 90.5 / 255, (6, 6): 63.5 / 255})
    mask = one_map(cam, threshold=0.7)
    assert mask[6, 6] == 1 and mask.sum() == 2
    u, fg = quantize_maps(torch.from_numpy(cam)[None], 0.7)
    assert u[0, 2, 2] == 90 and u[0, 6, 6] == 63 and fg.sum() == 2


def test_last_row_and_column_are_lost():
    # A component on rows 16..19 and cols 15..19: the box keeps rows 16..18 and cols 15..18.
    cam = np.zeros((G, G), np.float32)
    cam[16:20, 15:20] = 0.9
    mask = one_map(cam)
    expected = np.zeros((G, G), np.float32)
    expected[16:19, 15:19] = 1
    np.testing.assert_array_equal(mask, expected)
    assert mask[19].sum() == 0 and mask[:, 19].sum() == 0


def test_component_only_in_last_row_adds_nothing():
    cam = grid({(19, 3): 0.9, (19, 4): 0.9, (4, 19): 0.8, (10, 10): 0.95})
    mask = one_map(cam)
    assert mask.sum() == 1 and mask[10, 10] == 1


def test_eight_connectivity_joins_diagonals():
    # (5,5) and (6,6) touch diagonally: one component with box rows 5..6, cols 5..6 (4 cells, not 2).
    cam = grid({(5, 5): 0.9, (6, 6): 0.9, (6, 9): 0.9})
    mask = one_map(cam)
    expected = np.zeros((G, G), np.float32)
    expected[5:7, 5:7] = 1
    expected[6, 9] = 1
    np.testing.assert_array_equal(mask, expected)


def test_ring_with_an_island_gives_the_outer_box():
    cam = np.zeros((G, G), np.float32)
    cam[3:12, 4:13] = 0.9
    cam[5:10, 6:11] = 0.0  # hole
    cam[7, 8] = 0.9  # island inside the hole
    mask = one_map(cam)
    expected = np.zeros((G, G), np.float32)
    expected[3:12, 4:13] = 1
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(mask, box_mask_reference(cam, 0.79))


def test_empty_foreground_and_absent_classes():
    assert one_map(np.zeros((G, G), np.float32)).sum() == 0  # max u = 0 -> θ = 0 -> nothing is > 0
    lam = torch.rand(2, G * G, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    masks = box_masks(lam, labels, 0.79)
    assert masks.shape == (2, 3, G, G) and masks.dtype == lam.dtype
    assert masks[0, 1].sum() == 0 and masks[1].sum() == 0
    assert masks[0, 0].sum() > 0 and masks[0, 2].sum() > 0


def test_token_layout_equals_grid_layout():
    lam = torch.rand(2, G * G, 4, generator=torch.Generator().manual_seed(1))
    labels = torch.ones(2, 4)
    grid_maps = lam.transpose(1, 2).reshape(2, 4, G, G)  # patch p = row * g + col
    assert torch.equal(box_masks(lam, labels, 0.5), box_masks(grid_maps, labels, 0.5, grid=G))


def _random_maps(rng: np.random.Generator, count: int, g: int) -> np.ndarray:
    kinds = [
        lambda: rng.random((g, g)),  # noise: many small components
        lambda: cv2.resize(rng.random((5, 5)), (g, g), interpolation=cv2.INTER_LINEAR),  # blobs
        lambda: rng.random((g, g)) ** 6,  # sparse peaks
        lambda: cv2.resize(rng.random((3, 3)), (g, g), interpolation=cv2.INTER_CUBIC).clip(0, 1),  # large shapes
    ]
    return np.stack([kinds[i % len(kinds)]() for i in range(count)]).astype(np.float32)


@pytest.mark.parametrize("threshold", [0.3, 0.6, 0.75, 0.79, 0.88])
def test_matches_cv2_reference_on_random_maps(threshold):
    rng = np.random.default_rng(int(threshold * 100))
    maps = _random_maps(rng, 48, G).reshape(4, 12, G, G)
    labels = torch.ones(4, 12)
    got = box_masks(torch.from_numpy(maps), labels, threshold).numpy()
    for b in range(4):
        for c in range(12):
            np.testing.assert_array_equal(got[b, c], box_mask_reference(maps[b, c], threshold), err_msg=f"{b},{c}")


def test_other_grid_side_clamps_to_g_minus_1():
    rng = np.random.default_rng(7)
    maps = _random_maps(rng, 8, 12).reshape(2, 4, 12, 12)
    got = box_masks(torch.from_numpy(maps), torch.ones(2, 4), 0.6).numpy()
    for b in range(2):
        for c in range(4):
            np.testing.assert_array_equal(got[b, c], box_mask_reference(maps[b, c], 0.6))
    assert got[..., 11, :].sum() == 0 and got[..., :, 11].sum() == 0


def test_connected_components_partition_equals_cv2():
    rng = np.random.default_rng(3)
    fg = rng.random((16, G, G)) < 0.45
    fg[0] = False
    fg[1] = True
    snake = np.zeros((G, G), bool)  # a long path: needs many propagation rounds without pointer jumping
    snake[::2] = True
    snake[1::4, -1] = True
    snake[3::4, 0] = True
    fg[2] = snake
    labels = connected_components(torch.from_numpy(fg)).numpy()
    assert labels[0].max() == 0 and len(np.unique(labels[1])) == 1 and len(np.unique(labels[2][snake])) == 1
    for i in range(16):
        n, ref = cv2.connectedComponents(fg[i].astype(np.uint8), connectivity=8)
        pairs = set(zip(ref[fg[i]].tolist(), labels[i][fg[i]].tolist()))
        assert len(pairs) == n - 1 == len(np.unique(labels[i][fg[i]]))  # a bijection of components
        assert (labels[i][~fg[i]] == 0).all()


def test_bad_input():
    with pytest.raises(ValueError, match="square"):
        box_masks(torch.rand(1, 399, 2), torch.ones(1, 2))
    with pytest.raises(ValueError, match="cls_labels"):
        box_masks(torch.rand(1, 400, 2), torch.ones(1, 3))
    with pytest.raises(ValueError, match="grid"):
        box_masks(torch.rand(1, 400, 2), torch.ones(1, 2), grid=10)


def _spiral(g: int) -> torch.Tensor:
    """A one-pixel-wide spiral path filling a g x g grid: the longest component label propagation meets."""
    a = torch.zeros(g, g, dtype=torch.bool)
    top, left, bottom, right = 0, 0, g - 1, g - 1
    while top <= bottom and left <= right:
        a[top, left:right + 1] = True
        a[top:bottom + 1, right] = True
        if bottom > top + 1:
            a[bottom, left:right + 1] = True
        if right > left + 1:
            a[top + 2:bottom + 1, left] = True
        if top + 2 <= bottom:
            a[top + 2, left:left + 3] = True
        top, left, bottom, right = top + 2, left + 2, bottom - 2, right - 2
    return a


def test_unchecked_rounds_never_change_the_labels():
    # The fixed rounds only skip convergence checks: a spiral needing 30+ rounds and random blobs come out the
    # same with 0, the default and more rounds than needed; one check on a LAM-like batch
    from _syncs import count_syncs

    gen = torch.Generator().manual_seed(11)
    blobs = torch.nn.functional.interpolate(torch.rand(6, 1, 5, 5, generator=gen), size=(20, 20), mode="bilinear")
    fg = torch.cat([_spiral(20)[None], blobs[:, 0] > 0.6])
    labels = connected_components(fg, unchecked_rounds=0)
    assert int(labels[0].max()) == int(torch.nonzero(_spiral(20).flatten()).max()) + 1     # one component
    assert (labels[0] > 0).sum() == _spiral(20).sum() and labels[0][_spiral(20)].unique().numel() == 1
    for rounds in (None, 3, 60):
        assert torch.equal(connected_components(fg, unchecked_rounds=rounds), labels)
    assert count_syncs(lambda: connected_components(blobs[:, 0] > 0.6)) == {"equal": 1}


def test_fixed_rounds_read_nothing_and_match_the_checked_labels():
    from _syncs import count_syncs

    gen = torch.Generator().manual_seed(5)
    blobs = torch.nn.functional.interpolate(torch.rand(8, 1, 5, 5, generator=gen), size=(20, 20), mode="bilinear")
    for g in (12, 20, 24):
        fg = torch.cat([_spiral(g)[None], torch.nn.functional.interpolate(blobs, size=(g, g))[:, 0] > 0.6])
        assert torch.equal(connected_components(fg, checked=False), connected_components(fg))
    # fewer rounds than the spiral needs give other labels: the fixed count is what makes it exact
    assert not torch.equal(connected_components(_spiral(20)[None], unchecked_rounds=10, checked=False),
                           connected_components(_spiral(20)[None]))
    assert count_syncs(lambda: connected_components(blobs[:, 0] > 0.6, checked=False)) == {}
    lam = torch.rand(3, 400, 4, generator=gen)
    labels = (torch.rand(3, 4, generator=gen) > 0.4).float()
    assert count_syncs(lambda: box_masks(lam, labels, 0.79, method="fixed")) == {}
    for threshold in (0.3, 0.79):
        assert torch.equal(box_masks(lam, labels, threshold, method="fixed"),
                           box_masks(lam, labels, threshold, method="checked"))
    with pytest.raises(ValueError, match="method"):
        box_masks(lam, labels, method="exact")
