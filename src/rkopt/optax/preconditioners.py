"""Diagonal preconditioners P_n in JAX (METHOD §2.1), declared once for both bindings.

A JAX preconditioner's ``spec`` is the ``rkopt.DiagonalPreconditioner`` of the same name: its
name, option declarations (defaults and checks), statistics and cross-key validation are read from
there, never copied; only the arithmetic is written here. P_n is computed from the stage-1 q and
frozen for the step; the statistics after the step are proposed and committed only if the step is
accepted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import jax.numpy as jnp
from jax import lax

import rkopt  # the public API: the declarations of the shipped preconditioners
from rkopt.core.options import Option

Leaves = list[Any]


class Preconditioner:
    """A diagonal P_n over the leaves of the parameters.

    Class attributes:
        spec: the ``rkopt.DiagonalPreconditioner`` subclass declaring its ``name``, ``options``,
            ``statistics`` and ``validate``.
    """

    spec: ClassVar[type]
    name: ClassVar[str]
    options: ClassVar[tuple[Option, ...]]
    statistics: ClassVar[tuple[str, ...]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.name, cls.options, cls.statistics = cls.spec.name, cls.spec.options, cls.spec.statistics

    def validate(self, group: Mapping[str, Any]) -> None:
        self.spec.validate(self.spec, group)

    def propose(
        self, group: Mapping[str, Any], steps: Any, q: Leaves, statistics: Sequence[Leaves]
    ) -> tuple[list[Leaves], Leaves]:
        """(the statistics after this step, P_n) from the stage-1 ``q``; ``steps`` (>= 1) is how
        many steps the statistics will have seen."""
        raise NotImplementedError


class AdaGrad(Preconditioner):
    """G_n = G_{n-1} + q_1², P_n = (δ + G_n)^(-1/2)."""

    spec = rkopt.AdaGrad

    def propose(self, group, steps, q, statistics):
        (sum_sq,) = statistics
        new = [s + x * x for s, x in zip(sum_sq, q, strict=True)]
        return [new], [lax.rsqrt(s + group["precond_delta"]) for s in new]


class RMSProp(Preconditioner):
    """v_n = β2 v_{n-1} + (1-β2) q_1², P_n = 1 / (√(v_n / (1 - β2ⁿ)) + ε)."""

    spec = rkopt.RMSProp

    def propose(self, group, steps, q, statistics):
        beta2, (exp_avg_sq,) = group["precond_beta2"], statistics
        new = [beta2 * v + (1.0 - beta2) * (x * x) for v, x in zip(exp_avg_sq, q, strict=True)]
        correction = 1.0 / (1.0 - jnp.power(beta2, steps))
        scale = [1.0 / (jnp.sqrt(v * correction.astype(v.dtype)) + group["precond_eps"]) for v in new]
        return [new], scale


PRECONDITIONERS: dict[str, Preconditioner] = {}
"""Registered JAX preconditioners by name."""


def register_preconditioner(preconditioner: Preconditioner) -> Preconditioner:
    """Make ``preconditioner=<its spec's name>`` select ``preconditioner`` in
    :func:`rkopt.optax.runge_kutta`."""
    if not isinstance(preconditioner, Preconditioner):
        raise TypeError("register_preconditioner expects an rkopt.optax.Preconditioner instance")
    PRECONDITIONERS[preconditioner.name] = preconditioner
    return preconditioner


def get_preconditioner(name: Any) -> Preconditioner | None:
    """The JAX preconditioner called ``name`` (None for none); otherwise the torch binding's error
    (a new preconditioner is declared there first, with ``rkopt.register_preconditioner``)."""
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
