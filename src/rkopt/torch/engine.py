"""The step engine: one Runge–Kutta step over every param group, as a generator of evaluations.

:meth:`StepProgram.run` executes the :class:`rkopt.core.plan.StepPlan`: stage 1's directions,
the policies' probes and initial steps, attempts at stages 2..s (retried as the policies decide),
the finite check and the commit. Each time it needs the model evaluated at the current parameters
it yields (the kind: ``"stage"``, ``"probe"``, ``"igr"`` or ``"candidate"``) and is resumed with
that evaluation's loss, so the same program serves a closure called in a loop
(``step(closure)``) and one evaluation per ``step()`` call (``stagewise=True``).
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from typing import Any

from torch import Tensor

from rkopt.core.errors import NonFiniteStepError, StepRejectedError
from rkopt.core.plan import GroupPlan, StepPlan
from rkopt.core.policies import MAX_ATTEMPTS, Attempt, ProbeRequest, ProbeResult, StepSizePolicy
from rkopt.torch.group_run import GroupRun
from rkopt.torch.igr import igr_fields
from rkopt.torch.stage_count import StageCount

Program = Generator[str, Any, str]


def is_finite(loss: Any) -> bool:
    """Whether a loss is finite (None: unknown, a stage-wise step given no loss; its gradients
    were checked instead)."""
    if loss is None:
        return True
    if isinstance(loss, Tensor):
        if loss.numel() == 1:  # one scalar read instead of isfinite's four small kernels and all()
            return math.isfinite(loss.item())
        return bool(loss.isfinite().all())
    return math.isfinite(float(loss))


def loss_value(loss: Any) -> float | None:
    """A loss as a float (None where unknown or not a scalar)."""
    if isinstance(loss, Tensor):
        return loss.detach().item() if loss.numel() == 1 else None
    return None if loss is None else float(loss)


class Losses:
    """The losses of a step's evaluations, each checked for finiteness once, as it arrives."""

    __slots__ = ("bad", "values")

    def __init__(self) -> None:
        self.values: list[Any] = []
        self.bad: list[int] = []  # indices of the non-finite ones

    def __len__(self) -> int:
        return len(self.values)

    def append(self, loss: Any) -> None:
        if not is_finite(loss):
            self.bad.append(len(self.values))
        self.values.append(loss)

    def fail(self, index: int) -> None:
        """Count evaluation ``index`` as non-finite (its loss is, but its direction is not)."""
        if index not in self.bad:
            self.bad.append(index)

    def truncate(self, length: int) -> None:
        """Forget the losses from ``length`` on (a retried attempt's)."""
        del self.values[length:]
        self.bad = [i for i in self.bad if i < length]

    def finite(self, start: int = 0) -> bool:
        return all(i < start for i in self.bad)


class StepProgram:
    """One step of ``runs`` (the groups with gradients) under ``plan``.

    ``policies`` pairs each step-size policy in use with its runs, in group order; ``stage_count``
    chooses the plan once h is known (a method whose stage count is chosen each step), else None.
    """

    def __init__(
        self,
        runs: list[GroupRun],
        plan: StepPlan,
        policies: Sequence[tuple[StepSizePolicy, list[GroupRun]]],
        on_nonfinite: str,
        stage_count: StageCount | None = None,
    ) -> None:
        self.runs, self.plan, self.policies, self.on_nonfinite = runs, plan, policies, on_nonfinite
        self.stage_count = stage_count
        self.losses = Losses()  # of the evaluations that count: θ_n, probes, the current attempt
        self.rejections = 0

    def restore(self) -> None:
        """Put every group back at θ_n (after an error anywhere in the step)."""
        for run in self.runs:
            run.restore_theta0()

    # -- the program -----------------------------------------------------------------------

    def run(self, first_loss: Any) -> Program:
        """The step after the evaluation at θ_n; returns ``"accepted"`` or ``"skipped"``."""
        runs = self.runs
        self.losses.append(first_loss)
        if not is_finite(first_loss):
            return self.nonfinite()  # no step can help when θ_n itself is bad
        if not runs:
            return "accepted"
        for run in runs:
            run.save_theta0()
        yield from self.record(runs, 0)
        for policy, members in self.policies:
            groups = [run.group for run in members]
            request = policy.probe(groups)
            if request is not None and not any(run.needs.probes for run in members):
                raise RuntimeError(
                    f"lr_policy {policy.name!r} probed without declaring PolicyNeeds(probes=True)"
                )
            result = (yield from self.probe(members, request)) if request is not None else None
            for run, h in zip(members, policy.initial_steps(groups, result), strict=True):
                run.h = h
        if self.stage_count is not None and self.losses.finite():
            yield from self.stage_count.choose(self)
        if not self.unweighted_direction_finite(0):
            self.losses.fail(0)
        if not self.losses.finite() or not self.steps_representable():
            return self.nonfinite()  # a probe failed, or an h too large for the parameters' dtype
        settled = len(self.losses)
        for index in range(MAX_ATTEMPTS):
            self.losses.truncate(settled)
            candidate_loss = yield from self.attempt()
            if not self.losses.finite() and not self.first_directions_finite():
                break  # no smaller step helps when d_1 itself is not finite: the step fails
            attempts = [
                self.report(policy, members, index, candidate_loss) for policy, members in self.policies
            ]
            verdicts = [
                policy.judge([run.group for run in members], attempt)
                for (policy, members), attempt in zip(self.policies, attempts, strict=True)
            ]
            failed = [verdict for verdict in verdicts if verdict.action == "fail"]
            if failed:
                self.rejections += 1
                raise StepRejectedError(failed[0].message)
            if all(verdict.action == "accept" for verdict in verdicts):
                break
            self.rejections += 1
            for (policy, members), verdict in zip(self.policies, verdicts, strict=True):
                if verdict.action == "retry":
                    if not all(run.needs.retries for run in members):
                        raise RuntimeError(
                            f"lr_policy {policy.name!r} asked for a retry without declaring "
                            "PolicyNeeds(retries=True) (a retry needs stage 1 kept)"
                        )
                    for run, h in zip(members, verdict.h, strict=True):
                        run.h = h
            if not self.steps_representable():
                return self.nonfinite()
        else:
            names = [policy.name for policy, _ in self.policies]
            raise RuntimeError(
                f"lr_policy {names} made {MAX_ATTEMPTS} attempts; a policy must bound its retries"
            )
        finite = self.losses.finite() and all(run.candidate_finite() for run in runs)
        if not finite:
            return self.nonfinite()
        for run in runs:
            run.commit()
        for (policy, members), attempt in zip(self.policies, attempts, strict=True):
            policy.commit([run.group for run in members], attempt)
        if self.stage_count is not None:
            self.stage_count.commit(runs)
        return "accepted"

    def rebind(self, plan: StepPlan, group_plans: Sequence[GroupPlan]) -> None:
        """Execute ``plan`` from here on (a plan of the same family, chosen after stage 1)."""
        self.plan = plan
        for run, group_plan in zip(self.runs, group_plans, strict=True):
            run.rebind(group_plan)

    def steps_representable(self) -> bool:
        """Whether every group's h, times the plan's coefficients, is finite in its dtype (a larger
        one would overflow the parameters' type in the first update)."""
        bound = self.plan.coefficient_bound
        return all(math.isfinite(run.h) and abs(run.h) * bound <= run.largest_value for run in self.runs)

    def unweighted_direction_finite(self, stage: int) -> bool:
        """Whether d_i is finite where b_i = 0 (else True, unread). Such a stage reaches θ_{n+1} =
        θ_n - h Σ b_j d_j only through the later stage points θ_n - h Σ_j a_kj d_j, where a
        saturating loss can turn a non-finite point into a finite loss and gradient, so the
        candidate's finiteness does not reveal it; a stage with b_i != 0 reaches θ_{n+1} linearly
        and the candidate's check covers it. One read of d_i."""
        if self.plan.tableau.b[stage] != 0.0:
            return True
        return all(run.ops.all_finite(run.directions[stage]) for run in self.runs)

    def first_directions_finite(self) -> bool:
        return all(run.ops.all_finite(run.directions[0]) for run in self.runs)

    def attempt(self) -> Program:
        """Stages 2..s from the stored stage 1 at the runs' h; the parameters then hold the
        candidate θ_{n+1}. Returns the loss there when a policy asked for it."""
        runs, plan = self.runs, self.plan
        for run in runs:
            run.restore_theta0()
            run.start_attempt()
            run.measure(run.needs.norms, 0)
        for stage in range(1, plan.stages):
            for run in runs:
                run.move_to_stage(stage)
            self.losses.append((yield "stage"))
            yield from self.record(runs, stage)
            if not self.unweighted_direction_finite(stage):
                self.losses.fail(len(self.losses) - 1)
            for run in runs:
                run.accumulate(stage)
                run.measure(run.needs.norms, stage)
        for run in runs:
            run.write_candidate()
        if not plan.evaluate_candidate:
            return None
        loss = yield "candidate"
        if loss is None:
            raise RuntimeError(
                "a step-size policy in use needs the loss at θ_{n+1}; a stage-wise step given no loss "
                "cannot provide it: pass step(closure) or step(loss=loss) at each call"
            )
        self.losses.append(loss)
        return loss_value(loss)

    def record(self, targets: Sequence[GroupRun], stage: int | None) -> Program:
        """Each target's direction d = P_n q at the current point, from the gradients of the
        evaluation just made (``stage=None``: a probe). The IGR term evaluates once more."""
        raw = [run.gradients() for run in self.runs]
        if self.plan.igr:
            gradients = yield from igr_fields(self.runs, targets, raw, stage, self.losses)
        else:
            gradients = raw
        return [
            run.record_direction(stage, gradient, signed_in_place=self.plan.igr)
            for run, gradient in zip(self.runs, gradients, strict=True)
            if run in targets
        ]

    def probe(self, members: Sequence[GroupRun], request: ProbeRequest) -> Program:
        """One evaluation at θ_n - ε d̂ on the requested groups, d̂ = d_1/‖d_1‖ over them together."""
        probing = [members[i] for i in request.groups]
        direction_sq = sum(float(run.ops.sum_squares(run.directions[0])) for run in probing)
        if direction_sq == 0.0:
            return ProbeResult(request.eps, 0.0, 0.0)
        if not math.isfinite(direction_sq):
            self.losses.append(math.nan)  # d_1 is not finite: the step fails as non-finite
            return ProbeResult(request.eps, direction_sq, math.nan)
        first = [run.directions[0] for run in probing]
        probes = yield from self.evaluate_displaced(probing, first, -request.eps / math.sqrt(direction_sq))
        difference_sq = sum(
            float(run.ops.sum_squared_difference(d, run.directions[0]))
            for run, d in zip(probing, probes, strict=True)
        )
        if not math.isfinite(difference_sq):
            self.losses.append(math.nan)  # the probe's gradient is not finite: so is the step
        return ProbeResult(request.eps, direction_sq, difference_sq)

    def evaluate_displaced(
        self, targets: Sequence[GroupRun], vectors: Sequence[Any], alpha: float
    ) -> Program:
        """The targets' directions at θ_n + α·v (one ``"probe"`` evaluation, its loss counted with the
        step's); the targets are back at θ_n afterwards, however the evaluation ends."""
        for run, vector in zip(targets, vectors, strict=True):
            run.displace(vector, alpha)
        try:
            self.losses.append((yield "probe"))
            return (yield from self.record(targets, None))
        finally:
            for run in targets:
                run.restore_theta0()

    def report(
        self, policy: StepSizePolicy, members: Sequence[GroupRun], index: int, candidate_loss: float | None
    ) -> Attempt:
        """The values of the attempt just made, for ``policy``'s groups."""
        finite = self.losses.finite(start=1)
        errors = []
        for run in members:
            if not run.needs.error_estimate:
                errors.append(None)
            elif finite:
                errors.append(run.scaled_error(*policy.tolerances(run.group)))
            else:
                errors.append(math.inf)
        return Attempt(
            index=index,
            h=tuple(run.h for run in members),
            norms=tuple(run.norms for run in members),
            scaled_error=tuple(errors),
            finite=finite,
            loss=loss_value(self.losses.values[0]),
            candidate_loss=candidate_loss,
            tableau=self.plan.tableau,
        )

    def nonfinite(self) -> str:
        self.restore()
        if self.on_nonfinite == "skip":
            return "skipped"
        raise NonFiniteStepError(
            "a non-finite loss, stage direction or update occurred during the Runge–Kutta step "
            f"(losses of its evaluations: {[loss_value(loss) for loss in self.losses.values]}); "
            "the parameters were restored to θ_n. Lower lr, use an adaptive lr_policy, or pass "
            "on_nonfinite='skip'"
        )
