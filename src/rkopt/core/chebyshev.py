"""Runge–Kutta–Chebyshev (RKC) methods: coefficients, stability and stage count, framework-neutral.

For dθ/dt = F(θ) = -∇L(θ) the Jacobian -H has a real spectrum, and an s-stage RKC method is stable
on a real interval [-β(s), 0] that grows as s². Both methods are a three-term recurrence over the
stage points Y_0..Y_s (h the step, F_j = F(Y_j)):

    Y_0 = θ_n
    Y_1 = Y_0 + μ̃_1 h F_0
    Y_j = (1 - μ_j - ν_j) Y_0 + μ_j Y_{j-1} + ν_j Y_{j-2} + μ̃_j h F_{j-1} + γ̃_j h F_0,   j = 2..s
    θ_{n+1} = Y_s

so a step holds θ_n, F_0, the two previous stage points and the evaluation just made, whatever s.
Stage 1 is the general formula with the conventions μ_1 = ν_1 = γ̃_1 = 0 (and Y_{-1} unused);
at j = 2, Y_{j-2} = Y_0.

With T_j the Chebyshev polynomials, damping ε and w0 = 1 + ε/s², both methods take

    μ_j = 2 w0 b_j / b_{j-1},   ν_j = -b_j / b_{j-2},   μ̃_j = 2 w1 b_j / b_{j-1},
    γ̃_j = -a_{j-1} μ̃_j,        μ̃_1 = b_1 w1,         a_j = 1 - b_j T_j(w0),

for a sequence b_j and scale w1 of their own:

* first order (damped; Verwer, Hundsdorfer & Sommeijer 1990; van der Houwen & Sommeijer 1980):
  b_j = 1/T_j(w0), w1 = T_s(w0)/T_s'(w0). Then a_j = 0, so γ̃_j = 0 and 1 - μ_j - ν_j = 0: the
  Y_0 terms drop out. R_s(z) = T_s(w0 + w1 z)/T_s(w0); default ε = 0.05.
* second order (Sommeijer, Shampine & Verwer 1997, J. Comput. Appl. Math. 88):
  b_j = T_j''(w0)/T_j'(w0)² for j >= 2, b_0 = b_1 = b_2, w1 = T_s'(w0)/T_s''(w0).
  R_s(z) = a_s + b_s T_s(w0 + w1 z); default ε = 2/13.

Derivation (any b_j): on y' = λy, z = hλ, x = w0 + w1 z, the stage Y_j = R_j(z) Y_0 with the internal
polynomial R_j(z) = a_j + b_j T_j(x) for j = 0..s. Indeed R_0 = a_0 + b_0 = 1,
R_1 = a_1 + b_1 (w0 + w1 z) = 1 + b_1 w1 z, and inserting T_{j-1} = (R_{j-1} - a_{j-1})/b_{j-1},
T_{j-2} = (R_{j-2} - a_{j-2})/b_{j-2} into T_j = 2x T_{j-1} - T_{j-2} gives

    R_j = μ_j R_{j-1} + ν_j R_{j-2} + μ̃_j z R_{j-1} - a_{j-1} μ̃_j z + (1 - μ_j - ν_j),

the constant because a_j - μ_j a_{j-1} - ν_j a_{j-2} = 1 - μ_j - ν_j - b_j (T_j - 2 w0 T_{j-1} + T_{j-2})(w0).
The node (time) of stage j is c_j = R_j'(0) = b_j w1 T_j'(w0): c_j = w1 T_j'(w0)/T_j(w0) (first
order), c_j = T_s'(w0) T_j''(w0) / (T_s''(w0) T_j'(w0)) for j >= 2 and c_1 = c_2 / T_2'(w0) (second
order); c_0 = 0 and c_s = 1 exactly. The order: R_s'(0) = b_s w1 T_s'(w0) = 1 for both methods, and
R_s''(0) = b_s w1² T_s''(w0) = 1 for the second-order one.

Stability on the negative axis: for x in [-1, 1] (z in [-(1 + w0)/w1, 0], the damped part)
|R_s| <= 1/T_s(w0) (order 1), resp. R_s in [a_s - b_s, a_s + b_s] ≈ [1/3, 1] (order 2); past x = -1,
|T_s| grows, and |R_s| reaches 1 at x = -w0 (order 1, and order 2 with even s: β = 2 w0/w1), or
R_s reaches -1 at x = -X, T_s(X) = (1 + a_s)/b_s, somewhat below -w0 (order 2 with odd s). So the
true boundary β exceeds the classical (1 + w0)/w1 ≈ (2 - 4ε/3) s², resp. ≈ (2/3)(s² - 1)(1 - 2ε/15),
by about ε (absolute) for order 1 and even s, and by up to 18 % (s = 3) for odd s of order 2.

Supported range: 1 <= s <= MAX_STAGES = 500 (2 <= s for second order). With w0 = 1 + ε/s² the
values stay small (T_s(w0) ≈ cosh(√(2ε)), T_s' ≈ s², T_s'' ≈ s⁴/3), so nothing overflows; the
recurrences (in Reinsch's difference form near x = 1) keep ~1e-15 relative accuracy up to s = 500.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from numbers import Real

from rkopt.core.chebyshev_polynomials import (
    chebyshev_t,
    chebyshev_t_closed,
    chebyshev_t_derivatives,
    check_real,
    is_int,
)
from rkopt.core.tableau import ButcherTableau

MAX_STAGES = 500
"""The largest stage count a :class:`ChebyshevMethod` accepts."""

DEFAULT_DAMPING: dict[int, float] = {1: 0.05, 2: 2.0 / 13.0}
"""ε by order: 0.05 for the damped first-order method, 2/13 for the second-order one (SSV 1997)."""

MIN_STAGES: dict[int, int] = {1: 1, 2: 2}
"""The fewest stages of each order: Euler (s = 1) is first-order RKC; second order needs s >= 2."""

_UNIT_ROUNDOFF_SLACK = 1e-13
"""|R(z)| may exceed 1 by this much (rounding of R(0) = 1) before z counts as unstable."""


# -- the coefficients ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChebyshevStage:
    """The recurrence coefficients of one stage point Y_j and its node c_j (the time of Y_j / h):

        Y_j = (1 - mu - nu) Y_0 + mu Y_{j-1} + nu Y_{j-2} + mu_tilde h F(Y_{j-1}) + gamma_tilde h F(Y_0).

    Stage 1 has mu = nu = gamma_tilde = 0.
    """

    mu: float
    nu: float
    mu_tilde: float
    gamma_tilde: float
    c: float

    def __post_init__(self) -> None:
        for name in ("mu", "nu", "mu_tilde", "gamma_tilde", "c"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
                raise ValueError(f"ChebyshevStage: {name} = {value!r} is not a finite real number")
            object.__setattr__(self, name, float(value))

    @property
    def y0_weight(self) -> float:
        """1 - mu - nu: the weight of Y_0 in the stage point (0 for first-order RKC, up to rounding)."""
        return 1.0 - self.mu - self.nu


def _check_order(order: object) -> int:
    if not is_int(order) or order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    return int(order)


def _check_stages(order: int, stages: object, name: str = "stages") -> int:
    low = MIN_STAGES[order]
    if not is_int(stages) or not low <= stages <= MAX_STAGES:
        raise ValueError(
            f"{name} must be an int in [{low}, {MAX_STAGES}] for order-{order} RKC, got {stages!r}"
        )
    return int(stages)


def _check_damping(order: int, damping: object) -> float:
    if damping is None:
        return DEFAULT_DAMPING[order]
    if isinstance(damping, bool) or not isinstance(damping, Real) or not math.isfinite(float(damping)):
        raise ValueError(f"damping must be a finite real number >= 0, got {damping!r}")
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping!r}")
    return float(damping)


@dataclass(frozen=True)
class _Scalars:
    w0: float
    w1: float
    a: tuple[float, ...]  # a_0..a_s
    b: tuple[float, ...]  # b_0..b_s
    stages: tuple[ChebyshevStage, ...]  # stages 1..s


@lru_cache(maxsize=1024)
def _scalars(order: int, s: int, damping: float) -> _Scalars:
    """w0, w1, a_j, b_j and the stage coefficients of the (validated) method."""
    w0 = 1.0 + damping / (s * s)
    t = [chebyshev_t_derivatives(j, w0) for j in range(s + 1)]
    if not all(math.isfinite(v) for row in t for v in row):
        raise ValueError(f"damping = {damping!r} is too large for {s} stages: T_s(w0) overflows")
    if order == 1:
        w1 = t[s][0] / t[s][1]
        b = [1.0 / t[j][0] for j in range(s + 1)]
        a = [0.0] * (s + 1)  # a_j = 1 - b_j T_j(w0) = 0 exactly
        nodes = [0.0] + [w1 * t[j][1] / t[j][0] for j in range(1, s + 1)]
    else:
        w1 = t[s][1] / t[s][2]
        b_2 = t[2][2] / t[2][1] ** 2
        b = [b_2, b_2, b_2] + [t[j][2] / t[j][1] ** 2 for j in range(3, s + 1)]
        a = [1.0 - b[j] * t[j][0] for j in range(s + 1)]
        nodes = [0.0, 0.0] + [t[s][1] * t[j][2] / (t[s][2] * t[j][1]) for j in range(2, s + 1)]
        nodes[1] = nodes[2] / t[2][1]  # = b_1 w1 = μ̃_1
    nodes[s] = 1.0  # c_s = R_s'(0) = 1 exactly
    stages = [ChebyshevStage(mu=0.0, nu=0.0, mu_tilde=b[1] * w1, gamma_tilde=0.0, c=nodes[1])]
    for j in range(2, s + 1):
        mu_tilde = 2.0 * w1 * b[j] / b[j - 1]
        stages.append(
            ChebyshevStage(
                mu=2.0 * w0 * b[j] / b[j - 1],
                nu=-b[j] / b[j - 2],
                mu_tilde=mu_tilde,
                gamma_tilde=-a[j - 1] * mu_tilde,
                c=nodes[j],
            )
        )
    return _Scalars(w0=w0, w1=w1, a=tuple(a), b=tuple(b), stages=tuple(stages))


# -- the method ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChebyshevMethod:
    """An s-stage Runge–Kutta–Chebyshev method of order 1 (damped) or 2 (Sommeijer–Shampine–Verwer).

    Args:
        order: 1 or 2.
        stages: s, the number of evaluations of F per step: 1..MAX_STAGES (order 1) or
            2..MAX_STAGES (order 2).
        damping: ε >= 0, finite, in w0 = 1 + ε/s²; ``None`` takes ``DEFAULT_DAMPING[order]``
            (0.05, resp. 2/13).

    Raises ``ValueError`` naming the argument if one is out of range.
    """

    order: int
    stages: int
    damping: float | None = None

    def __post_init__(self) -> None:
        order = _check_order(self.order)
        object.__setattr__(self, "order", order)
        object.__setattr__(self, "stages", _check_stages(order, self.stages))
        object.__setattr__(self, "damping", _check_damping(order, self.damping))
        _scalars(self.order, self.stages, self.damping)  # computes and validates the coefficients

    @property
    def _data(self) -> _Scalars:
        return _scalars(self.order, self.stages, self.damping)

    @property
    def w0(self) -> float:
        """w0 = 1 + ε/s², the centre of the argument x = w0 + w1 z of T_s."""
        return self._data.w0

    @property
    def w1(self) -> float:
        """w1 = T_s(w0)/T_s'(w0) (order 1) or T_s'(w0)/T_s''(w0) (order 2), the scale of z in x."""
        return self._data.w1

    @property
    def coefficients(self) -> tuple[ChebyshevStage, ...]:
        """The stages j = 1..s (index j - 1): (mu_j, nu_j, mu_tilde_j, gamma_tilde_j, c_j)."""
        return self._data.stages

    @property
    def nodes(self) -> tuple[float, ...]:
        """c_0..c_s: the times of the stage points Y_0..Y_s as fractions of h (c_0 = 0, c_s = 1)."""
        return (0.0, *(stage.c for stage in self._data.stages))

    def amplification(self, z: float) -> float:
        """R_s(z) = a_s + b_s T_s(w0 + w1 z) (a_s = 0, b_s = 1/T_s(w0) for order 1), in closed form."""
        data = self._data
        return data.a[-1] + data.b[-1] * chebyshev_t_closed(self.stages, data.w0 + data.w1 * z)

    def stability_polynomial(self) -> tuple[float, ...]:
        """Coefficients r_0..r_s of R_s(z) = a_s + b_s T_s(w0 + w1 z), with θ_{n+1} = R_s(hλ) θ_n on y' = λy.

        The polynomials P_j(z) = T_j(w0 + w1 z) are built coefficient by coefficient from
        P_0 = 1, P_1 = w0 + w1 z, P_j = 2 (w0 + w1 z) P_{j-1} - P_{j-2}; then r = a_s e_0 + b_s P_s.
        r_0 = r_1 = 1 (and r_2 = 1/2 for order 2) up to rounding; r_k ~ (2 w1)^k shrinks fast and
        underflows to 0 for k in the hundreds.
        """
        data = self._data
        s, w0, w1 = self.stages, data.w0, data.w1
        previous, current = [1.0], [w0, w1]
        for _ in range(s - 1):
            shifted = [0.0, *current]
            following = [2.0 * w0 * v for v in current] + [0.0]
            following = [f + 2.0 * w1 * v for f, v in zip(following, shifted, strict=True)]
            for k, v in enumerate(previous):
                following[k] -= v
            previous, current = current, following
        coefficients = [data.b[-1] * v for v in current]
        coefficients[0] += data.a[-1]
        return tuple(coefficients)

    def stability_boundary(self) -> float:
        """β: the largest β with |R_s(z)| <= 1 for every z in [-β, 0], found numerically.

        |R_s| is evaluated in closed form along x = w0 + w1 z descending from w0 (z = 0): x = cosh t
        on [1, w0], x = cos θ on [-1, 1] (32 points per period of T_s = cos(s θ)), then x = -cosh t
        below -1 (steps of 1/(16 s) in t), until |R_s| > 1 + 1e-13 (the slack absorbs rounding of
        R_s = 1 near z = 0); the crossing is then bisected to adjacent floats and β = (w0 - x*)/w1.

        The result equals 2 w0/w1 for order 1 and for even s of order 2 (|R_s| = 1 at x = -w0), and
        (w0 + X)/w1 with T_s(X) = (1 + a_s)/b_s for odd s of order 2 (R_s = -1 at x = -X < -w0).
        Both exceed (1 + w0)/w1, the end x = -1 of the damped part of the interval.
        """
        return _stability_boundary(self.order, self.stages, self.damping)

    def to_butcher_tableau(self) -> ButcherTableau:
        """The same method as an explicit s-stage Butcher tableau, stage i = 1..s evaluating F(Y_{i-1}).

        With k_i = F(Y_{i-1}) each stage point is Y_j = Y_0 + h Σ_{i<=j} α_{j,i} k_i, where
        α_0 = 0, α_1 = μ̃_1 e_1 and α_j = μ_j α_{j-1} + ν_j α_{j-2} + μ̃_j e_j + γ̃_j e_1; then row i
        of A is α_{i-1}, b = α_s and c_i = Σ α_{i-1} (= c_{i-1} of the recurrence). The entries stay
        O(1) (|a_ij| < 0.3 for order 1, < 2 for order 2) and the tableau is well conditioned: its
        stability polynomial matches :meth:`stability_polynomial` to ~2e-14 relative for s <= 150
        and ~5e-13 at s = 300 (coefficients above the underflow range; both within ~5e-14 of
        80-digit arithmetic for s <= 150), and Σ b = 1 within 1e-13 up to s = 500. It is a
        reference for checking the recurrence, not a way to step: it needs O(s²) storage.
        """
        s = self.stages
        alphas: list[list[float]] = [[0.0] * s]
        for j, stage in enumerate(self.coefficients, start=1):
            older = alphas[j - 2] if j >= 2 else [0.0] * s
            alpha = [stage.mu * p + stage.nu * q for p, q in zip(alphas[j - 1], older, strict=True)]
            alpha[j - 1] += stage.mu_tilde
            alpha[0] += stage.gamma_tilde
            alphas.append(alpha)
        rows = tuple(tuple(alphas[i][:i]) for i in range(s))
        c = tuple(math.fsum(row) for row in rows)
        label = {1: "first-order damped", 2: "second-order"}[self.order]
        return ButcherTableau(
            name=f"rkc{self.order}_s{s}",
            c=c,
            a=rows,
            b=tuple(alphas[s]),
            order=self.order,
            reference=(
                f"{label} Runge–Kutta–Chebyshev method, {s} stages, damping {self.damping:g}; "
                + (
                    "Verwer, Hundsdorfer & Sommeijer (1990), Numer. Math. 57"
                    if self.order == 1
                    else "Sommeijer, Shampine & Verwer (1997), J. Comput. Appl. Math. 88"
                )
            ),
        )


@lru_cache(maxsize=4096)
def _stability_boundary(order: int, s: int, damping: float) -> float:
    data = _scalars(order, s, damping)
    a_s, b_s, w0 = data.a[-1], data.b[-1], data.w0

    def stable(x: float) -> bool:
        return abs(a_s + b_s * chebyshev_t_closed(s, x)) <= 1.0 + _UNIT_ROUNDOFF_SLACK

    # x descends from w0 (z = 0, where R_s = 1 by construction) in steps of at most 1/32 of a
    # period of T_s in the angle: x = cosh t on [1, w0), x = cos θ on [-1, 1), x = -cosh t below
    top = math.acosh(w0)
    points = [math.cosh(top * (1.0 - k / 8)) for k in range(1, 9)]
    points += [math.cos(math.pi * k / (16 * s)) for k in range(1, 16 * s + 1)]
    good, k = w0, 0
    for x in points:
        if not stable(x):
            break
        good = x
    else:
        while True:
            k += 1
            x = -math.cosh(k / (16 * s))
            if not stable(x):
                break
            good = x
            if k > 10_000 * s:  # pragma: no cover - |R_s| grows like cosh(s t)
                raise RuntimeError("no end of the stability interval found")
    bad = x
    for _ in range(200):
        middle = 0.5 * (good + bad)
        if middle in (good, bad):
            break
        if stable(middle):
            good = middle
        else:
            bad = middle
    return (w0 - good) / data.w1


def approximate_stability_boundary(order: int, stages: int, damping: float | None = None) -> float:
    """The classical asymptotic β(s), O(1) to evaluate (ε the damping, small):

        order 1:  β ≈ (2 - 4ε/3) s²                 (1.933 s² at ε = 0.05)
        order 2:  β ≈ (2/3) (s² - 1) (1 - 2ε/15)    (≈ 0.653 s² at ε = 2/13)

    These expand (1 + w0)/w1, the end of the damped part of the interval, to first order in ε
    (so they are meant for ε <~ 0.5; the order-1 formula turns negative at ε = 1.5). The exact
    boundary (:meth:`ChebyshevMethod.stability_boundary`) lies slightly above: by about 0.1 % at
    s = 20 with the default ε for order 1 and for order 2 at even s, by up to ~18 % for odd s of
    order 2 with few stages (s = 3), where R_s reaches -1 only past x = -w0.
    """
    order = _check_order(order)
    stages = _check_stages(order, stages)
    eps = _check_damping(order, damping)
    if order == 1:
        return (2.0 - 4.0 * eps / 3.0) * stages * stages
    return 2.0 / 3.0 * (stages * stages - 1) * (1.0 - 2.0 * eps / 15.0)


def stages_for(
    order: int,
    h_rho: float,
    safety: float = 1.2,
    damping: float | None = None,
    max_stages: int = MAX_STAGES,
) -> int:
    """The smallest s with β(s) >= safety · h ρ, β the exact :meth:`ChebyshevMethod.stability_boundary`.

    Args:
        order: 1 or 2.
        h_rho: h times the spectral radius ρ of the Jacobian (the largest curvature), >= 0, finite.
        safety: the margin on h ρ, > 0 and finite (default 1.2: the stiffest direction sits at
            most at 1/1.2 of the interval, where |R_s| < 1 strictly, so an underestimated ρ and
            round-off in the recurrence are tolerated).
        damping: ε, as for :class:`ChebyshevMethod` (``None``: the order's default).
        max_stages: the cap on s (default MAX_STAGES). If even β(max_stages) is too small, the
            cap is returned (clipped, not an error): the caller should then shorten h.

    β(s) increases strictly with s (checked for s <= 500 at ε = 0, 0.05, 2/13, 0.5, 1, 5, 20), so
    s is found by bisection, with about log2(max_stages) boundary evaluations (each O(s), cached).
    """
    order = _check_order(order)
    h_rho = check_real(h_rho, "h_rho")
    if h_rho < 0:
        raise ValueError(f"h_rho must be >= 0, got {h_rho!r}")
    safety = check_real(safety, "safety")
    if safety <= 0:
        raise ValueError(f"safety must be > 0, got {safety!r}")
    eps = _check_damping(order, damping)
    max_stages = _check_stages(order, max_stages, "max_stages")
    target = safety * h_rho
    if _stability_boundary(order, max_stages, eps) < target:
        return max_stages
    low, high = MIN_STAGES[order] - 1, max_stages  # β(low) < target <= β(high), β(MIN_STAGES - 1) = 0
    while high - low > 1:
        middle = (low + high) // 2
        if _stability_boundary(order, middle, eps) >= target:
            high = middle
        else:
            low = middle
    return high


__all__ = [
    "DEFAULT_DAMPING",
    "MAX_STAGES",
    "MIN_STAGES",
    "ChebyshevMethod",
    "ChebyshevStage",
    "approximate_stability_boundary",
    "chebyshev_t",
    "chebyshev_t_derivatives",
    "stages_for",
]
