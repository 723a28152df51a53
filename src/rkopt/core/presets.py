"""Named configurations of the Runge–Kutta optimizers, shared by every binding.

| preset            | tableau          | preconditioner       | lr_policy            | momentum |
|-------------------|------------------|----------------------|----------------------|----------|
| `euler`           | euler            | –                    | fixed (= SGD)        | 0        |
| `rk4`             | rk4              | –                    | fixed                | 0        |
| `rk4-precond`     | rk4              | adagrad, δ = 1       | fixed                | 0        |
| `rk4-dal`         | rk4              | –                    | dal, p = 1, free ρ   | 0        |
| `rk4-momentum`    | rk4              | –                    | fixed                | 0.9      |
| `rk4-full`        | rk4              | adagrad, δ = 1       | dal, p = 1, free ρ   | 0.9      |
| `dopri5-adaptive` | dormand_prince   | –                    | error_control        | 0        |

δ = 1 is the paper's choice; p = 1 makes 2/ρ the limit of h in sharp regions (the edge of
stability along the gradient); β = 0.9 and the error tolerances (atol = 1e-5, rtol = 1e-2) are ours.
In the adaptive presets lr is the cap on h.

The stabilized presets ``rkc1`` (first-order damped Runge–Kutta–Chebyshev, ε = 0.05) and ``rkc2``
(second order, ε = 2/13) take ``stages=s`` and optionally ``damping=ε``: s evaluations per step,
stable for h·λ_max up to β(s) ≈ 1.94 s² (rkc1) or ≈ 0.65 s² (rkc2) on the gradient flow's real
spectrum, with 3 (rkc1) or 4 (rkc2) parameter-sized buffers whatever s.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "euler": {"tableau": "euler"},
    "rk4": {"tableau": "rk4"},
    "rk4-precond": {"tableau": "rk4", "preconditioner": "adagrad", "precond_delta": 1.0},
    "rk4-dal": {"tableau": "rk4", "lr_policy": "dal", "dal_power": 1.0, "dal_estimator": "free"},
    "rk4-momentum": {"tableau": "rk4", "momentum": 0.9},
    "rk4-full": {
        "tableau": "rk4",
        "preconditioner": "adagrad",
        "precond_delta": 1.0,
        "lr_policy": "dal",
        "dal_power": 1.0,
        "dal_estimator": "free",
        "momentum": 0.9,
    },
    "dopri5-adaptive": {
        "tableau": "dormand_prince",
        "lr_policy": "error_control",
        "atol": 1e-5,
        "rtol": 1e-2,
    },
}
"""Every preset's keyword arguments to :class:`RungeKutta`."""

CHEBYSHEV_PRESETS: dict[str, int] = {"rkc1": 1, "rkc2": 2}
"""The Runge–Kutta–Chebyshev presets and their order."""
