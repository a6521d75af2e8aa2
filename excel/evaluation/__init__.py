"""Scoring (streaming confusion-matrix mIoU, spec 9.1) and dense CRF post-processing (spec 9.2)."""
from excel.evaluation.crf import CRF_DEFAULTS, CRFPool, crf_params, dense_crf
from excel.evaluation.metrics import ConfusionMatrix, confusion_matrix

__all__ = ["CRF_DEFAULTS", "CRFPool", "ConfusionMatrix", "confusion_matrix", "crf_params", "dense_crf"]
