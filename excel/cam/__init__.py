"""Patch-text maps and training-free pseudo labels (algorithm.md §4, §5)."""
from excel.cam.affinity import attention_affinity, transition_matrix
from excel.cam.boxes import box_masks, connected_components
from excel.cam.labeler import PseudoLabeler, build_par
from excel.cam.par import PAR
from excel.cam.pseudo import PseudoScores, make_pseudo_labels, present_classes, pseudo_label_scores, score_stack
from excel.cam.refine import normalize_and_upsample, refine_maps
from excel.cam.sources import AFFINITY_SOURCES, affinity_source, attention_source, get_affinity_source
from excel.cam.surgery import feature_surgery_lam, normalize_tokens

__all__ = [
    "feature_surgery_lam", "normalize_tokens", "attention_affinity", "transition_matrix", "box_masks",
    "connected_components", "PAR", "make_pseudo_labels", "present_classes", "pseudo_label_scores", "score_stack",
    "PseudoScores", "normalize_and_upsample", "refine_maps", "build_par", "PseudoLabeler", "AFFINITY_SOURCES",
    "affinity_source", "attention_source", "get_affinity_source",
]
