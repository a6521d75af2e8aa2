"""Slow, obviously-correct reference pieces shared by several test files (not collected as tests)."""
from __future__ import annotations

import cv2
import numpy as np


def box_mask_reference(cam: np.ndarray, threshold: float) -> np.ndarray:
    """One g x g float map -> its box mask, as the reference computes it (algorithm.md §5.2: uint8 truncation,
    strict >, cv2 RETR_TREE contours + boundingRect, exclusive end clamped to g - 1). Returns float64 0/1."""
    g = cam.shape[0]
    u = (cam.astype(np.float32) * 255).astype(np.uint8)
    theta = int(threshold * u.max())
    fg = (u > theta).astype(np.uint8)
    out = np.zeros((g, g), np.float64)
    contours, _ = cv2.findContours(fg, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        out[y : min(y + h, g - 1), x : min(x + w, g - 1)] = 1
    return out
