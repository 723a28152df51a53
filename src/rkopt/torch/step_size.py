"""How each param group picks its step h (the ``lr_policy`` group key).

- ``"fixed"``: h = lr.
- ``"dal"``: DAL-p, h = lr / (1 + (lr/2) ρ^p), ρ the curvature of the (preconditioned) field along
  itself (METHOD §2.2), estimated by a finite difference (one extra closure call per step) or, for
  free, from stages 1 and 2 of the previous step.
- ``"error_control"``: accept or reject each step by the embedded error estimate, next h from a
  PI controller, capped by lr (METHOD §2.4).

A policy acts on all groups that use it at once, because a closure call evaluates every group.
Per-step results live in the group dict (``h``, ``dal_rho``, ``dal_rho_next``, ``ec_error``,
``ec_h_next``) so that they are observable and saved by ``state_dict``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from rkopt.core.control import PIController, dal_step_size
from rkopt.core.tableau import ButcherTableau

if TYPE_CHECKING:
    from rkopt.torch.runge_kutta import GroupRun


class StepSizePolicy:
    """Fixed step: h = lr. Base class of the adaptive policies."""

    name: ClassVar[str] = "fixed"
    hyperparameters: ClassVar[dict[str, Any]] = {}

    def validate(self, group: Mapping[str, Any], tableau: ButcherTableau) -> None:
        """Raise ``ValueError`` naming the key if ``group`` cannot use this policy."""

    def keep_until(self, tableau: ButcherTableau) -> dict[int, int]:
        """Stage directions that must outlive this policy's own reads or extra closure calls (which
        evaluate every group, so the optimizer applies this to all groups): {stage: until stage}."""
        return {}

    def choose(self, runs: Sequence[GroupRun], probe: Callable[[Sequence[GroupRun]], float]) -> None:
        """Set ``run.h`` for each run, after stage 1; ``probe(runs)`` measures ρ for one closure call."""
        for run in runs:
            run.h = run.group["lr"]

    def observe(self, runs: Sequence[GroupRun], stage: int) -> None:
        """Called once the directions of ``stage`` (0-based) are known for every run."""

    def judge(self, runs: Sequence[GroupRun]) -> bool:
        """Whether the attempted step is accepted."""
        return True

    def shrink(self, runs: Sequence[GroupRun]) -> None:
        """Set a smaller ``run.h`` for a retry after ``judge`` rejected the attempt."""

    def commit(self, runs: Sequence[GroupRun]) -> None:
        """Record what this step measured, once it is accepted."""


def _number(
    group: Mapping[str, Any], key: str, low: float, high: float = math.inf, *, open_low: bool = False
) -> None:
    value = group[key]
    inside = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and ((value > low if open_low else value >= low) and value <= high)
    )
    if not inside:
        bracket = "(" if open_low else "["
        raise ValueError(f"{key} must be a number in {bracket}{low}, {high}], got {value!r}")


class DriftAdjusted(StepSizePolicy):
    """DAL-p: h = c / (1 + (c/2) ρ^p) with c = lr.

    ρ = ‖J_f d‖ / ‖d‖, d the step's (preconditioned) descent direction, measured jointly over the
    parameters of the groups that share an estimator. ``dal_estimator="finite_difference"`` probes
    ρ = ‖d(θ_n - ε d/‖d‖) - d(θ_n)‖ / ε each step (one extra closure call, counted); ``"free"``
    reuses ρ = ‖d_2 - d_1‖ / ‖θ_2 - θ_n‖ measured on the previous step's first two stages (θ_2 its
    second stage point, so no extra call; kept in ``dal_rho_next``) and falls back to the probe
    when no previous estimate exists (the first step). ``dal_rho`` holds the ρ that set ``h``.
    """

    name = "dal"
    hyperparameters = {"dal_power": 1.0, "dal_estimator": "free", "dal_fd_eps": 1e-3}

    def __init__(self) -> None:
        self._difference_sq = 0.0
        self._displacement_sq = 0.0
        self._rho: dict[int, float] = {}

    def validate(self, group, tableau) -> None:
        _number(group, "dal_power", 0.0, open_low=True)
        _number(group, "dal_fd_eps", 0.0, open_low=True)
        if group["dal_estimator"] not in ("free", "finite_difference"):
            raise ValueError(
                f"dal_estimator must be 'free' or 'finite_difference', got {group['dal_estimator']!r}"
            )
        if group["dal_estimator"] == "free" and (tableau.stages < 2 or tableau.a[1][0] == 0.0):
            raise ValueError(
                f"dal_estimator='free' reads the curvature from stages 1 and 2 and needs a21 != 0; "
                f"tableau {tableau.name!r} has none: use dal_estimator='finite_difference'"
            )

    def keep_until(self, tableau) -> dict[int, int]:
        return {0: 2}  # the free estimate reads d_1 at stage 2; a probe call comes after stage 1

    def choose(self, runs, probe) -> None:
        self._difference_sq = self._displacement_sq = 0.0
        need_probe = [
            run
            for run in runs
            if run.group["dal_estimator"] == "finite_difference" or run.group.get("dal_rho_next") is None
        ]
        probed = probe(need_probe) if need_probe else None
        self._rho = {id(run): probed if run in need_probe else run.group["dal_rho_next"] for run in runs}
        for run in runs:
            run.h = dal_step_size(run.group["lr"], self._rho[id(run)], run.group["dal_power"])

    def observe(self, runs, stage) -> None:
        if stage == 0:  # a new attempt: only the accepted one counts
            self._difference_sq = self._displacement_sq = 0.0
        if stage != 1:
            return
        for run in runs:
            if run.group["dal_estimator"] == "free":
                first, second = run.directions[0], run.directions[1]
                step = run.h * run.tableau.a[1][0]
                self._difference_sq += float(run.ops.sum_squared_difference(second, first))
                self._displacement_sq += step * step * float(run.ops.sum_squares(first))

    def commit(self, runs) -> None:
        free = 0.0
        if self._displacement_sq > 0.0:
            free = math.sqrt(self._difference_sq / self._displacement_sq)
        for run in runs:
            run.group["dal_rho"] = self._rho[id(run)]
            if run.group["dal_estimator"] == "free":
                run.group["dal_rho_next"] = free


class ErrorControl(StepSizePolicy):
    """Embedded-pair error control: accept iff ‖e / (atol + rtol·max(|θ_n|, |θ_{n+1}|))‖_rms <= 1.

    Rejected steps restore θ_n and retry on the same minibatch with h shrunk by the PI controller;
    after ``max_retries`` rejections the last (smallest) attempt is accepted
    (``on_max_retries="accept"``) or ``StepRejectedError`` is raised (``"raise"``). A non-finite
    loss at a later stage or a non-finite error estimate counts as a rejection.
    """

    name = "error_control"
    hyperparameters = {
        "atol": 1e-5,
        "rtol": 1e-2,
        "max_retries": 10,
        "on_max_retries": "accept",
        "safety": 0.9,
        "min_factor": 0.2,
        "max_factor": 10.0,
    }

    def __init__(self) -> None:
        self._errors: dict[int, float] = {}

    def validate(self, group, tableau) -> None:
        if not tableau.is_embedded:
            raise ValueError(
                f"lr_policy='error_control' needs an embedded pair; tableau {tableau.name!r} has "
                "none: use e.g. 'dormand_prince', 'bogacki_shampine', 'tsitouras' or 'heun_euler'"
            )
        _number(group, "atol", 0.0)
        _number(group, "rtol", 0.0)
        if group["atol"] == 0.0 and group["rtol"] == 0.0:
            raise ValueError("atol and rtol are both 0: the error tolerance must be positive")
        if not isinstance(group["max_retries"], int) or group["max_retries"] < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {group['max_retries']!r}")
        if group["on_max_retries"] not in ("accept", "raise"):
            raise ValueError(f"on_max_retries must be 'accept' or 'raise', got {group['on_max_retries']!r}")
        self.controller(group, tableau)  # validates safety and the factor bounds

    @staticmethod
    def controller(group: Mapping[str, Any], tableau: ButcherTableau) -> PIController:
        return PIController(
            error_order=tableau.error_order,
            safety=group["safety"],
            min_factor=group["min_factor"],
            max_factor=group["max_factor"],
        )

    def keep_until(self, tableau) -> dict[int, int]:
        return {0: tableau.stages}  # a retry reuses the first stage

    def choose(self, runs, probe) -> None:
        for run in runs:
            cap = run.group["lr"]
            proposed = run.group.get("ec_h_next")
            run.h = cap if proposed is None else min(cap, proposed)

    def judge(self, runs) -> bool:
        self._errors = {}
        for run in runs:
            self._errors[id(run)] = run.scaled_error() if run.stages_finite() else math.inf
        return all(error <= 1.0 for error in self._errors.values())

    def shrink(self, runs) -> None:
        for run in runs:  # groups within tolerance keep their h
            factor = self.controller(run.group, run.tableau).factor(self._errors[id(run)], None)
            run.h *= min(1.0, factor)

    def commit(self, runs) -> None:
        for run in runs:
            error = self._errors[id(run)]
            controller = self.controller(run.group, run.tableau)
            run.group["ec_h_next"] = run.h * controller.factor(error, run.group.get("ec_error"))
            run.group["ec_error"] = error


POLICIES: dict[str, type[StepSizePolicy]] = {
    policy.name: policy for policy in (StepSizePolicy, DriftAdjusted, ErrorControl)
}
"""The ``lr_policy`` values and their classes."""


def policy_hyperparameters() -> dict[str, Any]:
    """The group keys (with defaults) of every step-size policy."""
    keys: dict[str, Any] = {}
    for policy in POLICIES.values():
        keys.update(policy.hyperparameters)
    return keys
