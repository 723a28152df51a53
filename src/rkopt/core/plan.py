"""The step plan: what one Runge–Kutta step computes, stored and released, decided once.

A step of the (preconditioned) gradient flow with tableau (A, b, c) and step h is

    d_i = f(θ_n - h Σ_{j<i} a_ij d_j),   i = 1..s          (one evaluation each, same minibatch)
    θ_{n+1} = θ_n - h Σ_i b_i d_i,       e = h Σ_i (b_i - b̂_i) d_i   (embedded pairs)

A Runge–Kutta–Chebyshev method (:class:`rkopt.core.chebyshev.ChebyshevMethod`) is the same step
with its own stage points, a three-term recurrence over the previous two points
(:class:`StagePoint`), so its buffers do not grow with s; its equivalent tableau supplies b and
the order, and θ_{n+1} is its last point.

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
from functools import cached_property, lru_cache
from typing import Literal

from rkopt.core.chebyshev import ChebyshevMethod
from rkopt.core.policies import PolicyNeeds
from rkopt.core.spectral import AutoChebyshev
from rkopt.core.tableau import ButcherTableau, interval_slots
from rkopt.core.tableaux import get_tableau

Method = ButcherTableau | ChebyshevMethod | AutoChebyshev
"""A solver: a Butcher tableau, a Runge–Kutta–Chebyshev method, or one whose stage count is chosen
each step (:class:`~rkopt.core.spectral.AutoChebyshev`)."""

Terms = tuple[tuple[int, float], ...]
"""(stage j, coefficient) pairs with a nonzero coefficient."""

UpdateKind = Literal["none", "theta", "sum"]
"""How a group builds θ_{n+1}: ``"theta"`` accumulates U = θ_n - h Σ_{i<s} b_i d_i stage by stage
and adds the last stage at the end; ``"sum"`` accumulates S = Σ_i b_i d_i for an update rule that
transforms it (momentum); ``"none"``: no accumulator (one stage with weight, or FSAL)."""


def _nonzero(row: tuple[float, ...]) -> Terms:
    return tuple((j, coefficient) for j, coefficient in enumerate(row) if coefficient != 0.0)


@dataclass(frozen=True)
class StagePoint:
    """Y_i = theta·θ_n + previous·Y_{i-1} + before·Y_{i-2} - h Σ_j a_j d_j.

    A Butcher stage point is θ_n - h Σ_j a_ij d_j (theta = 1, no earlier points); a
    Runge–Kutta–Chebyshev point also weighs the two previous points (``recurrent``).
    """

    directions: Terms
    theta: float = 1.0
    previous: float = 0.0
    before: float = 0.0

    @property
    def recurrent(self) -> bool:
        return self.previous != 0.0 or self.before != 0.0


def butcher_tableau(method: Method) -> ButcherTableau:
    """The tableau of ``method`` (a Chebyshev method's equivalent one; for an automatic stage count,
    that of the method a step starts with)."""
    if isinstance(method, AutoChebyshev):
        method = method.provisional
    return method if isinstance(method, ButcherTableau) else _equivalent_tableau(method)


@lru_cache(maxsize=64)
def _equivalent_tableau(method: ChebyshevMethod) -> ButcherTableau:
    return method.to_butcher_tableau()


def get_method(method: str | Method) -> Method:
    """A Chebyshev method as it is, else the tableau ``get_tableau`` finds."""
    return method if isinstance(method, (ChebyshevMethod, AutoChebyshev)) else get_tableau(method)


def _chebyshev_points(method: ChebyshevMethod) -> tuple[StagePoint, ...]:
    """Y_0..Y_s of the recurrence Y_j = (1 - μ_j - ν_j) θ_n + μ_j Y_{j-1} + ν_j Y_{j-2}
    + μ̃_j h F_{j-1} + γ̃_j h F_0, with F = -d (so a = μ̃, γ̃) and Y_0 = θ_n folded into theta."""
    points = [StagePoint(())]
    for j, stage in enumerate(method.coefficients, start=1):
        terms = [(j - 1, stage.mu_tilde)]
        if stage.gamma_tilde != 0.0:
            terms.append((0, stage.gamma_tilde))
        if j == 1:
            points.append(StagePoint(tuple(terms)))
            continue
        theta, before = 1.0 - stage.mu - stage.nu, stage.nu
        if j == 2:  # Y_{j-2} = Y_0 = θ_n
            theta, before = theta + before, 0.0
        points.append(StagePoint(tuple(terms), theta=theta, previous=stage.mu, before=before))
    return tuple(points)


@dataclass(frozen=True)
class StepPlan:
    """The structure of one step shared by every param group.

    Attributes:
        method: the solver (a tableau, or a Chebyshev method).
        tableau: its Butcher tableau (a Chebyshev method's equivalent one: b, the order, a21).
        stages: leading stages an attempt evaluates (``ButcherTableau.stages_needed``).
        points: per stage i, its point (a Butcher point: the nonzero (j, a_ij) of θ_n - h Σ a_ij d_j).
        candidate: the point that is θ_{n+1} (a Chebyshev method's Y_s), or None: θ_{n+1} is
            formed from the weights b.
        slots: per stage, the buffer slot its direction is kept in, or None when it is read only
            before the next evaluation (it may then alias the gradient).
        slot_count: slots in use.
        released_at: per stage i, the directions no later work reads once stage i's point is
            written; the binding drops its references then, so a gradient they alias can be freed.
        igr: the field includes the IGR term (one extra evaluation per stage direction).
        error_estimate: some group accumulates the embedded error estimate.
        evaluate_candidate: a policy needs the loss at θ_{n+1} (one extra evaluation per attempt).
    """

    method: Method
    tableau: ButcherTableau
    stages: int
    points: tuple[StagePoint, ...]
    candidate: StagePoint | None
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
            method=tableau,
            tableau=tableau,
            stages=stages,
            points=tuple(StagePoint(_nonzero(tableau.a[i])) for i in range(stages)),
            candidate=None,
            slots=slots,
            slot_count=slot_count,
            released_at=released_at,
            igr=igr,
            error_estimate=error_estimate,
            evaluate_candidate=evaluate_candidate,
        )

    @classmethod
    def chebyshev(
        cls,
        method: ChebyshevMethod,
        *,
        keep_until: Mapping[int, int] | None = None,
        igr: bool = False,
        evaluate_candidate: bool = False,
    ) -> StepPlan:
        """The plan of a Runge–Kutta–Chebyshev method: s evaluations at Y_0..Y_{s-1}, each point
        from the previous two (two point buffers, whatever s), θ_{n+1} = Y_s."""
        points = _chebyshev_points(method)
        stages = method.stages
        lifetimes = [j for j in range(stages)]
        for i, point in enumerate(points):
            for j, _ in point.directions:
                lifetimes[j] = max(lifetimes[j], i)
        for stage, until in (keep_until or {}).items():
            lifetimes[stage] = max(lifetimes[stage], until)
        slots, slot_count = interval_slots(lifetimes)
        released_at = tuple(
            tuple(j for j in range(i) if max(lifetimes[j], j + 1) == i) for i in range(stages)
        )
        return cls(
            method=method,
            tableau=butcher_tableau(method),
            stages=stages,
            points=points[:stages],
            candidate=points[stages],
            slots=slots,
            slot_count=slot_count,
            released_at=released_at,
            igr=igr,
            evaluate_candidate=evaluate_candidate,
        )

    @cached_property
    def coefficient_bound(self) -> float:
        """A bound on |α|/h over the coefficients a step multiplies a direction by (stage points,
        weights, error weights), with a margin of 4 for momentum and decoupled decay terms; computed
        once per plan, read at every step."""
        values = [abs(a) for point in self.points for _, a in point.directions]
        values += [abs(b) for b in self.tableau.b]
        if self.tableau.is_embedded:
            values += [abs(e) for e in self.tableau.error_weights]
        if self.candidate is not None:
            values += [abs(a) for _, a in self.candidate.directions]
        return 4.0 * max(values, default=1.0)

    @property
    def point_buffers(self) -> int:
        """Parameter-sized buffers for earlier stage points (2 for a recurrence, else 0)."""
        recurrent = any(p.recurrent for p in (*self.points, *([self.candidate] if self.candidate else [])))
        return 2 if recurrent else 0

    @classmethod
    def for_needs(cls, method: Method, needs: Iterable[PolicyNeeds], *, igr: bool = False) -> StepPlan:
        """The plan that serves every group's policy needs (one evaluation serves all groups, so
        each group keeps what any policy reads past it): a retry reuses d_1, so d_1 lives through
        the step; a probe evaluates after stage 1 and reads d_1 afterwards; a norm of d_i - d_j
        keeps the earlier direction until the later one is known."""
        needs = list(needs)
        stages = butcher_tableau(method).stages
        keep_until: dict[int, int] = {}

        def keep(stage: int, until: int) -> None:
            keep_until[stage] = max(keep_until.get(stage, 0), until)

        for need in needs:
            if need.retries:
                keep(0, stages)
            if need.probes:
                keep(0, 2)
            for i, j in need.norms:
                if j is not None:
                    keep(min(i, j), max(i, j))
        evaluate_candidate = any(need.evaluate_candidate for need in needs)
        if isinstance(method, ChebyshevMethod):
            if any(need.error_estimate for need in needs):
                raise ValueError("a Runge–Kutta–Chebyshev method has no embedded error estimate")
            return cls.chebyshev(
                method, keep_until=keep_until, igr=igr, evaluate_candidate=evaluate_candidate
            )
        return cls.build(
            method,
            error_estimate=any(need.error_estimate for need in needs),
            keep_until=keep_until,
            igr=igr,
            evaluate_candidate=evaluate_candidate,
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
            self.candidate is None and tableau.fsal and self.stages == tableau.stages and not sums_directions
        )  # the last stage's point θ_n - h Σ a_sj d_j is θ_{n+1}
        if sums_directions:
            update: UpdateKind = "sum"
            update_terms = _nonzero(tableau.b[: last + 1])
        elif self.candidate is not None:
            update, update_terms = "none", ()  # θ_{n+1} is the candidate point
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
        buffers += [f"point{k}" for k in range(self.point_buffers)]
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
