"""The trainable decoder (algorithm.md §6): fusion head over all CLIP layers, transformer decoder, attn_pred.

Only these parameters are trained. Shapes: L layers, B batch, N = 1 + P tokens (token 0 is CLS),
P = g * g patches (row-major), W the visual width, E the decoder width, C the classes with background.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from excel.utils.tensors import grid_side

if TYPE_CHECKING:
    from omegaconf import DictConfig

__all__ = ["DecoderOutput", "FusionHead", "TransformerDecoder", "SegDecoder", "attn_pred", "build_decoder"]


class DecoderOutput(NamedTuple):
    """What :class:`SegDecoder` returns.

    seg_logits: (B, C, g, g) class logits at 1/16 resolution.
    fused:      (B, E, g, g) fused feature f after Dropout2d (not detached; detach it for LVC).
    attn_pred:  (B, P, P) predicted patch affinity in (0, 1), computed from ``fused``.
    """

    seg_logits: Tensor
    fused: Tensor
    attn_pred: Tensor


def attn_pred(fused: Tensor, per_sample: bool = False) -> Tensor:
    """Predicted affinity P = sigmoid(3 (G - mean G)) with G the cosine Gram matrix of the patches (algorithm.md §6.3).

    Args:
        fused: (B, E, g, g) fused decoder feature f.
        per_sample: False (faithful, quirk 9): one mean over the whole batch tensor G, so the result depends on
            the other images of the batch; True: each image's own mean (``quirks.per_sample_batch_mean``).
    Returns:
        (B, P, P) with P = g * g, values in (0, 1), symmetric per image. Differentiable (no detach).
    """
    if fused.dim() != 4:
        raise ValueError(f"attn_pred expects fused features (B, E, g, g), got shape {tuple(fused.shape)}")
    e = F.normalize(fused.flatten(2), dim=1)  # (B, E, P), unit columns
    gram = e.transpose(1, 2) @ e  # (B, P, P)
    mean = gram.mean(dim=(1, 2), keepdim=True) if per_sample else gram.mean()
    return torch.sigmoid(3.0 * (gram - mean))


class FusionHead(nn.Module):
    """SegFormer-style fusion of all L layers (algorithm.md §6.1).

    Per layer a token-wise MLP Linear(W -> E) -> ReLU -> Linear(E -> E) (L separate MLPs, stored stacked and run
    as one batched matmul), concatenation in layer order (channel l * E + e), 1x1 conv (L*E -> E, bias),
    Dropout2d. No normalisation and no final activation.
    """

    def __init__(self, in_dim: int, num_layers: int = 12, embed_dim: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.in_dim, self.num_layers, self.embed_dim = in_dim, num_layers, embed_dim
        self.fc1_weight = nn.Parameter(torch.empty(num_layers, embed_dim, in_dim))
        self.fc1_bias = nn.Parameter(torch.empty(num_layers, embed_dim))
        self.fc2_weight = nn.Parameter(torch.empty(num_layers, embed_dim, embed_dim))
        self.fc2_bias = nn.Parameter(torch.empty(num_layers, embed_dim))
        self.fuse = nn.Conv2d(num_layers * embed_dim, embed_dim, kernel_size=1, bias=True)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's nn.Linear default init for every layer's MLP: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
        for weight, bias, fan_in in ((self.fc1_weight, self.fc1_bias, self.in_dim),
                                     (self.fc2_weight, self.fc2_bias, self.embed_dim)):
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(weight, -bound, bound)
            nn.init.uniform_(bias, -bound, bound)
        self.fuse.reset_parameters()

    def layer_mlps(self, tokens: Tensor) -> Tensor:
        """Apply the L per-layer MLPs: (L, T, W) -> (L, T, E) for any token count T."""
        hidden = torch.baddbmm(self.fc1_bias.unsqueeze(1), tokens, self.fc1_weight.transpose(1, 2)).relu_()
        return torch.baddbmm(self.fc2_bias.unsqueeze(1), hidden, self.fc2_weight.transpose(1, 2))

    def forward(self, features: Tensor) -> Tensor:
        """features (L, B, N, W) with CLS at token 0 -> f (B, E, g, g) (after dropout)."""
        if features.dim() != 4 or features.shape[0] != self.num_layers or features.shape[-1] != self.in_dim:
            raise ValueError(f"FusionHead expects features (L={self.num_layers}, B, N, W={self.in_dim}), "
                             f"got shape {tuple(features.shape)}")
        num_layers, batch, num_tokens, width = features.shape
        side = grid_side(num_tokens - 1, "FusionHead: the number of patch tokens")
        patches = features[:, :, 1:].reshape(num_layers, batch * (num_tokens - 1), width)
        per_layer = self.layer_mlps(patches)  # (L, B*P, E)
        stacked = per_layer.permute(1, 0, 2).reshape(batch, num_tokens - 1, num_layers * self.embed_dim)
        fused = F.linear(stacked, self.fuse.weight.flatten(1), self.fuse.bias)  # the 1x1 conv, token-wise
        fused = fused.transpose(1, 2).reshape(batch, self.embed_dim, side, side)
        return self.dropout(fused)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), CLIP's GELU approximation."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class DecoderBlock(nn.Module):
    """Pre-LN transformer block: x + MHA(LN(x)); x + MLP(LN(x)). No dropout, no mask."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), QuickGELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, dim) -> (B, T, dim)."""
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TransformerDecoder(nn.Module):
    """``depth`` pre-LN blocks over the g * g tokens of f, no final LN (algorithm.md §6.2)."""

    def __init__(self, dim: int = 256, depth: int = 3, num_heads: int = 8, mlp_ratio: float = 4) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"decoder width {dim} is not divisible by num_heads={num_heads} "
                             f"(model.decoder.embed_dim / model.decoder.num_heads)")
        self.blocks = nn.ModuleList(DecoderBlock(dim, num_heads, mlp_ratio) for _ in range(depth))

    def forward(self, fused: Tensor) -> Tensor:
        """fused (B, E, g, g) -> (B, E, g, g)."""
        batch, dim, gh, gw = fused.shape
        x = fused.flatten(2).transpose(1, 2)  # (B, P, E)
        for block in self.blocks:
            x = block(x)
        return x.transpose(1, 2).reshape(batch, dim, gh, gw)


class SegDecoder(nn.Module):
    """Fusion head -> transformer decoder -> 1x1 conv classifier, plus attn_pred from the fused feature."""

    def __init__(self, in_dim: int, num_layers: int = 12, embed_dim: int = 256, depth: int = 3, num_heads: int = 8,
                 mlp_ratio: float = 4, dropout: float = 0.1, num_classes: int = 21,
                 per_sample_mean: bool = False) -> None:
        super().__init__()
        self.fusion = FusionHead(in_dim, num_layers, embed_dim, dropout)
        self.transformer = TransformerDecoder(embed_dim, depth, num_heads, mlp_ratio)
        self.classifier = nn.Conv2d(embed_dim, num_classes, kernel_size=1, bias=True)
        self.per_sample_mean = per_sample_mean

    def forward(self, features: Tensor) -> DecoderOutput:
        """features (L, B, N, W) -> DecoderOutput(seg_logits (B,C,g,g), fused (B,E,g,g), attn_pred (B,P,P)).

        The same post-dropout f feeds the transformer and attn_pred (quirk 10); nothing is detached here.
        """
        fused = self.fusion(features)
        seg_logits = self.classifier(self.transformer(fused))
        return DecoderOutput(seg_logits, fused, attn_pred(fused, per_sample=self.per_sample_mean))


def build_decoder(cfg: "DictConfig", in_dim: int, num_layers: int = 12) -> SegDecoder:
    """A :class:`SegDecoder` from ``cfg.model.decoder``; C = len(data.class_names) + 1 (background)."""
    dec = cfg.model.decoder
    num_fg = len(cfg.data.class_names)
    if num_fg < 1:
        raise ValueError("data.class_names is empty: the decoder needs the foreground class list to size its output")
    return SegDecoder(in_dim, num_layers=num_layers, embed_dim=int(dec.embed_dim), depth=int(dec.depth),
                      num_heads=int(dec.num_heads), mlp_ratio=float(dec.mlp_ratio), dropout=float(dec.dropout),
                      num_classes=num_fg + 1, per_sample_mean=bool(cfg.quirks.per_sample_batch_mean))
