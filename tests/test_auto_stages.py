"""Runge–Kutta–Chebyshev with the stage count chosen each step (rkopt.core.spectral): the
spectral-radius estimate, the choice of s, the trajectory against a flat NumPy reimplementation,
counted evaluations, resume, failures, stage-wise mode and every ingredient."""

from __future__ import annotations

import copy
import itertools
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import rkopt
from rkopt.core.chebyshev import ChebyshevMethod
from rkopt.core.spectral import AutoChebyshev, AutoStages

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support import flat, make_closure, make_data, make_mlp, quadratic_closure, train_both_modes
from test_reference_trajectories import FOREACH

DTYPE = torch.float64
CURVATURES = torch.logspace(0, 3, 30, dtype=DTYPE)  # λ_max = 1000


def quadratic(lr, order=2, seed=0, **options):
    theta = nn.Parameter(torch.randn(30, generator=torch.Generator().manual_seed(seed), dtype=DTYPE))
    optimizer = rkopt.preset(f"rkc{order}", [theta], lr=lr, **options)
    return theta, optimizer, quadratic_closure(theta, optimizer, torch.diag(CURVATURES))


def test_the_estimate_is_a_lower_bound_that_converges_to_the_largest_curvature():
    _, optimizer, closure = quadratic(0.05, stages=AutoStages(refresh_every=1))
    estimates = []
    for _ in range(30):
        optimizer.step(closure)
        estimates.append(optimizer.param_groups[0]["spectral_radius"])
    assert all(rho <= 1000.0 * (1 + 1e-6) for rho in estimates)
    assert estimates[0] > 0.95e3  # from d_1, 10 iterations at most (measured: 0.989e3)
    assert estimates[-1] > 0.999e3  # warm-started refreshes keep converging


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("lr", [1e-3, 0.02, 0.3])
def test_the_stage_count_is_the_smallest_stable_one(order, lr):
    _, optimizer, closure = quadratic(lr, order)
    optimizer.step(closure)
    group = optimizer.param_groups[0]
    s, target = group["stages"], 1.5 * lr * group["spectral_radius"]
    assert ChebyshevMethod(order, s).stability_boundary() >= target
    if s > (1 if order == 1 else 2):
        assert ChebyshevMethod(order, s - 1).stability_boundary() < target


def reference_run(grad, theta, lr, order, auto, steps):
    """The optimizer's step written flat in NumPy: the warm-started power iteration and the RKC
    recurrence Y_j = (1-μ-ν)Y_0 + μY_{j-1} + νY_{j-2} + μ̃hF(Y_{j-1}) + γ̃hF(Y_0), F = -∇L."""
    family, rho, age, vector, evaluations = AutoChebyshev(order, None, auto), None, None, None, 0
    trajectory = []
    for _ in range(steps):
        d1 = grad(theta)
        evaluations += 1
        if rho is None or age + 1 >= auto.refresh_every:
            v, estimate = (d1, None) if vector is None else (vector, rho)
            for _ in range(auto.iterations):
                norm = np.linalg.norm(v)
                if norm == 0.0:
                    break
                w = (d1 - grad(theta - auto.fd_eps * v / norm)) / auto.fd_eps
                evaluations += 1
                previous, estimate, v = estimate, np.linalg.norm(w), w
                if previous is not None and abs(estimate - previous) <= auto.tolerance * estimate:
                    break
            rho, age, vector = estimate, 0, v
        else:
            age += 1
        s = family.stages(lr, rho)
        points = [theta, None]
        for j, c in enumerate(ChebyshevMethod(order, s).coefficients, start=1):
            previous = points[-1] if j > 1 else theta
            force = -d1 if j == 1 else -grad(previous)
            evaluations += j > 1
            before = points[-2] if j > 2 else theta
            y = (1 - c.mu - c.nu) * theta + c.mu * previous + c.nu * before
            y = y + c.mu_tilde * lr * force + c.gamma_tilde * lr * -d1
            points = [points[-1] if j > 1 else theta, y]
        theta = points[-1]
        trajectory.append((theta.copy(), s, rho, evaluations))
    return trajectory


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("refresh_every", [1, 4])
@pytest.mark.parametrize("foreach", FOREACH)
def test_trajectory_and_counted_evaluations_match_a_flat_reimplementation(order, refresh_every, foreach):
    """L(θ) = Σ log cosh(Aθ - b) + ½ θᵀDθ (nonlinear, stiff): θ to 1e-10, s, ρ and counters exactly."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(12, 8)), rng.normal(size=12)
    d = np.logspace(0, 2.5, 8)

    def grad(theta):
        return a.T @ np.tanh(a @ theta - b) + d * theta

    theta0 = rng.normal(size=8)
    auto = AutoStages(refresh_every=refresh_every)
    expected = reference_run(grad, theta0.copy(), 0.08, order, auto, 12)
    theta = nn.Parameter(torch.tensor(theta0))
    optimizer = rkopt.preset(f"rkc{order}", [theta], lr=0.08, stages=auto, foreach=foreach)
    at, bt, dt = map(torch.tensor, (a, b, d))

    def closure():
        optimizer.zero_grad()
        loss = torch.log(torch.cosh(at @ theta - bt)).sum() + 0.5 * (dt * theta * theta).sum()
        loss.backward()
        return loss

    for reference, s, rho, evaluations in expected:
        optimizer.step(closure)
        group = optimizer.param_groups[0]
        np.testing.assert_allclose(theta.detach().numpy(), reference, rtol=1e-10, atol=1e-12)
        assert (group["stages"], optimizer.counters.grad_evals) == (s, evaluations)
        assert group["spectral_radius"] == pytest.approx(rho, rel=1e-9)
    assert len({s for _, s, _, _ in expected}) >= 1 and expected[-1][1] > 3  # stiff: many stages


def test_refreshes_follow_the_schedule_and_every_probe_is_counted():
    _, optimizer, closure = quadratic(0.05, stages=AutoStages(refresh_every=3))
    ages, stage_evaluations = [], 0
    for _ in range(9):
        optimizer.step(closure)
        ages.append(optimizer.param_groups[0]["spectral_age"])
        stage_evaluations += optimizer.param_groups[0]["stages"]
    assert ages == [0, 1, 2] * 3
    probes = optimizer.counters.grad_evals - stage_evaluations
    assert 3 + 2 <= probes <= 10 + 2 * 10  # the first estimate from d_1, two warm refreshes


def test_between_refreshes_the_stage_count_follows_a_schedule_without_evaluating():
    _, optimizer, closure = quadratic(0.4, stages=AutoStages(refresh_every=100))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    stages, evaluations = [], []
    for _ in range(6):
        before = optimizer.counters.grad_evals
        optimizer.step(closure)
        scheduler.step()
        stages.append(optimizer.param_groups[0]["stages"])
        evaluations.append(optimizer.counters.grad_evals - before)
    assert stages == sorted(stages, reverse=True) and stages[0] > stages[-1]
    assert evaluations[1:] == stages[1:]  # no probe after the first step


@pytest.mark.parametrize("order", [1, 2])
def test_the_automatic_count_stays_stable_where_a_fixed_one_diverges(order):
    """h λ_max = 300: with the automatic s every mode contracts, so the loss falls at every step;
    s = 5 (β <= 50) blows up."""
    _, optimizer, closure = quadratic(0.3, order)
    losses = [float(optimizer.step(closure).detach()) for _ in range(40)]
    assert all(b < a for a, b in itertools.pairwise(losses)) and losses[-1] < 1e-2 * losses[0]
    _, fixed, closure = quadratic(0.3, order, stages=5, on_nonfinite="skip")
    for _ in range(40):
        fixed.step(closure)
    assert fixed.counters.skipped_steps > 0 or float(closure().detach()) > losses[0]


def test_resume_is_bit_identical_and_checkpoints_of_other_methods_are_refused():
    x, y = make_data(dtype=DTYPE)
    model, twin_model = make_mlp(dtype=DTYPE), make_mlp(dtype=DTYPE)
    options = {"lr": 0.5, "stages": AutoStages(refresh_every=2)}
    optimizer = rkopt.preset("rkc2", model.parameters(), **options)
    for _ in range(3):
        optimizer.step(make_closure(model, optimizer, x, y))
    saved = copy.deepcopy(optimizer.state_dict())
    assert all("spectral_vector" in entry for entry in saved["state"].values())
    twin_model.load_state_dict(model.state_dict())
    twin = rkopt.preset("rkc2", twin_model.parameters(), **options)
    twin.load_state_dict(saved)
    for _ in range(3):
        optimizer.step(make_closure(model, optimizer, x, y))
        twin.step(make_closure(twin_model, twin, x, y))
    assert torch.equal(flat(model), flat(twin_model))
    assert optimizer.param_groups[0]["stages"] == twin.param_groups[0]["stages"]
    fixed = rkopt.preset("rkc2", make_mlp(dtype=DTYPE).parameters(), lr=0.5, stages=4)
    with pytest.raises(ValueError, match="stages=auto"):
        fixed.load_state_dict(saved)


@pytest.mark.parametrize("failing_call", [2, 3, 7])  # probes of the estimate, a stage
def test_a_failed_step_leaves_parameters_state_groups_and_counters_as_they_were(failing_call):
    x, y = make_data(dtype=DTYPE)
    model = make_mlp(dtype=DTYPE)
    optimizer = rkopt.preset("rkc1", model.parameters(), lr=20.0, stages=AutoStages(refresh_every=1))
    closure = make_closure(model, optimizer, x, y)  # 4 (then 3) probes, 4 (then 5) stages
    for warm in (False, True):
        if warm:
            optimizer.step(closure)
        before = (flat(model).clone(), copy.deepcopy(optimizer.state_dict()))
        calls = 0

        def failing():
            nonlocal calls
            calls += 1
            loss = closure()
            return loss * math.nan if calls == failing_call else loss

        with pytest.raises(rkopt.NonFiniteStepError):
            optimizer.step(failing)
        after = optimizer.state_dict()
        assert torch.equal(flat(model), before[0])
        assert after["param_groups"] == before[1]["param_groups"]
        assert after["counters"]["steps"] == before[1]["counters"]["steps"]
        assert after["state"].keys() == before[1]["state"].keys()
        for key, entry in after["state"].items():
            assert all(torch.equal(v, before[1]["state"][key][k]) for k, v in entry.items())


def test_stagewise_training_matches_closure_training():
    def make(params, stagewise):
        auto = AutoStages(refresh_every=2)
        return rkopt.preset("rkc2", params, lr=0.5, lr_policy="dal", stagewise=stagewise, stages=auto)

    results = [
        (flat(model), opt.counters, opt.param_groups[0]["h"], opt.param_groups[0]["stages"])
        for model, opt in train_both_modes(make, 4)
    ]
    assert torch.equal(results[0][0], results[1][0]) and results[0][1:] == results[1][1:]


OPTIONS = [
    {"momentum": 0.9},
    {"momentum": 0.5, "nesterov": True, "weight_decay": 0.05, "decoupled_weight_decay": True},
    {"preconditioner": "adagrad", "weight_decay": 0.01},
    {"preconditioner": "rmsprop"},
    {"lr_policy": "dal"},
    {"lr_policy": "dal", "dal_estimator": "finite_difference"},
    {"igr": 0.5},
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(map(str, o.values())))
@pytest.mark.parametrize("foreach", FOREACH)
def test_every_ingredient_composes(options, foreach):
    x, y = make_data()
    model = make_mlp()
    optimizer = rkopt.preset("rkc2", model.parameters(), lr=0.5, foreach=foreach, **options)
    closure = make_closure(model, optimizer, x, y)
    first = float(closure())
    for _ in range(5):
        optimizer.step(closure)
    group = optimizer.param_groups[0]
    assert isinstance(group["stages"], int) and group["stages"] >= 2
    assert torch.isfinite(flat(model)).all() and float(closure()) < first


def test_param_groups_share_one_count_set_by_the_largest_step():
    x, y = make_data(dtype=DTYPE)
    model = make_mlp(dtype=DTYPE)
    first, second = list(model[0].parameters()), list(model[2].parameters())
    optimizer = rkopt.preset("rkc1", [{"params": first, "lr": 0.05}, {"params": second, "lr": 0.8}], lr=0.1)
    optimizer.step(make_closure(model, optimizer, x, y))
    groups = optimizer.param_groups
    assert (
        groups[0]["stages"]
        == groups[1]["stages"]
        == optimizer.tableau.stages(0.8, groups[0]["spectral_radius"])
    )
    assert groups[0]["spectral_radius"] == groups[1]["spectral_radius"]


def test_buffers_do_not_grow_with_the_stage_count():
    roles = []
    for lr in (0.002, 0.5):
        theta, optimizer, closure = quadratic(lr)
        optimizer.step(closure)
        roles.append((optimizer.param_groups[0]["stages"], set(optimizer._workspace[theta])))
    (few, small), (many, large) = roles
    assert many > 4 * few and small == large == {"theta0", "slot0", "point0", "point1", "spectral_next"}


def test_too_few_allowed_stages_warn():
    _, optimizer, closure = quadratic(5.0, stages=AutoStages(max_stages=3), on_nonfinite="skip")
    with pytest.warns(RuntimeWarning, match="max_stages=3"):
        optimizer.step(closure)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: AutoStages(safety=0), "safety"),
        (lambda: AutoStages(safety=math.inf), "safety"),
        (lambda: AutoStages(iterations=0), "iterations"),
        (lambda: AutoStages(refresh_every=1.5), "refresh_every"),
        (lambda: AutoStages(tolerance=-1), "tolerance"),
        (lambda: AutoStages(max_stages=501), "max_stages"),
        (lambda: AutoChebyshev(3), "order"),
        (lambda: AutoChebyshev(2, damping=-1.0), "damping"),
        (lambda: AutoChebyshev(2, auto=AutoStages(max_stages=1)), "max_stages"),
    ],
)
def test_bad_settings_name_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_the_optax_binding_refuses_an_automatic_count():
    pytest.importorskip("optax")
    import rkopt.optax

    with pytest.raises(ValueError, match="stages=s"):
        rkopt.optax.preset("rkc2", 0.1)
    with pytest.raises(ValueError, match="fixed s"):
        rkopt.optax.runge_kutta(0.1, tableau=AutoChebyshev(2))


def test_the_estimate_warns_nothing_in_float64():
    _, optimizer, closure = quadratic(0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimizer.step(closure)
