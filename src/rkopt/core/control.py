"""Step-size rules that do not depend on a framework: DAL-p and the PI error controller.

Both are written once against a small numeric namespace ``xp`` so that every binding runs the same
arithmetic: :data:`MATH` (Python floats and bools, the default: the torch binding's values, with
its Python control flow) or an array namespace with the same functions (the JAX binding's, whose
values and flags may be traced under ``jax.jit``). A namespace provides ``inf``, ``sqrt``,
``isfinite``, ``isinf``, ``minimum``, ``maximum``, ``where(flag, a, b)`` (both branches are
computed: guard what is invalid on the branch not taken), ``logical_and``/``logical_or``/
``logical_not``, ``all``/``any`` over a sequence of flags and ``known(value)``: whether an
observable has a value (None, or NaN in an array state, means not yet measured).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any


class PythonMath:
    """The numeric namespace of Python floats: decisions are Python bools."""

    inf = math.inf
    sqrt = staticmethod(math.sqrt)
    isfinite = staticmethod(math.isfinite)
    isinf = staticmethod(math.isinf)
    minimum = staticmethod(min)
    maximum = staticmethod(max)
    all = staticmethod(all)
    any = staticmethod(any)

    @staticmethod
    def where(flag: Any, if_true: Any, if_false: Any) -> Any:
        return if_true if flag else if_false

    @staticmethod
    def logical_and(a: Any, b: Any) -> bool:
        return bool(a) and bool(b)

    @staticmethod
    def logical_or(a: Any, b: Any) -> bool:
        return bool(a) or bool(b)

    @staticmethod
    def logical_not(a: Any) -> bool:
        return not a

    @staticmethod
    def known(value: Any) -> bool:
        return value is not None


MATH = PythonMath()
"""The default namespace (Python floats)."""


def dal_step_size(cap: Any, rho: Any, power: float, xp: Any = MATH) -> Any:
    """DAL-p (Rosca et al., TMLR 2023): h = c / (1 + (c/2) ρ^p).

    ``cap`` is c (the group's lr), ``rho`` = ‖J_f f‖ / ‖f‖ the curvature of the field along itself.
    h tends to c where ρ → 0 and to 2/ρ^p (the edge of stability along f for p = 1) where ρ is large;
    ρ = inf gives h = 0.
    """
    if isinstance(rho, Real) and not rho >= 0.0:  # also rejects NaN (a traced ρ is not checked)
        raise ValueError(f"DAL: curvature estimate rho must be >= 0 and finite, got {rho!r}")
    infinite = xp.isinf(rho)
    finite_rho = xp.where(infinite, 0.0, rho)
    return xp.where(infinite, 0.0, cap / (1.0 + 0.5 * cap * finite_rho**power))


@dataclass(frozen=True)
class PIController:
    """Proportional–integral step-size controller (Gustafsson; Söderlind 2002).

    With ε_n the scaled error norm of step n (accept iff ε_n <= 1) and q the order of the error
    estimate, the next step is

        h_{n+1} = h_n · clip(safety · ε_n^(-α) · ε_{n-1}^(β), min_factor, max_factor),

    α = 0.7 / (q + 1), β = 0.4 / (q + 1) (Hairer & Wanner II, §IV.2). A rejected step never grows.
    """

    error_order: int
    safety: float = 0.9
    min_factor: float = 0.2
    max_factor: float = 10.0

    def __post_init__(self) -> None:
        if self.error_order < 1:
            raise ValueError(f"PIController: error_order must be >= 1, got {self.error_order}")
        if not 0.0 < self.safety <= 1.0:
            raise ValueError(f"PIController: safety must be in (0, 1], got {self.safety}")
        if not 0.0 < self.min_factor <= 1.0 <= self.max_factor:
            raise ValueError(
                "PIController: need 0 < min_factor <= 1 <= max_factor, got "
                f"min_factor={self.min_factor}, max_factor={self.max_factor}"
            )

    @property
    def alpha(self) -> float:
        return 0.7 / (self.error_order + 1)

    @property
    def beta(self) -> float:
        return 0.4 / (self.error_order + 1)

    def factor(self, error: Any, previous_error: Any, xp: Any = MATH) -> Any:
        """The ratio h_{n+1}/h_n after a step with scaled error ``error`` (accepted iff <= 1);
        ``previous_error`` None (or not :meth:`known`) has no integral term. NaN or a negative
        error gives min_factor, 0 gives max_factor."""
        valid = error >= 0.0  # False for NaN
        nonzero = error != 0.0
        usable = xp.where(xp.logical_and(valid, nonzero), error, 1.0)
        factor = self.safety * usable ** (-self.alpha)
        integral = previous_error is not None and previous_error > 0.0  # NaN: no integral term
        if integral is not False:
            previous = xp.where(integral, previous_error, 1.0)
            factor = xp.where(xp.logical_and(error <= 1.0, integral), factor * previous**self.beta, factor)
        factor = xp.where(error > 1.0, xp.minimum(factor, 1.0), factor)
        factor = xp.minimum(self.max_factor, xp.maximum(self.min_factor, factor))
        return xp.where(valid, xp.where(nonzero, factor, self.max_factor), self.min_factor)
