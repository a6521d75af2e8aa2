"""Per-image mIoU, foreground share, binned differences (hand-computed), and benchmarks/compare_labels.py on label
maps the test writes."""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

import compare_labels
from excel.data.voc import DatasetError
from excel.evaluation.metrics import binned_difference, foreground_share, image_miou


def test_image_miou_by_hand():
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 2, 2]])
    # counted pixels: 7 (one 255). class 0: gt {0,1,4,5}, pred {0,4,5} -> 3/4; class 1: gt {2,3,6}, pred {1,2,3}
    # -> 2/4; class 2: gt {}, pred {6} -> 0/1 (the pixel under 255 is not counted)
    assert image_miou(pred, gt) == pytest.approx((3 / 4 + 2 / 4 + 0) / 3)
    assert image_miou(gt % 255, gt) == 1.0
    assert math.isnan(image_miou(pred, np.full_like(gt, 255)))
    with pytest.raises(ValueError, match="differs"):
        image_miou(pred[:1], gt)


def test_foreground_share_and_bins_by_hand():
    assert foreground_share(np.array([[0, 3], [255, 3]])) == pytest.approx(2 / 3)
    bins = binned_difference([0.1, 0.2, 0.6, 0.7], [0.5, 0.6, 0.9, 0.7], [0.4, 0.8, 0.5, 0.5], [0, 0.5, 1.01, 2])
    assert [b["count"] for b in bins] == [2, 2, 0]
    assert bins[0]["a"] == pytest.approx(0.55) and bins[0]["b"] == pytest.approx(0.6)
    assert bins[0]["difference"] == pytest.approx(-0.05) and bins[1]["difference"] == pytest.approx(0.3)
    assert math.isnan(bins[2]["difference"])


def test_compare_pools_pairs_and_names_missing_maps(tmp_path, capsys):
    gt, a, b = (tmp_path / n for n in ("gt", "a", "b"))
    for d in (gt, a, b):
        d.mkdir()
    small = np.zeros((4, 4), np.uint8)
    small[0, 0] = 1                                   # foreground share 1/16
    big = np.ones((4, 4), np.uint8)
    big[0, :] = 0                                     # foreground share 12/16
    for name, g in (("s.png", small), ("l.png", big)):
        Image.fromarray(g).save(gt / name)
        Image.fromarray(g).save(a / name)              # A is exact
    spill = small.copy()
    spill[0, 1] = 1                                    # B spills one pixel into the background of the small image
    Image.fromarray(spill).save(b / "s.png")
    Image.fromarray(big).save(b / "l.png")
    out = compare_labels.main(["--pair", str(gt), str(a), str(b), "--edges", "0", "0.5", "1.01",
                               "--num-classes", "2", "--names", "exact", "spill"])
    assert out["images"] == 2 and out["a"]["miou"] == 1.0
    # pooled: 15 + 4 = 19 background pixels, B marks one of them 1 (bg recall 18/19); 1 + 12 = 13 foreground
    # pixels, B predicts 14 (fg precision 13/14)
    assert out["b"]["bg_recall"] == pytest.approx(18 / 19) and out["b"]["fg_precision"] == pytest.approx(13 / 14)
    # the small image: B's image mIoU = (14/15 + 1/2) / 2; the large one is exact
    assert out["bins"][0]["difference"] == pytest.approx(1 - (14 / 15 + 1 / 2) / 2)
    assert out["bins"][1]["difference"] == 0.0
    assert "| exact |" in capsys.readouterr().out
    (b / "l.png").unlink()
    with pytest.raises(DatasetError, match="not found: .*l.png"):
        compare_labels.compare([(gt, a, b)], 2)
