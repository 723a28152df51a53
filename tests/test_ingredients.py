"""Each ingredient checked against its equation (METHOD §2): preconditioning, DAL, momentum,
error control, the explicit IGR regularizer, and the presets."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

import rkopt
from rkopt.core.options import real
from support import quadratic_closure

DTYPE = torch.float64


def linear_closure(theta, optimizer, slope):
    """L = slope·θ: a constant gradient, so every stage sees the same field."""

    def closure():
        optimizer.zero_grad()
        loss = (slope * theta).sum()
        loss.backward()
        return loss

    return closure


def spd_matrix(n=6, seed=0, low=0.2, high=3.0):
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=DTYPE))
    return basis @ torch.diag(torch.linspace(low, high, n, dtype=DTYPE)) @ basis.T


SLOPE = torch.tensor([0.5, -2.0, 3.0], dtype=DTYPE)
THETA0 = torch.tensor([1.0, 2.0, -1.0], dtype=DTYPE)


# -- preconditioning ---------------------------------------------------------------------------


def test_adagrad_preconditioner_is_the_papers_formula():
    theta = nn.Parameter(THETA0.clone())
    optimizer = rkopt.RungeKutta([theta], lr=0.1, preconditioner="adagrad")
    closure = linear_closure(theta, optimizer, SLOPE)
    optimizer.step(closure)
    # G_1 = g², P_1 = (1 + G_1)^(-1/2); the field is constant, so θ_1 = θ_0 - h P_1 g
    expected = THETA0 - 0.1 * SLOPE / torch.sqrt(1 + SLOPE**2)
    torch.testing.assert_close(theta.detach(), expected, rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(optimizer.state[theta]["sum_sq"], SLOPE**2)
    optimizer.step(closure)
    expected = expected - 0.1 * SLOPE / torch.sqrt(1 + 2 * SLOPE**2)
    torch.testing.assert_close(theta.detach(), expected, rtol=1e-15, atol=1e-15)


def test_adagrad_delta_is_a_group_key():
    theta = nn.Parameter(THETA0.clone())
    optimizer = rkopt.RungeKutta([theta], lr=0.1, preconditioner="adagrad", precond_delta=4.0)
    optimizer.step(linear_closure(theta, optimizer, SLOPE))
    torch.testing.assert_close(theta.detach(), THETA0 - 0.1 * SLOPE / torch.sqrt(4 + SLOPE**2))


def test_rmsprop_preconditioner_with_bias_correction():
    theta = nn.Parameter(THETA0.clone())
    beta2, eps = 0.9, 1e-3
    optimizer = rkopt.RungeKutta(
        [theta], lr=0.1, preconditioner="rmsprop", precond_beta2=beta2, precond_eps=eps
    )
    optimizer.step(linear_closure(theta, optimizer, SLOPE))
    # v_1 = (1-β2) g², v̂_1 = g², P = 1/(|g| + ε)
    torch.testing.assert_close(theta.detach(), THETA0 - 0.1 * SLOPE / (SLOPE.abs() + eps))
    torch.testing.assert_close(optimizer.state[theta]["exp_avg_sq"], (1 - beta2) * SLOPE**2)


def test_preconditioner_is_frozen_for_all_stages_and_multiplies_every_stage():
    """On a quadratic with P_n frozen, one RK4 step is θ ← R(-h P Q) θ."""
    q = spd_matrix()
    theta0 = torch.linspace(-1, 1, 6, dtype=DTYPE)
    theta = nn.Parameter(theta0.clone())
    h = 0.4
    optimizer = rkopt.RungeKutta([theta], lr=h, preconditioner="adagrad")
    optimizer.step(quadratic_closure(theta, optimizer, q))
    p = torch.diag((1 + (q @ theta0) ** 2).rsqrt())
    matrix, power = torch.zeros_like(q), torch.eye(6, dtype=DTYPE)
    for r in rkopt.get_tableau("rk4").stability_polynomial():
        matrix, power = matrix + r * power, power @ (-h * p @ q)
    torch.testing.assert_close(theta.detach(), matrix @ theta0, rtol=1e-13, atol=1e-15)


def test_a_user_preconditioner_plugs_in_without_touching_the_solver():
    class Fixed(rkopt.DiagonalPreconditioner):
        """P = scale (a constant), to show the extension point."""

        name = "test_fixed"
        options = (rkopt.Option("fixed_scale", 0.5, real(0.0, low_open=True), doc="P"),)
        statistics = ("calls",)

        def propose(self, ops, group, steps, gradient, statistics, proposed, scale):
            ops.scale_into(proposed[0], statistics[0], 1.0)
            ops.add_scalar_(proposed[0], 1.0)
            ops.scale_into(scale, gradient, 0.0)
            ops.add_scalar_(scale, group["fixed_scale"])

    rkopt.register_preconditioner(Fixed())
    try:
        theta = nn.Parameter(THETA0.clone())
        optimizer = rkopt.RungeKutta([theta], lr=0.1, preconditioner="test_fixed", fixed_scale=0.25)
        closure = linear_closure(theta, optimizer, SLOPE)
        optimizer.step(closure)
        optimizer.step(closure)
    finally:  # later tests compare the registry's names across the bindings
        rkopt.torch.preconditioners.PRECONDITIONERS.pop("test_fixed")
    torch.testing.assert_close(theta.detach(), THETA0 - 2 * 0.1 * 0.25 * SLOPE)
    torch.testing.assert_close(optimizer.state[theta]["calls"], torch.full((3,), 2.0, dtype=DTYPE))


# -- momentum ----------------------------------------------------------------------------------


def test_heavy_ball_on_the_rk_direction():
    theta = nn.Parameter(THETA0.clone())
    beta, h = 0.9, 0.1
    optimizer = rkopt.RungeKutta([theta], lr=h, momentum=beta)
    closure = linear_closure(theta, optimizer, SLOPE)
    optimizer.step(closure)  # m_1 = g, θ_1 = θ_0 - h g
    optimizer.step(closure)  # m_2 = β g + g, θ_2 = θ_1 - h (1+β) g
    torch.testing.assert_close(theta.detach(), THETA0 - h * SLOPE - h * (1 + beta) * SLOPE)
    torch.testing.assert_close(optimizer.state[theta]["momentum_buffer"], (1 + beta) * SLOPE)


def test_nesterov_look_ahead():
    theta = nn.Parameter(THETA0.clone())
    beta, h = 0.5, 0.1
    optimizer = rkopt.RungeKutta([theta], lr=h, momentum=beta, nesterov=True)
    closure = linear_closure(theta, optimizer, SLOPE)
    optimizer.step(closure)  # m_1 = g; θ_1 = θ_0 - h (g + β m_1)
    optimizer.step(closure)  # m_2 = (1+β) g; θ_2 = θ_1 - h (g + β m_2)
    expected = THETA0 - h * (1 + beta) * SLOPE - h * (1 + beta * (1 + beta)) * SLOPE
    torch.testing.assert_close(theta.detach(), expected)


def test_momentum_zero_is_plain_rk_exactly():
    q = spd_matrix()
    results = []
    for kwargs in ({}, {"momentum": 0.0}):
        theta = nn.Parameter(torch.linspace(-1, 1, 6, dtype=DTYPE))
        optimizer = rkopt.RungeKutta([theta], lr=0.3, **kwargs)
        for _ in range(5):
            optimizer.step(quadratic_closure(theta, optimizer, q))
        results.append(theta.detach().clone())
    assert torch.equal(*results)


def test_momentum_equals_heavy_ball_over_the_rk_averaged_gradient_on_a_quadratic():
    """m ← β m + Σ b_i d_i with d_i the RK4 stages: for L = ½θᵀQθ, Σ b_i d_i = S(hQ) Q θ with
    S(z) = (1 - R(-z))/z, R the stability polynomial."""
    q = spd_matrix()
    beta, h = 0.8, 0.3
    theta0 = torch.linspace(-1, 1, 6, dtype=DTYPE)
    theta = nn.Parameter(theta0.clone())
    optimizer = rkopt.RungeKutta([theta], lr=h, momentum=beta)
    coefficients = rkopt.get_tableau("rk4").stability_polynomial()
    # R(-hQ) = 1 - hQ S, so Σ b_i d_i = S Q θ with S = Σ_{k>=1} r_k (-hQ)^(k-1)
    averaging = sum(
        r * torch.linalg.matrix_power(-h * q, k - 1) for k, r in enumerate(coefficients) if k >= 1
    )
    reference, m = theta0.clone(), torch.zeros(6, dtype=DTYPE)
    for _ in range(6):
        optimizer.step(quadratic_closure(theta, optimizer, q))
        m = beta * m + averaging @ q @ reference
        reference = reference - h * m
    torch.testing.assert_close(theta.detach(), reference, rtol=1e-12, atol=1e-14)


# -- DAL ---------------------------------------------------------------------------------------


def _rho(q, p, theta):
    """‖J_f d‖ / ‖d‖ for the preconditioned quadratic field f = -P Q θ, d = P Q θ: ‖P Q d‖/‖d‖."""
    d = p @ q @ theta
    return float(torch.linalg.vector_norm(p @ q @ d) / torch.linalg.vector_norm(d))


@pytest.mark.parametrize("estimator", ["finite_difference", "free"])
@pytest.mark.parametrize("preconditioner", [None, "adagrad"])
def test_dal_curvature_estimates_match_the_exact_hg_over_g_of_a_quadratic(estimator, preconditioner):
    q = spd_matrix()
    cap, power = 0.5, 1.0
    theta = nn.Parameter(torch.linspace(-1, 1, 6, dtype=DTYPE))
    optimizer = rkopt.RungeKutta(
        [theta], lr=cap, lr_policy="dal", dal_estimator=estimator, preconditioner=preconditioner
    )
    closure = quadratic_closure(theta, optimizer, q)
    sum_sq = torch.zeros(6, dtype=DTYPE)
    previous_exact = math.nan
    for step in range(4):
        start = theta.detach().clone()
        g = q @ start
        sum_sq = sum_sq + g**2
        p = torch.diag((1 + sum_sq).rsqrt()) if preconditioner else torch.eye(6, dtype=DTYPE)
        exact = _rho(q, p, start)
        # the free estimate of step n > 0 was measured on step n-1 (its θ, its P): one step of lag
        used_rho = previous_exact if estimator == "free" and step > 0 else exact
        evaluations = optimizer.counters.grad_evals
        optimizer.step(closure)
        group = optimizer.param_groups[0]
        probes = optimizer.counters.grad_evals - evaluations - 4
        assert probes == (1 if estimator == "finite_difference" or step == 0 else 0)
        assert group["h"] == pytest.approx(cap / (1 + cap / 2 * used_rho**power), rel=1e-9)
        assert group["dal_rho"] == pytest.approx(used_rho, rel=1e-9)
        if estimator == "free":  # what this step measured, for the next one
            assert group["dal_rho_next"] == pytest.approx(exact, rel=1e-9)
        previous_exact = exact


def test_dal_power_and_cap():
    q = spd_matrix(high=50.0)
    theta = nn.Parameter(torch.linspace(-1, 1, 6, dtype=DTYPE))
    optimizer = rkopt.RungeKutta(
        [theta], lr=1.0, lr_policy="dal", dal_estimator="finite_difference", dal_power=2.0
    )
    rho = _rho(q, torch.eye(6, dtype=DTYPE), theta.detach())
    optimizer.step(quadratic_closure(theta, optimizer, q))
    assert optimizer.param_groups[0]["h"] == pytest.approx(1.0 / (1 + 0.5 * rho**2), rel=1e-9)
    assert optimizer.param_groups[0]["h"] < 2.0 / rho**2 * 1.0001


def test_dal_keeps_training_stable_where_fixed_rk4_diverges():
    q = spd_matrix(high=20.0)
    for policy, stable in (("fixed", False), ("dal", True)):
        theta = nn.Parameter(torch.linspace(-1, 1, 6, dtype=DTYPE))
        optimizer = rkopt.RungeKutta([theta], lr=0.5, lr_policy=policy, on_nonfinite="skip")
        for _ in range(200):
            optimizer.step(quadratic_closure(theta, optimizer, q))
        assert (float(theta.detach().norm()) < 1.0) == stable


# -- error control -----------------------------------------------------------------------------


def _flow_error_after(time_end, rtol, tableau="dormand_prince"):
    """Integrate dθ/dt = -θ³ to ``time_end`` under error control; error against the exact flow."""
    theta0 = torch.tensor([1.5, -0.8, 0.4], dtype=DTYPE)
    theta = nn.Parameter(theta0.clone())
    optimizer = rkopt.RungeKutta(
        [theta], lr=0.5, tableau=tableau, lr_policy="error_control", rtol=rtol, atol=rtol * 1e-3
    )

    def closure():
        optimizer.zero_grad()
        loss = (theta**4).sum() / 4
        loss.backward()
        return loss

    elapsed = 0.0
    while elapsed < time_end - 1e-15:
        optimizer.param_groups[0]["lr"] = min(0.5, time_end - elapsed)  # the cap lands on time_end
        optimizer.step(closure)
        elapsed += optimizer.param_groups[0]["h"]
    exact = theta0 / torch.sqrt(1 + 2 * theta0**2 * time_end)
    return float((theta.detach() - exact).abs().max()), optimizer.counters


@pytest.mark.parametrize("tableau", ["dormand_prince", "bogacki_shampine", "tsitouras"])
def test_global_error_shrinks_roughly_in_proportion_to_rtol(tableau):
    tolerances = [1e-3, 1e-4, 1e-5, 1e-6]
    errors = [_flow_error_after(3.0, rtol, tableau)[0] for rtol in tolerances]
    assert all(b < a for a, b in itertools.pairwise(errors))
    slope = np.polyfit(np.log(tolerances), np.log(errors), 1)[0]
    assert 0.6 < slope < 1.3  # error ∝ tol^(p/(p+1)) for error-per-step control
    assert max(e / t for e, t in zip(errors, tolerances)) < 10


def test_rejected_steps_restore_theta_n_and_reuse_stage_one():
    q = spd_matrix(high=30.0)
    theta0 = torch.linspace(-1, 1, 6, dtype=DTYPE)
    theta = nn.Parameter(theta0.clone())
    optimizer = rkopt.RungeKutta(
        [theta], lr=1.0, tableau="dormand_prince", lr_policy="error_control", rtol=1e-6, atol=1e-9
    )
    points = []
    inner = quadratic_closure(theta, optimizer, q)

    def closure():
        points.append(theta.detach().clone())
        return inner()

    optimizer.step(closure)
    counters = optimizer.counters
    assert counters.rejected_steps >= 1 and counters.steps == 1
    # stage 1 once, then 6 calls per attempt; each attempt starts again from θ_n
    assert counters.grad_evals == 1 + 6 * (counters.rejected_steps + 1)
    assert torch.equal(points[0], theta0)
    # the accepted result equals one fixed-step Dormand–Prince step from θ_n with the accepted h
    h = optimizer.param_groups[0]["h"]
    assert h < 1.0
    check = nn.Parameter(theta0.clone())
    fixed = rkopt.RungeKutta([check], lr=h, tableau="dormand_prince")
    fixed.step(quadratic_closure(check, fixed, q))
    torch.testing.assert_close(theta.detach(), check.detach(), rtol=1e-14, atol=1e-15)
    assert optimizer.param_groups[0]["ec_error"] <= 1.0


def test_error_control_next_step_follows_the_pi_controller_and_the_cap():
    q = spd_matrix()
    theta = nn.Parameter(torch.linspace(-1, 1, 6, dtype=DTYPE))
    optimizer = rkopt.RungeKutta(
        [theta], lr=0.05, tableau="bogacki_shampine", lr_policy="error_control", rtol=1e-3, atol=1e-6
    )
    closure = quadratic_closure(theta, optimizer, q)
    optimizer.step(closure)
    group = optimizer.param_groups[0]
    controller = rkopt.PIController(error_order=2)
    assert group["ec_h_next"] == pytest.approx(0.05 * controller.factor(group["ec_error"], None))
    assert group["ec_h_next"] > 0.05  # easy problem: the controller proposes growth ...
    optimizer.step(closure)
    assert group["h"] == 0.05  # ... but the group's lr caps h


def _hopeless_error_control(theta, on_max_retries):
    """Heun–Euler at lr 1 with tolerances no step can meet, two retries allowed."""
    return rkopt.RungeKutta(
        [theta],
        lr=1.0,
        tableau="heun_euler",
        lr_policy="error_control",
        rtol=1e-12,
        atol=1e-14,
        max_retries=2,
        on_max_retries=on_max_retries,
    )


def test_max_retries_raise_restores_theta_n():
    q = spd_matrix(high=30.0)
    theta0 = torch.linspace(-1, 1, 6, dtype=DTYPE)
    theta = nn.Parameter(theta0.clone())
    optimizer = _hopeless_error_control(theta, "raise")
    with pytest.raises(rkopt.StepRejectedError, match="rejected the step 3 times"):
        optimizer.step(quadratic_closure(theta, optimizer, q))
    assert torch.equal(theta.detach(), theta0)
    assert optimizer.counters.steps == 0
    assert (optimizer.counters.grad_evals, optimizer.counters.rejected_steps) == (1 + 3 * 1, 3)


def test_max_retries_accept_takes_the_smallest_attempt():
    q = spd_matrix(high=30.0)
    theta = nn.Parameter(torch.linspace(-1, 1, 6, dtype=DTYPE))
    optimizer = _hopeless_error_control(theta, "accept")
    optimizer.step(quadratic_closure(theta, optimizer, q))
    assert optimizer.counters.rejected_steps == 2 and optimizer.counters.steps == 1
    assert optimizer.param_groups[0]["h"] == pytest.approx(0.2**2)  # attempts at 1, 0.2, 0.04


def test_pi_controller_formula():
    controller = rkopt.PIController(error_order=4, safety=0.9, min_factor=0.2, max_factor=10.0)
    assert controller.alpha == pytest.approx(0.7 / 5) and controller.beta == pytest.approx(0.4 / 5)
    assert controller.factor(0.5, None) == pytest.approx(0.9 * 0.5 ** (-0.14))
    assert controller.factor(0.5, 0.25) == pytest.approx(0.9 * 0.5 ** (-0.14) * 0.25**0.08)
    assert controller.factor(0.0, None) == 10.0
    assert controller.factor(1e-12, None) == 10.0
    assert controller.factor(1e6, None) == 0.2
    assert controller.factor(1.5, 0.01) <= 1.0  # a rejected step never grows
    assert controller.factor(float("nan"), None) == 0.2
    with pytest.raises(ValueError, match="safety"):
        rkopt.PIController(error_order=4, safety=1.5)


def test_dal_formula():
    assert rkopt.dal_step_size(0.1, 0.0, 1.0) == 0.1
    assert rkopt.dal_step_size(1.0, 2.0, 1.0) == pytest.approx(0.5)
    assert rkopt.dal_step_size(1e9, 4.0, 1.0) == pytest.approx(2 / 4.0)  # edge of stability 2/ρ
    assert rkopt.dal_step_size(1.0, math.inf, 1.0) == 0.0
    with pytest.raises(ValueError, match="rho"):
        rkopt.dal_step_size(1.0, float("nan"), 1.0)


# -- explicit implicit-gradient regularization -------------------------------------------------


@pytest.mark.parametrize("strength", [1.0, 3.0])
def test_igr_adds_the_hand_derived_gradient_of_the_penalty(strength):
    """L = Σ θ⁴/4: g = θ³, H g = 3θ⁵, so ∇(L + λ (lr/4) ‖g‖²) = θ³ + λ (lr/2) 3 θ⁵."""
    theta0 = torch.tensor([0.9, -0.4, 0.7], dtype=DTYPE)
    theta = nn.Parameter(theta0.clone())
    lr = 0.1
    optimizer = rkopt.Euler([theta], lr=lr, igr=strength, igr_eps=1e-7)

    def closure():
        optimizer.zero_grad()
        loss = (theta**4).sum() / 4
        loss.backward()
        return loss

    optimizer.step(closure)
    gradient = theta0**3 + strength * lr / 2 * 3 * theta0**5
    torch.testing.assert_close(theta.detach(), theta0 - lr * gradient, rtol=1e-7, atol=1e-9)
    assert optimizer.counters.grad_evals == 2  # one finite-difference call per stage


def test_igr_is_exact_on_a_quadratic_and_costs_two_calls_per_stage():
    """For L = ½θᵀQθ, L̃ = L + λ (lr/4) θᵀQ²θ, a quadratic with matrix Q + λ (lr/2) Q²."""
    q = spd_matrix()
    theta0 = torch.linspace(-1, 1, 6, dtype=DTYPE)
    theta = nn.Parameter(theta0.clone())
    h, strength = 0.3, 2.0
    optimizer = rkopt.RK4([theta], lr=h, igr=strength)
    optimizer.step(quadratic_closure(theta, optimizer, q))
    modified = q + strength * h / 2 * q @ q
    matrix, power = torch.zeros_like(q), torch.eye(6, dtype=DTYPE)
    for r in rkopt.get_tableau("rk4").stability_polynomial():
        matrix, power = matrix + r * power, power @ (-h * modified)
    torch.testing.assert_close(theta.detach(), matrix @ theta0, rtol=1e-9, atol=1e-11)
    assert optimizer.counters.grad_evals == 8


# -- presets -----------------------------------------------------------------------------------


def test_presets_are_configured_as_documented():
    params = [nn.Parameter(torch.zeros(2))]
    full = rkopt.preset("rk4-full", params, lr=0.1).param_groups[0]
    assert (full["preconditioner"], full["lr_policy"], full["momentum"], full["precond_delta"]) == (
        "adagrad",
        "dal",
        0.9,
        1.0,
    )
    adaptive = rkopt.preset("dopri5-adaptive", params, lr=0.1)
    assert adaptive.tableau.name == "dormand_prince"
    assert adaptive.param_groups[0]["lr_policy"] == "error_control"
    assert rkopt.preset("rk4", params, lr=0.1).param_groups[0]["lr_policy"] == "fixed"
    assert rkopt.preset("rk4-momentum", params, lr=0.1, momentum=0.5).param_groups[0]["momentum"] == 0.5
    assert set(rkopt.PRESETS) >= {
        "rk4",
        "rk4-precond",
        "rk4-dal",
        "rk4-momentum",
        "rk4-full",
        "dopri5-adaptive",
    }
    with pytest.raises(ValueError, match="unknown preset 'rk5'.*rk4-full"):
        rkopt.preset("rk5", params, lr=0.1)
