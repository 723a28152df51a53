"""Runge–Kutta–Chebyshev methods through the optimizer: the recurrence executed by the engine, the
same step as the equivalent tableau, its stability boundary, constant buffers, every ingredient."""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import rkopt
from rkopt.core.chebyshev import ChebyshevMethod
from rkopt.torch.planning import describe
from support import flat, make_closure, make_data, make_mlp, quadratic_closure, train_both_modes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_reference_trajectories import FOREACH, Pair, compare_run

DTYPE = torch.float64
METHODS = [(order, s) for order in (1, 2) for s in (2, 3, 5, 10, 20)]


@pytest.mark.parametrize(("order", "stages"), METHODS)
@pytest.mark.parametrize("foreach", FOREACH)
def test_one_step_on_a_quadratic_is_the_stability_polynomial(order, stages, foreach):
    """½θᵀQθ: θ_1 = R_s(-hQ) θ_0, with R_s the method's closed form, up to hλ_max = 0.98 β(s)."""
    method = ChebyshevMethod(order, stages)
    eigenvalues = torch.linspace(0.01, 1.0, 8, dtype=DTYPE)
    h = 0.98 * method.stability_boundary()
    theta0 = torch.linspace(-1.0, 1.0, 8, dtype=DTYPE)
    theta = nn.Parameter(theta0.clone())
    optimizer = rkopt.RungeKutta([theta], lr=h, tableau=method, foreach=foreach)
    optimizer.step(quadratic_closure(theta, optimizer, torch.diag(eigenvalues)))
    expected = torch.tensor([method.amplification(-h * float(lam)) for lam in eigenvalues], dtype=DTYPE)
    torch.testing.assert_close(theta.detach(), expected * theta0, rtol=1e-11, atol=1e-13)
    assert optimizer.counters.grad_evals == stages


@pytest.mark.parametrize(("order", "stages"), [(1, 3), (1, 10), (2, 4), (2, 10)])
def test_stable_up_to_the_boundary_and_diverging_past_it(order, stages):
    method = ChebyshevMethod(order, stages)
    beta = method.stability_boundary()
    sizes = {}
    for factor in (0.99, 1.01):
        theta = nn.Parameter(torch.ones(1, dtype=DTYPE))
        optimizer = rkopt.RungeKutta([theta], lr=factor * beta, tableau=method, on_nonfinite="skip")
        closure = quadratic_closure(theta, optimizer, torch.eye(1, dtype=DTYPE))
        for _ in range(1500):
            optimizer.step(closure)
        sizes[factor] = float(theta.detach().abs())
    assert sizes[0.99] <= 1.0 and sizes[1.01] > 10.0, sizes


def test_buffers_do_not_grow_with_the_stage_count():
    for order, expected in (
        (1, {"theta0", "point0", "point1"}),
        (2, {"theta0", "point0", "point1", "slot0"}),
    ):
        for stages in (3, 10, 50, 200):
            assert set(describe(ChebyshevMethod(order, stages)).buffers) == expected, (order, stages)
        momentum = describe(ChebyshevMethod(order, 50), momentum=0.9).buffers
        assert set(momentum) == expected | {"accumulator"}
    theta = nn.Parameter(torch.ones(4, dtype=DTYPE))
    for stages in (3, 30):
        optimizer = rkopt.preset("rkc2", [theta], lr=1e-2, stages=stages)
        optimizer.step(quadratic_closure(theta, optimizer, torch.eye(4, dtype=DTYPE)))
        assert len(optimizer._workspace[theta]) == 4


OPTIONS = [
    ({}, "plain"),
    ({"momentum": 0.9}, "momentum"),
    ({"momentum": 0.5, "nesterov": True, "weight_decay": 0.05, "decoupled_weight_decay": True}, "nesterov"),
    ({"preconditioner": "adagrad", "weight_decay": 0.01}, "adagrad-decay"),
    ({"preconditioner": "rmsprop", "maximize": False}, "rmsprop"),
    ({"lr_policy": "dal"}, "dal-free"),
    ({"lr_policy": "dal", "dal_estimator": "finite_difference", "preconditioner": "adagrad"}, "dal-fd"),
    ({"igr": 0.5}, "igr"),
]


@pytest.mark.parametrize(("order", "stages"), [(1, 4), (2, 3), (2, 7)])
@pytest.mark.parametrize(("opts", "label"), OPTIONS, ids=[label for _, label in OPTIONS])
@pytest.mark.parametrize("foreach", FOREACH)
def test_trajectory_matches_the_reference_run_with_the_equivalent_tableau(
    order, stages, opts, label, foreach
):
    """The engine's recurrence (two point buffers) against the independent NumPy reference
    stepping the equivalent Butcher tableau: θ, h, ρ and counters to 1e-10, every ingredient."""
    method = ChebyshevMethod(order, stages)
    pair = Pair(
        method.to_butcher_tableau(),
        [((0, 1, 2, 3), {"lr": 0.3, **opts})],
        make_optimizer=lambda groups: rkopt.RungeKutta(
            groups, lr=groups[0]["lr"], tableau=method, foreach=foreach
        ),
    )
    compare_run(pair)


def test_stagewise_training_matches_closure_training():
    def make(params, stagewise):
        return rkopt.preset("rkc2", params, lr=0.5, stages=5, lr_policy="dal", stagewise=stagewise)

    results = [
        (flat(model), opt.counters, opt.param_groups[0]["h"]) for model, opt in train_both_modes(make, 3)
    ]
    assert torch.equal(results[0][0], results[1][0]) and results[0][1:] == results[1][1:]


def test_resume_is_bit_identical_and_a_failed_step_restores_theta():
    x, y = make_data()
    model = make_mlp()
    optimizer = rkopt.preset("rkc1", model.parameters(), lr=0.5, stages=6, momentum=0.9)
    closure = make_closure(model, optimizer, x, y)
    optimizer.step(closure)
    saved = copy.deepcopy(optimizer.state_dict())  # as torch.save would: no tensor shared
    twin_model = make_mlp()
    twin_model.load_state_dict(model.state_dict())
    twin = rkopt.preset("rkc1", twin_model.parameters(), lr=0.5, stages=6, momentum=0.9)
    twin.load_state_dict(saved)
    optimizer.step(closure)
    twin.step(make_closure(twin_model, twin, x, y))
    assert torch.equal(flat(model), flat(twin_model))
    before = flat(model).clone()
    calls = 0

    def failing():
        nonlocal calls
        calls += 1
        loss = closure()
        return loss * math.nan if calls == 4 else loss

    with pytest.raises(rkopt.NonFiniteStepError):
        optimizer.step(failing)
    assert torch.equal(flat(model), before)


def test_presets_and_their_errors():
    params = make_mlp().parameters()
    optimizer = rkopt.preset("rkc2", params, lr=0.1, stages=8, damping=0.3)
    assert optimizer.tableau == ChebyshevMethod(2, 8, 0.3)
    assert rkopt.preset("rkc1", make_mlp().parameters(), lr=0.1).tableau == rkopt.AutoChebyshev(1)
    with pytest.raises(ValueError, match="stages"):
        rkopt.preset("rkc2", make_mlp().parameters(), lr=0.1, stages=1)
    with pytest.raises(ValueError, match="needs an embedded pair"):
        rkopt.preset("rkc1", make_mlp().parameters(), lr=0.1, stages=4, lr_policy="error_control")
    with pytest.raises(TypeError, match="configure the rkc presets"):
        rkopt.preset("rk4", make_mlp().parameters(), lr=0.1, stages=4)


def test_per_gradient_evaluation_a_stabilized_method_beats_gradient_descent_on_a_stiff_problem():
    """Full-batch least squares with condition number ~1e3. rkc1 with 8 stages (β ≈ 124) steps at
    h = 100/λ_max, where gradient descent diverges; with the same 480 gradient evaluations
    gradient descent at its own near-limit h = 1.9/λ_max ends with a loss 68 times larger."""
    generator = torch.Generator().manual_seed(0)
    scales = torch.logspace(0, -1.5, 6, dtype=DTYPE)
    features = torch.randn(64, 6, generator=generator, dtype=DTYPE) * scales
    target = features @ torch.randn(6, generator=generator, dtype=DTYPE)
    lam_max = float(torch.linalg.eigvalsh(features.T @ features / 64).max())

    def train(name, h, steps, **kwargs):
        w = nn.Parameter(torch.zeros(6, dtype=DTYPE))
        optimizer = rkopt.preset(name, [w], lr=h / lam_max, on_nonfinite="skip", **kwargs)

        def closure():
            optimizer.zero_grad()
            loss = 0.5 * ((features @ w - target) ** 2).mean()
            loss.backward()
            return loss

        for _ in range(steps):
            optimizer.step(closure)
        assert optimizer.counters.grad_evals == 480
        return float(closure().detach()), optimizer.counters.skipped_steps

    rkc_loss, _ = train("rkc1", 100.0, 60, stages=8)
    euler_loss, _ = train("euler", 1.9, 480)
    _, euler_skipped = train("euler", 100.0, 480)
    assert rkc_loss < 0.1 * euler_loss, (rkc_loss, euler_loss)  # measured: 68x smaller
    assert euler_skipped > 400  # at rkc1's step gradient descent blows up at once
