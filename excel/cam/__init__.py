"""Patch-text maps and training-free pseudo labels (spec 4, 5).

surgery.py (feature surgery, token normalisation) is owned by the core engineer; the pseudo-label files
(affinity, boxes, refinement, PAR) by the CAM engineer, who appends their exports here.
"""
from excel.cam.surgery import feature_surgery_lam, normalize_tokens

__all__ = ["feature_surgery_lam", "normalize_tokens"]
from excel.cam.affinity import attention_affinity, transition_matrix
from excel.cam.boxes import box_masks, connected_components
from excel.cam.par import PAR
from excel.cam.pseudo import make_pseudo_labels, present_classes, pseudo_label_scores
from excel.cam.refine import normalize_and_upsample, refine_maps

__all__ += [
    "attention_affinity", "transition_matrix", "box_masks", "connected_components", "PAR",
    "make_pseudo_labels", "present_classes", "pseudo_label_scores", "normalize_and_upsample", "refine_maps",
]
