"""The organism pretraining's dense terms (docs/organism.md, "Pretraining"): where the dense features are read (the
calibrated path ExCEL reads, or the last block's value path), the CLIPSelf-style local term (box means against an
EMA teacher's crop embeddings) and the attention self-distillation term (layers 6-11's q-k attention among patches
against the teacher's calibrated-feature affinities). Pure functions of the open_clip tower and tensors; shapes in
each docstring.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from excel.backbone.svc import split_heads


def value_path(block: nn.Module, x: Tensor) -> Tensor:
    """One open_clip residual block with its attention replaced by each token's own value (MaskCLIP's dense
    read-out): (B, N, W) -> (B, N, W), ``x + out_proj(v(ln_1 x))`` then the MLP."""
    attn = block.attn
    width = x.shape[-1]
    v = F.linear(block.ln_1(x), attn.in_proj_weight[2 * width:], attn.in_proj_bias[2 * width:])
    x = x + block.ls_1(attn.out_proj(v))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


AFFINITY_LAYERS = range(6, 12)   # ExCEL's cam.affinity_layers: the attention term's layers
CALIBRATED_BLOCKS = 5             # ExCEL's model.svc.num_blocks: the calibrated path of the local term


def encode_image_dense(visual: nn.Module, images: Tensor, path: str = "value",
                       count: int | None = None) -> tuple[Tensor, Tensor, list[Tensor]]:
    """(B, 3, S, S) -> (pooled (B, D), dense (B', K, D), states): the tower's image embedding; for the first B' =
    ``count`` images (all by default) and each of the K patches its ``patch_dropout`` slot lets through, the dense
    feature read through ``path`` ("value": :func:`value_path` on the last block; "calibrated":
    :func:`calibrated_path`), ln_post and projection applied, neither normalised; and the ordinary path's block
    inputs O_-1 .. O_10 (twelve (B, 1 + K, W) tensors, ``states[l]`` the input of block l)."""
    if path not in ("value", "calibrated"):
        raise ValueError(f"local_path {path!r}: expected 'value' or 'calibrated'")
    x = visual._embeds(images)
    *body, last = visual.transformer.resblocks
    states = []
    for block in body:
        states.append(x)
        x = block(x)
    states.append(x)
    pooled = visual.ln_post(last(x)[:, 0]) @ visual.proj
    if path == "value":
        tokens = value_path(last, x[:count])[:, 1:]
    else:
        tokens = calibrated_path(visual.transformer.resblocks, [s[:count] for s in states])[:, 1:]
    return pooled, visual.ln_post(tokens) @ visual.proj, states


def calibrated_path(blocks: nn.ModuleList, states: list[Tensor], num_blocks: int = CALIBRATED_BLOCKS) -> Tensor:
    """ExCEL's calibrated (SVC) path, differentiable (algorithm.md §1.4-1.5, heads summed as the pipeline runs it):
    S = O_{f-1} + sum over the last ``num_blocks`` blocks l of out_proj(M_l @ v_l), M_l the head sum of
    [softmax(q q^T s) + softmax(k k^T s) + softmax(v v^T s)] / 3 on ln_1(O_{l-1}). ``states[l]`` is block l's input
    O_{l-1} (B, N, W). Returns S (B, N, W) before ln_post."""
    first = len(blocks) - num_blocks
    out = states[first]
    for block, x in zip(list(blocks)[first:], states[first:]):
        attn = block.attn
        width, heads = x.shape[-1], attn.num_heads
        qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
        value = qkv[..., 2 * width:]
        scale = (width // heads) ** -0.5
        mix = 0
        for t in qkv.chunk(3, dim=-1):
            t = split_heads(t, heads)                                              # (B, h, N, d)
            mix = mix + torch.softmax((t * scale) @ t.transpose(-1, -2), dim=-1)
        mix = (mix / 3).sum(1)                                                    # (B, N, N)
        out = out + attn.out_proj(mix @ value)
    return out


def patch_attention(block: nn.Module, x: Tensor) -> Tensor:
    """The ordinary q-k attention of one block among patches, head mean: (B, N, W) block input -> (B, N-1, N-1),
    the class token's row and column dropped and each row renormalised to sum to 1."""
    attn = block.attn
    width, heads = x.shape[-1], attn.num_heads
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    q, k, _ = (split_heads(t, heads) for t in qkv.chunk(3, dim=-1))
    weights = torch.softmax((q * (width // heads) ** -0.5) @ k.transpose(-1, -2), dim=-1).mean(1)[:, 1:, 1:]
    return weights / weights.sum(-1, keepdim=True)


def affinity_target(dense: Tensor, temperature: float) -> Tensor:
    """(B, K, D) dense features -> (B, K, K): row-wise softmax of the patches' cosine similarities / temperature."""
    unit = F.normalize(dense, dim=-1)
    return torch.softmax(unit @ unit.transpose(1, 2) / temperature, dim=-1)


def attention_loss(blocks: nn.ModuleList, states: list[Tensor], target: Tensor,
                   layers: range = AFFINITY_LAYERS) -> Tensor:
    """KL(target || mean over ``layers`` of :func:`patch_attention`), averaged over rows and images.

    ``states[l]`` (B, N, W) is block l's input; ``target`` (B, N-1, N-1) has rows that sum to 1."""
    mean = torch.stack([patch_attention(blocks[layer], states[layer]) for layer in layers]).mean(0)
    return (target * (target.clamp_min(1e-12).log() - mean.clamp_min(1e-12).log())).sum(-1).mean()


def draw_boxes(grid: int, count: int, generator: torch.Generator, min_side: int = 3) -> Tensor:
    """(count, 4) boxes (y0, x0, y1, x1), end exclusive, on a ``grid`` x ``grid`` patch grid, each side drawn
    uniformly from [min_side, grid] and the box placed uniformly inside the grid."""
    side = torch.randint(min(min_side, grid), grid + 1, (count, 2), generator=generator)
    start = (torch.rand(count, 2, generator=generator) * (grid - side + 1)).floor().long()
    return torch.cat([start, start + side], dim=1)


def region_means(dense: Tensor, kept: Tensor, boxes: Tensor, grid: int) -> tuple[Tensor, Tensor]:
    """Mean dense feature of each box over the patches present.

    Args:
        dense: (B, K, D) features of the K patches present in each image.
        kept: (B, K) their indices on the grid (row-major), or None when every patch is present (K = grid²).
        boxes: (B, R, 4) boxes per image (:func:`draw_boxes`).
    Returns:
        (B, R, D) means, and (B, R) bool: whether the box held at least one present patch.
    """
    b, k, _ = dense.shape
    index = kept if kept is not None else torch.arange(k, device=dense.device).expand(b, k)
    row, col = (index // grid)[:, None], (index % grid)[:, None]                 # (B, 1, K)
    y0, x0, y1, x1 = (boxes[..., i:i + 1].to(dense.device) for i in range(4))  # (B, R, 1) each
    inside = ((row >= y0) & (row < y1) & (col >= x0) & (col < x1)).to(dense.dtype)  # (B, R, K)
    count = inside.sum(-1)
    return (inside @ dense) / count.clamp(min=1)[..., None], count > 0


def crop_views(images: Tensor, boxes: Tensor, patch: int, size: int) -> Tensor:
    """(B, 3, S, S) images and (B, R, 4) grid boxes -> (B * R, 3, size, size) crops of the boxes' pixels."""
    crops = []
    for image, image_boxes in zip(images, boxes):
        for y0, x0, y1, x1 in (image_boxes * patch).tolist():
            crops.append(F.interpolate(image[None, :, y0:y1, x0:x1], size=(size, size), mode="bilinear",
                                       align_corners=False))
    return torch.cat(crops)


def local_loss(teacher: nn.Module, images: Tensor, boxes: Tensor, dense: Tensor, kept: Tensor | None,
               patch: int) -> Tensor:
    """1 - cosine between each box's mean student feature (:func:`region_means` of ``dense`` (B, K, D)) and the
    teacher's image embedding of the box's crop (resized to the images' side, the resolution it was trained at),
    averaged over the boxes that hold a present patch (0 if none does). ``boxes`` (B, R, 4)."""
    grid = images.shape[-1] // patch
    means, valid = region_means(dense, kept, boxes, grid)
    with torch.no_grad():
        target = teacher.encode_image(crop_views(images, boxes, patch, images.shape[-1]))
    cos = F.cosine_similarity(means.flatten(0, 1), target, dim=-1).view(valid.shape)
    return ((1 - cos) * valid).sum() / valid.sum().clamp(min=1)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.lerp_(s, 1 - momentum)


@torch.no_grad()
def teacher_dense(visual: nn.Module, images: Tensor, kept: Tensor | None) -> Tensor:
    """The teacher's calibrated dense features (B, K, D) of ``images`` (B, 3, S, S) seen whole, at the student's
    patches ``kept`` (B, K) (every patch when None)."""
    _, dense, _ = encode_image_dense(visual, images, "calibrated")
    if kept is None:
        return dense
    return dense.gather(1, kept.to(dense.device)[..., None].expand(-1, -1, dense.shape[-1]))
