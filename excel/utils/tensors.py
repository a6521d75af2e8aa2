"""Small constant tables kept on each device once, instead of a host-to-device copy on every call."""
from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor


@lru_cache(maxsize=256)
def device_table(values: tuple, device: torch.device, dtype: torch.dtype = torch.int64) -> Tensor:
    """``torch.tensor(values, dtype=dtype, device=device)``, made once per (values, device, dtype).

    The result is shared: read it, never write into it.
    """
    return torch.tensor(values, dtype=dtype, device=device)


def set_tf32(enabled: bool) -> None:
    """``run.tf32``: let float32 matrix products and convolutions use TF32 on GPUs that have it (Ampere and later;
    about 1e-3 relative error, several times faster). Off keeps true fp32, as the reference ran."""
    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    torch.backends.cudnn.allow_tf32 = bool(enabled)
