"""Diagonal preconditioners P_n in JAX (METHOD §2.1), declared once for both bindings.

A shipped JAX preconditioner inherits its name, option declarations (defaults and checks),
statistics and cross-key validation from :mod:`rkopt.core.preconditioners`, as the torch class of
the same name does; only the arithmetic is written here. P_n is computed from the stage-1 q and
frozen for the step; the statistics after the step are proposed and committed only if the step is
accepted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
from jax import lax

from rkopt.core.options import Option
from rkopt.core.preconditioners import AdaGradDeclaration, PreconditionerDeclaration, RMSPropDeclaration

Leaves = list[Any]


class Preconditioner(PreconditionerDeclaration):
    """A diagonal P_n over the leaves of the parameters.

    Class attributes (:class:`~rkopt.core.preconditioners.PreconditionerDeclaration`): ``name``,
    ``options`` and ``statistics``; ``validate`` checks a group's keys together.
    """

    def propose(
        self, group: Mapping[str, Any], steps: Any, q: Leaves, statistics: Sequence[Leaves]
    ) -> tuple[list[Leaves], Leaves]:
        """(the statistics after this step, P_n) from the stage-1 ``q``; ``steps`` (>= 1) is how
        many steps the statistics will have seen."""
        raise NotImplementedError


class AdaGrad(AdaGradDeclaration, Preconditioner):
    """G_n = G_{n-1} + q_1², P_n = (δ + G_n)^(-1/2)."""

    def propose(self, group, steps, q, statistics):
        (sum_sq,) = statistics
        new = [s + x * x for s, x in zip(sum_sq, q, strict=True)]
        return [new], [lax.rsqrt(s + group["precond_delta"]) for s in new]


class RMSProp(RMSPropDeclaration, Preconditioner):
    """v_n = β2 v_{n-1} + (1-β2) q_1², P_n = 1 / (√(v_n / (1 - β2ⁿ)) + ε)."""

    def propose(self, group, steps, q, statistics):
        beta2, (exp_avg_sq,) = group["precond_beta2"], statistics
        new = [beta2 * v + (1.0 - beta2) * (x * x) for v, x in zip(exp_avg_sq, q, strict=True)]
        correction = 1.0 / (1.0 - jnp.power(beta2, steps))
        scale = [1.0 / (jnp.sqrt(v * correction.astype(v.dtype)) + group["precond_eps"]) for v in new]
        return [new], scale


PRECONDITIONERS: dict[str, Preconditioner] = {}
"""Registered JAX preconditioners by name."""


def register_preconditioner(preconditioner: Preconditioner) -> Preconditioner:
    """Make ``preconditioner=<its name>`` select ``preconditioner`` in
    :func:`rkopt.optax.runge_kutta`."""
    if not isinstance(preconditioner, Preconditioner):
        raise TypeError("register_preconditioner expects an rkopt.optax.Preconditioner instance")
    PRECONDITIONERS[preconditioner.name] = preconditioner
    return preconditioner


def get_preconditioner(name: Any) -> Preconditioner | None:
    """The JAX preconditioner called ``name`` (None for none); otherwise the torch binding's error,
    word for word."""
    if name is None or (isinstance(name, str) and name in PRECONDITIONERS):
        return PRECONDITIONERS.get(name)
    names = ", ".join(["None", *sorted(PRECONDITIONERS)])
    hint = "register your own with rkopt.register_preconditioner"
    raise ValueError(f"unknown preconditioner {name!r}; valid: {names} ({hint})")


PRECONDITIONER_OPTION = Option(
    "preconditioner",
    None,
    lambda _, v: get_preconditioner(v),
    True,
    "None or a registered preconditioner's name",
)
"""The ``preconditioner`` key (as the torch binding's, over this registry)."""

register_preconditioner(AdaGrad())
register_preconditioner(RMSProp())
