"""rkopt inside other libraries' training stacks (each submodule imports its library lazily).

- :mod:`rkopt.integrations.transformers`: :class:`RungeKuttaTrainer`, a Hugging Face
  ``transformers.Trainer`` that takes every evaluation of a Runge–Kutta step on the same batch.
- :mod:`rkopt.integrations.registry`: rkopt's presets by name in timm's ``create_optimizer_v2``
  and pytorch_optimizer's ``create_optimizer`` / ``load_optimizer``.

Neither library is a dependency of rkopt; importing this package imports neither.
"""

from __future__ import annotations

from typing import Any

from rkopt.torch.runge_kutta import RungeKutta


def unwrap_optimizer(optimizer: Any) -> RungeKutta:
    """The rkopt optimizer inside ``optimizer``, following ``.optimizer`` links (accelerate's
    ``AcceleratedOptimizer``, Lightning's ``LightningOptimizer``, DeepSpeed wrappers).

    Wrappers copy or hide the attributes that change during a step (``evaluation_index``,
    ``step_complete``), so read them from the object this returns. Raises ``TypeError`` when there
    is no rkopt optimizer inside.
    """
    found, inner, seen = None, optimizer, set()
    while inner is not None and id(inner) not in seen:  # the innermost rkopt optimizer wins
        seen.add(id(inner))
        if isinstance(inner, RungeKutta):
            found = inner
        inner = getattr(inner, "optimizer", None)
    if found is None:
        raise TypeError(f"expected an rkopt optimizer (or a wrapper of one), got {type(optimizer)!r}")
    return found


__all__ = ["unwrap_optimizer"]
