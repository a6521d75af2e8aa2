"""Rescaling a training schedule: every milestone keeps its fraction of ``train.max_iters``."""
from __future__ import annotations

from typing import Any

# iteration keys that are milestones of the schedule (null = never, kept as is)
MILESTONES = ("lvc.start_iter", "lvc.attn_pred_start_iter", "train.aff_label_switch_iter", "optim.warmup_iters",
              "train.eval_iters", "train.ckpt_start_iter", "train.log_iters")


def _get(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def rescale_schedule(cfg: Any, max_iters: int) -> list[str]:
    """``key=value`` overrides that shorten (or lengthen) ``cfg``'s run to ``max_iters`` iterations with every
    milestone at the same fraction of the run (rounded; at least 1 for warm-up, evaluation and logging).

    Example: VOC's 30000 iterations with LVC from 14000 become ``lvc.start_iter=700`` for ``max_iters=1500``.
    """
    if max_iters < 1:
        raise ValueError(f"max_iters must be positive, got {max_iters}")
    old = int(cfg.train.max_iters)
    out = [f"train.max_iters={max_iters}"]
    for key in MILESTONES:
        value = _get(cfg, key)
        if value is None:
            continue
        scaled = round(int(value) * max_iters / old)
        if key in ("optim.warmup_iters", "train.eval_iters", "train.log_iters"):
            scaled = max(1, scaled)
        out.append(f"{key}={min(scaled, max_iters) if key != 'train.ckpt_start_iter' else scaled}")
    return out
