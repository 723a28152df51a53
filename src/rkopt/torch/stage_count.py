"""The stage count of a step of an :class:`~rkopt.core.spectral.AutoChebyshev` method.

After stage 1 and the step-size policies have set h, :meth:`StageCount.choose` estimates the
spectral radius ρ of the field's Jacobian on the step's batch when the estimate is due (a power
iteration on finite differences, one ``"probe"`` evaluation per iteration, see
:mod:`rkopt.core.spectral`), takes the s the family asks for, and rebinds the program to the plan
of the s-stage method. Every such plan keeps d_1 in slot 0, so stage 1, already evaluated, is the
first stage of whichever s is chosen. The estimate's eigenvector is written to the parameters' state
only when the step is accepted (until then it lives in the work buffer ``spectral_next``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any, Protocol

from torch import Tensor

from rkopt.core.plan import GroupPlan, StepPlan
from rkopt.core.spectral import OBSERVABLES, SPECTRAL_VECTOR, AutoChebyshev
from rkopt.torch._ops import Combination
from rkopt.torch.group_run import GroupRun

Program = Generator[str, Any, Any]


class StepProgram(Protocol):
    """What a stage count uses of :class:`rkopt.torch.engine.StepProgram`."""

    runs: list[GroupRun]
    losses: Any

    def evaluate_displaced(
        self, targets: Sequence[GroupRun], vectors: Sequence[Any], alpha: float
    ) -> Program: ...

    def rebind(self, plan: StepPlan, group_plans: Sequence[GroupPlan]) -> None: ...


class StageCount:
    """Chooses s for the steps of ``family``; ``plan_for(s)`` is the shared plan of the s-stage
    method and ``group_plan_for(run, plan)`` a group's part of it (both cached by the caller);
    ``state`` is the optimizer's per-parameter state."""

    def __init__(
        self,
        family: AutoChebyshev,
        plan_for: Callable[[int], StepPlan],
        group_plan_for: Callable[[GroupRun, StepPlan], GroupPlan],
        state: Mapping[Tensor, dict[str, Any]],
    ) -> None:
        self.family, self.plan_for, self.group_plan_for = family, plan_for, group_plan_for
        self.state = state
        self.choice: tuple[int, float, int] | None = None  # (s, ρ, age) of the step in progress
        self.eigenvectors: list[Any] | None = None  # per run, the estimate's w (None: not estimated)

    def choose(self, program: StepProgram) -> Program:
        """Estimate ρ if due, pick s and rebind ``program`` to its plan (the parameters at θ_n)."""
        group = program.runs[0].group  # every group holds the same, joint estimate
        rho, age = group.get("spectral_radius"), group.get("spectral_age")
        if self.family.refresh_due(rho, age):
            rho, age = (yield from self.estimate(program, rho)), 0
        else:
            age += 1
        if not math.isfinite(rho):
            return  # a non-finite probe: the step fails as non-finite before any attempt
        h = max(abs(run.h) for run in program.runs)
        stages = self.family.stages(h, rho)
        if self.family.saturated(stages, h, rho):
            warnings.warn(
                f"h = {h:g} with spectral radius ≈ {rho:.4g} needs more than max_stages={stages} "
                "Runge–Kutta–Chebyshev stages to be stable: lower lr or raise AutoStages.max_stages",
                RuntimeWarning,
                stacklevel=2,
            )
        plan = self.plan_for(stages)
        program.rebind(plan, [self.group_plan_for(run, plan) for run in program.runs])
        self.choice = (stages, rho, age)

    def estimate(self, program: StepProgram, previous: float | None) -> Program:
        """ρ ≈ ‖w_k‖, w_k = (d(θ_n) - d(θ_n - ε v̂_k)) / ε, v_{k+1} = w_k, over every group's
        parameters together, from the last eigenvector (else d_1); θ_n is restored afterwards."""
        runs, auto = program.runs, self.family.auto
        vectors = self.saved_eigenvectors(runs)
        if vectors is None:
            vectors, previous = [run.directions[0] for run in runs], None
        rho = previous
        for _ in range(auto.iterations):
            norm_sq = sum(float(run.ops.sum_squares(v)) for run, v in zip(runs, vectors, strict=True))
            if not math.isfinite(norm_sq):
                return _nonfinite(program)
            if norm_sq == 0.0:
                return 0.0 if rho is None else rho  # d_1 = 0, or J v̂ = 0: nothing more to measure
            probes = yield from program.evaluate_displaced(runs, vectors, -auto.fd_eps / math.sqrt(norm_sq))
            vectors = [_difference(run, d, auto.fd_eps) for run, d in zip(runs, probes, strict=True)]
            self.eigenvectors = vectors
            estimate = math.sqrt(
                sum(float(run.ops.sum_squares(w)) for run, w in zip(runs, vectors, strict=True))
            )
            if not math.isfinite(estimate):
                return _nonfinite(program)
            converged = rho is not None and abs(estimate - rho) <= auto.tolerance * estimate
            rho = estimate
            if converged:
                break
        return rho

    def saved_eigenvectors(self, runs: Sequence[GroupRun]) -> list[Any] | None:
        """The last estimate's w of every run's parameters (None unless all have a finite one)."""
        vectors = []
        for run in runs:
            saved = [self.state.get(p, {}).get(SPECTRAL_VECTOR) for p in run.owners]
            if any(v is None for v in saved) or not run.ops.all_finite(saved):
                return None
            vectors.append(saved)
        return vectors

    def commit(self, runs: Sequence[GroupRun]) -> None:
        """Record the accepted step's s, ρ and the estimate's age in every group (the keys
        :data:`rkopt.core.spectral.OBSERVABLES`), and the estimate's eigenvector in the state."""
        for run in runs:
            run.group.update(zip(OBSERVABLES, self.choice, strict=True))
        if self.eigenvectors is None:
            return
        for run, vectors in zip(runs, self.eigenvectors, strict=True):
            for p, w in zip(run.owners, vectors, strict=True):
                entry = self.state[p]
                if SPECTRAL_VECTOR in entry:
                    entry[SPECTRAL_VECTOR].copy_(w)
                else:
                    entry[SPECTRAL_VECTOR] = w.clone()


def _difference(run: GroupRun, probe: Any, eps: float) -> list[Tensor]:
    """w = (d_1 - probe) / ε, in the run's buffer ``spectral_next``."""
    w = run.buffer("spectral_next")
    Combination(run.ops, w, None).add(run.directions[0], 1.0 / eps).add(probe, -1.0 / eps).materialize()
    return w


def _nonfinite(program: StepProgram) -> float:
    program.losses.append(math.nan)  # the field is not finite there: the step fails as non-finite
    return math.nan
