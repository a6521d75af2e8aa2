"""Scene statistics of a generated split beside PASCAL VOC 2012's (``benchmarks/world_stats.py`` prints them).

VOC's figures are public: image and object counts from the VOC 2012 development kit's segmentation table
(val: 1,449 images, 3,422 objects), the rest approximate figures of the segmentation sets; docs/organism.md names
the sources and how far each figure can be trusted.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from excel.organism.world import Scene

# PASCAL VOC 2012 segmentation (val unless said): what the generated world's defaults aim at
VOC_STATS: dict[str, float] = {
    "images": 1449, "objects": 3422, "objects_per_image": 3422 / 1449, "classes_per_image": 1.5,
    "foreground_share": 0.30, "area_q1": 0.02, "area_median": 0.08, "area_q3": 0.24,
    "long_side": 500, "short_side_median": 375, "person_image_share": 0.30,
}


def scene_statistics(scenes: Iterable[Scene], class_names: Sequence[str]) -> dict:
    """Statistics of ``scenes``: mean and median foreground share of the pixels, classes and objects (visible
    instances) per image, quartiles of one object's share of its image, the image sides, and each class's share
    of the images that hold it."""
    fg, n_classes, n_objects, areas, longs, shorts = [], [], [], [], [], []
    present = np.zeros(len(class_names))
    count = 0
    for scene in scenes:
        h, w = scene.mask.shape
        count += 1
        fg.append(float((scene.mask > 0).mean()))
        n_classes.append(len(scene.classes))
        n_objects.append(len(scene.instances))
        areas.extend(n / (h * w) for _, n in scene.instances)
        longs.append(max(h, w))
        shorts.append(min(h, w))
        present[scene.classes] += 1
    if count == 0:
        raise ValueError("scene_statistics: no scenes")
    q1, q2, q3 = np.quantile(areas, [0.25, 0.5, 0.75]) if areas else (0.0, 0.0, 0.0)
    return {
        "images": count, "objects": int(sum(n_objects)),
        "foreground_share": float(np.mean(fg)), "foreground_share_median": float(np.median(fg)),
        "classes_per_image": float(np.mean(n_classes)), "objects_per_image": float(np.mean(n_objects)),
        "area_q1": float(q1), "area_median": float(q2), "area_q3": float(q3),
        "area_under_2pct": float(np.mean(np.asarray(areas) < 0.02)) if areas else 0.0,
        "long_side": float(np.median(longs)), "short_side_median": float(np.median(shorts)),
        "class_image_share": {name: float(present[c] / count) for c, name in enumerate(class_names)},
    }


def within_voc(stats: dict) -> dict[str, bool]:
    """Whether each aimed-at figure is in VOC's range: foreground 25-35 %, 1.3-1.8 classes and 2-3 objects per
    image, each area quartile within a factor 1.5 of VOC's."""
    ok = {"foreground_share": 0.25 <= stats["foreground_share"] <= 0.35,
          "classes_per_image": 1.3 <= stats["classes_per_image"] <= 1.8,
          "objects_per_image": 2.0 <= stats["objects_per_image"] <= 3.0}
    for key in ("area_q1", "area_median", "area_q3"):
        ok[key] = VOC_STATS[key] / 1.5 <= stats[key] <= VOC_STATS[key] * 1.5
    return ok
