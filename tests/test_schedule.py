"""utils.schedule: the learning rate as a function of (epoch, iteration)."""
from __future__ import annotations

import math

import pytest
import torch

from utils.schedule import learning_rate


def _torch_rates(make, epochs: int, base: float) -> list[float]:
    """The rate PyTorch's scheduler gives each epoch when stepped once per epoch."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    sched = make(opt)
    rates = []
    for _ in range(epochs):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return rates


@pytest.mark.parametrize("gamma", [0.5, 0.1, 3.0])
def test_multi_step_is_per_epoch_and_bit_identical_to_multisteplr(gamma):
    cfg = {"epoch_max": 12, "multi_step_lr": {"milestones": [2, 5, 9], "gamma": gamma}}
    want = _torch_rates(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [2, 5, 9], gamma), 12, 1e-4)
    for epoch in range(1, 13):
        rates = {learning_rate(cfg, 1e-4, epoch, it, 7) for it in range(7)}
        assert rates == {want[epoch - 1]}, epoch  # constant within the epoch, exactly PyTorch's value


def test_cosine_moves_every_iteration_and_meets_the_per_epoch_cosine_at_epoch_starts():
    cfg = {"epoch_max": 10, "cosine_lr": {"eta_min": 1e-6}}
    want = _torch_rates(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 10, 1e-6), 10, 2e-4)
    n = 25
    rates = [learning_rate(cfg, 2e-4, e, it, n) for e in range(1, 11) for it in range(n)]
    assert all(a > b for a, b in zip(rates[:-1], rates[1:], strict=True)), "the rate must fall at every iteration"
    for e in range(1, 11):
        assert math.isclose(rates[(e - 1) * n], want[e - 1], rel_tol=1e-12, abs_tol=1e-18), e
    assert rates[0] == 2e-4 and rates[-1] > 1e-6


def test_warmup_is_linear_over_its_iterations_then_the_schedule():
    cfg = {"epoch_max": 4, "multi_step_lr": {"milestones": [3], "gamma": 0.5}, "warmup_iters": 8}
    n = 5
    rates = [learning_rate(cfg, 1e-3, e, it, n) for e in range(1, 5) for it in range(n)]
    assert rates[:8] == [1e-3 * (i + 1) / 8 for i in range(8)]
    assert rates[8:15] == [1e-3] * 7 and rates[15:] == [5e-4] * 5


def test_no_schedule_is_the_base_rate():
    assert {learning_rate({"epoch_max": 3}, 3e-4, e, it, 4) for e in (1, 2, 3) for it in range(4)} == {3e-4}
