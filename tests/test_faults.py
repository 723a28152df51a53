"""Faults anywhere in a step are caught, cheaply, with θ_n restored: no silently accepted step."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import rkopt
from support import flat, make_data, make_mlp


def closure_with(model, optimizer, x, y, corrupt):
    """A closure whose ``calls``-th evaluation is corrupted by ``corrupt(model, calls)``."""
    calls = 0

    def closure():
        nonlocal calls
        calls += 1
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        corrupt(model, calls)
        return loss

    return closure


def nan_gradient_at(call):
    def corrupt(model, calls):
        if calls == call:
            next(model.parameters()).grad[0, 0] = math.nan

    return corrupt


def test_a_nan_gradient_in_the_dal_probe_fails_the_step_instead_of_taking_h_0():
    x, y = make_data()
    model = make_mlp()
    optimizer = rkopt.preset("rk4-dal", model.parameters(), lr=0.1, dal_estimator="finite_difference")
    before = flat(model).clone()
    with pytest.raises(rkopt.NonFiniteStepError):
        optimizer.step(closure_with(model, optimizer, x, y, nan_gradient_at(2)))  # call 2: the probe
    assert torch.equal(flat(model), before)
    assert "dal_rho" not in optimizer.param_groups[0]  # nothing was committed
    assert optimizer.counters.grad_evals == 2  # no attempt was made after the failed probe


def test_a_nan_first_stage_gradient_under_error_control_does_not_burn_retries():
    x, y = make_data()
    model = make_mlp()
    optimizer = rkopt.preset("dopri5-adaptive", model.parameters(), lr=0.1, max_retries=10)
    before = flat(model).clone()
    with pytest.raises(rkopt.NonFiniteStepError):
        optimizer.step(closure_with(model, optimizer, x, y, nan_gradient_at(1)))
    assert torch.equal(flat(model), before)
    assert optimizer.counters.grad_evals == 7  # one attempt, not 1 + 6 x 11
    assert optimizer.counters.rejected_steps == 0


def test_a_nan_loss_at_theta_n_fails_before_any_other_evaluation():
    x, y = make_data()
    model = make_mlp()
    optimizer = rkopt.preset("rk4-full", model.parameters(), lr=0.1, on_nonfinite="skip")

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y) * math.nan
        loss.backward()
        return loss

    optimizer.step(closure)
    assert optimizer.counters == rkopt.Counters(grad_evals=1, skipped_steps=1)


@pytest.mark.parametrize("on_nonfinite", ["raise", "skip"])
def test_an_overflowing_lr_follows_on_nonfinite(on_nonfinite):
    x, y = make_data()
    model = make_mlp()
    optimizer = rkopt.RK4(model.parameters(), lr=1e300, on_nonfinite=on_nonfinite)
    before = flat(model).clone()
    closure = closure_with(model, optimizer, x, y, lambda model, calls: None)
    if on_nonfinite == "raise":
        with pytest.raises(rkopt.NonFiniteStepError):
            optimizer.step(closure)
    else:
        optimizer.step(closure)
        assert optimizer.counters.skipped_steps == 1
    assert torch.equal(flat(model), before)


def test_claimed_orders_beyond_the_verified_range_fail_fast(monkeypatch):
    """Refused before a single order condition (or rooted tree) is built."""
    import rkopt.core.rooted_trees as rooted_trees
    import rkopt.core.tableau as tableau_module

    def no_conditions(*args, **kwargs):
        raise AssertionError("order conditions were evaluated")

    monkeypatch.setattr(tableau_module, "order_condition_residuals", no_conditions)
    with pytest.raises(ValueError, match="order=20 is above 10"):
        rkopt.ButcherTableau(name="huge", c=(0.0,), a=((),), b=(1.0,), order=20)
    rooted_trees.trees_of_order.cache_clear()
    with pytest.raises(ValueError, match="not built"):
        rooted_trees.trees_of_order(20)
    assert rooted_trees.trees_of_order.cache_info().currsize == 0  # nothing below it was built either


@pytest.mark.parametrize(
    ("dtype", "options", "warns"),
    [
        (torch.bfloat16, {"lr_policy": "dal", "dal_estimator": "finite_difference"}, True),
        (torch.float16, {"igr": 0.5}, True),
        (torch.bfloat16, {"igr": 0.5, "igr_eps": 10.0}, False),
        (torch.float32, {"lr_policy": "dal", "dal_estimator": "finite_difference", "igr": 0.5}, False),
        (torch.bfloat16, {}, False),
    ],
)
def test_finite_differences_below_the_dtype_resolution_warn(dtype, options, warns):
    import warnings

    x, y = make_data(dtype=dtype)
    model = make_mlp(dtype=dtype)
    optimizer = rkopt.RK4(model.parameters(), lr=0.01, **options)
    closure = closure_with(model, optimizer, x, y, lambda model, calls: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optimizer.step(closure)
    below = [w for w in caught if "resolution" in str(w.message)]
    assert bool(below) == warns, [str(w.message) for w in caught]


@pytest.mark.parametrize("preset", ["dopri5-adaptive", "rk4-dal", "rk4-full", "rk4"])
def test_an_lr_zero_step_is_a_no_op_that_does_not_poison_the_next_step(preset):
    """Warm-up from 0 and decay to 0 schedules: the lr = 0 step changes nothing, and the next step
    is the one a fresh optimizer at that lr would take."""
    x, y = make_data()
    model, reference = make_mlp(), make_mlp()
    optimizer = rkopt.preset(preset, model.parameters(), lr=0.0)
    fresh = rkopt.preset(preset, reference.parameters(), lr=0.3)
    before = flat(model).clone()
    closure = closure_with(model, optimizer, x, y, lambda model, calls: None)
    optimizer.step(closure)
    assert torch.equal(flat(model), before) and optimizer.counters.steps == 1
    optimizer.param_groups[0]["lr"] = 0.3
    optimizer.step(closure)
    fresh.step(closure_with(reference, fresh, x, y, lambda model, calls: None))
    if preset == "rk4-full":  # its preconditioner counts the h = 0 step's gradient, as Adam's moments
        assert optimizer.param_groups[0]["h"] > 0.0
        return
    assert optimizer.param_groups[0]["h"] == fresh.param_groups[0]["h"] > 0.0
    assert torch.equal(flat(model), flat(reference))
