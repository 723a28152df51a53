"""rkopt: explicit Runge–Kutta methods on the gradient flow dθ/dt = -∇L(θ) as optimizers.

The solver core (:mod:`rkopt.core`) is pure Python; the PyTorch optimizer lives in
:mod:`rkopt.torch` and is re-exported here.
"""

from rkopt.core import ALIASES, TABLEAUX, ButcherTableau, PIController, dal_step_size, get_tableau
from rkopt.torch import (
    PRESETS,
    RK4,
    AdaGrad,
    Counters,
    DiagonalPreconditioner,
    DormandPrince,
    Euler,
    Heun,
    Midpoint,
    NonFiniteStepError,
    RMSProp,
    RungeKutta,
    StepRejectedError,
    frozen_buffers,
    is_first_evaluation,
    preset,
    register_preconditioner,
)

__version__ = "0.1.0"

__all__ = [
    "ALIASES",
    "PRESETS",
    "RK4",
    "TABLEAUX",
    "AdaGrad",
    "ButcherTableau",
    "Counters",
    "DiagonalPreconditioner",
    "DormandPrince",
    "Euler",
    "Heun",
    "Midpoint",
    "NonFiniteStepError",
    "PIController",
    "RMSProp",
    "RungeKutta",
    "StepRejectedError",
    "__version__",
    "dal_step_size",
    "frozen_buffers",
    "get_tableau",
    "is_first_evaluation",
    "preset",
    "register_preconditioner",
]
