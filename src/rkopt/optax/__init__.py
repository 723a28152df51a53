"""The JAX/optax binding: the same Runge–Kutta solvers, plans and policies as ``rkopt.RungeKutta``.

Needs ``jax`` and ``optax`` (``pip install "rkopt[jax]"``); ``import rkopt`` never imports them.
See docs/optax.md.
"""

try:
    import jax  # noqa: F401
    import optax  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'rkopt.optax needs jax and optax: pip install "jax[cpu]" optax (or rkopt[jax])'
    ) from error

from rkopt.optax.config import options
from rkopt.optax.numeric import JAX_MATH, JaxMath
from rkopt.optax.preconditioners import (
    PRECONDITIONERS,
    AdaGrad,
    Preconditioner,
    RMSProp,
    get_preconditioner,
    register_preconditioner,
)
from rkopt.optax.transform import OBSERVABLES, RungeKuttaState, preset, runge_kutta

__all__ = [
    "JAX_MATH",
    "OBSERVABLES",
    "PRECONDITIONERS",
    "AdaGrad",
    "JaxMath",
    "Preconditioner",
    "RMSProp",
    "RungeKuttaState",
    "get_preconditioner",
    "options",
    "preset",
    "register_preconditioner",
    "runge_kutta",
]
