"""``RungeKutta`` with a fixed tableau, under the names users look for."""

from __future__ import annotations

from typing import Any

from rkopt.torch.runge_kutta import RungeKutta


def _fixed_tableau(class_name: str, tableau: str, summary: str) -> type[RungeKutta]:
    def __init__(self: RungeKutta, params: Any, lr: float, **kwargs: Any) -> None:
        if "tableau" in kwargs:
            raise TypeError(f"{class_name} fixes tableau={tableau!r}; use rkopt.RungeKutta to choose one")
        RungeKutta.__init__(self, params, lr, tableau=tableau, **kwargs)

    doc = f"{summary}\n\n``rkopt.RungeKutta(params, lr, tableau={tableau!r}, **kwargs)``; see RungeKutta."
    return type(class_name, (RungeKutta,), {"__init__": __init__, "__doc__": doc, "__module__": __name__})


Euler = _fixed_tableau(
    "Euler", "euler", "Explicit Euler on the gradient flow: gradient descent (= torch.optim.SGD)."
)
Midpoint = _fixed_tableau(
    "Midpoint", "midpoint", "The explicit midpoint rule (2 gradient evaluations per step)."
)
Heun = _fixed_tableau(
    "Heun", "heun", "Heun's method, the explicit trapezoidal rule (2 evaluations per step)."
)
RK4 = _fixed_tableau("RK4", "rk4", "The classic fourth-order Runge–Kutta method (4 evaluations per step).")
DormandPrince = _fixed_tableau(
    "DormandPrince", "dormand_prince", "Dormand–Prince 5(4) (7 evaluations per step; pair for error control)."
)
