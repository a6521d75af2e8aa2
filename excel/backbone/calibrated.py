"""The frozen CLIP vision tower with Static Visual Calibration (algorithm.md §1.2-1.6) and the LVC hooks (§5.6, §12).

``CalibratedVisual`` reuses the weights of an open_clip ``VisionTransformer`` and writes its own forward:
blocks before the calibrated ones run standard CLIP attention; the last ``num_svc_blocks`` blocks run the
original path (q-k attention + MLP) and the new path (surgery attention, no MLP) side by side.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Collection

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from excel.backbone.svc import (interpolate_pos_embed, merge_heads, pos_grid_side, softmax_last_, split_heads,
                                surgery_attention)


@dataclass
class VisualOutput:
    """Everything the rest of the model needs from one CLIP pass (docs/architecture.md, Backbone).

    tokens: (B, N, D) Y of algorithm.md §1.5 (ln_post + proj of S_11 with O_11's CLS row), not normalised.
    attn: (L, B, N, N) reported attention stack: head mean in plain blocks, head sum in calibrated ones (1.4);
        None from ``forward(..., need_attn=False)``; layers left out of ``forward(..., attn_layers=...)`` hold zeros.
    features: (L, B, N, W) decoder inputs F_0..F_{L-1} (§1.6: aliased by default, O_0..O_{L-1} when clean).
    new_tokens: (B, N, W) S_11 with O_11's CLS row, before ln_post.
    project: maps (B, N, W) new tokens to (B, N, D) (ln_post, then the projection).
    svc_values: (S, B, P, W) patch rows of v (heads concatenated) of the S calibrated blocks; None without SVC.
    svc_out_weights: (S, W, W) the out-projection weights W_o of those blocks; None without SVC.
    lvc_basis (property, computed on first use): (B, P, W) U = sum_l V_l[:, 1:] @ W_o,l^T (algorithm.md §12).
    """

    tokens: Tensor
    attn: Tensor | None
    features: Tensor
    new_tokens: Tensor
    project: Callable[[Tensor], Tensor] = field(repr=False)
    svc_values: Tensor | None = field(default=None, repr=False)
    svc_out_weights: Tensor | None = field(default=None, repr=False)

    @cached_property
    def lvc_basis(self) -> Tensor:
        """(B, P, W): LVC adds ``c * E @ lvc_basis`` to the patch rows of ``new_tokens`` (zeros without SVC)."""
        if self.svc_values is None:
            b, n, w = self.new_tokens.shape
            return self.new_tokens.new_zeros(b, n - 1, w)
        with torch.no_grad():
            return sum(v @ w.t() for v, w in zip(self.svc_values, self.svc_out_weights))


class CalibratedVisual(nn.Module):
    """Frozen open_clip ViT with SVC dual path. Always in eval mode; forward runs without gradients.

    Args:
        vit: an open_clip ``VisionTransformer`` (``clip.visual``) with nn.MultiheadAttention blocks.
        num_svc_blocks: calibrated blocks counted from the end (5 -> blocks 7..11 of 12, quirk 1).
        svc_enabled: False = plain CLIP: tokens = ln_post(O_{L-1}) @ proj, all attention plain.
        head_mean: quirk 2 fix: average the surgery attention over heads instead of summing.
        clean_features: quirk 4 fix: decoder features O_0..O_{L-1} instead of the aliased maps.
    The positional table is a private copy (``pos_embed``, not saved in state dicts), so ``resize_pos_embed_``
    never changes the open_clip module it wraps.
    """

    def __init__(self, vit: nn.Module, num_svc_blocks: int = 5, svc_enabled: bool = True, head_mean: bool = False,
                 clean_features: bool = False) -> None:
        super().__init__()
        _check_supported(vit)
        self.vit = vit
        self.vit.requires_grad_(False)
        blocks = vit.transformer.resblocks
        self.num_layers = len(blocks)
        if svc_enabled and not 1 <= num_svc_blocks <= self.num_layers:
            raise ValueError(f"model.svc.num_blocks={num_svc_blocks} must be in [1, {self.num_layers}]")
        self.svc_enabled = svc_enabled
        self.first_svc = self.num_layers - num_svc_blocks if svc_enabled else self.num_layers
        self.head_mean = head_mean
        self.clean_features = clean_features
        self.num_heads = blocks[0].attn.num_heads
        self.width = blocks[0].attn.embed_dim
        self.head_dim = self.width // self.num_heads
        self.scale = self.head_dim ** -0.5
        self.output_dim = vit.proj.shape[1]
        self.register_buffer("pos_embed", vit.positional_embedding.detach().clone(), persistent=False)
        self.train(False)

    @property
    def lvc_scale(self) -> float:
        """c of algorithm.md §12: LVC adds c * E to the reduced surgery matrix (heads with head sum, 1 with mean)."""
        return 1.0 if self.head_mean else float(self.num_heads)

    @property
    def pos_grid(self) -> int:
        """Side of the stored positional grid (14 for ViT-B/16 at 224, 20 after the permanent resize)."""
        return pos_grid_side(self.pos_embed)

    def train(self, mode: bool = True) -> "CalibratedVisual":
        """CLIP is never trained: the module stays in eval mode whatever ``mode`` says (algorithm.md §1.1)."""
        return super().train(False)

    @torch.no_grad()
    def resize_pos_embed_(self, grid: int) -> None:
        """Replace the stored positional table by its bilinear resize to grid x grid (algorithm.md §1.2)."""
        self.pos_embed = interpolate_pos_embed(self.pos_embed, grid).clone()

    def project(self, new_tokens: Tensor) -> Tensor:
        """(B, N, W) -> (B, N, D): ln_post, then the visual projection."""
        return self.vit.ln_post(new_tokens) @ self.vit.proj

    def embed(self, images: Tensor) -> Tensor:
        """(B, 3, H, H) -> (B, N, W): O_{-1} = ln_pre(patch tokens with CLS + positions), as open_clip does."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        if images.shape[-1] != images.shape[-2]:
            raise ValueError(f"images must be square (quirk 21), got {images.shape[-2]}x{images.shape[-1]}")
        x = self.vit.conv1(images)                                  # (B, W, g, g)
        grid = x.shape[-1]
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (B, P, W)
        cls = self.vit.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + interpolate_pos_embed(self.pos_embed, grid).to(x.dtype)
        return self.vit.ln_pre(x)

    @torch.no_grad()
    def forward(self, images: Tensor, ex_bias: Tensor | None = None, need_attn: bool = True,
                attn_layers: Collection[int] | None = None) -> VisualOutput:
        """Run the dual-path CLIP tower.

        Args:
            images: (B, 3, H, H) normalised images.
            ex_bias: optional (B, P, P) LVC bias E: the slow, literal LVC forward (E added to M_h[1:, 1:] of
                every head in every calibrated block). ``ExCEL.calibrated_lam`` gets the same result from
                ``new_tokens`` and ``lvc_basis`` without a second pass.
            need_attn: False skips the attention weights (fused attention kernels instead; ``attn`` is None):
                what segmentation inference needs.
            attn_layers: the layers whose weights are read (None: all); the others run fused attention and
                hold zeros in ``attn``, which keeps its (L, B, N, N) shape.
        Returns:
            VisualOutput (see its docstring for shapes).
        """
        x = self.embed(images)
        if ex_bias is not None and not self.svc_enabled:
            raise ValueError("ex_bias (LVC) needs the calibrated path: model.svc.enabled is false")
        reduce = "mean" if self.head_mean else "sum"
        attn, mids, outs, values = [], [], [], []
        new_path = None
        for i, blk in enumerate(self.vit.transformer.resblocks):
            u = blk.ln_1(x)
            want = need_attn and (attn_layers is None or i in attn_layers)
            if i < self.first_svc:
                x_ori, weights = blk.attn(u, u, u, need_weights=want, average_attn_weights=True)
            else:
                x_ori, weights, x_new, v = self._dual_attention(blk, u, reduce, ex_bias, want)
                new_path = (x if new_path is None else new_path) + x_new
                values.append(v[:, 1:])                  # stacked (copied) below
            a = x + x_ori
            x = a + blk.mlp(blk.ln_2(a))
            if need_attn and weights is None:                       # a layer nobody reads
                weights = x.new_zeros(x.shape[0], x.shape[1], x.shape[1])
            attn.append(weights)
            mids.append(a)
            outs.append(x)
        svc_values = svc_out_weights = None
        if new_path is None:
            new_tokens = x
        else:
            new_tokens = torch.cat([x[:, :1], new_path[:, 1:]], dim=1)
            svc_values = torch.stack(values)
            svc_out_weights = torch.stack([blk.attn.out_proj.weight
                                           for blk in self.vit.transformer.resblocks[self.first_svc:]])
        return VisualOutput(tokens=self.project(new_tokens), attn=torch.stack(attn) if need_attn else None,
                            features=self._decoder_features(outs, mids, new_tokens), new_tokens=new_tokens,
                            project=self.project, svc_values=svc_values, svc_out_weights=svc_out_weights)

    def _dual_attention(self, blk: nn.Module, u: Tensor, reduce: str, ex_bias: Tensor | None,
                        need_attn: bool = True) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
        """Both attentions of one calibrated block from its packed projections (algorithm.md §1.4).

        Returns x_ori (B, N, W), the head-sum q-k attention (B, N, N), x_new (B, N, W) and v (B, N, W) with
        the heads concatenated. The surgery matrix M is shared by all heads, so concat_h(M v_h) = M @ v.
        """
        mha = blk.attn
        qkv = F.linear(u, mha.in_proj_weight, mha.in_proj_bias)                   # (B, N, 3W)
        value = qkv[..., 2 * self.width:]
        q, k, v = (split_heads(t, self.num_heads) for t in qkv.chunk(3, dim=-1))   # (B, h, N, d)
        if need_attn:
            orig = (q * self.scale) @ k.transpose(-1, -2)                         # (B, h, N, N)
            orig = softmax_last_(orig)                                             # in place in float32
            mixed, weights = orig @ v, orig.sum(1)
        else:
            mixed, weights = F.scaled_dot_product_attention(q, k, v), None         # fused; same numbers
        x_ori = F.linear(merge_heads(mixed), mha.out_proj.weight, mha.out_proj.bias)
        surgery = surgery_attention(q, k, v, self.scale, head_reduce=reduce, ex_bias=ex_bias)  # (B, N, N)
        x_new = F.linear(surgery @ value, mha.out_proj.weight, mha.out_proj.bias)
        return x_ori, weights, x_new, value

    def _decoder_features(self, outs: list[Tensor], mids: list[Tensor], new_tokens: Tensor) -> Tensor:
        """(L, B, N, W) decoder inputs (algorithm.md §1.6).

        Faithful aliasing with the first calibrated block f: F_l = O_l for l < f - 1, F_{f-1} = new_tokens,
        F_l = a_{l+1} (block l+1 after attention, before its MLP) for f <= l <= L - 2, F_{L-1} = O_{L-1}.
        """
        f = self.first_svc
        if self.clean_features or f == self.num_layers:
            return torch.stack(outs)
        feats = list(outs[:max(f - 1, 0)])
        if f >= 1:
            feats.append(new_tokens)
        feats.extend(mids[f + 1:])
        feats.append(outs[-1])
        return torch.stack(feats)


def _check_supported(vit: nn.Module) -> None:
    """Raise if ``vit`` is not the plain open_clip ViT this module knows how to run."""
    needed = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post", "proj")
    missing = [name for name in needed if getattr(vit, name, None) is None]
    if missing:
        raise TypeError(f"{type(vit).__name__} is not an open_clip VisionTransformer with a projection "
                        f"(missing {missing})")
    if getattr(vit, "attn_pool", None) is not None:
        raise TypeError("attentional-pooling vision towers are not supported")
    for i, blk in enumerate(vit.transformer.resblocks):
        if not isinstance(getattr(blk, "attn", None), nn.MultiheadAttention) or not blk.attn.batch_first:
            raise TypeError(f"block {i}: expected a batch-first nn.MultiheadAttention")
        if not (isinstance(blk.ls_1, nn.Identity) and isinstance(blk.ls_2, nn.Identity)):
            raise TypeError(f"block {i}: layer scale is not supported (CLIP ViTs have none)")
