"""One param group's part of a step: its buffers, stage directions and candidate, by its plan.

A :class:`GroupRun` executes a :class:`rkopt.core.plan.GroupPlan` with torch tensors. It is kept
between steps while the plan's key is unchanged (:meth:`reset` drops the step's references, so
nothing it holds between steps aliases a gradient).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from rkopt.core.plan import GroupPlan, StagePoint
from rkopt.core.policies import Norm, PolicyNeeds
from rkopt.torch._ops import Combination, TensorListOps, Tensors
from rkopt.torch.config import GroupView
from rkopt.torch.field import VectorField
from rkopt.torch.update_rules import UpdateRule


class GroupRun:
    """The tensors of one group in a step, driven by :class:`rkopt.torch.engine.StepProgram`."""

    def __init__(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        plan: GroupPlan,
        ops: TensorListOps,
        field: VectorField,
        rule: UpdateRule,
        needs: PolicyNeeds,
        workspace: dict[Tensor, dict[str, Tensor]],
        key: tuple,
    ) -> None:
        # complex parameters are stepped as pairs of reals (as torch.optim does): the math runs on
        # real views; state, workspace and gradients belong to the parameters themselves
        self.owners = params
        self.params = [torch.view_as_real(p) if p.is_complex() else p for p in params]
        self.group, self.plan, self.ops = GroupView(group), plan, ops  # lr read as a float
        self.field, self.rule, self.needs, self.key = field, rule, needs, key
        self.decoupled_decay = group["weight_decay"] if group["decoupled_weight_decay"] else 0.0
        self.keeps_state = bool(field.statistics) or bool(rule.state_keys)
        self.largest_value = min(torch.finfo(p.dtype).max for p in self.params)
        self.states: list[dict[str, Any]] = []
        self._workspace = workspace
        self._buffers: dict[str, list[Tensor]] = {}
        self.theta0 = self.buffer("theta0")
        self.reset()

    def reset(self) -> None:
        """Drop the step's references: between steps a run holds only its plan and buffers."""
        self.directions: list[Tensors | None] = [None] * self.plan.step.stages
        self.h = 0.0
        self.at_theta0 = True
        self.update: Combination | None = None
        self.error: Combination | None = None
        self.norms: dict[Norm, float] = {}
        self.older: list[Tensor] | None = None  # D_{i-2} = Y_{i-2} - θ_n of a recurrence (after stage 2)
        self.last: list[Tensor] | None = None  # D_{i-1} (None: Y_{i-1} is θ_n or the Butcher point Y_1)
        self.field.reset()

    def rebind(self, plan: GroupPlan) -> None:
        """Execute ``plan`` from here on, stage 1 recorded: a plan of the same family whose d_1 is
        kept in the same slot (the s-stage plans of an automatic stage count)."""
        if plan.step.slots[0] != self.plan.step.slots[0] or plan.step.slots[0] is None:
            raise RuntimeError("a step can only switch to a plan that keeps d_1 in the same slot")
        first = self.directions[0]
        self.plan = plan
        self.directions = [first] + [None] * (plan.step.stages - 1)

    def buffer(self, role: str) -> list[Tensor]:
        """A parameter-sized work buffer per parameter (kept in the workspace between steps)."""
        if role not in self._buffers:
            out = []
            for owner, p in zip(self.owners, self.params, strict=True):
                slot = self._workspace.setdefault(owner, {})
                if role not in slot:
                    slot[role] = torch.empty_like(p, memory_format=torch.preserve_format)
                out.append(slot[role])
            self._buffers[role] = out
        return self._buffers[role]

    def begin_step(self, state: Mapping[Tensor, dict[str, Any]]) -> None:
        """Read the group's lr for the whole step (a scheduler may change it between the calls of a
        stage-wise step), bind the parameters' state dicts (a user may have replaced them since the
        last step) and create what the group's equations keep: preconditioner statistics, momentum."""
        self.lr = self.group["lr"]
        if not self.keeps_state:
            return  # plain Runge–Kutta keeps no state
        self.states = [state[p] for p in self.owners]
        for p, entry in zip(self.params, self.states, strict=True):
            for key in self.field.statistics:
                if key not in entry:
                    entry[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if self.field.preconditioner is not None:
                entry.setdefault("precond_steps", 0)
        self.rule.init_state(self.params, self.states)

    # -- the field -------------------------------------------------------------------------

    def gradients(self) -> list[Tensor]:
        grads = []
        for owner, p in zip(self.owners, self.params, strict=True):
            grad = owner.grad
            if grad is None:  # present at stage 1 but not here: a zero gradient
                grad = torch.zeros_like(p)
            elif grad.is_sparse:
                raise RuntimeError("rkopt.RungeKutta does not support sparse gradients")
            elif grad.is_complex():
                grad = torch.view_as_real(grad)
            grads.append(grad)
        return grads

    def destination(self, stage: int | None) -> Tensors | None:
        """Where the direction of ``stage`` is written (None: it may alias the gradients)."""
        slot = self.plan.step.slots[stage] if stage is not None else None
        if slot is not None:
            return self.buffer(f"slot{slot}")
        return None if self.plan.identity_field else self.buffer("scratch")

    def record_direction(self, stage: int | None, gradient: Tensors, signed_in_place: bool) -> Tensors:
        """d = P_n q for ``stage`` (``None``: a probe, kept in no slot); stage 0 proposes P_n."""
        propose = None
        if stage == 0 and self.field.preconditioner is not None:

            def propose(q: Tensors) -> None:
                self.field.propose_preconditioner(self.ops, q, self.states, self.buffer)

        direction = self.field.direction(
            self.ops,
            self.destination(stage),
            gradient,
            self.params,
            signed_in_place=signed_in_place,
            propose=propose,
        )
        if stage is not None:
            self.directions[stage] = direction
        return direction

    # -- moving through the stages ---------------------------------------------------------

    def save_theta0(self) -> None:
        self.ops.copy_(self.theta0, self.params)

    def restore_theta0(self) -> None:
        if not self.at_theta0:
            self.ops.copy_(self.params, self.theta0)
            self.at_theta0 = True

    def displace(self, direction: Tensors, alpha: float) -> None:
        """θ ← θ + α ``direction`` (a probe point)."""
        self.ops.axpy_(self.params, direction, alpha)
        self.at_theta0 = False

    def combine_into_params(self, base: Tensors, terms: list[tuple[Tensors, float]]) -> None:
        """θ ← base + Σ α x (in place when θ already holds base, i.e. θ_n)."""
        in_place = base is self.params or (self.at_theta0 and base is self.theta0)
        combination = Combination(self.ops, self.params, self.params if in_place else base)
        for x, alpha in terms:
            combination.add(x, alpha)
        combination.materialize()
        self.at_theta0 = False

    def move_to_stage(self, stage: int) -> None:
        """θ ← stage i's point (θ_n - h Σ_j a_ij d_j, or a recurrence over the previous points);
        then drop the directions read for the last time (so the next evaluation frees the gradients
        they alias)."""
        step = self.plan.step
        self.move_to_point(step.points[stage], [])
        for j in step.released_at[stage]:
            self.directions[j] = None

    def move_to_point(self, point: StagePoint, extra: list[tuple[Tensors, float]]) -> None:
        """θ ← ``point`` (+ the ``extra`` terms)."""
        if point.recurrent:
            self.move_to_recurrent_point(point, extra)
            return
        terms = [(self.directions[j], -self.h * a) for j, a in point.directions] + extra
        if terms or not self.at_theta0:
            self.combine_into_params(self.theta0, terms)

    def move_to_recurrent_point(self, point: StagePoint, extra: list[tuple[Tensors, float]]) -> None:
        """θ ← θ_n + D_i (+ ``extra``), D_i = Y_i - θ_n = previous·D_{i-1} + before·D_{i-2} - h Σ a_j d_j.

        The recurrence runs on displacements from θ_n (θ_n's weight is 1 - previous - before), so a
        zero field leaves θ_n exactly and rounding scales with the step, not with θ. The two point
        buffers trade roles: the one not holding D_{i-1} holds D_{i-2} and receives D_i.
        """
        if self.last is None:  # D_1 = Y_1 - θ_n, θ holding the Butcher point Y_1 (exact where they are close)
            self.last = self.buffer("point0")
            self.ops.axpy_into(self.last, self.params, self.theta0, -1.0)
        target = self.buffer("point1" if self.last is self.buffer("point0") else "point0")
        holds_older = self.older is target  # else D_{i-2} = D_0 = 0
        if point.before and holds_older:
            self.ops.scale_(target, point.before)
        combination = Combination(self.ops, target, target if point.before and holds_older else None)
        combination.add(self.last, point.previous)
        for j, a in point.directions:
            combination.add(self.directions[j], -self.h * a)
        combination.materialize()
        self.older, self.last = self.last, target
        self.combine_into_params(self.theta0, [(target, 1.0), *extra])

    def start_attempt(self) -> None:
        """Open the accumulators of one attempt at step h and add stage 1 to them."""
        plan = self.plan
        accumulator = self.buffer("accumulator") if plan.update != "none" else None
        self.update = None
        if plan.update == "sum":
            self.update = Combination(self.ops, accumulator, None)  # S = Σ b_i d_i
        elif plan.update == "theta":
            self.update = Combination(self.ops, accumulator, self.theta0)  # θ_n - h Σ_{i<s} b_i d_i
        self.error = Combination(self.ops, self.buffer("error"), None) if plan.error_terms else None
        self.norms = {}
        self.older = self.last = None
        self.accumulate(0)

    def accumulate(self, stage: int) -> None:
        """Add stage ``stage``'s direction to the update and the error estimate."""
        plan, direction = self.plan, self.directions[stage]
        tableau = plan.step.tableau
        if plan.update == "sum":
            self.update.add(direction, tableau.b[stage])
        elif plan.update == "theta" and stage != plan.step.last:
            self.update.add(direction, -self.h * tableau.b[stage])
        if self.error is not None:
            self.error.add(direction, self.h * tableau.error_weights[stage])

    def measure(self, norms: tuple[Norm, ...], stage: int) -> None:
        """The sums of squares in ``norms`` whose directions are all known once ``stage`` is."""
        for i, j in norms:
            if max(i, j if j is not None else 0) != stage:
                continue
            if j is None:
                value = self.ops.sum_squares(self.directions[i])
            else:
                value = self.ops.sum_squared_difference(self.directions[i], self.directions[j])
            self.norms[(i, j)] = float(value)

    def write_candidate(self) -> None:
        """θ ← the step's result (the parameters then hold θ_{n+1}, still revocable)."""
        plan, h = self.plan, self.h
        decay = (self.theta0, -h * self.decoupled_decay)
        if plan.update == "sum":
            terms = self.rule.candidate_terms(self.ops, self.update.dst, self.states, h)
            self.combine_into_params(self.theta0, [*terms, decay])
        elif plan.candidate_is_last_point:
            self.combine_into_params(self.params, [decay])
        elif plan.step.candidate is not None:  # θ_{n+1} is the recurrence's last point
            self.move_to_point(plan.step.candidate, [decay])
        else:
            base = self.update.value if self.update is not None else self.theta0
            last = (self.directions[plan.step.last], -h * plan.last_weight)
            self.combine_into_params(base, [last, decay])

    # -- verdicts and commit ---------------------------------------------------------------

    def scaled_error(self, atol: float, rtol: float) -> float:
        """‖e / (atol + rtol·max(|θ_n|, |θ_{n+1}|))‖_rms over the group's parameters."""
        if self.error.value is None:
            return 0.0  # h = 0: no error
        count = sum(p.numel() for p in self.params)
        total = self.ops.sum_scaled_error_squares(self.error.value, self.theta0, self.params, atol, rtol)
        return math.sqrt(float(total) / max(count, 1))

    def candidate_finite(self) -> bool:
        return self.ops.all_finite(self.params)

    def commit(self) -> None:
        """Make the accepted step's state changes: the rule's state, preconditioner statistics."""
        if self.plan.update == "sum":
            self.rule.commit(self.ops, self.update.dst, self.states)
        self.field.commit(self.ops, self.states)
        self.group["h"] = self.h
