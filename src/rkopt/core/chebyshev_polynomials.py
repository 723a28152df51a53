"""Chebyshev polynomials of the first kind and their derivatives, accurate next to x = 1 where the
Runge–Kutta–Chebyshev methods (:mod:`rkopt.core.chebyshev`) evaluate them."""

from __future__ import annotations

import math
from numbers import Integral, Real


def is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _check_degree(j: object) -> int:
    if not is_int(j) or j < 0:
        raise ValueError(f"j must be an int >= 0, got {j!r}")
    return int(j)


def check_real(x: object, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, Real) or not math.isfinite(float(x)):
        raise ValueError(f"{name} must be a finite real number, got {x!r}")
    return float(x)


def chebyshev_t(j: int, x: float) -> float:
    """T_j(x) by the recurrence T_0 = 1, T_1 = x, T_j = 2x T_{j-1} - T_{j-2}."""
    return chebyshev_t_derivatives(j, x)[0]


def chebyshev_t_derivatives(j: int, x: float) -> tuple[float, float, float]:
    """(T_j(x), T_j'(x), T_j''(x)) by the three-term recurrences, T_0 = 1, T_1 = x,

        T_j   = 2x T_{j-1}   - T_{j-2}
        T_j'  = 2x T_{j-1}'  - T_{j-2}'  + 2 T_{j-1}
        T_j'' = 2x T_{j-1}'' - T_{j-2}'' + 4 T_{j-1}'

    For |x| >= 1/2 they run in Reinsch's difference form, which stays accurate next to x = ±1 where
    RKC needs them (x = w0 = 1 + ε/s²): with δ = x - 1 and D_j = T_j - T_{j-1},
    D_j = D_{j-1} + 2δ T_{j-1} (likewise D_j' = D_{j-1}' + 2δ T_{j-1}' + 2 T_{j-1} and
    D_j'' = D_{j-1}'' + 2δ T_{j-1}'' + 4 T_{j-1}'), with T_j(-x) = (-1)^j T_j(x) for x < 0. The plain
    recurrence loses ~j² ulps near x = 1 (1.5e-12 at j = 399); this form keeps ~1e-15 relative up
    to j = 500. For |x| well above 1 the values grow like (2|x|)^j and overflow to ±inf once that
    passes ~1e308 (j = 500 overflows from |x| ≈ 2.2).
    """
    j = _check_degree(j)
    x = check_real(x, "x")
    if j == 0:
        return 1.0, 0.0, 0.0
    if abs(x) < 0.5:
        t_prev, t = 1.0, x
        d_prev, d = 0.0, 1.0
        dd_prev, dd = 0.0, 0.0
        for _ in range(j - 1):
            t_prev, t, d_prev, d, dd_prev, dd = (
                t,
                2.0 * x * t - t_prev,
                d,
                2.0 * x * d - d_prev + 2.0 * t,
                dd,
                2.0 * x * dd - dd_prev + 4.0 * d,
            )
        return t, d, dd
    y = abs(x)
    delta = y - 1.0  # exact for y in [1/2, 2] (Sterbenz)
    t, d, dd = y, 1.0, 0.0  # T_1, T_1', T_1'' at y
    step, step_d, step_dd = delta, 1.0, 0.0  # T_1 - T_0 and its derivatives
    for _ in range(j - 1):
        step_dd += 2.0 * delta * dd + 4.0 * d
        step_d += 2.0 * delta * d + 2.0 * t
        step += 2.0 * delta * t
        t, d, dd = t + step, d + step_d, dd + step_dd
    if x < 0 and j % 2:
        return -t, d, -dd
    if x < 0:
        return t, -d, dd
    return t, d, dd


def chebyshev_t_closed(j: int, x: float) -> float:
    """T_j(x) in closed form: cos(j arccos x) on [-1, 1], ±cosh(j arccosh |x|) outside (O(1) work);
    ±inf where that overflows."""
    if abs(x) <= 1.0:
        return math.cos(j * math.acos(x))
    try:
        value = math.cosh(j * math.acosh(abs(x)))
    except OverflowError:
        value = math.inf
    return -value if (x < 0 and j % 2) else value
