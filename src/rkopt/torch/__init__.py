"""The PyTorch binding: the Runge–Kutta optimizer and its pieces."""

from rkopt.torch.aliases import RK4, DormandPrince, Euler, Heun, Midpoint
from rkopt.torch.preconditioners import (
    AdaGrad,
    DiagonalPreconditioner,
    RMSProp,
    get_preconditioner,
    register_preconditioner,
)
from rkopt.torch.presets import PRESETS, preset
from rkopt.torch.runge_kutta import (
    Counters,
    NonFiniteStepError,
    RungeKutta,
    StepRejectedError,
)
from rkopt.torch.running_stats import frozen_buffers, is_first_evaluation
from rkopt.torch.step_size import POLICIES, DriftAdjusted, ErrorControl, StepSizePolicy

__all__ = [
    "POLICIES",
    "PRESETS",
    "RK4",
    "AdaGrad",
    "Counters",
    "DiagonalPreconditioner",
    "DormandPrince",
    "DriftAdjusted",
    "ErrorControl",
    "Euler",
    "Heun",
    "Midpoint",
    "NonFiniteStepError",
    "RMSProp",
    "RungeKutta",
    "StepRejectedError",
    "StepSizePolicy",
    "frozen_buffers",
    "get_preconditioner",
    "is_first_evaluation",
    "preset",
    "register_preconditioner",
]
