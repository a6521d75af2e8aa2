"""Frozen CLIP backbone: loading (algorithm.md §1.1), the SVC dual path (§1.2-1.6), LVC (§5.6, §12)."""
from excel.backbone.calibrated import CalibratedVisual, VisualOutput
from excel.backbone.clip_loader import MODEL_CONFIG_DIR, load_clip, load_tokenizer, register_model_configs
from excel.backbone.svc import (interpolate_pos_embed, lvc_bias, merge_heads, pos_grid_side, split_heads,
                                surgery_attention)

__all__ = [
    "CalibratedVisual", "VisualOutput", "MODEL_CONFIG_DIR", "load_clip", "load_tokenizer", "register_model_configs",
    "interpolate_pos_embed", "lvc_bias", "merge_heads", "pos_grid_side", "split_heads", "surgery_attention",
]
