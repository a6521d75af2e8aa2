"""Small tensor helpers: the side of a square patch grid, constant tables kept on each device once (instead of a
host-to-device copy on every call), and the TF32 switch."""
from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor


def grid_side(num_patches: int, what: str = "P") -> int:
    """The side g of a square patch grid with ``num_patches`` = g * g cells (quirk 21: inputs are square).

    Raises:
        ValueError: ``num_patches`` is not a positive square; the message starts with ``what``.
    """
    g = math.isqrt(int(num_patches))
    if g * g != num_patches or g == 0:
        raise ValueError(f"{what} = {num_patches} is not the area of a square grid of patches "
                         f"(g * g; inputs must be square)")
    return g


@lru_cache(maxsize=256)
def device_table(values: tuple, device: torch.device, dtype: torch.dtype = torch.int64) -> Tensor:
    """``torch.tensor(values, dtype=dtype, device=device)``, made once per (values, device, dtype).

    The result is shared: read it, never write into it.
    """
    return torch.tensor(values, dtype=dtype, device=device)


def set_tf32(enabled: bool) -> None:
    """``run.tf32`` (default on): let float32 matrix products and convolutions use TF32 on GPUs that have it
    (Ampere and later; about 1e-3 relative error, several times faster). It acts on CUDA only: CPU arithmetic stays
    fp32 either way. Off keeps true fp32, as the reference ran."""
    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    torch.backends.cudnn.allow_tf32 = bool(enabled)
