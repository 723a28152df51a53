"""Runge–Kutta–Chebyshev methods: Chebyshev recurrences, coefficients, tableau equivalence, stability,
convergence order and the choice of the stage count."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from numpy.polynomial import chebyshev as cheb

from rkopt.core.chebyshev import (
    DEFAULT_DAMPING,
    MAX_STAGES,
    ChebyshevMethod,
    ChebyshevStage,
    approximate_stability_boundary,
    chebyshev_t,
    chebyshev_t_derivatives,
    stages_for,
)

FIRST_ORDER_STAGES = [1, 2, 3, 5, 10, 20]
SECOND_ORDER_STAGES = [2, 3, 5, 10, 20]
METHODS = [(1, s) for s in FIRST_ORDER_STAGES] + [(2, s) for s in SECOND_ORDER_STAGES]


def _numpy_t(j: int, x: float, derivative: int = 0) -> float:
    coefficients = np.zeros(j + 1)
    coefficients[j] = 1.0
    return float(cheb.chebval(x, cheb.chebder(coefficients, derivative) if derivative else coefficients))


def rkc_step(method: ChebyshevMethod, field, y0: np.ndarray, h: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """One step of the three-term recurrence; returns θ_{n+1} and the stage points Y_0..Y_s."""
    f0 = field(y0)
    first, *rest = method.coefficients
    points = [y0, y0 + first.mu_tilde * h * f0]
    for stage in rest:
        older, previous = points[-2], points[-1]
        points.append(
            (1.0 - stage.mu - stage.nu) * y0
            + stage.mu * previous
            + stage.nu * older
            + stage.mu_tilde * h * field(previous)
            + stage.gamma_tilde * h * f0
        )
    return points[-1], points


def _closed_form_r(method: ChebyshevMethod, z: np.ndarray) -> np.ndarray:
    """R_s(z) = a_s + b_s T_s(w0 + w1 z) from numpy's Chebyshev series."""
    s, w0, w1 = method.stages, method.w0, method.w1
    t_s, d_s, dd_s = (_numpy_t(s, w0, k) for k in range(3))
    b_s = 1.0 / t_s if method.order == 1 else dd_s / d_s**2
    a_s = 1.0 - b_s * t_s
    return a_s + b_s * cheb.chebval(w0 + w1 * z, np.eye(s + 1)[s])


# -- Chebyshev polynomials -----------------------------------------------------------------------------


@pytest.mark.parametrize("j", [0, 1, 2, 3, 4, 7, 20, 50])
def test_chebyshev_recurrences_match_numpy(j):
    for x in [-1.7, -1.0, -0.999, -0.6, -0.3, 0.0, 0.2, 0.49, 0.5, 0.8, 0.999, 1.0, 1.0001, 1.3]:
        values = chebyshev_t_derivatives(j, x)
        assert chebyshev_t(j, x) == values[0]
        for k, value in enumerate(values):
            expected = _numpy_t(j, x, k)
            scale = max(1.0, abs(expected), float(j) ** (2 * k))  # |T_j^(k)| <= j^(2k) on [-1, 1]
            assert abs(value - expected) <= 1e-12 * scale, (j, x, k, value, expected)


def test_chebyshev_closed_values():
    assert chebyshev_t_derivatives(0, 0.3) == (1.0, 0.0, 0.0)
    assert chebyshev_t_derivatives(1, -0.3) == (-0.3, 1.0, 0.0)
    assert chebyshev_t_derivatives(2, 0.5) == pytest.approx((2 * 0.25 - 1, 4 * 0.5, 4.0))
    # at x = 1: T_j = 1, T_j' = j², T_j'' = j²(j² - 1)/3; at x = -1 with the parity (-1)^(j+k)
    for j in (3, 10, 41):
        t, d, dd = chebyshev_t_derivatives(j, 1.0)
        assert (t, d, dd) == pytest.approx((1.0, j**2, j**2 * (j**2 - 1) / 3), rel=1e-14)
        assert chebyshev_t_derivatives(j, -1.0) == pytest.approx(
            ((-1) ** j, -((-1) ** j) * d, (-1) ** j * dd)
        )


@pytest.mark.parametrize("s", [200, 500])
def test_chebyshev_recurrences_stay_accurate_for_many_stages(s):
    """At x = cosh u = w0 = 1 + ε/s²: T_s = cosh(s u), T_s' = s sinh(s u)/sinh u (closed forms)."""
    for eps in (0.0, 0.05, 2 / 13, 1.0):
        x = 1.0 + eps / s**2
        u = math.acosh(x)
        t, d, dd = chebyshev_t_derivatives(s, x)
        assert t == pytest.approx(math.cosh(s * u), rel=2e-14)
        assert d == pytest.approx(s * math.sinh(s * u) / math.sinh(u) if u else s**2, rel=2e-14)
        assert dd == pytest.approx(_numpy_t(s, x, 2), rel=1e-12)  # numpy's own error is ~3e-13 here
        assert 0 < dd < s**4 / 3 * math.cosh(math.sqrt(2 * eps))  # finite and of the predicted size


# -- coefficients ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("order", "s"), METHODS)
def test_coefficients_follow_the_published_formulas(order, s):
    """μ_j, ν_j, μ̃_j, γ̃_j and c_j recomputed from numpy's Chebyshev polynomials."""
    method = ChebyshevMethod(order, s)
    eps = DEFAULT_DAMPING[order]
    assert method.damping == eps
    w0 = 1.0 + eps / s**2
    t = [[_numpy_t(j, w0, k) for k in range(3)] for j in range(s + 1)]
    if order == 1:
        w1 = t[s][0] / t[s][1]
        b = [1.0 / t[j][0] for j in range(s + 1)]
    else:
        w1 = t[s][1] / t[s][2]
        b = [t[2][2] / t[2][1] ** 2] * 3 + [t[j][2] / t[j][1] ** 2 for j in range(3, s + 1)]
    a = [1.0 - b[j] * t[j][0] for j in range(s + 1)]
    assert (method.w0, method.w1) == pytest.approx((w0, w1), rel=1e-13)
    stages = method.coefficients
    assert len(stages) == s and all(isinstance(stage, ChebyshevStage) for stage in stages)
    assert (stages[0].mu, stages[0].nu, stages[0].gamma_tilde) == (0.0, 0.0, 0.0)
    assert stages[0].mu_tilde == pytest.approx(b[1] * w1, rel=1e-13)
    for j in range(2, s + 1):
        stage = stages[j - 1]
        mu_tilde = 2 * w1 * b[j] / b[j - 1]
        expected = (2 * w0 * b[j] / b[j - 1], -b[j] / b[j - 2], mu_tilde, -a[j - 1] * mu_tilde)
        got = (stage.mu, stage.nu, stage.mu_tilde, stage.gamma_tilde)
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-14)
        if order == 1:  # a_j = 0: no Y_0 or F_0 terms
            assert stage.gamma_tilde == 0.0
            assert abs(stage.y0_weight) < 1e-13
    # the nodes: c_j = R_j'(0), the recurrence's own c_j = μ c_{j-1} + ν c_{j-2} + μ̃ + γ̃, c_s = 1
    nodes = method.nodes
    assert nodes[0] == 0.0 and nodes[-1] == 1.0 and len(nodes) == s + 1
    recurrence = [0.0, stages[0].mu_tilde]
    for stage in stages[1:]:
        recurrence.append(
            stage.mu * recurrence[-1] + stage.nu * recurrence[-2] + stage.mu_tilde + stage.gamma_tilde
        )
    np.testing.assert_allclose(nodes, recurrence, rtol=1e-12, atol=1e-14)
    if order == 2 and s >= 3:
        assert nodes[1] == pytest.approx(nodes[2] / (4 * w0), rel=1e-14)
        # SSV 1997: c_j ≈ (j² - 1)/(s² - 1) for j >= 2
        approx = [(j * j - 1) / (s * s - 1) for j in range(2, s + 1)]
        np.testing.assert_allclose(nodes[2:], approx, atol=0.02)


def test_first_order_one_stage_is_euler_and_two_stage_second_order_is_taylor():
    assert ChebyshevMethod(1, 1).stability_polynomial() == pytest.approx((1.0, 1.0))
    euler = ChebyshevMethod(1, 1).to_butcher_tableau()
    assert euler.a == ((),) and euler.b == pytest.approx((1.0,))
    for eps in (0.0, 2 / 13, 3.0):  # the only 2-stage second-order polynomial: 1 + z + z²/2
        assert ChebyshevMethod(2, 2, eps).stability_polynomial() == pytest.approx((1.0, 1.0, 0.5), rel=1e-14)
        assert ChebyshevMethod(2, 2, eps).stability_boundary() == pytest.approx(2.0, rel=1e-12)


# -- the equivalent Butcher tableau -------------------------------------------------------------------


@pytest.mark.parametrize(("order", "s"), METHODS)
def test_tableau_has_exactly_the_order_and_the_stability_polynomial(order, s):
    method = ChebyshevMethod(order, s)
    tableau = method.to_butcher_tableau()  # ButcherTableau raises if an order condition fails
    assert tableau.stages == s and tableau.order == order
    assert max(abs(r) for r in tableau.order_residuals()) < 1e-12
    assert max(abs(r) for r in tableau.order_residuals(order + 1)) > 0.1  # 0.33 (order 1), 0.13 (2)
    np.testing.assert_allclose(tableau.stability_polynomial(), method.stability_polynomial(), rtol=1e-9)
    np.testing.assert_allclose(tableau.c, method.nodes[:-1], rtol=1e-12, atol=1e-15)
    assert "Runge–Kutta–Chebyshev" in (tableau.__doc__ or "")


@pytest.mark.parametrize(("order", "s"), [(1, 40), (2, 40), (1, 100), (2, 100)])
def test_tableau_equivalence_for_more_stages(order, s):
    method = ChebyshevMethod(order, s)
    tableau = method.to_butcher_tableau()
    assert max(abs(r) for r in tableau.order_residuals()) < 1e-13
    closed = np.array(method.stability_polynomial())
    normal = np.abs(closed) > 1e-290  # r_k ~ (2 w1)^k underflows from k ≈ 85 at s = 100
    assert normal[: min(s + 1, 80)].all()
    np.testing.assert_allclose(np.array(tableau.stability_polynomial())[normal], closed[normal], rtol=1e-12)


@pytest.mark.parametrize(("order", "s"), [(1, 5), (2, 3), (2, 10)])
def test_tableau_and_recurrence_agree_on_a_nonlinear_problem(order, s):
    method = ChebyshevMethod(order, s)
    tableau = method.to_butcher_tableau()
    field = _vector_field
    y0, h = np.array([0.7, 0.3]), 0.2
    recurrence, _ = rkc_step(method, field, y0, h)
    k: list[np.ndarray] = []
    for row in tableau.a:
        k.append(field(y0 + h * sum((aij * kj for aij, kj in zip(row, k)), np.zeros(2))))
    butcher = y0 + h * sum(bi * ki for bi, ki in zip(tableau.b, k))
    np.testing.assert_allclose(recurrence, butcher, rtol=1e-13)


# -- the stability polynomial on linear problems -------------------------------------------------------


@pytest.mark.parametrize(("order", "s"), METHODS)
def test_stability_polynomial_is_the_closed_form(order, s):
    method = ChebyshevMethod(order, s)
    r = np.array(method.stability_polynomial())
    assert len(r) == s + 1
    assert r[0] == pytest.approx(1.0, abs=1e-14) and r[1] == pytest.approx(1.0, rel=1e-13)
    if order == 2:
        assert r[2] == pytest.approx(0.5, rel=1e-13)
    # numpy's independent expansion: T_s in the power basis, composed with x = w0 + w1 z
    t_s = np.polynomial.Polynomial(cheb.cheb2poly(np.eye(s + 1)[s]))
    shifted = t_s(np.polynomial.Polynomial([method.w0, method.w1])).coef
    if order == 1:
        expected = shifted / _numpy_t(s, method.w0)
    else:
        b_s = _numpy_t(s, method.w0, 2) / _numpy_t(s, method.w0, 1) ** 2
        expected = b_s * shifted
        expected[0] += 1.0 - b_s * _numpy_t(s, method.w0)
    # (numpy's power basis cancels in the constant term: ~1e-10 at s = 20; r_0 = 1 is checked above)
    np.testing.assert_allclose(r[1:], expected[1:], rtol=1e-10)
    z = np.linspace(-method.stability_boundary(), 0.0, 101)
    closed = _closed_form_r(method, z)
    # the power basis is ill-conditioned at large |z|: allow rounding of Σ |r_k z^k|
    magnitude = np.polyval(np.abs(r[::-1]), np.abs(z))
    assert np.all(np.abs(np.polyval(r[::-1], z) - closed) <= 1e-14 * magnitude + 1e-13)
    np.testing.assert_allclose([method.amplification(v) for v in z], closed, rtol=0, atol=1e-12)
    assert abs(method.amplification(-1e300)) >= 1e299  # inf once T_s overflows (s >= 2)


@pytest.mark.parametrize(("order", "s"), [m for m in METHODS if m[1] >= 2])
def test_one_recurrence_step_on_a_linear_problem_is_r_of_minus_hq(order, s):
    """θ' = -Qθ, Q = diag(q) SPD: one step gives R_s(-hQ)θ."""
    method = ChebyshevMethod(order, s)
    rng = np.random.default_rng(s)
    q = np.sort(rng.uniform(0.01, 1.0, 40))
    q[-1] = 1.0
    h = 0.98 * method.stability_boundary()  # the stiffest mode near the end of the interval
    theta = rng.standard_normal(40)
    step, points = rkc_step(method, lambda y: -q * y, theta, h)
    expected = _closed_form_r(method, -h * q) * theta
    assert np.linalg.norm(step - expected) <= 1e-12 * np.linalg.norm(theta)
    assert len(points) == s + 1


@pytest.mark.parametrize(("order", "s"), [m for m in METHODS if m[1] >= 2])
def test_bounded_inside_and_divergent_outside_the_stability_interval(order, s):
    method = ChebyshevMethod(order, s)
    beta = method.stability_boundary()

    def run(factor: float) -> float:
        y, lam, worst = np.array([1.0]), factor * beta, 0.0
        for _ in range(1000):
            y, _ = rkc_step(method, lambda v: -lam * v, y, 1.0)
            worst = max(worst, abs(float(y[0])))
            if worst > 1e7:
                break
        return worst

    assert run(0.99) <= 1.0
    assert run(1.01) > 1e6


@pytest.mark.parametrize("order", [1, 2])
def test_stability_boundary_has_its_closed_form(order):
    """|R_s| = 1 at x = -w0 (order 1, and order 2 with even s); R_s = -1 at x = -X, T_s(X) = (1 + a_s)/b_s,
    below -w0 (order 2, odd s). All exceed (1 + w0)/w1, where x = w0 + w1 z reaches -1."""
    for s in range(1 if order == 1 else 2, 31):
        for eps in (0.0, DEFAULT_DAMPING[order], 0.7):
            method = ChebyshevMethod(order, s, eps)
            w0, w1 = method.w0, method.w1
            if order == 1 or s % 2 == 0:
                expected = 2 * w0 / w1
            else:
                t_s, d_s, dd_s = chebyshev_t_derivatives(s, w0)
                b_s = dd_s / d_s**2
                a_s = 1 - b_s * t_s
                expected = (w0 + math.cosh(math.acosh((1 + a_s) / b_s) / s)) / w1
            beta = method.stability_boundary()
            assert beta == pytest.approx(expected, rel=1e-12), (s, eps)
            assert beta >= (1 + w0) / w1 * (1 - 1e-14)
            assert abs(method.amplification(-beta)) == pytest.approx(1.0, abs=1e-9)


def test_stability_boundary_grows_as_s_squared():
    measured = {
        (order, s): ChebyshevMethod(order, s).stability_boundary() / s**2
        for order in (1, 2)
        for s in (5, 10, 20)
    }
    assert measured[1, 5] == pytest.approx(1.9385, abs=1e-4)
    assert measured[1, 10] == pytest.approx(1.9365, abs=1e-4)
    assert measured[1, 20] == pytest.approx(1.9361, abs=1e-4)  # (2 - 4ε/3) = 1.933 at ε = 0.05
    assert measured[2, 5] == pytest.approx(0.6641, abs=1e-4)  # odd s: R_s reaches -1 past x = -w0
    assert measured[2, 10] == pytest.approx(0.6474, abs=1e-4)
    assert measured[2, 20] == pytest.approx(0.6519, abs=1e-4)  # ≈ 0.65 at ε = 2/13
    assert ChebyshevMethod(1, 20, 0.0).stability_boundary() == pytest.approx(2 * 20**2, rel=1e-12)
    assert ChebyshevMethod(1, 20, 1e-4).stability_boundary() / 400 == pytest.approx(2.0, abs=1e-3)
    for order in (1, 2):
        for s in (5, 20, 100):
            approximate = approximate_stability_boundary(order, s)
            exact = ChebyshevMethod(order, s).stability_boundary()
            assert approximate <= exact <= 1.07 * approximate
    assert ChebyshevMethod(2, MAX_STAGES).stability_boundary() / MAX_STAGES**2 == pytest.approx(
        0.6534, abs=1e-4
    )


# -- empirical convergence order ---------------------------------------------------------------------


def _vector_field(state: np.ndarray) -> np.ndarray:
    """y' = y² cos t, t' = 1: nonlinear and autonomous, with y(t) = 1 / (1/y0 - sin t)."""
    y, t = state
    return np.array([y * y * np.cos(t), 1.0])


def _max_error(method: ChebyshevMethod, steps: int, end: float = 4.0, y0: float = 0.7) -> float:
    h = end / steps
    state, worst = np.array([y0, 0.0]), 0.0
    for n in range(steps):
        state, points = rkc_step(method, _vector_field, state, h)
        if n == 0:  # the time component of each stage point is its node
            np.testing.assert_allclose([p[1] for p in points], np.array(method.nodes) * h, rtol=1e-12)
        worst = max(worst, abs(state[0] - 1.0 / (1.0 / y0 - math.sin(state[1]))))
    return worst


@pytest.mark.parametrize(("order", "s"), [(1, 1), (1, 4), (2, 2), (2, 5)])
def test_empirical_convergence_order(order, s):
    method = ChebyshevMethod(order, s)
    steps = np.array([{1: 128, 2: 64}[order] * 2**k for k in range(4)])
    errors = np.array([_max_error(method, n) for n in steps])
    slope = float(-np.polyfit(np.log(steps), np.log(errors), 1)[0])
    assert slope == pytest.approx(order, abs=0.3)


# -- the stage count ---------------------------------------------------------------------------------


@pytest.mark.parametrize("order", [1, 2])
def test_stages_for_picks_the_smallest_sufficient_stage_count(order):
    low = 1 if order == 1 else 2
    for h_rho in (0.0, 0.5, 1.9, 2.0, 7.0, 50.0, 333.3, 1234.0, 9.9e4):
        for safety in (1.0, 1.2):
            s = stages_for(order, h_rho, safety=safety)
            target = safety * h_rho
            assert ChebyshevMethod(order, s).stability_boundary() >= target
            if s > low:
                assert ChebyshevMethod(order, s - 1).stability_boundary() < target
            else:
                assert s == low
    assert stages_for(order, 0.0) == low
    # the boundary itself is enough, a hair more needs another stage
    beta = ChebyshevMethod(order, 12).stability_boundary()
    assert stages_for(order, beta, safety=1.0) == 12
    assert stages_for(order, beta * (1 + 1e-9), safety=1.0) == 13
    # damping shrinks the interval, so more stages are needed
    assert stages_for(order, 1000.0, damping=1.0) > stages_for(order, 1000.0)


def test_stages_for_clips_at_max_stages():
    assert stages_for(1, 1e9) == MAX_STAGES
    assert stages_for(2, 1e4, max_stages=20) == 20
    assert stages_for(2, 10.0, max_stages=20) == 5


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"order": 3, "h_rho": 1.0}, "order"),
        ({"order": 1, "h_rho": -1.0}, "h_rho"),
        ({"order": 1, "h_rho": float("nan")}, "h_rho"),
        ({"order": 1, "h_rho": float("inf")}, "h_rho"),
        ({"order": 1, "h_rho": "3"}, "h_rho"),
        ({"order": 1, "h_rho": 1.0, "safety": 0.0}, "safety"),
        ({"order": 1, "h_rho": 1.0, "safety": float("inf")}, "safety"),
        ({"order": 1, "h_rho": 1.0, "damping": -0.1}, "damping"),
        ({"order": 2, "h_rho": 1.0, "max_stages": 1}, "max_stages"),
        ({"order": 1, "h_rho": 1.0, "max_stages": MAX_STAGES + 1}, "max_stages"),
        ({"order": 1, "h_rho": 1.0, "max_stages": 2.0}, "max_stages"),
    ],
)
def test_stages_for_validates_its_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        stages_for(**kwargs)


# -- validation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((0, 3), "order"),
        ((3, 3), "order"),
        ((1.0, 3), "order"),
        ((True, 3), "order"),
        ((1, 0), "stages"),
        ((2, 1), "stages"),
        ((1, 2.0), "stages"),
        ((1, True), "stages"),
        ((1, MAX_STAGES + 1), "stages"),
        ((1, 3, -1e-3), "damping"),
        ((1, 3, float("nan")), "damping"),
        ((2, 3, float("inf")), "damping"),
        ((2, 3, "0.1"), "damping"),
        ((1, MAX_STAGES, 1e6), "damping"),  # T_s(w0) overflows
    ],
)
def test_bad_method_arguments_raise_naming_the_argument(args, name):
    with pytest.raises(ValueError, match=name):
        ChebyshevMethod(*args)


def test_bad_arguments_elsewhere_raise_naming_the_argument():
    with pytest.raises(ValueError, match="j must"):
        chebyshev_t(-1, 0.5)
    with pytest.raises(ValueError, match="j must"):
        chebyshev_t_derivatives(2.0, 0.5)
    with pytest.raises(ValueError, match="x must"):
        chebyshev_t(3, float("nan"))
    with pytest.raises(ValueError, match="stages"):
        approximate_stability_boundary(2, 1)
    with pytest.raises(ValueError, match="order"):
        approximate_stability_boundary(4, 5)
    with pytest.raises(ValueError, match="damping"):
        approximate_stability_boundary(1, 5, -1.0)
    with pytest.raises(ValueError, match="mu_tilde"):
        ChebyshevStage(mu=1.0, nu=0.0, mu_tilde=float("inf"), gamma_tilde=0.0, c=0.5)


def test_methods_are_frozen_values():
    method = ChebyshevMethod(2, 7)
    assert method == ChebyshevMethod(2, 7, 2 / 13) == ChebyshevMethod(np.int64(2), np.int64(7))
    assert hash(method) == hash(ChebyshevMethod(2, 7, 2 / 13))
    assert type(ChebyshevMethod(np.int64(2), np.int64(7)).stages) is int
    assert ChebyshevMethod(1, 7).damping == 0.05
    with pytest.raises(dataclasses.FrozenInstanceError):
        method.stages = 8
    with pytest.raises(dataclasses.FrozenInstanceError):
        method.coefficients[0].mu = 1.0
