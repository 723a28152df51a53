"""rkopt's presets by name in timm's and pytorch_optimizer's optimizer factories.

    from rkopt.integrations.registry import register_with_timm, register_with_pytorch_optimizer
    register_with_timm()
    optimizer = timm.optim.create_optimizer_v2(model, opt="rkopt-rk4", lr=0.1)
    register_with_pytorch_optimizer()
    optimizer = pytorch_optimizer.create_optimizer(model, "rkopt-rk4", lr=0.1)

One name per preset of :data:`rkopt.PRESETS`: ``rkopt-`` + the preset's name (``rkopt-euler``,
``rkopt-rk4``, ``rkopt-rk4-full``, ``rkopt-dopri5-adaptive``, …). The names use hyphens because
timm splits an optimizer name at ``_`` and looks up the last part only (``lookahead_adamw`` is
AdamW inside Lookahead), so ``rkopt_rk4`` would resolve to ``rk4``. Each name maps to a class
(:class:`PresetOptimizer` subclass, e.g. :class:`Rk4Preset`) that is :class:`rkopt.RungeKutta`
with the preset's settings as defaults; keyword arguments of the factories override them. The
optimizers are in closure mode (``step(closure)``, the safe default: a loop that calls ``step()``
without one gets an error that says what to do); pass ``stagewise=True`` for loops that call
``step()`` after each backward, and feed them each batch until ``step_complete``
(:func:`rkopt.repeat_batches`).

timm injects ``momentum=0.9`` into optimizers it knows to have momentum; only the presets with
momentum (``rkopt-rk4-momentum``, ``rkopt-rk4-full``) are registered so, and timm's ``momentum``
argument is ignored for the others (they stay plain Runge–Kutta).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from torch import Tensor

from rkopt.torch.presets import PRESETS
from rkopt.torch.runge_kutta import RungeKutta

PREFIX = "rkopt-"


class PresetOptimizer(RungeKutta):
    """:class:`rkopt.RungeKutta` configured as the preset :attr:`preset`; keywords override it."""

    preset: str = ""

    def __init__(
        self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float | None = None, **overrides: Any
    ) -> None:
        if lr is None:
            raise TypeError(
                f"{type(self).__name__} (rkopt preset {self.preset!r}) needs a learning rate: pass lr=..."
            )
        RungeKutta.__init__(self, params, lr, **{**PRESETS[self.preset], **overrides})


def _class_name(preset: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[-_]", preset) if part) + "Preset"


PRESET_CLASSES: dict[str, type[PresetOptimizer]] = {}
"""Registered name (``rkopt-<preset>``) → its optimizer class, one per preset."""


def _build_classes() -> dict[str, type[PresetOptimizer]]:
    for name in PRESETS:
        key = PREFIX + name.lower()
        if key in PRESET_CLASSES:
            continue
        class_name = _class_name(name)
        cls = type(
            class_name,
            (PresetOptimizer,),
            {
                "preset": name,
                "__module__": __name__,
                "__qualname__": class_name,
                "__doc__": f"rkopt.preset({name!r}, params, lr, **overrides) as a class: {PRESETS[name]}.",
            },
        )
        globals()[class_name] = cls  # importable by name, so instances pickle
        PRESET_CLASSES[key] = cls
    return PRESET_CLASSES


_build_classes()


def _has_momentum(preset: str) -> bool:
    return float(PRESETS[preset].get("momentum", 0.0)) != 0.0


def register_with_timm(registry: Any = None) -> list[str]:
    """Register every preset in timm's optimizer registry (``timm.optim._optim_factory.default_registry``
    unless ``registry`` is given) and return the names; idempotent."""
    from timm.optim._optim_factory import OptimInfo, default_registry

    registry = default_registry if registry is None else registry
    for key, cls in _build_classes().items():
        try:
            if registry.get_optimizer_info(key).opt_class is cls:
                continue  # already registered (no "overwriting" warning)
        except ValueError:
            pass
        registry.register(
            OptimInfo(
                name=key,
                opt_class=cls,
                description=f"rkopt preset {cls.preset!r}: Runge–Kutta on the gradient flow "
                "(closure mode; stagewise=True for step() without a closure)",
                has_eps=False,
                has_momentum=_has_momentum(cls.preset),
                has_betas=False,
            )
        )
    return list(PRESET_CLASSES)


def register_with_pytorch_optimizer() -> list[str]:
    """Add every preset to pytorch_optimizer's name table (``pytorch_optimizer.optimizer.OPTIMIZERS``,
    read by ``load_optimizer``, ``create_optimizer`` and ``get_supported_optimizers``; the library
    has no registration function) and return the names; idempotent."""
    from pytorch_optimizer.optimizer import OPTIMIZERS

    OPTIMIZERS.update(_build_classes())
    return list(PRESET_CLASSES)


def register_all() -> dict[str, list[str]]:
    """Register with each of timm and pytorch_optimizer that is installed; returns what was done."""
    done: dict[str, list[str]] = {}
    for library, register in (
        ("timm", register_with_timm),
        ("pytorch_optimizer", register_with_pytorch_optimizer),
    ):
        try:
            done[library] = register()
        except ImportError:
            continue
    return done


__all__ = [
    "PREFIX",
    "PRESET_CLASSES",
    "PresetOptimizer",
    "register_all",
    "register_with_pytorch_optimizer",
    "register_with_timm",
]
