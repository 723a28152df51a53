"""From param groups to a step's program: the plans, kept while their keys hold.

The shared :class:`~rkopt.core.plan.StepPlan` follows from the tableau and what every group's
step-size policy needs (a policy's extra evaluations serve every group, so every group keeps the
directions any policy reads past them). Each group with gradients gets a
:class:`~rkopt.torch.group_run.GroupRun` executing its :class:`~rkopt.core.plan.GroupPlan`, with
its vector field and update rule; it is rebuilt only when its key (the group, its parameters with
gradients, the shared plan and the plan-shaping options) changes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from rkopt.core.plan import GroupPlan, Method, StepPlan, butcher_tableau, get_method
from rkopt.core.policies import PolicyNeeds, StepSizePolicy, get_policy
from rkopt.core.spectral import AutoChebyshev
from rkopt.torch._ops import list_ops
from rkopt.torch.config import group_options
from rkopt.torch.engine import StepProgram
from rkopt.torch.field import VectorField
from rkopt.torch.group_run import GroupRun
from rkopt.torch.preconditioners import get_preconditioner
from rkopt.torch.stage_count import StageCount
from rkopt.torch.update_rules import UpdateRule, update_rule

SPECTRAL_PROBES = PolicyNeeds(probes=True)
"""What an automatic stage count needs of every plan: d_1 kept past the estimate's evaluations."""


def step_plan(method: Method, groups: Sequence[Mapping[str, Any]], needs: Sequence[PolicyNeeds]) -> StepPlan:
    """The plan every group shares."""
    return StepPlan.for_needs(method, needs, igr=any(group["igr"] > 0 for group in groups))


def group_parts(
    group: Mapping[str, Any], plan: StepPlan, need: PolicyNeeds, probes: bool
) -> tuple[GroupPlan, VectorField, UpdateRule]:
    """A group's plan, vector field and update rule (``probes``: some policy in use probes)."""
    field = VectorField(group, get_preconditioner(group["preconditioner"]), plan.igr)
    rule = update_rule(group)
    return group_plan(plan, need, probes, field, rule), field, rule


def group_plan(
    plan: StepPlan, need: PolicyNeeds, probes: bool, field: VectorField, rule: UpdateRule
) -> GroupPlan:
    """A group's part of ``plan``, given its field and update rule."""
    return plan.group(
        sums_directions=rule.sums_directions,
        error_estimate=need.error_estimate,
        identity_field=field.identity,
        statistics=field.statistics,
        probes=probes,
    )


def describe(tableau: str | Method = "rk4", **options: Any) -> GroupPlan:
    """The plan of a one-group optimizer ``RungeKutta(params, lr, tableau, **options)``
    (what the benchmarks and the documentation read)."""
    method = get_method(tableau)
    group = {**group_options().defaults(), "lr": 1.0, **options}
    need = get_policy(group["lr_policy"])().needs(group, butcher_tableau(method))
    return group_parts(group, step_plan(method, [group], [need]), need, need.probes)[0]


def warn_if_below_resolution(group: Mapping[str, Any], params: list[Tensor]) -> None:
    """Warn when a finite difference of the group (the DAL probe, the IGR term) moves each parameter
    by less than its dtype resolves: it would then measure exactly nothing (bfloat16, float16)."""
    steps = []
    if group["lr_policy"] == "dal" and group["dal_estimator"] == "finite_difference":
        steps.append(("dal_fd_eps", group["dal_fd_eps"]))
    if group["igr"] > 0:
        steps.append(("igr_eps", group["igr_eps"]))
    low = [p for p in params if p.element_size() < 4 and p.is_floating_point()]
    if not steps or not low:
        return
    count = sum(p.numel() for p in params)
    rms = math.sqrt(
        sum(float(p.detach().float().square().sum()) for p in low) / max(sum(p.numel() for p in low), 1)
    )
    resolution = max(torch.finfo(p.dtype).eps for p in low) * max(rms, 1e-30)
    for key, eps in steps:
        if eps / math.sqrt(count) < 4.0 * resolution:
            warnings.warn(
                f"{key}={eps:g} displaces each of the group's {count} parameters by about "
                f"{eps / math.sqrt(count):.2g}, below the {low[0].dtype} resolution ({resolution:.2g} at "
                "their size): the finite difference would measure nothing. Keep float32 parameters "
                f"(e.g. bfloat16 autocast of a float32 model) or raise {key}",
                RuntimeWarning,
                stacklevel=5,
            )


def _use_foreach(group: Mapping[str, Any], params: list[Tensor]) -> bool:
    if group["foreach"] is not None:
        return group["foreach"]
    return bool(params) and all(p.is_cuda for p in params)


class Planner:
    """An optimizer's plans, runs and policy objects, kept between steps."""

    def __init__(self, workspace: dict[Tensor, dict[str, Tensor]]) -> None:
        self.workspace = workspace
        self.runs: dict[int, GroupRun] = {}  # param group index -> its run
        self.plans: dict[tuple, StepPlan] = {}  # of self.method, by (s, igr, *needs)
        self.method: Method | None = None
        self.policies: dict[str, StepSizePolicy] = {}
        self.group_plans: dict[tuple, GroupPlan] = {}  # (run key, s) -> a run's plan of s stages

    def policy(self, name: str) -> StepSizePolicy:
        policy = self.policies.get(name)
        if policy is None or type(policy) is not get_policy(name):  # re-registered names too
            policy = self.policies[name] = get_policy(name)()
        return policy

    def program(
        self,
        groups: Sequence[dict[str, Any]],
        method: Method,
        state: Mapping[Tensor, dict[str, Any]],
        on_nonfinite: str,
    ) -> StepProgram:
        """The step over every group with gradients."""
        tableau = butcher_tableau(method)
        needs = [self.policy(group["lr_policy"]).needs(group, tableau) for group in groups]
        auto = isinstance(method, AutoChebyshev)
        plan = self.plan(method, None, groups, needs)
        probes = auto or any(need.probes for need in needs)
        plan_keys = group_options().plan_keys
        runs, by_policy = [], {}
        for index, (group, need) in enumerate(zip(groups, needs, strict=True)):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            run_key = (id(group), *map(id, params), id(plan), probes, need, *(group[k] for k in plan_keys))
            run = self.runs.get(index)
            if run is None or run.key != run_key:  # a run holds its params, so their ids are unique
                warn_if_below_resolution(group, params)
                group_plan, field, rule = group_parts(group, plan, need, probes)
                ops = list_ops(_use_foreach(group, params))
                run = GroupRun(group, params, group_plan, ops, field, rule, need, self.workspace, run_key)
                self.runs[index] = run
            run.begin_step(state)
            runs.append(run)
            by_policy.setdefault(group["lr_policy"], []).append(run)
        policies = [(self.policy(name), members) for name, members in by_policy.items()]
        stage_count = None
        if auto:
            stage_count = StageCount(
                method, lambda stages: self.plan(method, stages, groups, needs), self.group_plan_for, state
            )
        return StepProgram(runs, plan, policies, on_nonfinite, stage_count)

    def plan(
        self,
        method: Method,
        stages: int | None,
        groups: Sequence[Mapping[str, Any]],
        needs: list[PolicyNeeds],
    ) -> StepPlan:
        """The shared plan of ``method`` (of its s-stage method for an automatic stage count: the
        method a step starts with when ``stages`` is None), kept while the method and needs hold."""
        if method is not self.method:
            self.plans.clear()
            self.method = method
        key = (stages, any(group["igr"] > 0 for group in groups), *needs)
        plan = self.plans.get(key)
        if plan is None:
            if isinstance(method, AutoChebyshev):
                needs = [*needs, SPECTRAL_PROBES]
                method = method.provisional if stages is None else method.method(stages)
            plan = step_plan(method, groups, needs)
            if len(self.plans) < 64:  # never dropped: a run's key holds its plan's id
                self.plans[key] = plan
        return plan

    def group_plan_for(self, run: GroupRun, plan: StepPlan) -> GroupPlan:
        """``run``'s part of ``plan`` (one of the s-stage plans of an automatic stage count)."""
        key = (run.key, plan.stages)
        cached = self.group_plans.get(key)
        if cached is None or cached.step is not plan:
            if len(self.group_plans) > 256:
                self.group_plans.clear()
            cached = self.group_plans[key] = group_plan(plan, run.needs, True, run.field, run.rule)
        return cached
