"""Engine: distributed helpers, optimiser and schedule, checkpoints (and the training loop and inference).

Light imports only here; the training loop lives in ``excel.engine.train``.
"""
from excel.engine import dist
from excel.engine.checkpoint import (CheckpointError, check_compatible, checkpoint_meta, latest_checkpoint,
                                     load_checkpoint, restore_rng_states, save_checkpoint, strip_module_prefix)
from excel.engine.optim import PolyWarmupAdamW, poly_warmup_lr

__all__ = ["dist", "PolyWarmupAdamW", "poly_warmup_lr", "CheckpointError", "save_checkpoint", "load_checkpoint",
           "latest_checkpoint", "check_compatible", "checkpoint_meta", "strip_module_prefix", "restore_rng_states"]
