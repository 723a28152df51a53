"""Step-size rules that do not depend on a framework: DAL-p and the PI error controller."""

from __future__ import annotations

import math
from dataclasses import dataclass


def dal_step_size(cap: float, rho: float, power: float) -> float:
    """DAL-p (Rosca et al., TMLR 2023): h = c / (1 + (c/2) ρ^p).

    ``cap`` is c (the group's lr), ``rho`` = ‖J_f f‖ / ‖f‖ the curvature of the field along itself.
    h tends to c where ρ → 0 and to 2/ρ^p (the edge of stability along f for p = 1) where ρ is large.
    """
    if not rho >= 0.0:  # also rejects NaN
        raise ValueError(f"DAL: curvature estimate rho must be >= 0 and finite, got {rho!r}")
    if math.isinf(rho):
        return 0.0
    return cap / (1.0 + 0.5 * cap * rho**power)


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

    def factor(self, error: float, previous_error: float | None) -> float:
        """The ratio h_{n+1}/h_n after a step with scaled error ``error`` (accepted iff <= 1)."""
        if not error >= 0.0:  # NaN or negative
            return self.min_factor
        if error == 0.0:
            return self.max_factor
        factor = self.safety * error ** (-self.alpha)
        if error <= 1.0 and previous_error is not None and previous_error > 0.0:
            factor *= previous_error**self.beta
        if error > 1.0:
            factor = min(factor, 1.0)
        return min(self.max_factor, max(self.min_factor, factor))
