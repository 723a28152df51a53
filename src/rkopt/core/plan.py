"""The step plan: what one Runge–Kutta step computes, stored and released, decided once.

A step of the (preconditioned) gradient flow with tableau (A, b, c) and step h is

    d_i = f(θ_n - h Σ_{j<i} a_ij d_j),   i = 1..s          (one evaluation each, same minibatch)
    θ_{n+1} = θ_n - h Σ_i b_i d_i,       e = h Σ_i (b_i - b̂_i) d_i   (embedded pairs)

:class:`StepPlan` holds the part every param group shares, because one evaluation serves them all:
which stages are evaluated, each stage point's nonzero terms, the buffer slot of every stage
direction and the stage after which it is let go, how many evaluations an attempt and a probe make.
:class:`GroupPlan` adds what differs per group: the kind of update accumulator, whether the
candidate θ_{n+1} is the last stage point (FSAL), the error estimate's weights and the work buffers.
Both are pure data computed from values; the bindings execute them, the benchmarks read them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from rkopt.core.policies import PolicyNeeds
from rkopt.core.tableau import ButcherTableau

Terms = tuple[tuple[int, float], ...]
"""(stage j, coefficient) pairs with a nonzero coefficient."""

UpdateKind = Literal["none", "theta", "sum"]
"""How a group builds θ_{n+1}: ``"theta"`` accumulates U = θ_n - h Σ_{i<s} b_i d_i stage by stage
and adds the last stage at the end; ``"sum"`` accumulates S = Σ_i b_i d_i for an update rule that
transforms it (momentum); ``"none"``: no accumulator (one stage with weight, or FSAL)."""


def _nonzero(row: tuple[float, ...]) -> Terms:
    return tuple((j, coefficient) for j, coefficient in enumerate(row) if coefficient != 0.0)


@dataclass(frozen=True)
class StepPlan:
    """The structure of one step shared by every param group.

    Attributes:
        tableau: the method.
        stages: leading stages an attempt evaluates (``ButcherTableau.stages_needed``).
        points: per stage i, the nonzero (j, a_ij) of its point θ_n - h Σ_j a_ij d_j.
        slots: per stage, the buffer slot its direction is kept in, or None when it is read only
            before the next evaluation (it may then alias the gradient).
        slot_count: slots in use.
        released_at: per stage i, the directions no later work reads once stage i's point is
            written; the binding drops its references then, so a gradient they alias can be freed.
        igr: the field includes the IGR term (one extra evaluation per stage direction).
        error_estimate: some group accumulates the embedded error estimate.
        evaluate_candidate: a policy needs the loss at θ_{n+1} (one extra evaluation per attempt).
    """

    tableau: ButcherTableau
    stages: int
    points: tuple[Terms, ...]
    slots: tuple[int | None, ...]
    slot_count: int
    released_at: tuple[tuple[int, ...], ...]
    igr: bool = False
    error_estimate: bool = False
    evaluate_candidate: bool = False

    @classmethod
    def build(
        cls,
        tableau: ButcherTableau,
        *,
        error_estimate: bool = False,
        keep_until: Mapping[int, int] | None = None,
        igr: bool = False,
        evaluate_candidate: bool = False,
    ) -> StepPlan:
        """The plan of ``tableau``; ``keep_until`` = {stage: until stage} keeps directions alive
        past their last read by the tableau (for a step-size policy's reads, retries and probes)."""
        stages = tableau.stages_needed(error_estimate=error_estimate)
        keep = {stage: until for stage, until in (keep_until or {}).items() if stage < stages}
        slots, slot_count = tableau.storage_plan(keep, stages)
        lifetimes = tableau.lifetimes(keep, stages)
        released_at = tuple(
            tuple(j for j in range(i) if max(lifetimes[j], j + 1) == i) for i in range(stages)
        )
        return cls(
            tableau=tableau,
            stages=stages,
            points=tuple(_nonzero(tableau.a[i]) for i in range(stages)),
            slots=slots,
            slot_count=slot_count,
            released_at=released_at,
            igr=igr,
            error_estimate=error_estimate,
            evaluate_candidate=evaluate_candidate,
        )

    @classmethod
    def for_needs(
        cls, tableau: ButcherTableau, needs: Iterable[PolicyNeeds], *, igr: bool = False
    ) -> StepPlan:
        """The plan that serves every group's policy needs (one evaluation serves all groups, so
        each group keeps what any policy reads past it): a retry reuses d_1, so d_1 lives through
        the step; a probe evaluates after stage 1 and reads d_1 afterwards; a norm of d_i - d_j
        keeps the earlier direction until the later one is known."""
        needs = list(needs)
        keep_until: dict[int, int] = {}

        def keep(stage: int, until: int) -> None:
            keep_until[stage] = max(keep_until.get(stage, 0), until)

        for need in needs:
            if need.retries:
                keep(0, tableau.stages)
            if need.probes:
                keep(0, 2)
            for i, j in need.norms:
                if j is not None:
                    keep(min(i, j), max(i, j))
        return cls.build(
            tableau,
            error_estimate=any(need.error_estimate for need in needs),
            keep_until=keep_until,
            igr=igr,
            evaluate_candidate=any(need.evaluate_candidate for need in needs),
        )

    @property
    def last(self) -> int:
        """The index of the last evaluated stage."""
        return self.stages - 1

    @property
    def evaluations_per_direction(self) -> int:
        """Evaluations that form one stage direction: the gradient, plus the IGR probe."""
        return 2 if self.igr else 1

    @property
    def evaluations_per_attempt(self) -> int:
        """Evaluations of one attempt at stages 1..s (stage 1 is evaluated once per step)."""
        return self.stages * self.evaluations_per_direction + int(self.evaluate_candidate)

    def group(
        self,
        *,
        sums_directions: bool,
        error_estimate: bool,
        identity_field: bool,
        statistics: tuple[str, ...] = (),
        probes: bool = False,
    ) -> GroupPlan:
        """The plan of one group.

        Args:
            sums_directions: the update rule transforms S = Σ b_i d_i (momentum).
            error_estimate: the group's policy reads the embedded error estimate.
            identity_field: the direction is the raw gradient (no sign, decay, IGR or P_n), so a
                direction without a slot may alias the gradient instead of a scratch buffer.
            statistics: the names of the preconditioner's statistics (none: no preconditioner).
            probes: some policy probes the field (a direction that no slot holds).
        """
        if error_estimate and not self.error_estimate:
            raise ValueError("a group's error estimate needs StepPlan.build(error_estimate=True)")
        tableau, last = self.tableau, self.last
        candidate_is_last_point = (
            tableau.fsal and self.stages == tableau.stages and not sums_directions
        )  # the last stage's point θ_n - h Σ a_sj d_j is θ_{n+1}
        if sums_directions:
            update: UpdateKind = "sum"
            update_terms = _nonzero(tableau.b[: last + 1])
        elif not candidate_is_last_point and any(b != 0.0 for b in tableau.b[:last]):
            update, update_terms = "theta", _nonzero(tableau.b[:last])
        else:
            update, update_terms = "none", ()
        error_terms = _nonzero(tableau.error_weights[: last + 1]) if error_estimate else ()
        unslotted = probes or any(slot is None for slot in self.slots)
        buffers = ["theta0"]
        if update != "none":
            buffers.append("accumulator")
        buffers += [f"slot{k}" for k in range(self.slot_count)]
        if error_estimate:
            buffers.append("error")
        if not identity_field and unslotted:
            buffers.append("scratch")
        if statistics:
            buffers += ["precond_scale", *(f"precond_{name}" for name in statistics)]
        if self.igr:
            buffers += ["igr_grad", "igr_point"]
        return GroupPlan(
            step=self,
            update=update,
            update_terms=update_terms,
            candidate_is_last_point=candidate_is_last_point,
            error_terms=error_terms,
            identity_field=identity_field,
            buffers=tuple(buffers),
        )


@dataclass(frozen=True)
class GroupPlan:
    """What one param group computes in a step (see :meth:`StepPlan.group`).

    Attributes:
        step: the shared plan.
        update: the accumulator kind (:data:`UpdateKind`).
        update_terms: the (i, b_i) the accumulator receives as each stage direction is known.
        candidate_is_last_point: FSAL with its last stage evaluated and no momentum: the last
            stage point is θ_{n+1}, so no update is accumulated.
        error_terms: the (i, b_i - b̂_i) of the error estimate (empty: not estimated).
        identity_field: the direction of a stage without a slot aliases the gradient.
        buffers: the roles of the parameter-sized work buffers the group uses in a step.
    """

    step: StepPlan
    update: UpdateKind
    update_terms: Terms
    candidate_is_last_point: bool
    error_terms: Terms
    identity_field: bool
    buffers: tuple[str, ...]

    @property
    def last_weight(self) -> float:
        """b_s of the last evaluated stage, added when the candidate is written (``"theta"``/``"none"``)."""
        return self.step.tableau.b[self.step.last]
