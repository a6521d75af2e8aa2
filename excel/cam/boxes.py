"""Box masks from the LAM with the CAA threshold (algorithm.md §5.2, quirk 11).

Everything is batched over images and classes: the connected components of all maps are found at once by
label propagation on the tensor's device (no host loop per image or class). Two ways to stop the propagation,
picked by ``method`` (``cam.box_method``): ``checked`` rounds until nothing changes (exact for any input; one or two
device reads a call, free on the CPU), ``fixed`` a fixed number of rounds with no device read (what a GPU step
wants); ``auto`` = checked on the CPU, fixed elsewhere.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from excel.utils.tensors import device_table, grid_side


def quantize_maps(maps: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """uint8 maps and their foreground (algorithm.md §5.2 steps 1-3).

    u = uint8(trunc(255 * map)) computed in float32, θ = int(ϑ * max(u)) with Python float semantics
    (a lookup table over the 256 possible maxima, so no float64 is needed on the device), fg = u > θ.

    Args:
        maps: ... x g x g maps in [0, 1].
        threshold: ϑ.

    Returns:
        (u, fg): ... x g x g int64 values in [0, 255] and the bool foreground.
    """
    u = (maps.to(torch.float32) * 255).clamp_(0, 255).to(torch.uint8).long()
    theta_table = device_table(tuple(int(threshold * m) for m in range(256)), maps.device)
    theta = theta_table[u.flatten(-2).amax(dim=-1)]
    return u, u > theta[..., None, None]


def _propagate_labels(lab: Tensor, fgf: Tensor) -> Tensor:
    """One round: 3 x 3 max inside the foreground, then a pointer jump (each pixel takes the label of the pixel
    its label names). M x 1 x h x w float32 labels (1-based ids, 0 = background) -> the next labels."""
    grown = F.max_pool2d(lab, 3, stride=1, padding=1).mul_(fgf)
    flat = grown.view(grown.shape[0], -1)
    # entry v of the padded row is the label of the pixel with id v (entry 0: the background's 0)
    jumped = F.pad(flat, (1, 0)).gather(1, flat.long()).view_as(grown)
    return torch.maximum(grown, jumped)


BOX_METHODS = ("auto", "checked", "fixed")


def fixed_rounds(h: int, w: int) -> int:
    """Rounds of the ``fixed`` method: 2 * max(h, w) (40 on the 20 x 20 grid, where LAM boxes settle in 4 to 8;
    a one-pixel-wide spiral filling the grid, the slowest shape we know, settles in 31, about 1.6 * g)."""
    return 2 * max(h, w)


def connected_components(fg: Tensor, unchecked_rounds: Optional[int] = None, checked: bool = True) -> Tensor:
    """8-connected component labels of many small binary grids at once.

    Every foreground pixel gets 1 + the largest row-major position index in its component, background gets 0.
    Label propagation (3 x 3 max pooling inside the foreground) with pointer jumping. The first
    ``unchecked_rounds`` rounds run without looking at the result (default max(h, w) // 2: 10 on the 20 x 20
    grid, where LAM boxes settle in 4 to 8); then one round at a time until a round changes nothing, so the
    usual call reads the device once (one ``torch.equal``) and the labels are exact for any input.

    With ``checked=False`` only the unchecked rounds run (default :func:`fixed_rounds`) and nothing is read from
    the device: exact for components that settle within them.

    Args:
        fg: M x h x w bool.
        unchecked_rounds: rounds before the first convergence check (or in all, with ``checked=False``).
        checked: round until a round changes nothing after the unchecked ones.

    Returns:
        M x h x w int64 labels.
    """
    m, h, w = fg.shape
    ids = torch.arange(1, h * w + 1, device=fg.device, dtype=torch.float32).view(1, 1, h, w)
    fgf = fg.to(torch.float32).unsqueeze(1)
    lab = ids * fgf
    if unchecked_rounds is None:
        unchecked_rounds = max(h, w) // 2 if checked else fixed_rounds(h, w)
    for _ in range(int(unchecked_rounds)):
        lab = _propagate_labels(lab, fgf)
    if not checked:
        return lab.squeeze(1).long()
    while True:
        new = _propagate_labels(lab, fgf)
        if torch.equal(new, lab):
            return lab.squeeze(1).long()
        lab = new


def component_box_union(labels: Tensor) -> Tensor:
    """Union of the clamped bounding boxes of all components (algorithm.md §5.2 step 4).

    A component with inclusive bounding box rows [y0, y1] and columns [x0, x1] sets rows y0 .. min(y1+1, g-1)-1
    and columns x0 .. min(x1+1, g-1)-1 (the reference clamps the exclusive end to 19 for g = 20), so the last
    row and column are never set and a component lying only there adds nothing.

    Args:
        labels: M x g x g int64 component labels from ``connected_components`` (0 = background).

    Returns:
        M x g x g bool mask.
    """
    m, h, w = labels.shape
    if h != w:
        raise ValueError(f"component_box_union: grids must be square, got {h} x {w}")
    g = h
    slots = g * g + 1
    flat = labels.view(m, -1)
    steps = torch.arange(g, device=labels.device)
    rows = steps.view(g, 1).expand(g, g).reshape(1, -1).expand(m, -1)
    cols = steps.view(1, g).expand(g, g).reshape(1, -1).expand(m, -1)

    def reduce(src: Tensor, how: str, init: int) -> Tensor:
        out = labels.new_full((m, slots), init)
        return out.scatter_reduce_(1, flat, src, how, include_self=True)

    y0, y1 = reduce(rows, "amin", g), reduce(rows, "amax", -1)
    x0, x1 = reduce(cols, "amin", g), reduce(cols, "amax", -1)
    present = (y1 >= 0).long()
    present[:, 0] = 0  # slot 0 collects the background
    y0, x0 = y0.clamp(max=g - 1), x0.clamp(max=g - 1)
    y_end = (y1 + 1).clamp(min=0, max=g - 1)
    x_end = (x1 + 1).clamp(min=0, max=g - 1)
    # 2-D difference array: +1 at (y0, x0) and (y_end, x_end), -1 at the two other corners; its 2-D prefix sum
    # counts the boxes covering each cell. All ends are <= g - 1, so a g x g array is enough.
    diff = labels.new_zeros((m, g * g))
    diff.scatter_add_(1, y0 * g + x0, present)
    diff.scatter_add_(1, y0 * g + x_end, -present)
    diff.scatter_add_(1, y_end * g + x0, -present)
    diff.scatter_add_(1, y_end * g + x_end, present)
    return diff.view(m, g, g).cumsum(1).cumsum(2) > 0


def box_masks(
    lam: Tensor,
    cls_labels: Tensor,
    threshold: float = 0.79,
    grid: Optional[int] = None,
    method: str = "auto",
) -> Tensor:
    """Box masks of every class of every image (algorithm.md §5.2), zeros for absent classes.

    Args:
        lam: B x P x C LAM (P = g * g, row-major) or B x C x g x g maps, values in [0, 1].
        cls_labels: B x C multi-hot labels; a class is present where the label is > 0.
        threshold: the CAA threshold ϑ (VOC training 0.79, COCO 0.88, validation 0.75).
        grid: g, inferred from the shape when None.
        method: how the connected components stop (module docstring): auto | checked | fixed.

    Returns:
        B x C x g x g float masks in {0, 1}.
    """
    if lam.dim() == 3:
        b, p, c = lam.shape
        g = grid_side(p, "box_masks: lam.shape[1]")
        maps = lam.transpose(1, 2).reshape(b, c, g, g)
    elif lam.dim() == 4 and lam.shape[-1] == lam.shape[-2]:
        b, c, g = lam.shape[0], lam.shape[1], lam.shape[-1]
        maps = lam
    else:
        raise ValueError(f"box_masks: lam must be B x P x C or B x C x g x g, got shape {tuple(lam.shape)}")
    if grid is not None and grid != g:
        raise ValueError(f"box_masks: grid = {grid} does not match the LAM grid side {g}")
    if cls_labels.shape != (b, c):
        raise ValueError(f"box_masks: cls_labels must be B x C = {(b, c)}, got {tuple(cls_labels.shape)}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"box_masks: threshold must be in [0, 1], got {threshold}")
    if method not in BOX_METHODS:
        raise ValueError(f"box_masks: method must be one of {BOX_METHODS}, got {method!r}")
    _, fg = quantize_maps(maps, threshold)
    fg = fg & (cls_labels > 0)[:, :, None, None]
    checked = method == "checked" or (method == "auto" and lam.device.type == "cpu")
    labels = connected_components(fg.reshape(b * c, g, g), checked=checked)
    return component_box_union(labels).view(b, c, g, g).to(lam.dtype)
