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


# -- a non-finite direction where b_i = 0 ---------------------------------------------------------
# Such a stage reaches θ_{n+1} = θ_n - h Σ b_j d_j only through the later stage points; a saturating
# loss can give finite values and gradients at a non-finite point, so the candidate looks fine.


def saturating_boundary(theta: torch.Tensor) -> torch.Tensor:
    """L = -tanh(√(1 - θ)) per element: dL/dθ = +inf at θ = 1, and L = -1, dL/dθ = 0 at θ = -inf."""
    return -torch.tanh(torch.sqrt(1.0 - theta)).sum()


def stage_closure(theta, optimizer, loss_fn, calls):
    def closure():
        optimizer.zero_grad()
        loss = loss_fn(theta)
        loss.backward()
        calls.append((theta.detach().clone(), theta.grad.clone()))
        return loss

    return closure


@pytest.mark.parametrize("on_nonfinite", ["raise", "skip"])
@pytest.mark.parametrize("stagewise", [False, True])
def test_an_infinite_first_direction_of_midpoint_is_not_hidden_by_a_saturating_loss(on_nonfinite, stagewise):
    """Midpoint (b = (0, 1)): d_1 = +inf puts stage 2 at θ = -inf, where this loss and its gradient
    are finite, so θ_{n+1} = θ_n - h d_2 was finite and the step used to be accepted with θ_1 frozen.
    Now d_1 is checked (b_1 = 0) and the step fails at once, before stage 2 is evaluated."""
    stage_point = torch.tensor([-math.inf, 0.5], dtype=torch.float64, requires_grad=True)
    saturating_boundary(stage_point).backward()
    assert torch.isfinite(stage_point.grad).all()  # what stage 2 would have seen
    theta = nn.Parameter(torch.tensor([1.0, 0.5], dtype=torch.float64))
    optimizer = rkopt.Midpoint([theta], lr=0.1, on_nonfinite=on_nonfinite, stagewise=stagewise)
    calls = []
    closure = stage_closure(theta, optimizer, saturating_boundary, calls)
    if on_nonfinite == "raise":
        with pytest.raises(rkopt.NonFiniteStepError, match="stage direction"):
            optimizer.step(closure)
    else:
        optimizer.step(closure)
        assert optimizer.counters.skipped_steps == 1
    assert len(calls) == 1 and calls[0][1][0] == math.inf and optimizer.step_complete
    assert torch.equal(theta.detach(), torch.tensor([1.0, 0.5], dtype=torch.float64))
    assert optimizer.counters.steps == 0 and optimizer.counters.grad_evals == 1


def overflow_at(optimizer, theta, evaluation):
    """A backward that overflows at one evaluation (a kernel whose gradient is inf there)."""
    theta.register_hook(lambda g: g * math.inf if optimizer.evaluation_index == evaluation else g)


def tanh_squared(theta):
    return torch.tanh(theta).square().sum()  # finite value and gradient (0) at ±inf


@pytest.mark.parametrize(("tableau", "stage"), [("dormand_prince", 1), ("heun3", 1), ("fehlberg", 1)])
def test_an_infinite_direction_in_a_later_b_i_0_stage_fails_the_step(tableau, stage):
    assert rkopt.get_tableau(tableau).b[stage] == 0.0
    theta = nn.Parameter(torch.tensor([1.0, 0.5], dtype=torch.float64))
    optimizer = rkopt.RungeKutta([theta], lr=0.1, tableau=tableau)
    overflow_at(optimizer, theta, stage)
    calls = []
    with pytest.raises(rkopt.NonFiniteStepError):
        optimizer.step(stage_closure(theta, optimizer, tanh_squared, calls))
    assert all(torch.isfinite(grad).all() for _, grad in calls[stage + 1 :])  # the later stages hid it
    assert torch.equal(theta.detach(), torch.tensor([1.0, 0.5], dtype=torch.float64))


def test_under_error_control_an_infinite_b_i_0_direction_is_a_rejection_and_the_retry_succeeds():
    theta = nn.Parameter(torch.tensor([1.0, 0.5], dtype=torch.float64))
    optimizer = rkopt.preset("dopri5-adaptive", [theta], lr=0.1)
    overflow_at(optimizer, theta, 1)  # stage 2 of the first attempt only
    optimizer.step(stage_closure(theta, optimizer, tanh_squared, []))
    assert optimizer.counters.rejected_steps == 1 and optimizer.counters.steps == 1
    assert torch.isfinite(theta).all() and optimizer.param_groups[0]["h"] < 0.1


@pytest.mark.parametrize("preset", ["rk4", "rk4-full"])
def test_stages_with_b_i_nonzero_are_not_read_twice(preset, monkeypatch):
    """The b_i = 0 check costs nothing where every b_i != 0: no direction is read for it."""
    reads = []
    original = rkopt.torch._ops.TensorListOps.all_finite
    monkeypatch.setattr(
        rkopt.torch._ops.TensorListOps, "all_finite", staticmethod(lambda x: reads.append(x) or original(x))
    )
    x, y = make_data()
    model = make_mlp()
    optimizer = rkopt.preset(preset, model.parameters(), lr=0.1)
    optimizer.step(closure_with(model, optimizer, x, y, lambda model, calls: None))
    assert len(reads) == 1  # the candidate θ_{n+1} only
