"""The shifted-view PAR as it was before the fused one: the oracle the fused ``excel.cam.par`` is checked against
(tests/test_par.py). One replicate-padded view and one ``addcmul_`` per neighbour and round; same settings, same
neighbour order (algorithm.md §5.5). Not collected as tests.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# the neighbourhood and its position logits are settings, not the propagation under test: shared with the library
from excel.cam.par import DEFAULT_DILATIONS, neighbor_offsets, position_logits

_STD_EPS = 1e-8


def _shifted(padded: Tensor, pad: int, offset: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """View of the replicate-padded tensor holding value(x + offset) at every pixel x."""
    dy, dx = offset
    h, w = size
    return padded[..., pad + dy : pad + dy + h, pad + dx : pad + dx + w]


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
    offsets = neighbor_offsets(dilations)
    k = len(offsets)
    if pos_logits is None:
        pos_logits = position_logits(dilations, color_scale)
    if pos_logits.shape != (k,):
        raise ValueError(f"color_affinity: pos_logits must have {k} entries, got shape {tuple(pos_logits.shape)}")
    b, c, h, w = images.shape
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    size = (h, w)
    mean = torch.zeros_like(images)
    for o in offsets:
        mean.add_(_shifted(padded, pad, o, size))
    mean.div_(k)
    var = torch.zeros_like(images)
    dev = torch.empty_like(images)  # one scratch buffer for all offsets
    for o in offsets:
        torch.sub(_shifted(padded, pad, o, size), mean, out=dev)
        var.addcmul_(dev, dev)
    std = var.div_(k - 1).sqrt_().add_(_STD_EPS)
    logits = images.new_empty((b, k, h, w))
    for i, o in enumerate(offsets):
        # (x / σ / s)^2 == (|x| / σ / s)^2 bit for bit (IEEE division and squaring ignore the sign), so no abs
        torch.sub(_shifted(padded, pad, o, size), images, out=dev)
        torch.mean(dev.div_(std).div_(color_scale).square_(), dim=1, out=logits[:, i])
    weights = torch.softmax(logits.neg_(), dim=1)
    pos = torch.softmax(pos_logits.to(device=images.device, dtype=images.dtype), dim=0)
    return weights.add_(pos_weight * pos[None, :, None, None])


def propagate(masks: Tensor, weights: Tensor, dilations: Sequence[int], num_iter: int) -> Tensor:
    """``num_iter`` rounds of Mask(x) <- Σ_k a_k(x) Mask(x + o_k) on all channels (algorithm.md §5.5 step 7).

    Args:
        masks: B x M x H x W score maps.
        weights: B x K x H x W neighbour weights from ``color_affinity``.

    Returns:
        B x M x H x W propagated maps.
    """
    offsets = neighbor_offsets(dilations)
    b, m, h, w = masks.shape
    if weights.shape != (b, len(offsets), h, w):
        raise ValueError(
            f"propagate: weights must be B x K x H x W = {(b, len(offsets), h, w)}, got {tuple(weights.shape)}"
        )
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    cols = weights.unsqueeze(2)  # B x K x 1 x H x W, broadcast over the M channels
    for _ in range(num_iter):
        padded = F.pad(masks, (pad, pad, pad, pad), mode="replicate")
        out = torch.zeros_like(masks)
        for i, o in enumerate(offsets):
            out.addcmul_(cols[:, i], _shifted(padded, pad, o, (h, w)))
        masks = out
    return masks


class LoopPAR(nn.Module):
    """Pixel-adaptive refinement (algorithm.md §5.5); batched over all channels of all images.

    Args:
        dilations: neighbour dilations (reference [1, 2, 4, 8, 12, 24]).
        num_iter: propagation rounds (reference 20).
        color_scale: colour/position temperature (reference 0.3).
        pos_weight: weight of the position softmax (reference 0.01).
    """

    def __init__(
        self,
        dilations: Sequence[int] = DEFAULT_DILATIONS,
        num_iter: int = 20,
        color_scale: float = 0.3,
        pos_weight: float = 0.01,
    ) -> None:
        super().__init__()
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
                others are padding). On CPU the padding is skipped (image by image, the same values); elsewhere
                the batch runs in one go. Padding channels of the result are unspecified.

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
        images = F.interpolate(images.to(masks.dtype), size=masks.shape[-2:], mode="bilinear", align_corners=True)
        weights = color_affinity(images, self.dilations, self.pos_logits, self.color_scale, self.pos_weight)
        counts = num_channels.tolist() if num_channels is not None and masks.device.type == "cpu" else []
        if not counts or min(counts) >= masks.shape[1]:
            return propagate(masks, weights, self.dilations, self.num_iter)
        out = masks.clone()  # each channel is refined on its own, so skipping some changes no other
        for b, n in enumerate(counts):
            n = max(0, min(int(n), masks.shape[1]))
            if n:
                out[b, :n] = propagate(masks[b : b + 1, :n], weights[b : b + 1], self.dilations, self.num_iter)[0]
        return out

    def extra_repr(self) -> str:
        return f"dilations={self.dilations}, num_iter={self.num_iter}"
