"""Optimizers by name: rkopt presets, any rkopt tableau, and torch.optim baselines.

Names resolve in this order: baselines (``sgd``, ``sgd-momentum``, ``adam``, ``adamw``), rkopt presets
(``rk4``, ``rk4-full``, ...), then tableau names and aliases (``heun``, ``rk38``, ``bs3``, ...), which
run as a plain :class:`rkopt.RungeKutta` with that tableau. :class:`TrackedOptimizer` gives all of
them the same counters: steps, gradient evaluations and the step size in use.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

import rkopt
from rkopt.bench.errors import ConfigError

BASELINES: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any], str]] = {
    "sgd": (torch.optim.SGD, {}, "torch.optim.SGD"),
    "sgd-momentum": (torch.optim.SGD, {"momentum": 0.9}, "torch.optim.SGD, momentum 0.9"),
    "adam": (torch.optim.Adam, {}, "torch.optim.Adam"),
    "adamw": (torch.optim.AdamW, {}, "torch.optim.AdamW (weight_decay 0.01)"),
}
"""Baselines: class, default keyword arguments, description."""

DEFAULT_LRS = {"sgd": 0.1, "sgd-momentum": 0.01, "adam": 1e-3, "adamw": 1e-3}
RUNGE_KUTTA_DEFAULT_LR = 0.1


def _tableau_name(name: str) -> str | None:
    try:
        return rkopt.get_tableau(name).name
    except ValueError:
        return None


def canonical_optimizer(name: str) -> str:
    """The canonical name of optimizer ``name`` (tableau aliases resolve); unknown names raise ConfigError."""
    if name in BASELINES or name in rkopt.PRESETS or name in rkopt.CHEBYSHEV_PRESETS:
        return name
    tableau = _tableau_name(name)
    if tableau is None:
        raise ConfigError(
            f"--optimizer: unknown optimizer {name!r}; valid: baselines {', '.join(BASELINES)}; "
            f"rkopt presets {', '.join([*rkopt.PRESETS, *rkopt.CHEBYSHEV_PRESETS])}; "
            f"or any tableau ({', '.join(rkopt.TABLEAUX)}) "
            "(`rkopt list optimizers` describes them)"
        )
    return tableau


def optimizer_catalog() -> dict[str, str]:
    """Every optimizer name with a one-line description, for ``rkopt list``."""
    catalog = {name: description for name, (_, _, description) in BASELINES.items()}
    for name, settings in rkopt.PRESETS.items():
        catalog[name] = "rkopt preset: " + ", ".join(f"{k}={v}" for k, v in settings.items())
    for name, order in rkopt.CHEBYSHEV_PRESETS.items():
        catalog[name] = (
            f"rkopt preset: Runge–Kutta–Chebyshev of order {order}, stages chosen each step from the "
            "spectral radius (--opt-arg stages=s fixes s)"
        )
    for name, tableau in rkopt.TABLEAUX.items():
        if name not in catalog:
            catalog[name] = (
                f"rkopt.RungeKutta(tableau={name!r}): {tableau.stages} stages, order {tableau.order}"
            )
    return catalog


def default_lr(name: str) -> float:
    """A sensible single learning rate (the cap for adaptive rkopt variants) for ``rkopt train``."""
    return DEFAULT_LRS.get(canonical_optimizer(name), RUNGE_KUTTA_DEFAULT_LR)


def build_optimizer(
    name: str, params: Iterable[Tensor], lr: float, options: Mapping[str, Any] | None = None
) -> torch.optim.Optimizer:
    """The optimizer ``name`` with learning rate ``lr`` and keyword ``options`` (``--opt-arg``)."""
    name = canonical_optimizer(name)
    options = dict(options or {})
    make: Callable[..., torch.optim.Optimizer]
    if name in BASELINES:
        cls, defaults, _ = BASELINES[name]
        make, options = cls, {**defaults, **options}
    elif name in rkopt.PRESETS or name in rkopt.CHEBYSHEV_PRESETS:
        make = functools.partial(rkopt.preset, name)
    else:
        make, options = rkopt.RungeKutta, {"tableau": name, **options}
    try:
        return make(params, lr=lr, **options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"--opt-arg / --lr for optimizer {name!r}: {err}") from err


def check_optimizer(name: str, lr: float, options: Mapping[str, Any]) -> None:
    """Raise ConfigError now, before any run starts, if this optimizer cannot be built."""
    build_optimizer(name, [torch.zeros(1, requires_grad=True)], lr, options)


class TrackedOptimizer:
    """Any optimizer behind one interface: ``step(closure)`` plus work counters and the step size."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.counters = getattr(optimizer, "counters", None)  # rkopt counts its own closure calls
        self._calls = 0

    @property
    def is_runge_kutta(self) -> bool:
        return self.counters is not None

    def step(self, closure: Callable[[], Tensor]) -> Tensor:
        """One optimizer step (rkopt: several closure calls on the same batch); the first call's loss."""
        loss = self.optimizer.step(closure)
        self._calls += 1
        return loss

    @property
    def steps(self) -> int:
        """Accepted steps (for rkopt, rejected attempts and skipped steps are not counted)."""
        return self.counters.steps if self.is_runge_kutta else self._calls

    @property
    def grad_evals(self) -> int:
        """Gradient evaluations: closure calls (a baseline step costs one)."""
        return self.counters.grad_evals if self.is_runge_kutta else self._calls

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def step_size(self) -> float:
        """The step size h used by the last step (the lr for baselines and before the first step)."""
        h = self.optimizer.param_groups[0].get("h")
        return self.lr if h is None else float(h)

    @property
    def rejected_steps(self) -> int:
        return self.counters.rejected_steps if self.is_runge_kutta else 0

    @property
    def skipped_steps(self) -> int:
        return self.counters.skipped_steps if self.is_runge_kutta else 0
