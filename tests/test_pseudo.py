"""Pseudo labels (algorithm.md §5.1-5.5): the batched path against a simple per-image numpy/cv2 reference."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from excel.cam.par import PAR
from excel.cam.pseudo import make_pseudo_labels, present_classes
from excel.cam.refine import normalize_and_upsample, refine_maps
from _reference import box_mask_reference

G, C_FG = 20, 20
P = G * G
UNIT = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


# ----------------------------------------------------------------------------------------------------------------
# Simple per-image reference: loops, numpy float64, cv2 for contours and resizing.
# ----------------------------------------------------------------------------------------------------------------


def resize_align_corners(img: np.ndarray, h: int, w: int) -> np.ndarray:
    c, h0, w0 = img.shape
    ys = np.arange(h) * (h0 - 1) / (h - 1)
    xs = np.arange(w) * (w0 - 1) / (w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h0 - 1), np.minimum(x0 + 1, w0 - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = img[:, y0][:, :, x0] * (1 - fx) + img[:, y0][:, :, x1] * fx
    bottom = img[:, y1][:, :, x0] * (1 - fx) + img[:, y1][:, :, x1] * fx
    return top * (1 - fy) + bottom * fy


def par_reference(image: np.ndarray, masks: np.ndarray, dilations=(1, 2, 4, 8, 12, 24), num_iter=20) -> np.ndarray:
    m, h, w = masks.shape
    img = resize_align_corners(image.astype(np.float64), h, w)
    offsets = [(dy * d, dx * d) for d in dilations for dy, dx in UNIT]
    pad = max(dilations)

    def neighbours(arr):  # ... x h x w -> list of K arrays holding arr(x + o_k), replicate padding
        padded = np.pad(arr, [(0, 0)] * (arr.ndim - 2) + [(pad, pad), (pad, pad)], mode="edge")
        return [padded[..., pad + dy : pad + dy + h, pad + dx : pad + dx + w] for dy, dx in offsets]

    nb = np.stack(neighbours(img))  # K x 3 x h x w
    sigma = nb.std(axis=0, ddof=1)
    kappa = -(((np.abs(nb - img[None]) / (sigma + 1e-8) / 0.3) ** 2).mean(axis=1))  # K x h x w
    soft = np.exp(kappa - kappa.max(0)) / np.exp(kappa - kappa.max(0)).sum(0)
    rho = np.array([math.sqrt(2) * abs(dy) if dy and dx else abs(dy) + abs(dx) for dy, dx in offsets], float)
    pi = -((rho / (rho.std(ddof=1) + 1e-8) / 0.3) ** 2)
    weights = soft + 0.01 * (np.exp(pi - pi.max()) / np.exp(pi - pi.max()).sum())[:, None, None]
    cur = masks.astype(np.float64)
    for _ in range(num_iter):
        cur = sum(weights[k][None] * n for k, n in enumerate(neighbours(cur)))
    return cur


def make_pseudo_labels_single(lam, attn, cls_label, image, out_size, attn_pred=None, box_threshold=0.79, bg_power=1.0):
    """One image: lam P x C_fg (float32), attn L x N x N, cls_label C_fg, image 3 x h x w -> (labels H x W, stack)."""
    a = attn[6:12, 1:, 1:].astype(np.float64)
    if attn_pred is None:
        aff = a.mean(axis=0)
    else:
        q = attn_pred.astype(np.float64)
        d = [float((q - a[l]).sum()) for l in range(len(a))]
        tau = sum(d) / len(d)
        chosen = [l for l in range(len(a)) if d[l] <= tau]
        aff = sum(a[l] for l in chosen) / (len(chosen) + 1e-5) * q
    x = aff.copy()
    for _ in range(3):
        x = x / x.sum(axis=0, keepdims=True)
        x = x / x.sum(axis=1, keepdims=True)
    x = (x + x.T) / 2
    trans = x @ x
    height, width = out_size
    present = [c for c in range(lam.shape[1]) if cls_label[c] > 0]
    maps = []
    for c in present:
        cam = lam[:, c]
        mask = box_mask_reference(cam.reshape(G, G), box_threshold)
        r = (trans @ (mask.reshape(-1) * cam.astype(np.float64))).reshape(G, G)
        r = r - r.min()
        r = r / (1e-7 + r.max())
        maps.append(cv2.resize(r, (width, height), interpolation=cv2.INTER_LINEAR))
    bg = (1 - np.max(maps, axis=0)) ** bg_power
    stack = par_reference(image, np.stack([bg] + maps))
    lut = np.array([0] + [c + 1 for c in present])
    return lut[stack.argmax(axis=0)], stack


# ----------------------------------------------------------------------------------------------------------------
def random_inputs(seed: int, label_sets, image_size=40):
    gen = torch.Generator().manual_seed(seed)
    b = len(label_sets)
    coarse = torch.rand(b, C_FG, 5, 5, generator=gen)
    lam = torch.nn.functional.interpolate(coarse, size=(G, G), mode="bilinear", align_corners=False)
    lam = lam + 0.05 * torch.rand(b, C_FG, G, G, generator=gen)
    lam = lam - lam.amin(dim=(2, 3), keepdim=True)
    lam = (lam / lam.amax(dim=(2, 3), keepdim=True)).flatten(2).transpose(1, 2).contiguous()  # B x P x C_fg
    yx = torch.stack(torch.meshgrid(torch.arange(G), torch.arange(G), indexing="ij"), -1).reshape(P, 2).float()
    local = torch.zeros(P + 1, P + 1)
    local[1:, 1:] = -torch.cdist(yx, yx) ** 2 / 4  # patches attend to nearby patches, as in a real ViT
    logits = local + torch.randn(12, b, P + 1, P + 1, generator=gen)
    attn = torch.softmax(logits, dim=-1)
    attn[7:] *= 12  # head sums in the calibrated blocks (quirk 3)
    cls = torch.zeros(b, C_FG)
    for i, classes in enumerate(label_sets):
        cls[i, list(classes)] = 1
    images = torch.randn(b, 3, image_size, image_size, generator=gen)
    attn_pred = torch.sigmoid(torch.randn(b, P, P, generator=gen))
    return lam, attn, cls, images, attn_pred


def assert_labels_match(got: torch.Tensor, ref: np.ndarray, ref_stack: np.ndarray, tol: float = 1e-5):
    """Exact equality except at float ties: a differing pixel must have its reference top-2 gap below ``tol``."""
    diff = got.numpy() != ref
    top2 = np.sort(ref_stack, axis=0)[-2:]
    gap = top2[1] - top2[0]
    assert diff.sum() <= 3 and (gap[diff] < tol).all(), f"{diff.sum()} pixels differ, gaps {gap[diff]}"


@pytest.mark.parametrize("use_q", [False, True])
def test_batched_equals_per_image_reference(use_q):
    label_sets = [(2,), (0, 5, 19), (3, 4)]
    lam, attn, cls, images, attn_pred = random_inputs(10 + use_q, label_sets)
    q = attn_pred if use_q else None
    out_size = (48, 56)  # H != W catches a swapped resize axis
    got = make_pseudo_labels(lam, attn, cls, images, out_size, attn_pred=q, box_threshold=0.79)
    assert got.shape == (3, 48, 56) and got.dtype == torch.long
    for i, classes in enumerate(label_sets):
        ref, stack = make_pseudo_labels_single(
            lam[i].numpy(), attn[:, i].numpy(), cls[i].numpy(), images[i].numpy(), out_size,
            attn_pred=None if q is None else q[i].numpy(), box_threshold=0.79,
        )
        assert_labels_match(got[i], ref, stack)
        assert set(got[i].unique().tolist()) <= {0} | {c + 1 for c in classes}
        assert len(got[i].unique()) >= 2  # background and at least one class appear on these inputs


def test_threshold_power_and_par_options_reach_the_result():
    label_sets = [(1, 7), (7,)]
    lam, attn, cls, images, _ = random_inputs(3, label_sets, image_size=32)
    got = make_pseudo_labels(lam, attn, cls, images, (32, 32), box_threshold=0.5, bg_power=2.0, par=PAR(num_iter=20))
    for i in range(2):
        ref, stack = make_pseudo_labels_single(
            lam[i].numpy(), attn[:, i].numpy(), cls[i].numpy(), images[i].numpy(), (32, 32),
            box_threshold=0.5, bg_power=2.0,
        )
        assert_labels_match(got[i], ref, stack)


def test_image_without_classes_and_label_range():
    lam, attn, cls, images, _ = random_inputs(4, [(), (0, 1, 2, 3), (9,)], image_size=24)
    got = make_pseudo_labels(lam, attn, cls, images, (24, 24))
    assert (got[0] == 0).all()
    assert set(got[1].unique().tolist()) <= {0, 1, 2, 3, 4} and set(got[2].unique().tolist()) <= {0, 10}
    assert (got != 255).all()
    # The same image alone gives the same labels (padding of the class axis changes nothing).
    alone = make_pseudo_labels(lam[2:], attn[:, 2:], cls[2:], images[2:], (24, 24))
    assert torch.equal(alone[0], got[2])
    none = make_pseudo_labels(lam[:1], attn[:, :1], cls[:1], images[:1], (24, 24))
    assert none.shape == (1, 24, 24) and (none == 0).all()


def test_present_classes_by_hand():
    index, valid = present_classes(torch.tensor([[0.0, 1, 0, 1, 1], [1.0, 0, 0, 0, 0], [0.0, 0, 0, 0, 0]]))
    assert index.shape == (3, 3)
    assert index[0].tolist() == [1, 3, 4] and index[1, 0] == 0
    assert valid.tolist() == [[True, True, True], [True, False, False], [False, False, False]]


def test_refine_maps_and_normalize_by_hand():
    # Identity transition: r_c = mask_c * lam_c.  g = 2 (P = 4), two classes, the second absent.
    lam = torch.tensor([[[1.0, 9.0], [3.0, 9.0], [2.0, 9.0], [5.0, 9.0]]])  # 1 x P x C
    mask = torch.tensor([[[[1.0, 1.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]]])  # 1 x C x g x g
    labels = torch.tensor([[1.0, 0.0]])
    r = refine_maps(torch.eye(4)[None], lam, mask, labels)
    assert torch.equal(r, torch.tensor([[[[1.0, 3.0], [0.0, 5.0]], [[0.0, 0.0], [0.0, 0.0]]]]))
    # Non-identity transition: r = T @ (mask * lam).
    trans = torch.full((1, 4, 4), 0.25)
    r = refine_maps(trans, lam, mask, labels)
    assert torch.allclose(r[0, 0], torch.full((2, 2), 9 / 4))
    # Normalise [[1, 3], [0, 5]] -> [[1, 3], [0, 5]] / (5 + 1e-7); same-size resize is the identity.
    r = torch.tensor([[[[1.0, 3.0], [0.0, 5.0]], [[0.0, 7.0], [1.0, 1.0]]]])
    stack = normalize_and_upsample(r, torch.tensor([[1.0, 0.0]]), (2, 2))
    fg = torch.tensor([[1.0, 3.0], [0.0, 5.0]]) / (5 + 1e-7)
    assert torch.allclose(stack[0, 1], fg) and (stack[0, 2] == 0).all()
    assert torch.allclose(stack[0, 0], 1 - fg)  # the absent class does not enter the background
    # Upsampling 2 -> 4 with half-pixel centres: first row of [[0, 1], [1, 1]] is 0, .25, .75, 1.
    up = normalize_and_upsample(torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]]]), torch.ones(1, 1), (4, 4), bg_power=2.0)
    assert torch.allclose(up[0, 1, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]), atol=1e-6)
    assert torch.allclose(up[0, 0], (1 - up[0, 1]) ** 2)


def test_bad_input():
    lam, attn, cls, images, _ = random_inputs(5, [(1,)], image_size=16)
    with pytest.raises(ValueError, match="attn"):
        make_pseudo_labels(lam, attn[:, :, :-1], cls, images, (16, 16))
    with pytest.raises(ValueError, match="cls_labels"):
        make_pseudo_labels(lam, attn, cls[:, :-1], images, (16, 16))
    with pytest.raises(ValueError, match="square"):
        make_pseudo_labels(lam[:, :-1], attn, cls, images, (16, 16))
