"""Runge–Kutta–Chebyshev with the stage count chosen each step from a spectral-radius estimate.

An s-stage RKC method is stable for h λ in [-β(s), 0] (:mod:`rkopt.core.chebyshev`). On the gradient
flow dθ/dt = -d(θ), d = P_n ∇L, the Jacobian is -J with J = P_n H, whose spectrum is real for a
diagonal P_n > 0 (J is similar to the symmetric P_n^½ H P_n^½). A step with step h is stable when
β(s) >= h ρ(J), so :class:`AutoChebyshev` takes, each step,

    s = the smallest s with β(s) >= safety · h ρ,                h the largest step of the groups,

with ρ estimated on the step's batch by a nonlinear power iteration on finite differences of the
field (as RKC codes do, Sommeijer, Shampine & Verwer 1997):

    w_k = (d(θ_n) - d(θ_n - ε v_k/‖v_k‖)) / ε ≈ J v_k/‖v_k‖,   ρ_k = ‖w_k‖,   v_{k+1} = w_k,

one evaluation per iteration, on the step's batch (closure calls, counted like every other), over
the parameters of every group together (one evaluation serves them all), stopped once
|ρ_k - ρ_{k-1}| <= tolerance · ρ_k or after ``iterations``. It starts from the last estimate's
eigenvector w (kept in the parameters' state as ``spectral_vector``, ρ_0 the last ρ) and, the first
time, from d_1 = d(θ_n): the gradient soon loses the stiff components a stable step damps, so an
iteration started from it every time would miss the very curvature that limits h. For a symmetric
J, ‖J v̂_k‖ grows with k towards ρ, so the estimate is a lower bound; the safety factor covers the
gap. The estimate is made on the first step and refreshed every ``refresh_every`` steps; in between
the last ρ is reused, so s still follows h (a schedule, a DAL step) at no extra evaluation. The s of
the step, ρ and its age are the group observables ``stages``, ``spectral_radius`` and ``spectral_age``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from numbers import Real
from typing import Any

from rkopt.core.chebyshev import MAX_STAGES, MIN_STAGES, ChebyshevMethod, stages_for
from rkopt.core.chebyshev_polynomials import is_int

OBSERVABLES = ("stages", "spectral_radius", "spectral_age")
"""The group keys a step of an automatic stage count records: its s, ρ and the steps since ρ was
estimated (0 on the step that estimated it)."""

SPECTRAL_VECTOR = "spectral_vector"
"""The parameter-state key of the last estimate's eigenvector (the next estimate's start)."""


def _positive_real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"AutoStages: {name} must be a finite real number > 0, got {value!r}")
    return float(value)


def _positive_int(name: str, value: Any) -> int:
    if not is_int(value) or value < 1:
        raise ValueError(f"AutoStages: {name} must be an integer >= 1, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class AutoStages:
    """How :class:`AutoChebyshev` picks s.

    Attributes:
        safety: β(s) >= safety · h ρ (default 1.5: the power iteration underestimates ρ).
        refresh_every: steps between estimates of ρ (default 10; 1 estimates every step).
        iterations: the most power iterations per estimate, one evaluation each (default 10).
        tolerance: an estimate stops once ρ changes by at most this fraction (default 0.05; a
            warm-started estimate then usually takes one or two evaluations).
        fd_eps: ε, the length of the finite-difference displacement (default 1e-3).
        max_stages: the cap on s (default 200); a step that would need more takes the cap and
            warns, since it is then unstable: lower lr.
    """

    safety: float = 1.5
    refresh_every: int = 10
    iterations: int = 10
    tolerance: float = 0.05
    fd_eps: float = 1e-3
    max_stages: int = 200

    def __post_init__(self) -> None:
        object.__setattr__(self, "safety", _positive_real("safety", self.safety))
        object.__setattr__(self, "fd_eps", _positive_real("fd_eps", self.fd_eps))
        object.__setattr__(self, "tolerance", _positive_real("tolerance", self.tolerance))
        for name in ("refresh_every", "iterations", "max_stages"):
            object.__setattr__(self, name, _positive_int(name, getattr(self, name)))
        if self.max_stages > MAX_STAGES:
            raise ValueError(f"AutoStages: max_stages must be <= {MAX_STAGES}, got {self.max_stages}")


@dataclass(frozen=True)
class AutoChebyshev:
    """A Runge–Kutta–Chebyshev method of ``order`` (1 or 2) and ``damping`` whose stage count is
    chosen each step by ``auto`` (an :class:`AutoStages`); ``damping=None`` takes the order's default.
    """

    order: int
    damping: float | None = None
    auto: AutoStages = field(default_factory=AutoStages)

    def __post_init__(self) -> None:
        if not isinstance(self.auto, AutoStages):
            raise TypeError(f"AutoChebyshev: auto must be an rkopt.AutoStages, got {self.auto!r}")
        probe = ChebyshevMethod(self.order, max(MIN_STAGES.get(self.order, 2), 2), self.damping)
        object.__setattr__(self, "order", probe.order)  # validated there
        object.__setattr__(self, "damping", probe.damping)
        if self.auto.max_stages < MIN_STAGES[self.order]:
            raise ValueError(
                f"AutoStages: max_stages={self.auto.max_stages} is below the {MIN_STAGES[self.order]} "
                f"stages of order {self.order}"
            )

    @property
    def name(self) -> str:
        return f"rkc{self.order}(stages=auto, damping={self.damping!r})"

    @property
    def provisional(self) -> ChebyshevMethod:
        """The method a step starts with, before its s is chosen (its stage 1 is every s's)."""
        return self.method(MIN_STAGES[self.order])

    def method(self, stages: int) -> ChebyshevMethod:
        """The s-stage method of this family."""
        return _method(self.order, stages, self.damping)

    def stages(self, h: float, rho: float) -> int:
        """The smallest s with β(s) >= safety · |h| ρ, capped at ``max_stages``."""
        auto = self.auto
        return stages_for(self.order, abs(h) * rho, auto.safety, self.damping, auto.max_stages)

    def refresh_due(self, rho: Any, age: Any) -> bool:
        """Whether a step with the last estimate ``rho`` made ``age`` steps ago estimates anew."""
        return rho is None or age is None or age + 1 >= self.auto.refresh_every

    def saturated(self, stages: int, h: float, rho: float) -> bool:
        """Whether even the capped s is too few for h ρ (the step is then not stable)."""
        return stages == self.auto.max_stages and self.method(stages).stability_boundary() < (
            self.auto.safety * abs(h) * rho
        )


@lru_cache(maxsize=512)
def _method(order: int, stages: int, damping: float) -> ChebyshevMethod:
    return ChebyshevMethod(order, stages, damping)


__all__ = ["OBSERVABLES", "SPECTRAL_VECTOR", "AutoChebyshev", "AutoStages"]
