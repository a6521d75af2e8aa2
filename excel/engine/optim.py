"""AdamW with the reference's linear warm-up then poly decay (algorithm.md §8.2).

The learning rate of step s (0-based, set before the update of that step):

    s <  W:  base * (1 - (1 - s / W) * (1 - r))      (r = warmup_ratio, so step 0 uses base * r)
    s >= W:  base * (1 - s / max_iters) ** power      (clamped at 0 past max_iters)

Quirk 14: the reference declares four groups with bases [1e-4, 1e-4, 1e-3, 1e-3] of which only the last holds
parameters, so the effective base is 1e-3 (``optim.lr``) and the value it logs (group 0) is ten times smaller.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch

__all__ = ["poly_warmup_lr", "PolyWarmupAdamW", "resolve_fused"]


def poly_warmup_lr(step: int, base_lr: float, warmup_iters: int, warmup_ratio: float, max_iters: int,
                   power: float = 1.0) -> float:
    """The learning rate of (0-based) step ``step``; see the module docstring."""
    if step < warmup_iters:
        return base_lr * (1.0 - (1.0 - step / warmup_iters) * (1.0 - warmup_ratio))
    return base_lr * max(0.0, 1.0 - step / max_iters) ** power


class PolyWarmupAdamW(torch.optim.AdamW):
    """torch AdamW whose every group's lr is ``poly_warmup_lr(step, group base lr, ...)`` at each step.

    ``step()`` uses the internal counter ``global_step`` (then increments it); ``set_lr(n)`` sets the counter and
    the lr for iteration n explicitly (a training loop may call it before every step, e.g. when a GradScaler can
    skip steps). The counter is part of ``state_dict()``, so a resumed run continues the schedule.
    ``fused=True`` uses torch's one-kernel AdamW (a handful of operators per step instead of about ten per
    parameter); None is torch's default (the per-parameter loop on CPU, foreach on CUDA).
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float, weight_decay: float = 0.01,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, warmup_iters: int = 0,
                 warmup_ratio: float = 1e-6, max_iters: int = 1, power: float = 1.0,
                 fused: bool | None = None) -> None:
        if max_iters < 1:
            raise ValueError(f"PolyWarmupAdamW: max_iters={max_iters} (train.max_iters) must be >= 1")
        if warmup_iters < 0 or not 0.0 <= warmup_ratio <= 1.0:
            raise ValueError(f"PolyWarmupAdamW: warmup_iters={warmup_iters} must be >= 0 and "
                             f"warmup_ratio={warmup_ratio} in [0, 1] (optim.warmup_iters, optim.warmup_ratio)")
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, fused=fused)
        self.warmup_iters, self.warmup_ratio = int(warmup_iters), float(warmup_ratio)
        self.max_iters, self.power = int(max_iters), float(power)
        self.global_step = 0
        for group in self.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.set_lr(0)

    def lr_at(self, step: int, base_lr: float) -> float:
        return poly_warmup_lr(step, base_lr, self.warmup_iters, self.warmup_ratio, self.max_iters, self.power)

    def set_lr(self, step: int) -> float:
        """Make ``step`` the current (0-based) iteration and set every group's lr; returns the first group's lr."""
        self.global_step = int(step)
        for group in self.param_groups:
            group["lr"] = self.lr_at(self.global_step, group["initial_lr"])
        return self.param_groups[0]["lr"]

    @property
    def current_lr(self) -> float:
        """The first group's lr (the one the next ``step()`` uses)."""
        return self.param_groups[0]["lr"]

    def step(self, closure=None):  # type: ignore[override]
        """Set the lr of ``global_step``, do the AdamW update, advance the counter."""
        self.set_lr(self.global_step)
        loss = super().step(closure)
        self.global_step += 1
        return loss

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["global_step"] = self.global_step
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        if "global_step" not in state_dict:
            raise KeyError("PolyWarmupAdamW.load_state_dict: the state has no 'global_step' "
                           "(was it saved by a plain torch optimizer?)")
        step = int(state_dict.pop("global_step"))
        super().load_state_dict(state_dict)
        self.set_lr(step)


def resolve_fused(setting: Any) -> bool:
    """``optim.fused``: auto | true | false -> whether to use torch's fused AdamW (auto = yes: torch has the kernel
    on CUDA and on the CPU)."""
    if isinstance(setting, bool):
        return setting
    if str(setting) == "auto":
        return True
    raise ValueError(f"optim.fused={setting!r}: expected auto, true or false")
