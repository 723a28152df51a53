"""Diagonal preconditioners P_n for the flow dθ/dt = -P_n ∇L(θ) (METHOD §2.1).

P_n is computed once per step from the stage-1 gradient q_1 = ∇L(θ_n) (including coupled weight
decay) and frozen for every stage of that step. A preconditioner never writes optimizer state
during a step: it proposes the statistics after the step into buffers the optimizer provides and
the optimizer commits them only once the step is accepted, so a failed step changes nothing.

To add one, subclass :class:`DiagonalPreconditioner` and :func:`register_preconditioner` it; its
``options`` become param-group keys.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

from rkopt.core.options import Option
from rkopt.core.preconditioners import AdaGradDeclaration, PreconditionerDeclaration, RMSPropDeclaration
from rkopt.torch._ops import TensorListOps, Tensors


class DiagonalPreconditioner(PreconditionerDeclaration, ABC):
    """A diagonal P_n built from running statistics of stage-1 gradients.

    Class attributes (:class:`~rkopt.core.preconditioners.PreconditionerDeclaration`):
        name: the value of the ``preconditioner`` group key that selects it.
        options: param-group keys it reads, with their defaults and checks.
        statistics: names of the parameter-sized tensors it keeps in the optimizer state.
    """

    @abstractmethod
    def propose(
        self,
        ops: TensorListOps,
        group: Mapping[str, Any],
        steps: Sequence[int],
        gradient: Tensors,
        statistics: Sequence[Tensors],
        proposed: Sequence[Tensors],
        scale: Tensors,
    ) -> None:
        """Write the statistics after this step into ``proposed`` and P_n into ``scale``.

        ``steps`` holds, per parameter, how many steps the statistics will have seen (>= 1);
        ``statistics`` and ``proposed`` hold one tensor list per name in :attr:`statistics`.
        ``statistics`` must not be modified.
        """


class AdaGrad(AdaGradDeclaration, DiagonalPreconditioner):
    """The paper's modified AdaGrad: G_n = Σ_{l<=n} q_1(θ_l)², P_n = (δ + G_n)^(-1/2).

    δ (``precond_delta``, default 1 as in the paper) makes P_n <= 1: it can only shrink steps.
    """

    def propose(self, ops, group, steps, gradient, statistics, proposed, scale) -> None:
        (sum_sq,), (new_sum_sq,) = statistics, proposed
        ops.addcmul_into(new_sum_sq, sum_sq, gradient, gradient, 1.0)
        ops.add_scalar_into(scale, new_sum_sq, group["precond_delta"])
        ops.rsqrt_(scale)


class RMSProp(RMSPropDeclaration, DiagonalPreconditioner):
    """Adam/RMSProp second moment: v_n = β2 v_{n-1} + (1-β2) q_1², v̂_n = v_n / (1 - β2^n),
    P_n = 1 / (√v̂_n + ε)."""

    def propose(self, ops, group, steps, gradient, statistics, proposed, scale) -> None:
        beta2 = group["precond_beta2"]
        (exp_avg_sq,), (new_exp_avg_sq,) = statistics, proposed
        ops.scale_into(new_exp_avg_sq, exp_avg_sq, beta2)
        ops.addcmul_(new_exp_avg_sq, gradient, gradient, 1.0 - beta2)
        ops.copy_(scale, new_exp_avg_sq)
        ops.scale_each_(scale, [1.0 / (1.0 - beta2**n) for n in steps])
        ops.sqrt_(scale)
        ops.add_scalar_(scale, group["precond_eps"])
        ops.reciprocal_(scale)


PRECONDITIONERS: dict[str, DiagonalPreconditioner] = {}
"""Registered preconditioners by name."""


def register_preconditioner(preconditioner: DiagonalPreconditioner) -> DiagonalPreconditioner:
    """Make ``preconditioner`` selectable by ``preconditioner=<its name>`` in param groups."""
    if not isinstance(preconditioner, DiagonalPreconditioner):
        raise TypeError("register_preconditioner expects a DiagonalPreconditioner instance")
    name = getattr(preconditioner, "name", "")
    if not isinstance(name, str) or not name:
        raise ValueError("a preconditioner needs a non-empty class attribute 'name'")
    taken = {o.name for p in PRECONDITIONERS.values() if p.name != name for o in p.options}
    clash = sorted(taken & {o.name for o in preconditioner.options})
    if clash:
        raise ValueError(f"register_preconditioner({name!r}): option(s) {clash} belong to another one")
    PRECONDITIONERS[name] = preconditioner
    return preconditioner


def get_preconditioner(name: str | None) -> DiagonalPreconditioner | None:
    """The registered preconditioner called ``name`` (None for none)."""
    if name is None:
        return None
    if not isinstance(name, str) or name not in PRECONDITIONERS:
        valid = ", ".join(["None", *sorted(PRECONDITIONERS)])
        raise ValueError(
            f"unknown preconditioner {name!r}; valid: {valid} "
            "(register your own with rkopt.register_preconditioner)"
        )
    return PRECONDITIONERS[name]


PRECONDITIONER_OPTION = Option(
    "preconditioner",
    None,
    lambda key, value: get_preconditioner(value),
    shapes_plan=True,
    doc="None or a registered preconditioner's name",
)


register_preconditioner(AdaGrad())
register_preconditioner(RMSProp())

__all__ = [
    "PRECONDITIONERS",
    "PRECONDITIONER_OPTION",
    "AdaGrad",
    "DiagonalPreconditioner",
    "RMSProp",
    "get_preconditioner",
    "register_preconditioner",
]
