"""The organism benchmarks' shared setup (benchmarks/_organism.py): run folders, generated data and weight choice."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

import _organism as org


def _mean_fg(root: Path) -> float:
    masks = sorted((root / "SegmentationClassAug").glob("*.png"))
    return float(np.mean([(np.array(Image.open(m)) % 255 > 0).mean() for m in masks]))


def test_world_run_tags_the_folder_and_selects_the_weights(tmp_path):
    parser = org.world_parser("test", str(tmp_path), "skip")
    base = parser.parse_args(["--seed", "5", "--num-train", "1", "--num-val", "6"])
    out, data, overrides = org.world_run(base)
    assert out == tmp_path.resolve() / "seed5" and data == out / "data"
    assert overrides == ["model.clip.pretrained=organism"]
    big = parser.parse_args(["--seed", "5", "--num-train", "1", "--num-val", "6", "--object-scale", "2",
                             "--weights", "cands/org_big.pt"])
    out2, data2, overrides2 = org.world_run(big)
    assert out2.name == "seed5_objects2_org_big"
    assert overrides2 == [f"model.clip.pretrained={Path('cands/org_big.pt').resolve()}"]
    # the same scenes with objects of twice the side: clearly more foreground
    assert (data / "lists" / "val.txt").read_text() == (data2 / "lists" / "val.txt").read_text()
    assert _mean_fg(data2) > 2.0 * _mean_fg(data)
