"""rkopt.core.plan: the step plan as data, and the torch binding executing exactly that plan."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rkopt
from rkopt.core.plan import StepPlan
from rkopt.core.policies import PolicyNeeds
from rkopt.torch.planning import describe

RK4 = rkopt.get_tableau("rk4")
DOPRI = rkopt.get_tableau("dormand_prince")


def test_rk4_reads_every_direction_straight_from_the_gradient():
    plan = StepPlan.build(RK4)
    assert plan.stages == 4
    assert [point.directions for point in plan.points] == [(), ((0, 0.5),), ((1, 0.5),), ((2, 1.0),)]
    assert plan.candidate is None and not any(point.recurrent for point in plan.points)
    assert plan.slots == (None, None, None, None) and plan.slot_count == 0
    assert plan.released_at == ((), (0,), (1,), (2,))
    assert plan.evaluations_per_attempt == 4
    group = plan.group(sums_directions=False, error_estimate=False, identity_field=True)
    assert group.update == "theta"
    assert group.update_terms == ((0, 1 / 6), (1, 1 / 3), (2, 1 / 3))
    assert group.last_weight == 1 / 6
    assert group.buffers == ("theta0", "accumulator")


def test_fixed_dormand_prince_skips_its_fsal_stage_and_error_control_evaluates_it():
    assert StepPlan.build(DOPRI).stages == 6
    plan = StepPlan.for_needs(DOPRI, [PolicyNeeds(error_estimate=True, retries=True)])
    assert plan.stages == 7 and plan.error_estimate
    assert plan.slots[0] is not None  # a retry reuses d_1
    group = plan.group(sums_directions=False, error_estimate=True, identity_field=True)
    assert group.candidate_is_last_point and group.update == "none"
    assert [j for j, _ in group.error_terms] == [0, 2, 3, 4, 5, 6]
    assert "accumulator" not in group.buffers and "error" in group.buffers
    with_momentum = plan.group(sums_directions=True, error_estimate=True, identity_field=True)
    assert not with_momentum.candidate_is_last_point and with_momentum.update == "sum"


def test_needs_decide_which_directions_live_longer():
    assert StepPlan.for_needs(RK4, [PolicyNeeds(probes=True)]).slots == (0, None, None, None)
    assert StepPlan.for_needs(RK4, [PolicyNeeds(norms=((3, 1),))]).slots == (None, 0, None, None)
    assert StepPlan.for_needs(RK4, [PolicyNeeds(norms=((2, None),))]).slots == (None,) * 4
    retry = StepPlan.for_needs(RK4, [PolicyNeeds(retries=True)])
    assert retry.slots == (0, None, None, None) and all(0 not in r for r in retry.released_at)
    merged = StepPlan.for_needs(RK4, [PolicyNeeds(probes=True), PolicyNeeds(norms=((3, 1),))])
    assert merged.slots == (0, 1, None, None)  # d_1 (until stage 2) and d_2 (stage 2 to 4) overlap
    counted = StepPlan.for_needs(RK4, [PolicyNeeds(evaluate_candidate=True)], igr=True)
    assert counted.evaluations_per_direction == 2 and counted.evaluations_per_attempt == 9


def test_a_group_error_estimate_needs_a_plan_that_evaluates_it():
    with pytest.raises(ValueError, match="error_estimate=True"):
        StepPlan.build(DOPRI).group(sums_directions=False, error_estimate=True, identity_field=True)


def test_field_buffers_follow_the_ingredients():
    assert describe("rk4", preconditioner="adagrad").buffers == (
        "theta0",
        "accumulator",
        "scratch",
        "precond_scale",
        "precond_sum_sq",
    )
    assert describe("rk4", weight_decay=0.1, igr=0.5).buffers == (
        "theta0",
        "accumulator",
        "scratch",
        "igr_grad",
        "igr_point",
    )
    assert describe("rk4", momentum=0.9).update == "sum"


CONFIGS = [
    *(({"tableau": name}, name) for name in rkopt.TABLEAUX),
    *(
        ({"tableau": name, "lr_policy": "error_control"}, f"{name}-adaptive")
        for name, tableau in rkopt.TABLEAUX.items()
        if tableau.is_embedded
    ),
    *((dict(kwargs), f"preset-{name}") for name, kwargs in rkopt.PRESETS.items()),
    ({"tableau": "rk4", "lr_policy": "dal", "preconditioner": "rmsprop", "weight_decay": 0.1}, "dal-rms"),
    ({"tableau": "heun", "igr": 0.3, "momentum": 0.5}, "igr-momentum"),
]


@pytest.mark.parametrize(("kwargs", "label"), CONFIGS, ids=[label for _, label in CONFIGS])
def test_the_optimizer_uses_exactly_the_buffers_and_evaluations_of_its_plan(kwargs, label):
    plan = describe(**kwargs)
    theta = nn.Parameter(torch.linspace(-1.0, 1.0, 5))
    optimizer = rkopt.RungeKutta([theta], lr=1e-3, **kwargs)

    def closure():
        optimizer.zero_grad()
        loss = (theta**4).sum()
        loss.backward()
        return loss

    optimizer.step(closure)  # the first step: DAL probes, error control accepts at this lr
    assert set(optimizer._workspace[theta]) == set(plan.buffers)
    probes = plan.step.evaluations_per_direction if kwargs.get("lr_policy") == "dal" else 0
    assert optimizer.counters.grad_evals == plan.step.evaluations_per_attempt + probes
