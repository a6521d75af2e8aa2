"""PolyWarmupAdamW (algorithm.md §8.2): the exact schedule, parity with torch AdamW, and resume through state_dict."""
from __future__ import annotations

import pytest
import torch

from excel.engine.optim import PolyWarmupAdamW, poly_warmup_lr

VOC = dict(warmup_iters=50, warmup_ratio=1e-6, max_iters=30000, power=1.0)


def _opt(params, **kw) -> PolyWarmupAdamW:
    args = dict(lr=1e-3, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-8, **VOC)
    args.update(kw)
    return PolyWarmupAdamW(params, **args)


@pytest.mark.parametrize("step, expected", [
    (0, 1e-3 * 1e-6),                              # 1 - (1 - 0)(1 - r) = r
    (1, 1e-3 * (1 - (1 - 1 / 50) * (1 - 1e-6))),   # = 2.000098e-05
    (49, 1e-3 * (1 - (1 / 50) * (1 - 1e-6))),      # = 9.8000002e-04
    (50, 1e-3 * (1 - 50 / 30000)),                 # poly from W on: 9.9833333e-04
    (199, 1e-3 * (1 - 199 / 30000)),               # 9.9336667e-04
    (29999, 1e-3 / 30000),
])
def test_poly_warmup_lr_values(step, expected):
    assert poly_warmup_lr(step, 1e-3, **VOC) == pytest.approx(expected, rel=1e-12)


def test_hand_numbers_and_power():
    assert poly_warmup_lr(1, 1e-3, **VOC) == pytest.approx(2.000098e-05, rel=1e-7)
    assert poly_warmup_lr(49, 1e-3, **VOC) == pytest.approx(9.8000002e-04, rel=1e-7)
    # power 2, no warm-up: 1e-3 * (1 - 10/20)^2 = 2.5e-4; past max_iters the lr stays at 0.
    assert poly_warmup_lr(10, 1e-3, 0, 1e-6, 20, 2.0) == pytest.approx(2.5e-4)
    assert poly_warmup_lr(25, 1e-3, 0, 1e-6, 20, 1.0) == 0.0


def test_step_199_logged_value_is_a_tenth_of_the_real_lr():
    # Quirk 14: the reference log shows 9.934e-05 at VOC step 199; the decoder's real lr is ten times that.
    opt = _opt([torch.nn.Parameter(torch.zeros(2))])
    real = opt.set_lr(199)
    assert real == pytest.approx(1e-3 * (1 - 199 / 30000))
    # the reference prints group 0's rate (base 1e-4) while only group 3 (base 1e-3) has parameters
    assert f"{real * 1e-4 / 1e-3:.3e}" == "9.934e-05"


def test_each_step_uses_the_scheduled_lr_and_matches_torch_adamw():
    """The same parameters and gradients through torch AdamW with the lr set by hand give identical values."""
    torch.manual_seed(0)
    start = torch.randn(5)
    ours_p, ref_p = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    ours = _opt([ours_p], warmup_iters=3, max_iters=10)
    ref = torch.optim.AdamW([ref_p], lr=1e-3, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-8)
    seen = []
    for s in range(6):
        grad = torch.randn(5)
        ours_p.grad, ref_p.grad = grad.clone(), grad.clone()
        for group in ref.param_groups:
            group["lr"] = poly_warmup_lr(s, 1e-3, 3, 1e-6, 10, 1.0)
        ours.step()
        ref.step()
        seen.append(ours.param_groups[0]["lr"])
        torch.testing.assert_close(ours_p.data, ref_p.data, rtol=0, atol=0)
    assert ours.global_step == 6
    assert seen == [poly_warmup_lr(s, 1e-3, 3, 1e-6, 10, 1.0) for s in range(6)]


def test_param_groups_keep_their_own_base_lr():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = _opt([{"params": [a], "lr": 1e-4}, {"params": [b]}])
    opt.set_lr(100)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4 * (1 - 100 / 30000))
    assert opt.param_groups[1]["lr"] == pytest.approx(1e-3 * (1 - 100 / 30000))


def test_set_lr_resynchronises_the_counter():
    opt = _opt([torch.nn.Parameter(torch.zeros(1))])
    assert opt.set_lr(7) == pytest.approx(poly_warmup_lr(7, 1e-3, **VOC))
    opt.param_groups[0]["params"][0].grad = torch.ones(1)
    opt.step()
    assert opt.global_step == 8 and opt.current_lr == pytest.approx(poly_warmup_lr(7, 1e-3, **VOC))


def test_state_dict_resume_continues_identically():
    torch.manual_seed(0)
    grads = [torch.randn(4) for _ in range(6)]
    start = torch.randn(4)

    full_p = torch.nn.Parameter(start.clone())
    full = _opt([full_p], warmup_iters=2, max_iters=6)
    for g in grads:
        full_p.grad = g.clone()
        full.step()

    first_p = torch.nn.Parameter(start.clone())
    first = _opt([first_p], warmup_iters=2, max_iters=6)
    for g in grads[:3]:
        first_p.grad = g.clone()
        first.step()
    saved = first.state_dict()
    assert saved["global_step"] == 3

    resumed_p = torch.nn.Parameter(first_p.detach().clone())
    resumed = _opt([resumed_p], warmup_iters=2, max_iters=6)
    resumed.load_state_dict(saved)
    assert resumed.global_step == 3 and resumed.current_lr == pytest.approx(poly_warmup_lr(3, 1e-3, 2, 1e-6, 6))
    for g in grads[3:]:
        resumed_p.grad = g.clone()
        resumed.step()
    torch.testing.assert_close(resumed_p.data, full_p.data, rtol=0, atol=0)


def test_bad_arguments_and_foreign_state():
    p = [torch.nn.Parameter(torch.zeros(1))]
    with pytest.raises(ValueError, match="max_iters"):
        _opt(p, max_iters=0)
    with pytest.raises(ValueError, match="warmup_ratio"):
        _opt(p, warmup_ratio=2.0)
    plain = torch.optim.AdamW(p, lr=1e-3).state_dict()
    with pytest.raises(KeyError, match="global_step"):
        _opt(p).load_state_dict(plain)
