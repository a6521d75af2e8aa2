"""The GPU check's pure helpers (the check itself needs a GPU; ``--smoke`` runs its stages on the CPU)."""
from __future__ import annotations

import pytest

from _tools import load_script

gpu_check = load_script("benchmarks/gpu_check.py")


def test_organism_projection_by_hand():
    # a 60-step probe evaluated every 10 steps: dropout on steps 0..29, full views on 30..59
    seconds = {10: 7.0, 20: 9.0, 30: 11.0, 40: 15.0, 50: 18.0, 60: 21.0}
    history = [{"step": s, "seconds": v} for s, v in seconds.items()]
    out = gpu_check.organism_projection(history, 60, steps=1400, full_view_steps=0.15)
    assert out["step_s_dropout"] == pytest.approx((11.0 - 7.0) / 20)   # 0.2 s
    assert out["step_s_full"] == pytest.approx((21.0 - 15.0) / 20)     # 0.3 s
    # 1190 dropout steps and 210 full ones: (1190 * 0.2 + 210 * 0.3) / 60 = 301 / 60 min
    assert out["projected_minutes"] == pytest.approx(301 / 60)
    with pytest.raises(ValueError, match="no timing at steps"):
        gpu_check.organism_projection(history[:4], 60, steps=1400, full_view_steps=0.15)
