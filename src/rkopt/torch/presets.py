"""``rkopt.preset``: a :class:`RungeKutta` configured by name (the presets: :mod:`rkopt.core.presets`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from rkopt.core.chebyshev import ChebyshevMethod
from rkopt.core.plan import Method
from rkopt.core.presets import CHEBYSHEV_PRESETS, PRESETS
from rkopt.core.spectral import AutoChebyshev, AutoStages
from rkopt.torch.runge_kutta import RungeKutta


def preset(
    name: str,
    params: Iterable[Tensor] | Iterable[dict[str, Any]],
    lr: float,
    *,
    stages: int | AutoStages | None = None,
    damping: float | None = None,
    **overrides: Any,
) -> RungeKutta:
    """A :class:`RungeKutta` configured as preset ``name``; ``overrides`` replace its settings.

    ``stages`` and ``damping`` configure the Runge–Kutta–Chebyshev presets (``rkc1``, ``rkc2``):
    ``stages=s`` fixes s; omitted (or an :class:`rkopt.AutoStages`), s is chosen each step from an
    estimate of the spectral radius (:mod:`rkopt.core.spectral`).
    """
    if name in CHEBYSHEV_PRESETS:
        return RungeKutta(params, lr, tableau=chebyshev_method(name, stages, damping), **overrides)
    if name not in PRESETS:
        valid = ", ".join([*PRESETS, *CHEBYSHEV_PRESETS])
        raise ValueError(f"unknown preset {name!r}; valid presets: {valid}")
    if stages is not None or damping is not None:
        raise TypeError(f"stages and damping configure the rkc presets, not {name!r}")
    return RungeKutta(params, lr, **{**PRESETS[name], **overrides})


def chebyshev_method(name: str, stages: int | AutoStages | None, damping: float | None) -> Method:
    """The solver of Chebyshev preset ``name``: s fixed (an int) or chosen each step."""
    order = CHEBYSHEV_PRESETS[name]
    if stages is None or isinstance(stages, AutoStages):
        return AutoChebyshev(order, damping, stages or AutoStages())
    return ChebyshevMethod(order, stages, damping)
