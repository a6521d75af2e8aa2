"""Pure tensor functions of the calibrated backbone: surgery attention (SVC, algorithm.md §1.4), the LVC bias
(§5.6) and positional-embedding interpolation (§1.2).

No module state and no device choices here: every function works on whatever device its inputs live on.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor

from excel.utils.tensors import grid_side

HEAD_REDUCTIONS = ("sum", "mean")


def surgery_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, head_reduce: str = "sum",
                      ex_bias: Tensor | None = None) -> Tensor:
    """The surgery attention matrix M of one calibrated block (algorithm.md §1.4).

    Per head h: M_h = [softmax(q_h q_h^T s) + softmax(k_h k_h^T s) + softmax(v_h v_h^T s)] / 3 (softmax over the
    last axis, CLS included). The three softmaxes run in place, a few images at a time. With ``ex_bias`` (the LVC term,
    algorithm.md §5.6 step 6), E is added to the patch-patch block M_h[1:, 1:] of every head before the head reduction.

    Args:
        q, k, v: (B, h, N, d) per-head projections of the block input (after ln_1).
        scale: the attention scale s (1 / sqrt(d)).
        head_reduce: "sum" (faithful, quirk 2: rows sum to h) or "mean" (the fix: rows sum to 1).
        ex_bias: optional (B, N-1, N-1) LVC bias E, identical for every head.
    Returns:
        M: (B, N, N), shared by all heads.
    """
    if head_reduce not in HEAD_REDUCTIONS:
        raise ValueError(f"head_reduce must be one of {HEAD_REDUCTIONS}, got {head_reduce!r}")
    batch, n = q.shape[0], q.shape[-2]
    if ex_bias is not None and ex_bias.shape != (batch, n - 1, n - 1):
        raise ValueError(f"ex_bias must have shape (B, N-1, N-1) = {(batch, n - 1, n - 1)}, "
                         f"got {tuple(ex_bias.shape)}")
    # Same ops and summation order as softmax(stack) -> sum over the three -> / 3 (bit-identical), but in place
    # and image by image on CPU, where one image's (h, N, N) maps stay in the cache (algorithm.md §12).
    step = _surgery_chunk(q)
    out = []
    for b in range(0, batch, step):
        m = None
        for t in (q[b:b + step], k[b:b + step], v[b:b + step]):
            sim = (t * scale) @ t.transpose(-1, -2)                  # (b, h, N, N), scale on the small side
            sim = softmax_last_(sim)
            m = sim if m is None else m.add_(sim)
        m = m.div_(3.0)
        if ex_bias is not None:
            m[:, :, 1:, 1:] += ex_bias[b:b + step, None]
        out.append(m.sum(1) if head_reduce == "sum" else m.mean(1))
    return out[0] if len(out) == 1 else torch.cat(out)


def softmax_last_(x: Tensor) -> Tensor:
    """Softmax over the last axis, in place for float32 (same values as ``torch.softmax``, no second buffer).

    Other dtypes (bf16 under autocast) use the functional op, so that CUDA autocast can compute it in float32.
    """
    return torch.softmax(x, dim=-1, out=x) if x.dtype == torch.float32 else torch.softmax(x, dim=-1)


def _surgery_chunk(q: Tensor) -> int:
    """Images per step of ``surgery_attention``: one on CPU (cache-sized maps, 1.5-2x faster), all elsewhere."""
    return 1 if q.device.type == "cpu" else max(q.shape[0], 1)


def lvc_bias(fused: Tensor, per_sample: bool = False, scale: float = 3.0) -> Tensor:
    """The LVC attention bias E from the fused decoder feature (algorithm.md §5.6 steps 1-5).

    e = L2-normalise(flatten f) over channels; G = e^T e; mu = mean(G) over the whole batch tensor (quirk 9) or
    per sample; Z = scale * (G - mu) with Z < 0 set to -inf; E = softmax over the last axis. The diagonal of G is
    1 >= mu, so no row is all -inf.

    Args:
        fused: (B, C, g, g) fused feature, normally detached by the caller.
        per_sample: quirk 9 fix: mu per image instead of over the batch.
        scale: the factor 3 of the reference.
    Returns:
        E: (B, P, P) with P = g * g; rows sum to 1.
    """
    if fused.dim() != 4:
        raise ValueError(f"fused must be (B, C, g, g), got shape {tuple(fused.shape)}")
    e = F.normalize(fused.flatten(2), dim=1)                      # (B, C, P)
    gram = e.transpose(1, 2) @ e                                  # (B, P, P)
    mu = gram.mean(dim=(1, 2), keepdim=True) if per_sample else gram.mean()
    z = scale * (gram - mu)
    z = z.masked_fill(z < 0, float("-inf"))
    return torch.softmax(z, dim=-1)


def pos_grid_side(pos_embed: Tensor) -> int:
    """Side g0 of the square patch grid of a (1 + g0^2, W) positional table."""
    return grid_side(pos_embed.shape[0] - 1, f"the positional table's {pos_embed.shape[0]} rows minus the CLS row")


def interpolate_pos_embed(pos_embed: Tensor, grid: int) -> Tensor:
    """Resize a (1 + g0^2, W) positional table to (1 + grid^2, W) (algorithm.md §1.2).

    The g0 x g0 patch grid (row-major) is resized with bilinear interpolation, align_corners=False and no
    antialias; the CLS row (row 0) is kept as is. Returns the input itself when g0 == grid.
    """
    g0 = pos_grid_side(pos_embed)
    if g0 == grid:
        return pos_embed
    cls_row, patches = pos_embed[:1], pos_embed[1:]
    width = patches.shape[1]
    patches = patches.reshape(1, g0, g0, width).permute(0, 3, 1, 2)        # (1, W, g0, g0)
    patches = F.interpolate(patches, size=(grid, grid), mode="bilinear", align_corners=False, antialias=False)
    patches = patches.permute(0, 2, 3, 1).reshape(grid * grid, width)
    return torch.cat([cls_row, patches], dim=0)


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """(B, N, W) -> (B, h, N, W / h)."""
    b, n, w = x.shape
    return x.reshape(b, n, num_heads, w // num_heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, h, N, d) -> (B, N, h * d)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)
