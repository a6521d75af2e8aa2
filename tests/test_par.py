"""PAR (algorithm.md §5.5): hand-computed weights, the neighbour order, a slow per-pixel reference, and the fused PAR
against the shifted-view loop it replaced (tests/_par_reference.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from excel.cam.par import PAR, color_affinity, neighbor_offsets, position_logits, propagate, propagation_matrix

from _ops import count_ops
from _par_reference import LoopPAR
from _syncs import count_syncs

# (row, col) offsets of dilation 1 in the reference order.
UNIT = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
AXIAL = [1, 3, 4, 6]
DIAGONAL = [0, 2, 5, 7]


def _hand_pos_softmax_d1() -> tuple[float, float]:
    """softmax(π) for dilation 1 only, by hand: ρ = √2 (diagonal) or 1 (axial), unbiased std over 8 entries."""
    mean = (4 * math.sqrt(2) + 4) / 8
    std = math.sqrt((4 * (math.sqrt(2) - mean) ** 2 + 4 * (1 - mean) ** 2) / 7)  # = 0.2214...
    pi_diag = -((math.sqrt(2) / (std + 1e-8) / 0.3) ** 2)  # about -453.3
    pi_axial = -((1 / (std + 1e-8) / 0.3) ** 2)  # about -226.7
    z = 4 * math.exp(pi_diag - pi_axial) + 4
    return math.exp(pi_diag - pi_axial) / z, 1 / z


def test_neighbor_order_and_position_logits():
    assert neighbor_offsets((1, 3))[:8] == UNIT
    assert neighbor_offsets((1, 3))[8:] == [(3 * dy, 3 * dx) for dy, dx in UNIT]
    pi = position_logits((1,))
    mean = (4 * math.sqrt(2) + 4) / 8
    std = math.sqrt((4 * (math.sqrt(2) - mean) ** 2 + 4 * (1 - mean) ** 2) / 7)
    assert std == pytest.approx((math.sqrt(2) - 1) / 2 * math.sqrt(8 / 7)) and std == pytest.approx(0.2214065, abs=1e-6)
    assert pi[0].item() == pytest.approx(-((math.sqrt(2) / std / 0.3) ** 2), rel=1e-5)
    assert pi[1].item() == pytest.approx(-((1 / std / 0.3) ** 2), rel=1e-5)
    assert pi[DIAGONAL].unique().numel() == 1 and pi[AXIAL].unique().numel() == 1
    # With all six dilations: 48 entries; farther neighbours get lower position logits.
    pi6 = position_logits((1, 2, 4, 8, 12, 24))
    assert pi6.shape == (48,)
    assert pi6[1] > pi6[9] > pi6[17] and pi6[0] < pi6[1]


def test_constant_image_weights_by_hand():
    # Constant image: σ = 0, every |diff| = 0, so κ = 0 and softmax(κ) = 1/8 for dilation 1.
    img = torch.full((1, 3, 5, 5), 0.7)
    a = color_affinity(img, dilations=(1,))
    p_diag, p_axial = _hand_pos_softmax_d1()  # about 0 and 0.25
    assert p_axial == pytest.approx(0.25, abs=1e-9)
    expected = torch.tensor([1 / 8 + 0.01 * (p_axial if k in AXIAL else p_diag) for k in range(8)])
    assert torch.allclose(a[0, :, 2, 2], expected, atol=1e-7)
    assert a[0, 1, 2, 2].item() == pytest.approx(0.1275, abs=1e-7)
    assert a[0, 0, 2, 2].item() == pytest.approx(0.125, abs=1e-7)
    assert torch.allclose(a.sum(1), torch.full((1, 5, 5), 1.01))
    # One round on a single 1 in the centre spreads it to the 8 neighbours with these weights.
    mask = torch.zeros(1, 1, 5, 5)
    mask[0, 0, 2, 2] = 1
    out = propagate(mask, a, (1,), 1)[0, 0]
    assert out[2, 2].item() == 0.0  # the centre is not its own neighbour
    assert out[1, 2].item() == pytest.approx(0.1275, abs=1e-7)  # reaches it through offset (+1, 0)
    assert out[1, 1].item() == pytest.approx(0.125, abs=1e-7)  # through (+1, +1)
    assert out[0, 0].item() == 0.0
    # Replicate padding: a 1 in the corner is seen by (0,0) through (-1,-1), (-1,0) and (0,-1).
    mask = torch.zeros(1, 1, 5, 5)
    mask[0, 0, 0, 0] = 1
    out = propagate(mask, a, (1,), 1)[0, 0]
    assert out[0, 0].item() == pytest.approx(0.125 + 0.1275 + 0.1275, abs=1e-7)


def test_ramp_image_colour_term_by_hand():
    # I(y, x) = x in every channel. At (2, 2) the 8 neighbour values are 1,2,3,1,3,1,2,3: mean 2,
    # unbiased var 6/7, |diff| = 1,0,1,1,1,1,0,1, so κ = -(1/σ/0.3)^2 for six neighbours and 0 for (±1, 0).
    img = torch.arange(5.0).expand(1, 3, 5, 5).contiguous()
    a = color_affinity(img, dilations=(1,))[0, :, 2, 2]
    sigma = math.sqrt(6 / 7)
    kappa = -((1 / (sigma + 1e-8) / 0.3) ** 2)  # about -12.963
    assert kappa == pytest.approx(-12.9630, abs=1e-3)
    e = math.exp(kappa)
    p_diag, p_axial = _hand_pos_softmax_d1()
    vertical = 1 / (2 + 6 * e) + 0.01 * p_axial
    horizontal = e / (2 + 6 * e) + 0.01 * p_axial
    diagonal = e / (2 + 6 * e) + 0.01 * p_diag
    expected = [diagonal, vertical, diagonal, horizontal, horizontal, diagonal, vertical, diagonal]
    assert torch.allclose(a, torch.tensor(expected), atol=1e-7)


def _bilinear_align_corners(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """C x h0 x w0 -> C x h x w, bilinear with align_corners=True, one output pixel at a time."""
    c, h0, w0 = img.shape
    out = np.zeros((c, h, w))
    for i in range(h):
        for j in range(w):
            y = i * (h0 - 1) / (h - 1) if h > 1 else 0.0
            x = j * (w0 - 1) / (w - 1) if w > 1 else 0.0
            ya, xa = int(math.floor(y)), int(math.floor(x))
            yb, xb = min(ya + 1, h0 - 1), min(xa + 1, w0 - 1)
            fy, fx = y - ya, x - xa
            out[:, i, j] = (
                img[:, ya, xa] * (1 - fy) * (1 - fx)
                + img[:, ya, xb] * (1 - fy) * fx
                + img[:, yb, xa] * fy * (1 - fx)
                + img[:, yb, xb] * fy * fx
            )
    return out


def par_loop_reference(image: np.ndarray, masks: np.ndarray, dilations, num_iter: int) -> np.ndarray:
    """Slow PAR for one image (3 x h0 x w0) and its maps (M x H x W), one pixel and one neighbour at a time."""
    m, h, w = masks.shape
    img = _bilinear_align_corners(image.astype(np.float64), h, w)
    offsets = [(dy * d, dx * d) for d in dilations for dy, dx in UNIT]
    k = len(offsets)
    rho = np.array([math.sqrt(2) * max(abs(dy), abs(dx)) if dy and dx else max(abs(dy), abs(dx)) for dy, dx in offsets])
    pi = -((rho / (rho.std(ddof=1) + 1e-8) / 0.3) ** 2)
    pos = np.exp(pi - pi.max()) / np.exp(pi - pi.max()).sum()

    def at(arr, y, x):  # replicate padding = clamped coordinates
        return arr[..., min(max(y, 0), h - 1), min(max(x, 0), w - 1)]

    weights = np.zeros((h, w, k))
    for y in range(h):
        for x in range(w):
            nb = np.stack([at(img, y + dy, x + dx) for dy, dx in offsets], axis=1)  # 3 x K
            sigma = nb.std(axis=1, ddof=1)
            kappa = np.zeros(k)
            for i in range(k):
                terms = [(abs(nb[c, i] - img[c, y, x]) / (sigma[c] + 1e-8) / 0.3) ** 2 for c in range(3)]
                kappa[i] = -sum(terms) / 3
            soft = np.exp(kappa - kappa.max()) / np.exp(kappa - kappa.max()).sum()
            weights[y, x] = soft + 0.01 * pos
    cur = masks.astype(np.float64)
    for _ in range(num_iter):
        nxt = np.zeros_like(cur)
        for y in range(h):
            for x in range(w):
                for i, (dy, dx) in enumerate(offsets):
                    nxt[:, y, x] += weights[y, x, i] * at(cur, y + dy, x + dx)
        cur = nxt
    return cur


def test_par_matches_per_pixel_loop():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 5, 4, generator=gen)  # resized to the 7 x 6 mask size inside PAR
    masks = torch.rand(2, 3, 7, 6, generator=gen)
    par = PAR(dilations=(1, 2, 4), num_iter=3)
    got = par(images, masks)
    for b in range(2):
        ref = par_loop_reference(images[b].numpy(), masks[b].numpy(), (1, 2, 4), 3)
        np.testing.assert_allclose(got[b].numpy(), ref, rtol=1e-5, atol=1e-6)


def test_par_default_dilations_on_small_maps():
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(1, 3, 9, 9, generator=gen)
    masks = torch.rand(1, 2, 9, 9, generator=gen)
    got = PAR(num_iter=2)(images, masks)  # dilations up to 24 on a 9 x 9 map: replicate padding everywhere
    ref = par_loop_reference(images[0].numpy(), masks[0].numpy(), (1, 2, 4, 8, 12, 24), 2)
    np.testing.assert_allclose(got[0].numpy(), ref, rtol=1e-5, atol=1e-6)


def test_par_invariants_and_batching():
    gen = torch.Generator().manual_seed(2)
    images = torch.rand(3, 3, 16, 16, generator=gen)
    masks = torch.rand(3, 4, 16, 16, generator=gen)
    par = PAR()
    out = par(images, masks)
    assert out.shape == masks.shape
    # Each round is a positive combination with weights summing to 1.01: constant maps scale by 1.01 per round.
    const = par(images, torch.ones(3, 1, 16, 16))
    assert torch.allclose(const, torch.full_like(const, 1.01**20), rtol=1e-5)
    # Channels and images are independent: one image and a subset of channels give the same numbers.
    alone = par(images[1:2], masks[1:2, 2:3])
    assert torch.allclose(alone, out[1:2, 2:3], rtol=1e-6, atol=1e-7)
    # The buffer follows the module; the weights are not trainable.
    assert len(list(par.parameters())) == 0 and par.pos_logits.shape == (48,)


def test_par_bad_input():
    with pytest.raises(ValueError, match="dilations"):
        PAR(dilations=(0, 1))
    with pytest.raises(ValueError, match="same B"):
        PAR()(torch.rand(2, 3, 8, 8), torch.rand(1, 2, 8, 8))


def test_par_num_channels_skips_only_padding():
    gen = torch.Generator().manual_seed(3)
    images = torch.rand(3, 3, 12, 12, generator=gen)
    masks = torch.rand(3, 4, 12, 12, generator=gen)
    par = PAR(num_iter=5)
    full = par(images, masks)
    counts = torch.tensor([4, 1, 2])
    trimmed = par(images, masks, num_channels=counts)
    for b, n in enumerate(counts.tolist()):
        assert torch.equal(trimmed[b, :n], full[b, :n])       # the same ops on the needed channels: bit-exact
    assert torch.equal(par(images, masks, num_channels=torch.tensor([4, 4, 4])), full)
    with pytest.raises(ValueError, match="num_channels"):
        par(images, masks, num_channels=torch.tensor([1, 2]))


# ---------------------------------------------------------------------------------------------- fused vs loop
# (B, M, H, W) maps and the (h, w) of the image PAR resizes: square and not, borders reached by every dilation
ORACLE_CASES = [(2, 3, 37, 29, 20, 24), (1, 2, 9, 9, 9, 9), (3, 1, 48, 48, 32, 32), (1, 4, 60, 44, 60, 44)]


@pytest.mark.parametrize("method", ["fused", "views"])
@pytest.mark.parametrize("case", ORACLE_CASES)
def test_fused_par_equals_the_loop_in_float64(case, method):
    # Same sums in another order: in float64 the two agree far inside 1e-6 (both are exact to ~1e-14)
    b, m, h, w, h0, w0 = case
    gen = torch.Generator().manual_seed(sum(case))
    images = torch.rand(b, 3, h0, w0, generator=gen, dtype=torch.float64)
    masks = torch.rand(b, m, h, w, generator=gen, dtype=torch.float64)
    got = PAR(method=method)(images, masks)
    torch.testing.assert_close(got, LoopPAR()(images, masks), rtol=0, atol=1e-6)
    assert (got - LoopPAR()(images, masks)).abs().max() < 1e-12
    assert got.dtype == torch.float64 and got.is_contiguous()


@pytest.mark.cuda
def test_fused_par_equals_the_loop_in_float32(device):
    # float32 rounding after 20 rounds of 48-term sums: each version is a few 1e-5 from the float64 result, and the
    # two agree to 2e-6 relative to the map values (which grow to 1.01^20 = 1.22) plus 2e-6
    gen = torch.Generator().manual_seed(7)
    images = torch.rand(2, 3, 64, 80, generator=gen)
    masks = torch.rand(2, 3, 96, 72, generator=gen)
    counts = torch.tensor([3, 1])
    loop = LoopPAR()(images, masks)
    got = PAR(method="fused").to(device)(images.to(device), masks.to(device), num_channels=counts.to(device)).cpu()
    truth = LoopPAR()(images.double(), masks.double())
    torch.testing.assert_close(got, loop, rtol=2e-6, atol=2e-6)
    assert (got.double() - truth).abs().max() < 1e-4 and (loop.double() - truth).abs().max() < 1e-4


def test_color_affinity_equals_the_loop():
    gen = torch.Generator().manual_seed(4)
    images = torch.rand(2, 3, 30, 26, generator=gen)
    images[0, :, :10] = 0.5  # a flat region: σ = 0 there, every colour term is 0 / 1e-8 = 0
    ref = __import__("_par_reference").color_affinity(images)
    torch.testing.assert_close(color_affinity(images), ref, rtol=1e-5, atol=1e-6)


def test_propagation_matrix_is_valid_csr():
    # Distinct, ascending columns in every row (what CSR kernels expect), rows summing to 1 + pos_weight, and no
    # entry linking two images
    gen = torch.Generator().manual_seed(5)
    dilations = (1, 3)
    weights = color_affinity(torch.rand(2, 3, 7, 8, generator=gen), dilations)
    a = propagation_matrix(weights, dilations)
    pad, k = 3, 16
    hp, wp = 7 + 2 * pad, 8 + 2 * pad
    assert a.layout == torch.sparse_csr and a.shape == (2 * hp * wp, 2 * hp * wp)
    assert a.col_indices().dtype == torch.int32
    cols = a.col_indices().view(-1, k).long()
    assert bool((cols.diff(dim=1) > 0).all())
    assert bool(((cols // (hp * wp)) == (torch.arange(2 * hp * wp) // (hp * wp))[:, None]).all())
    dense = a.to_dense()
    torch.testing.assert_close(dense.sum(1), torch.full((2 * hp * wp,), 1.01), rtol=1e-6, atol=1e-6)
    # the row of padded pixel (0, 0) of image 1 is the row of its copy, map pixel (0, 0) = padded (pad, pad)
    assert torch.equal(dense[hp * wp], dense[hp * wp + pad * wp + pad])


def test_fused_par_operator_count_and_no_syncs():
    # One sparse product per round and a fixed number of operators for the weights, whatever K and the sizes
    gen = torch.Generator().manual_seed(6)
    images, masks = torch.rand(2, 3, 40, 40, generator=gen), torch.rand(2, 3, 40, 40, generator=gen)
    par = PAR(method="fused")
    par(images, masks)  # the per-device constant tables are made on first use
    ops = count_ops(lambda: par(images, masks, num_channels=torch.tensor([3, 2])))
    assert ops["aten.mm"] == 20 and sum(ops.values()) <= 150
    ten = PAR(num_iter=10, method="fused")
    assert sum(count_ops(lambda: ten(images, masks, num_channels=torch.tensor([3, 2]))).values()) == sum(ops.values()) - 10
    assert not count_syncs(lambda: par(images, masks, num_channels=torch.tensor([3, 2])))
    assert PAR(num_iter=0)(images, masks) is masks
    # auto: the shifted views on the CPU (2 K operators per round, cache-resident), no sync either
    views = count_ops(lambda: PAR()(images, masks))
    assert views["aten.addcmul_"] == 21 * 48 and "aten.mm" not in views   # 20 rounds and the variance
    assert not count_syncs(lambda: PAR()(images, masks, num_channels=torch.tensor([3, 2])))
    with pytest.raises(ValueError, match="method"):
        PAR(method="sparse")
