"""The PyTorch binding: the Runge–Kutta optimizer and its pieces."""

from rkopt.core.errors import (
    Counters,
    NonFiniteStepError,
    StaleGradientError,
    StepInProgressError,
    StepRejectedError,
)
from rkopt.torch.aliases import RK4, DormandPrince, Euler, Heun, Midpoint
from rkopt.torch.amp import ScaledStep
from rkopt.torch.config import group_options
from rkopt.torch.preconditioners import (
    AdaGrad,
    DiagonalPreconditioner,
    RMSProp,
    get_preconditioner,
    register_preconditioner,
)
from rkopt.torch.presets import CHEBYSHEV_PRESETS, PRESETS, preset
from rkopt.torch.runge_kutta import RungeKutta
from rkopt.torch.running_stats import frozen_buffers, is_first_evaluation
from rkopt.torch.stagewise import repeat_batches
from rkopt.torch.update_rules import HeavyBall, Nesterov, PlainUpdate, UpdateRule

__all__ = [
    "CHEBYSHEV_PRESETS",
    "PRESETS",
    "RK4",
    "AdaGrad",
    "Counters",
    "DiagonalPreconditioner",
    "DormandPrince",
    "Euler",
    "HeavyBall",
    "Heun",
    "Midpoint",
    "Nesterov",
    "NonFiniteStepError",
    "PlainUpdate",
    "RMSProp",
    "RungeKutta",
    "ScaledStep",
    "StaleGradientError",
    "StepInProgressError",
    "StepRejectedError",
    "UpdateRule",
    "frozen_buffers",
    "get_preconditioner",
    "group_options",
    "is_first_evaluation",
    "preset",
    "register_preconditioner",
    "repeat_batches",
]
