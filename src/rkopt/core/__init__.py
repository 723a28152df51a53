"""Framework-neutral solver core: Butcher tableaux, order conditions, the step plan, options and
step-size policies (pure Python)."""

from rkopt.core.chebyshev import ChebyshevMethod
from rkopt.core.control import PIController, dal_step_size
from rkopt.core.options import Option, OptionTable
from rkopt.core.plan import GroupPlan, StepPlan
from rkopt.core.policies import (
    POLICIES,
    Attempt,
    DriftAdjusted,
    ErrorControl,
    PolicyNeeds,
    ProbeRequest,
    ProbeResult,
    StepSizePolicy,
    Verdict,
    get_policy,
    register_policy,
)
from rkopt.core.spectral import AutoChebyshev, AutoStages
from rkopt.core.tableau import ButcherTableau
from rkopt.core.tableaux import ALIASES, TABLEAUX, get_tableau

__all__ = [
    "ALIASES",
    "POLICIES",
    "TABLEAUX",
    "Attempt",
    "AutoChebyshev",
    "AutoStages",
    "ButcherTableau",
    "ChebyshevMethod",
    "DriftAdjusted",
    "ErrorControl",
    "GroupPlan",
    "Option",
    "OptionTable",
    "PIController",
    "PolicyNeeds",
    "ProbeRequest",
    "ProbeResult",
    "StepPlan",
    "StepSizePolicy",
    "Verdict",
    "dal_step_size",
    "get_policy",
    "get_tableau",
    "register_policy",
]
