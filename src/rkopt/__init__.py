"""rkopt: explicit Runge–Kutta methods on the gradient flow dθ/dt = -∇L(θ) as optimizers.

The solver core (:mod:`rkopt.core`: tableaux, the step plan, options, step-size policies) is pure
Python; the PyTorch optimizer lives in :mod:`rkopt.torch` and is re-exported here, imported on first
use so that ``import rkopt.optax`` (which runs this file) never imports torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rkopt.core import (
    ALIASES,
    POLICIES,
    TABLEAUX,
    Attempt,
    AutoChebyshev,
    AutoStages,
    ButcherTableau,
    ChebyshevMethod,
    Option,
    PIController,
    PolicyNeeds,
    ProbeRequest,
    ProbeResult,
    StepPlan,
    StepSizePolicy,
    Verdict,
    dal_step_size,
    get_tableau,
    register_policy,
)

if TYPE_CHECKING:
    from rkopt.torch import (
        CHEBYSHEV_PRESETS,
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
        ScaledStep,
        StaleGradientError,
        StepInProgressError,
        StepRejectedError,
        frozen_buffers,
        is_first_evaluation,
        preset,
        register_preconditioner,
        repeat_batches,
    )

__version__ = "0.1.0"

__all__ = [
    "ALIASES",
    "CHEBYSHEV_PRESETS",
    "POLICIES",
    "PRESETS",
    "RK4",
    "TABLEAUX",
    "AdaGrad",
    "Attempt",
    "AutoChebyshev",
    "AutoStages",
    "ButcherTableau",
    "ChebyshevMethod",
    "Counters",
    "DiagonalPreconditioner",
    "DormandPrince",
    "Euler",
    "Heun",
    "Midpoint",
    "NonFiniteStepError",
    "Option",
    "PIController",
    "PolicyNeeds",
    "ProbeRequest",
    "ProbeResult",
    "RMSProp",
    "RungeKutta",
    "ScaledStep",
    "StaleGradientError",
    "StepInProgressError",
    "StepPlan",
    "StepRejectedError",
    "StepSizePolicy",
    "Verdict",
    "__version__",
    "dal_step_size",
    "frozen_buffers",
    "get_tableau",
    "is_first_evaluation",
    "preset",
    "register_policy",
    "register_preconditioner",
    "repeat_batches",
]


def __getattr__(name: str) -> Any:
    """The PyTorch binding (``rkopt.torch``) and its exports, imported the first time one is read."""
    if name != "torch" and name not in __all__:
        raise AttributeError(f"module 'rkopt' has no attribute {name!r}")
    binding = importlib.import_module("rkopt.torch")
    if name == "torch":
        return binding
    globals()[name] = value = getattr(binding, name)
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
