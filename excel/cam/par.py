"""PAR: pixel-adaptive refinement of score maps by the image colours (algorithm.md §5.5).

Every pixel x has 8 neighbours per dilation d, in the order (-d,-d), (-d,0), (-d,+d), (0,-d), (0,+d), (+d,-d),
(+d,0), (+d,+d) as (row, column) offsets, with replicate padding at the borders. The weights are
a_k(x) = softmax_k(κ_k(x)) + w_pos * softmax_k(π_k), and each round sets Mask(x) <- Σ_k a_k(x) Mask(x + o_k).

Two implementations with the same numbers (within float32 rounding; equal in float64), picked by ``method``:

- ``fused``: the K = 8 * len(dilations) neighbour values of the image are one stacked copy, and each propagation
  round is one sparse-times-dense product (:func:`propagation_matrix`). About 100 operators for the weights and
  one per round, whatever K: what a GPU wants (one launch per round instead of K).
- ``views``: one shifted view of the replicate-padded maps and one ``addcmul_`` per neighbour and round. The
  views of a B x M x H x W map stay in the CPU's caches, which makes it about twice as fast there as the sparse
  product, at 2 K operators per round.

``auto`` (the default) is ``views`` on the CPU and ``fused`` elsewhere; neither branches per image or reads the
device. The pre-fusion PAR (with its CPU-only per-image branch) is kept in ``tests/_par_reference.py`` as the oracle.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from excel.utils.tensors import device_table

DEFAULT_DILATIONS: tuple[int, ...] = (1, 2, 4, 8, 12, 24)
_STD_EPS = 1e-8


def neighbor_offsets(dilations: Sequence[int]) -> list[tuple[int, int]]:
    """The 8 * len(dilations) (row, column) neighbour offsets in the reference order."""
    unit = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    return [(dy * d, dx * d) for d in dilations for dy, dx in unit]


def position_logits(dilations: Sequence[int], color_scale: float = 0.3) -> Tensor:
    """π_k = -(ρ_k / (std(ρ) + 1e-8) / color_scale)^2 with ρ_k = d (axial) or √2·d (diagonal); unbiased std.

    Returns:
        K float32 logits, K = 8 * len(dilations).
    """
    offsets = neighbor_offsets(dilations)
    dists = torch.tensor([float(max(abs(dy), abs(dx))) for dy, dx in offsets])
    diagonal = torch.tensor([dy != 0 and dx != 0 for dy, dx in offsets])
    rho = torch.where(diagonal, dists * math.sqrt(2.0), dists).to(torch.float32)
    return -((rho / (rho.std() + _STD_EPS) / color_scale) ** 2)


def neighbor_values(x: Tensor, dilations: Sequence[int]) -> Tensor:
    """x(p + o_k) for every pixel p and offset o_k, replicate padding at the borders.

    One replicate pad and one ``stack`` of the K shifted windows of it (a single copy; faster on the CPU than one
    ``unfold`` per dilation followed by dropping the kernel centres).

    Args:
        x: B x C x H x W.
        dilations: neighbour dilations (positive).

    Returns:
        B x C x K x H x W, K = 8 * len(dilations) in :func:`neighbor_offsets` order.
    """
    b, c, h, w = x.shape
    pad = max(dilations)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate").contiguous()
    row = padded.stride(2)
    # each shifted window as one strided view of the padded map (one operator, where two slices would be two)
    return torch.stack([padded.as_strided((b, c, h, w), padded.stride(), padded.storage_offset()
                                          + (pad + dy) * row + pad + dx)
                        for dy, dx in neighbor_offsets(dilations)], dim=2)


def color_affinity(
    images: Tensor,
    dilations: Sequence[int] = DEFAULT_DILATIONS,
    pos_logits: Tensor | None = None,
    color_scale: float = 0.3,
    pos_weight: float = 0.01,
) -> Tensor:
    """PAR neighbour weights a_k(x) (algorithm.md §5.5 steps 2-6).

    σ_c(x) is the unbiased std of the K neighbour values of channel c at x (two-pass),
    κ_k(x) = -mean_c (|I_c(x+o_k) - I_c(x)| / (σ_c(x) + 1e-8) / color_scale)^2.

    Args:
        images: B x 3 x H x W image already resized to the mask size.
        dilations: neighbour dilations.
        pos_logits: K position logits (``position_logits(dilations, color_scale)`` when None).
        color_scale: the 0.3 of the reference.
        pos_weight: the 0.01 of the reference.

    Returns:
        B x K x H x W weights; every pixel's weights sum to 1 + pos_weight.
    """
    k = 8 * len(dilations)
    if pos_logits is None:
        pos_logits = position_logits(dilations, color_scale)
    if pos_logits.shape != (k,):
        raise ValueError(f"color_affinity: pos_logits must have {k} entries, got shape {tuple(pos_logits.shape)}")
    nb = neighbor_values(images, dilations)                                          # B x 3 x K x H x W
    dev = nb - nb.mean(dim=2, keepdim=True)
    std = dev.square_().sum(dim=2).div_(k - 1).sqrt_().add_(_STD_EPS)                 # B x 3 x H x W
    del dev
    # (x / σ / s)^2 == (|x| / σ / s)^2 bit for bit (IEEE division and squaring ignore the sign), so no abs
    logits = nb.sub_(images.unsqueeze(2)).div_(std.unsqueeze(2)).div_(color_scale).square_().mean(dim=1)
    weights = torch.softmax(logits.neg_(), dim=1)
    pos = torch.softmax(pos_logits.to(device=images.device, dtype=images.dtype), dim=0)
    return weights.add_(pos_weight * pos[None, :, None, None])


def propagation_matrix(weights: Tensor, dilations: Sequence[int]) -> Tensor:
    """One PAR round as a sparse matrix on the replicate-padded grid.

    With pad = max(dilations), Hp = H + 2 pad and Wp = W + 2 pad, a row of the (B·Hp·Wp) x (B·Hp·Wp) CSR matrix
    is a padded pixel r; it holds the K weights of the pixel r is a copy of (r clamped into the map) at the
    padded positions of that pixel's neighbours. Columns are distinct within a row and sorted (the offsets in
    (row, column) order), as CSR kernels expect, and images never mix. So ``A @ v`` on a padded map v
    (B·Hp·Wp x M, replicate-padded) is the next round's map, already replicate-padded.

    Args:
        weights: B x K x H x W from :func:`color_affinity`.
        dilations: the dilations the weights were made with.

    Returns:
        sparse CSR (B·Hp·Wp) x (B·Hp·Wp) with int32 indices, on the weights' device and dtype.
    """
    offsets = neighbor_offsets(dilations)
    b, k, h, w = weights.shape
    if k != len(offsets):
        raise ValueError(f"propagation_matrix: weights must have K = {len(offsets)} neighbours, got {k}")
    pad = max(dilations)
    hp, wp = h + 2 * pad, w + 2 * pad
    rows = b * hp * wp
    if rows * k >= 2 ** 31:
        raise ValueError(f"propagation_matrix: {b} maps of {h} x {w} need {rows * k} entries, more than int32 "
                         f"indices hold; refine fewer or smaller maps at a time")
    device = weights.device
    order = sorted(range(k), key=lambda i: offsets[i])
    step = device_table(tuple(offsets[i][0] * wp + offsets[i][1] for i in order), device, torch.int32)
    ys = torch.arange(hp, dtype=torch.int32, device=device).sub_(pad).clamp_(0, h - 1).add_(pad)
    xs = torch.arange(wp, dtype=torch.int32, device=device).sub_(pad).clamp_(0, w - 1).add_(pad)
    source = (ys[:, None] * wp + xs[None, :]).view(1, hp * wp, 1)                 # padded position of the copy
    first = torch.arange(0, rows, hp * wp, dtype=torch.int32, device=device).view(b, 1, 1)
    cols = (source + step.view(1, 1, k) + first).view(-1)
    crow = torch.arange(0, rows * k + 1, k, dtype=torch.int32, device=device)
    values = F.pad(weights.index_select(1, device_table(tuple(order), device)), (pad, pad, pad, pad),
                   mode="replicate").permute(0, 2, 3, 1).reshape(-1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, cols, values, (rows, rows), check_invariants=False)


def propagate(masks: Tensor, weights: Tensor, dilations: Sequence[int], num_iter: int) -> Tensor:
    """``num_iter`` rounds of Mask(x) <- Σ_k a_k(x) Mask(x + o_k) on all channels (algorithm.md §5.5 step 7).

    Each round is one sparse product with :func:`propagation_matrix` on the padded maps, channels last.

    Args:
        masks: B x M x H x W score maps.
        weights: B x K x H x W neighbour weights from ``color_affinity``.

    Returns:
        B x M x H x W propagated maps.
    """
    b, m, h, w = masks.shape
    k = 8 * len(dilations)
    if weights.shape != (b, k, h, w):
        raise ValueError(f"propagate: weights must be B x K x H x W = {(b, k, h, w)}, got {tuple(weights.shape)}")
    if num_iter == 0 or masks.numel() == 0:
        return masks
    pad = max(dilations)
    matrix = propagation_matrix(weights.to(masks.dtype), dilations)
    state = F.pad(masks, (pad, pad, pad, pad), mode="replicate").permute(0, 2, 3, 1).reshape(-1, m)
    for _ in range(num_iter):
        state = torch.mm(matrix, state)
    hp, wp = h + 2 * pad, w + 2 * pad
    return state.view(b, hp, wp, m)[:, pad: pad + h, pad: pad + w].permute(0, 3, 1, 2).contiguous()


def _shifted(padded: Tensor, pad: int, offset: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """View of the replicate-padded tensor holding value(x + offset) at every pixel x."""
    dy, dx = offset
    h, w = size
    return padded[..., pad + dy: pad + dy + h, pad + dx: pad + dx + w]


def color_affinity_views(images: Tensor, dilations: Sequence[int], pos_logits: Tensor, color_scale: float = 0.3,
                         pos_weight: float = 0.01) -> Tensor:
    """:func:`color_affinity` one neighbour at a time on shifted views (the ``views`` method; B x K x H x W)."""
    offsets = neighbor_offsets(dilations)
    k = len(offsets)
    b, c, h, w = images.shape
    pad = max(dilations)
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    mean = torch.zeros_like(images)
    for o in offsets:
        mean.add_(_shifted(padded, pad, o, (h, w)))
    mean.div_(k)
    var = torch.zeros_like(images)
    dev = torch.empty_like(images)  # one scratch buffer for all offsets
    for o in offsets:
        torch.sub(_shifted(padded, pad, o, (h, w)), mean, out=dev)
        var.addcmul_(dev, dev)
    std = var.div_(k - 1).sqrt_().add_(_STD_EPS)
    logits = images.new_empty((b, k, h, w))
    for i, o in enumerate(offsets):
        torch.sub(_shifted(padded, pad, o, (h, w)), images, out=dev)
        torch.mean(dev.div_(std).div_(color_scale).square_(), dim=1, out=logits[:, i])
    weights = torch.softmax(logits.neg_(), dim=1)
    pos = torch.softmax(pos_logits.to(device=images.device, dtype=images.dtype), dim=0)
    return weights.add_(pos_weight * pos[None, :, None, None])


def propagate_views(masks: Tensor, weights: Tensor, dilations: Sequence[int], num_iter: int) -> Tensor:
    """:func:`propagate` one neighbour at a time on shifted views (the ``views`` method)."""
    offsets = neighbor_offsets(dilations)
    h, w = masks.shape[-2:]
    pad = max(dilations)
    cols = weights.unsqueeze(2)  # B x K x 1 x H x W, broadcast over the M channels
    for _ in range(num_iter):
        padded = F.pad(masks, (pad, pad, pad, pad), mode="replicate")
        out = torch.zeros_like(masks)
        for i, o in enumerate(offsets):
            out.addcmul_(cols[:, i], _shifted(padded, pad, o, (h, w)))
        masks = out
    return masks


PAR_METHODS = ("auto", "fused", "views")


class PAR(nn.Module):
    """Pixel-adaptive refinement (algorithm.md §5.5); batched over all channels of all images.

    Args:
        dilations: neighbour dilations (reference [1, 2, 4, 8, 12, 24]).
        num_iter: propagation rounds (reference 20).
        color_scale: colour/position temperature (reference 0.3).
        pos_weight: weight of the position softmax (reference 0.01).
        method: ``auto`` (``views`` on the CPU, ``fused`` elsewhere), ``fused`` or ``views`` (module docstring).
    """

    def __init__(
        self,
        dilations: Sequence[int] = DEFAULT_DILATIONS,
        num_iter: int = 20,
        color_scale: float = 0.3,
        pos_weight: float = 0.01,
        method: str = "auto",
    ) -> None:
        super().__init__()
        if method not in PAR_METHODS:
            raise ValueError(f"PAR: method must be one of {PAR_METHODS}, got {method!r}")
        self.method = method
        dilations = tuple(int(d) for d in dilations)
        if not dilations or min(dilations) <= 0:
            raise ValueError(f"PAR: dilations must be positive integers, got {dilations}")
        if num_iter < 0:
            raise ValueError(f"PAR: num_iter must be >= 0, got {num_iter}")
        self.dilations = dilations
        self.num_iter = int(num_iter)
        self.color_scale = float(color_scale)
        self.pos_weight = float(pos_weight)
        self.register_buffer("pos_logits", position_logits(dilations, color_scale), persistent=False)

    def forward(self, images: Tensor, masks: Tensor, num_channels: Optional[Tensor] = None) -> Tensor:
        """Refine score maps.

        Args:
            images: B x 3 x h x w image (any size; resized bilinearly with align_corners=True to H x W).
            masks: B x M x H x W score maps.
            num_channels: optional B counts: only the first ``num_channels[b]`` maps of image b are needed (the
                others are padding). Checked for its shape only: the whole batch runs in one go, padding
                included, so no count is read on the host. Padding channels of the result are unspecified.

        Returns:
            B x M x H x W refined maps.
        """
        if images.dim() != 4 or masks.dim() != 4 or images.shape[0] != masks.shape[0]:
            raise ValueError(
                f"PAR: expected images B x 3 x h x w and masks B x M x H x W with the same B, got "
                f"{tuple(images.shape)} and {tuple(masks.shape)}"
            )
        if num_channels is not None and tuple(num_channels.shape) != (masks.shape[0],):
            raise ValueError(f"PAR: num_channels must hold B = {masks.shape[0]} counts, "
                             f"got shape {tuple(num_channels.shape)}")
        if self.num_iter == 0:
            return masks
        images = F.interpolate(images.to(masks.dtype), size=masks.shape[-2:], mode="bilinear", align_corners=True)
        fused = self.method == "fused" or (self.method == "auto" and masks.device.type != "cpu")
        affinity, spread = (color_affinity, propagate) if fused else (color_affinity_views, propagate_views)
        weights = affinity(images, self.dilations, self.pos_logits, self.color_scale, self.pos_weight)
        return spread(masks, weights, self.dilations, self.num_iter)

    def extra_repr(self) -> str:
        return f"dilations={self.dilations}, num_iter={self.num_iter}, method={self.method}"
