"""Update rules: how a step turns its stage directions into θ_{n+1}.

- :class:`PlainUpdate`: θ_{n+1} = θ_n - h Σ_i b_i d_i (the Runge–Kutta step itself).
- :class:`HeavyBall`: m_{n+1} = β m_n + Σ_i b_i d_i, θ_{n+1} = θ_n - h m_{n+1}.
- :class:`Nesterov`: θ_{n+1} = θ_n - h (Σ_i b_i d_i + β m_{n+1}) = θ_n - h((1+β) m_{n+1} - β m_n).

Decoupled weight decay (θ_{n+1} -= h λ θ_n) is added by the caller to every rule's result. A rule
that transforms S = Σ_i b_i d_i (``sums_directions``) gets it accumulated by the plan; the plain
rule's combination θ_n - h Σ b_i d_i is built directly (:class:`rkopt.core.plan.GroupPlan`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from rkopt.torch._ops import TensorListOps, Tensors

Terms = list[tuple[Tensors, float]]


class UpdateRule:
    """The plain Runge–Kutta update; base class of the rules that keep state.

    Class attributes:
        sums_directions: the rule reads S = Σ b_i d_i (accumulated by the plan).
        state_keys: parameter-sized tensors it keeps in the optimizer state.
    """

    sums_directions: ClassVar[bool] = False
    state_keys: ClassVar[tuple[str, ...]] = ()

    def init_state(self, params: Tensors, states: list[dict[str, Any]]) -> None:
        for p, state in zip(params, states, strict=True):
            for key in self.state_keys:
                if key not in state:
                    state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def candidate_terms(
        self, ops: TensorListOps, direction_sum: Tensors, states: list[dict[str, Any]], h: float
    ) -> Terms:
        """The terms (x, α) with θ_{n+1} = θ_n + Σ α x; may turn ``direction_sum`` into m_{n+1}."""
        raise NotImplementedError("the plain update is built by the plan")

    def commit(self, ops: TensorListOps, direction_sum: Tensors, states: list[dict[str, Any]]) -> None:
        """Store the rule's state after an accepted step."""


PlainUpdate = UpdateRule


class HeavyBall(UpdateRule):
    """m_{n+1} = β m_n + Σ b_i d_i (no 1-β factor), θ_{n+1} = θ_n - h m_{n+1}."""

    sums_directions = True
    state_keys = ("momentum_buffer",)

    def __init__(self, beta: float) -> None:
        self.beta = beta

    def momentum(self, ops: TensorListOps, direction_sum: Tensors, states) -> Tensors:
        """m_{n+1}, written over S; returns m_n."""
        old = [state["momentum_buffer"] for state in states]
        ops.axpy_(direction_sum, old, self.beta)
        return old

    def candidate_terms(self, ops, direction_sum, states, h) -> Terms:
        self.momentum(ops, direction_sum, states)
        return [(direction_sum, -h)]

    def commit(self, ops, direction_sum, states) -> None:
        ops.copy_([state["momentum_buffer"] for state in states], direction_sum)


class Nesterov(HeavyBall):
    """θ_{n+1} = θ_n - h (S + β m_{n+1}) = θ_n - h((1+β) m_{n+1} - β m_n)."""

    def candidate_terms(self, ops, direction_sum, states, h) -> Terms:
        old = self.momentum(ops, direction_sum, states)
        return [(direction_sum, -h * (1.0 + self.beta)), (old, h * self.beta)]


def update_rule(group: Mapping[str, Any]) -> UpdateRule:
    """The rule a group's ``momentum`` and ``nesterov`` keys select."""
    beta = group["momentum"]
    if beta == 0.0:
        return PlainUpdate()
    return Nesterov(beta) if group["nesterov"] else HeavyBall(beta)
