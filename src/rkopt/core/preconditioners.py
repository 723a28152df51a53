"""What both bindings declare about a diagonal preconditioner P_n (METHOD §2.1), written once.

A declaration is everything but the arithmetic: the value of the ``preconditioner`` key that
selects it, the param-group keys it reads (defaults and checks), the names of the parameter-sized
statistics it keeps, and its rules across keys. The PyTorch (``rkopt.DiagonalPreconditioner``) and
JAX (``rkopt.optax.Preconditioner``) classes of a shipped preconditioner inherit its declaration
from here and add only ``propose``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from rkopt.core.options import Option, real


class PreconditionerDeclaration:
    """The framework-neutral part of a preconditioner.

    Class attributes:
        name: the value of the ``preconditioner`` group key that selects it.
        options: param-group keys it reads, with their defaults and checks.
        statistics: names of the parameter-sized arrays it keeps in the optimizer state.
    """

    name: ClassVar[str]
    options: ClassVar[tuple[Option, ...]] = ()
    statistics: ClassVar[tuple[str, ...]] = ()

    def validate(self, group: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` if ``group``'s keys are invalid together (each key's own check has
        already passed)."""


class AdaGradDeclaration(PreconditionerDeclaration):
    """The paper's modified AdaGrad: G_n = Σ_{l<=n} q_1(θ_l)², P_n = (δ + G_n)^(-1/2)."""

    name = "adagrad"
    options = (Option("precond_delta", 1.0, real(0.0, low_open=True), doc="δ"),)
    statistics = ("sum_sq",)


class RMSPropDeclaration(PreconditionerDeclaration):
    """Adam/RMSProp second moment: v_n = β2 v_{n-1} + (1-β2) q_1², P_n = 1 / (√(v_n / (1 - β2ⁿ)) + ε)."""

    name = "rmsprop"
    options = (
        Option("precond_beta2", 0.999, real(0.0, 1.0, high_open=True), doc="β2"),
        Option("precond_eps", 1e-8, real(0.0, low_open=True), doc="ε"),
    )
    statistics = ("exp_avg_sq",)
