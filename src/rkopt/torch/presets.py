"""``rkopt.preset``: a :class:`RungeKutta` configured by name (the presets: :mod:`rkopt.core.presets`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from rkopt.core.chebyshev import ChebyshevMethod
from rkopt.core.presets import CHEBYSHEV_PRESETS, PRESETS
from rkopt.torch.runge_kutta import RungeKutta


def preset(
    name: str,
    params: Iterable[Tensor] | Iterable[dict[str, Any]],
    lr: float,
    *,
    stages: int | None = None,
    damping: float | None = None,
    **overrides: Any,
) -> RungeKutta:
    """A :class:`RungeKutta` configured as preset ``name``; ``overrides`` replace its settings.

    ``stages`` and ``damping`` configure the Runge–Kutta–Chebyshev presets (``rkc1``, ``rkc2``).
    """
    if name in CHEBYSHEV_PRESETS:
        if stages is None:
            raise ValueError(
                f"preset {name!r} needs stages=s, the number of evaluations per step (stable for "
                "h·λ_max up to β(s), see rkopt.core.chebyshev); choosing s automatically from the "
                "spectral radius is not available yet"
            )
        method = ChebyshevMethod(CHEBYSHEV_PRESETS[name], stages, damping)
        return RungeKutta(params, lr, tableau=method, **overrides)
    if name not in PRESETS:
        valid = ", ".join([*PRESETS, *CHEBYSHEV_PRESETS])
        raise ValueError(f"unknown preset {name!r}; valid presets: {valid}")
    if stages is not None or damping is not None:
        raise TypeError(f"stages and damping configure the rkc presets, not {name!r}")
    return RungeKutta(params, lr, **{**PRESETS[name], **overrides})
