"""Butcher tableaux: validation, order conditions, empirical convergence order, derived facts."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

import rkopt
from rkopt.core.rooted_trees import tree_density, tree_order, trees_of_order, trees_up_to

NAMES = sorted(rkopt.TABLEAUX)
EMBEDDED = [name for name in NAMES if rkopt.TABLEAUX[name].is_embedded]

EXPECTED = {  # name: (stages, order, embedded order)
    "euler": (1, 1, None),
    "midpoint": (2, 2, None),
    "heun": (2, 2, None),
    "ralston": (2, 2, None),
    "kutta3": (3, 3, None),
    "heun3": (3, 3, None),
    "ssprk3": (3, 3, None),
    "rk4": (4, 4, None),
    "rk38": (4, 4, None),
    "heun_euler": (2, 2, 1),
    "bogacki_shampine": (4, 3, 2),
    "fehlberg": (6, 4, 5),
    "cash_karp": (6, 5, 4),
    "dormand_prince": (7, 5, 4),
    "tsitouras": (7, 5, 4),
}


def test_the_catalogue_is_complete():
    assert set(EXPECTED) == set(rkopt.TABLEAUX)
    for name, (stages, order, embedded) in EXPECTED.items():
        tableau = rkopt.TABLEAUX[name]
        assert (tableau.stages, tableau.order, tableau.embedded_order) == (stages, order, embedded)
        assert tableau.reference, f"{name} needs a literature reference"
        assert tableau.reference in tableau.__doc__ and f"order {order}" in tableau.__doc__


def test_rooted_tree_counts_match_butcher():
    assert [len(trees_of_order(p)) for p in range(1, 7)] == [1, 1, 2, 4, 9, 20]
    assert [len(trees_up_to(p)) for p in range(1, 7)] == [1, 2, 4, 8, 17, 37]
    # the tall tree of order 4, [[[•]]], has density 4·3·2·1 = 24; the bushy one [•,•,•] has 4
    assert tree_density(((((),),),)) == 24
    assert tree_density(((), (), ())) == 4
    assert all(tree_order(t) == 5 for t in trees_of_order(5))


@pytest.mark.parametrize("name", NAMES)
def test_order_conditions_hold_up_to_the_claimed_order_and_no_further(name):
    tableau = rkopt.TABLEAUX[name]
    assert max(abs(r) for r in tableau.order_residuals()) < 1e-13
    assert max(abs(r) for r in tableau.order_residuals(tableau.order + 1)) > 1e-4
    if tableau.is_embedded:
        assert max(abs(r) for r in tableau.order_residuals(embedded=True)) < 1e-13
        embedded_next = tableau.order_residuals(tableau.embedded_order + 1, embedded=True)
        assert max(abs(r) for r in embedded_next) > 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_structure(name):
    tableau = rkopt.TABLEAUX[name]
    assert tableau.c[0] == 0.0
    for i, row in enumerate(tableau.a):
        assert len(row) == i
        assert math.isclose(sum(row), tableau.c[i], abs_tol=1e-14)
    assert math.isclose(sum(tableau.b), 1.0, abs_tol=1e-14)


@pytest.mark.parametrize("name", NAMES)
def test_stability_polynomial_matches_the_taylor_series_up_to_the_order(name):
    """R(z) = e^z + O(z^(p+1)): r_k = 1/k! for k <= p."""
    tableau = rkopt.TABLEAUX[name]
    coefficients = tableau.stability_polynomial()
    assert len(coefficients) == tableau.stages + 1
    for k in range(tableau.order + 1):
        assert coefficients[k] == pytest.approx(1.0 / math.factorial(k), rel=1e-12)


def test_rk4_stability_interval_on_the_negative_axis():
    coefficients = rkopt.get_tableau("rk4").stability_polynomial()

    def amplification(z):
        return abs(sum(r * z**k for k, r in enumerate(coefficients)))

    assert amplification(-2.78) < 1.0 < amplification(-2.79)


def test_fsal_flags():
    fsal = {name for name in NAMES if rkopt.TABLEAUX[name].fsal}
    assert fsal == {"bogacki_shampine", "dormand_prince", "tsitouras"}


def test_trailing_stages_that_feed_nothing_are_not_needed():
    dopri = rkopt.get_tableau("dormand_prince")
    assert dopri.stages_needed() == 6  # the FSAL stage only serves the error estimate
    assert dopri.stages_needed(error_estimate=True) == 7
    assert rkopt.get_tableau("fehlberg").stages_needed() == 5
    assert rkopt.get_tableau("rk4").stages_needed() == 4


@pytest.mark.parametrize(
    ("name", "slots"),
    [("euler", 0), ("rk4", 0), ("kutta3", 1), ("rk38", 2), ("fehlberg", 3), ("dormand_prince", 4)],
)
def test_storage_plan_counts(name, slots):
    tableau = rkopt.get_tableau(name)
    assert tableau.storage_plan(stages=tableau.stages_needed())[1] == slots


def test_storage_plan_reuses_slots_and_honours_extra_needs():
    rk4 = rkopt.get_tableau("rk4")
    assert rk4.storage_plan() == ((None, None, None, None), 0)
    assert rk4.storage_plan({0: 4}) == ((0, None, None, None), 1)
    dopri = rkopt.get_tableau("dormand_prince")
    plan, count = dopri.storage_plan()
    assert count == 5 and plan[:5] == (0, 1, 2, 3, 4)
    # a slot is reused once its direction's last reader has been computed
    ssprk3_like = rkopt.ButcherTableau(
        name="reuse",
        c=(0, 1, 1, 1, 1),
        a=((), (1,), (1, 0), (0, 0, 1), (0, 0, 1, 0)),
        b=(0.25, 0.25, 0, 0.25, 0.25),
        order=1,
    )
    plan, count = ssprk3_like.storage_plan()
    assert count == 1 and plan[0] == 0 and plan[2] == 0


def test_lookup_by_name_is_case_insensitive_and_knows_aliases():
    assert rkopt.get_tableau("RK4") is rkopt.TABLEAUX["rk4"]
    assert rkopt.get_tableau("Dormand-Prince") is rkopt.TABLEAUX["dormand_prince"]
    assert rkopt.get_tableau("dopri5") is rkopt.TABLEAUX["dormand_prince"]
    assert rkopt.get_tableau("Tsit5") is rkopt.TABLEAUX["tsitouras"]
    custom = rkopt.ButcherTableau(name="mine", c=(0,), a=((),), b=(1,), order=1)
    assert rkopt.get_tableau(custom) is custom


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown tableau 'rk5'.*dormand_prince.*rk4"):
        rkopt.get_tableau("rk5")
    with pytest.raises(TypeError, match="name or a ButcherTableau"):
        rkopt.get_tableau(4)


def test_coefficients_may_be_fractions_strings_or_floats():
    from_strings = rkopt.ButcherTableau(name="h", c=(0, "1/2"), a=((), ("1/2",)), b=(0, 1), order=2)
    from_fractions = rkopt.ButcherTableau(
        name="h", c=(0, Fraction(1, 2)), a=((), (Fraction(1, 2),)), b=(0, 1), order=2
    )
    full_rows = rkopt.ButcherTableau(name="h", c=(0, 0.5), a=((0, 0), (0.5, 0)), b=(0.0, 1.0), order=2)
    assert from_strings == from_fractions == full_rows
    assert from_strings.a == ((), (0.5,))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"c": (0, 0.5), "a": ((), (0.4,)), "b": (0, 1), "order": 1}, "row sum of a\\[1\\]"),
        ({"c": (0, 0.5), "a": ((), (0.5,)), "b": (0.2, 0.7), "order": 1}, "b sums to"),
        ({"c": (0, 0.5), "a": ((0.1, 0), (0.5, 0)), "b": (0, 1), "order": 1}, "implicit"),
        ({"c": (0, 0.5), "a": ((), (0.5, 0.1)), "b": (0, 1), "order": 1}, "implicit"),
        ({"c": (0, 0.5), "a": ((),), "b": (0, 1), "order": 1}, "1 rows but c has 2"),
        ({"c": (0, 0.5), "a": ((), (0.5,)), "b": (1,), "order": 1}, "b has 1 entries"),
        ({"c": (0, 0.5), "a": ((), (0.5,)), "b": (0, 1), "order": 3}, "fails .* order condition"),
        ({"c": (0, 0.5), "a": ((), (0.5,)), "b": (0, 1), "order": 0}, "order must be an int >= 1"),
        ({"c": (0, 0.5), "a": ((), ("x",)), "b": (0, 1), "order": 1}, "is not a number"),
        ({"c": (0, 0.5), "a": ((), (float("nan"),)), "b": (0, 1), "order": 1}, "not finite"),
        ({"c": (), "a": (), "b": (), "order": 1}, "at least one stage"),
        ({"c": (0, 1), "a": ((), (1,)), "b": (0.5, 0.5), "order": 2, "b_hat": (1, 0)}, "together"),
        (
            {"c": (0, 1), "a": ((), (1,)), "b": (0.5, 0.5), "order": 2, "b_hat": (1, 0), "embedded_order": 2},
            "b_hat fails",
        ),
    ],
)
def test_malformed_tableaux_are_rejected_with_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        rkopt.ButcherTableau(name="bad", **kwargs)


def test_tableaux_are_frozen():
    with pytest.raises(AttributeError):
        rkopt.TABLEAUX["rk4"].order = 5


# -- empirical convergence order ---------------------------------------------------------------


def _vector_field(state: np.ndarray) -> np.ndarray:
    """y' = y² cos t, t' = 1: a nonlinear autonomous system with y(t) = 1 / (1/y0 - sin t)."""
    y, t = state
    return np.array([y * y * np.cos(t), 1.0])


def _max_error(a, weights, steps: int, end: float = 4.0, y0: float = 0.7) -> float:
    """Largest |y_n - y(t_n)| over a fixed-step integration of ``steps`` steps to ``end``."""
    h = end / steps
    state, worst = np.array([y0, 0.0]), 0.0
    for _ in range(steps):
        k: list[np.ndarray] = []
        for row in a:
            k.append(_vector_field(state + h * sum((aij * kj for aij, kj in zip(row, k)), np.zeros(2))))
        state = state + h * sum(bi * ki for bi, ki in zip(weights, k))
        worst = max(worst, abs(state[0] - 1.0 / (1.0 / y0 - math.sin(state[1]))))
    return worst


def _observed_order(a, weights, order: int) -> float:
    """Slope of log(error) against log(h) over four halvings of h, in the asymptotic range."""
    coarsest = {1: 128, 2: 64, 3: 32, 4: 32}.get(order, 16)
    steps = np.array([coarsest * 2**k for k in range(4)])
    errors = np.array([_max_error(a, weights, n) for n in steps])
    return float(-np.polyfit(np.log(steps), np.log(errors), 1)[0])


@pytest.mark.parametrize("name", NAMES)
def test_empirical_convergence_order(name):
    tableau = rkopt.TABLEAUX[name]
    assert _observed_order(tableau.a, tableau.b, tableau.order) == pytest.approx(tableau.order, abs=0.3)


@pytest.mark.parametrize("name", EMBEDDED)
def test_empirical_convergence_order_of_the_embedded_solution(name):
    tableau = rkopt.TABLEAUX[name]
    order = tableau.embedded_order
    assert _observed_order(tableau.a, tableau.b_hat, order) == pytest.approx(order, abs=0.3)
