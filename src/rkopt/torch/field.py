"""The vector field of one param group: the stage direction d = P_n q, composed in one place.

    q = σ g + λ θ (+ the IGR term, formed by :mod:`rkopt.torch.igr`),   d = P_n q

σ = -1 when maximizing, λ the coupled weight decay, P_n a diagonal preconditioner computed from
the first stage's q and frozen for the step (proposed statistics are committed only once the step
is accepted, so a failed step changes no state).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from rkopt.torch._ops import TensorListOps, Tensors
from rkopt.torch.preconditioners import DiagonalPreconditioner

Buffer = Callable[[str], list[Tensor]]
"""The group's work buffer of a role (allocated once, kept in the workspace)."""


class VectorField:
    """d = P_n (σ g + λ θ) for one group; with ``igr`` the caller passes q already formed."""

    def __init__(
        self,
        group: Mapping[str, Any],
        preconditioner: DiagonalPreconditioner | None,
        igr: bool,
    ) -> None:
        self.group = group
        self.preconditioner = preconditioner
        self.sign = -1.0 if group["maximize"] else 1.0
        self.coupled_decay = 0.0 if group["decoupled_weight_decay"] else group["weight_decay"]
        self.identity = preconditioner is None and self.coupled_decay == 0.0 and self.sign > 0 and not igr
        self.statistics: tuple[str, ...] = preconditioner.statistics if preconditioner is not None else ()
        self.scale: Tensors | None = None  # P_n, once proposed
        self.proposed: list[Tensors] = []

    def reset(self) -> None:
        self.scale, self.proposed = None, []

    def direction(
        self,
        ops: TensorListOps,
        dest: Tensors | None,
        gradient: Tensors,
        params: Tensors,
        *,
        signed_in_place: bool = False,
        propose: Callable[[Tensors], None] | None = None,
    ) -> Tensors:
        """Write d into ``dest`` (None: the identity field, d is ``gradient`` itself).

        ``signed_in_place``: ``gradient`` is ``dest`` and already holds σ g (+ the IGR term).
        ``propose(q)`` (first stage only) sets P_n from q before it is applied.
        """
        if dest is None:
            return gradient
        dest_holds_q = True
        if signed_in_place or self.sign < 0:
            if not signed_in_place:
                ops.neg_into(dest, gradient)
            if self.coupled_decay:
                ops.axpy_(dest, params, self.coupled_decay)
        elif self.coupled_decay:
            ops.axpy_into(dest, gradient, params, self.coupled_decay)
        elif self.preconditioner is None:
            ops.copy_(dest, gradient)
        else:  # P_n g is written below in one pass, without copying g into dest first
            dest_holds_q = False
        if self.preconditioner is not None:
            q = dest if dest_holds_q else gradient
            if propose is not None:
                propose(q)
            ops.mul_into(dest, q, self.scale)
        return dest

    def propose_preconditioner(
        self, ops: TensorListOps, q: Tensors, states: list[dict[str, Any]], buffer: Buffer
    ) -> None:
        """P_n and the statistics after this step, from the first stage's q (state is not written)."""
        names = self.statistics
        self.scale = buffer("precond_scale")
        self.proposed = [buffer(f"precond_{name}") for name in names]
        self.preconditioner.propose(
            ops,
            self.group,
            [state["precond_steps"] + 1 for state in states],
            q,
            [[state[name] for state in states] for name in names],
            self.proposed,
            self.scale,
        )

    def commit(self, ops: TensorListOps, states: list[dict[str, Any]]) -> None:
        """Store the proposed statistics (the step was accepted)."""
        if self.preconditioner is None:
            return
        for name, proposed in zip(self.statistics, self.proposed, strict=True):
            ops.copy_([state[name] for state in states], proposed)
        for state in states:
            state["precond_steps"] += 1
