"""``--stage-batches same|fresh``: which batches the closure calls of one Runge–Kutta step see, the data
consumed, and how the option enters run ids, manifests and sweeps."""

from __future__ import annotations

import itertools

import pytest
import torch

import rkopt
from rkopt.bench.config import Budget, RunConfig, SweepConfig
from rkopt.bench.records import load_run
from rkopt.bench.runner import execute_run, make_closure
from rkopt.bench.workloads import get_workload


@pytest.mark.parametrize(("fresh", "per_step"), [(False, 1), (True, 4)])
def test_closure_calls_of_a_step_see_one_batch_or_a_fresh_batch_each(environment, fresh, per_step):
    problem = get_workload("mlp-digits").problem(environment.source, {"hidden": [8]}, seed=0)
    seen: list[torch.Tensor] = []
    problem.model.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    opt = rkopt.preset("rk4", problem.model.parameters(), 0.1)
    loader = problem.task.batches(problem.data.train, 16, torch.Generator().manual_seed(0))
    drawn: list[torch.Tensor] = []

    def next_batch():
        batch = next(loader)
        drawn.append(batch[0])
        return batch

    steps = 3
    for _ in range(steps):
        opt.step(make_closure(problem.model, problem.task, opt, *next_batch(), next_batch if fresh else None))
    assert len(seen) == 4 * steps  # four stages per RK4 step
    for step in range(steps):
        inputs = seen[4 * step : 4 * step + 4]
        distinct = {x.data_ptr() for x in inputs}
        assert len(distinct) == per_step
        expected = drawn[4 * step : 4 * step + 4] if fresh else [drawn[step]] * 4
        assert all(torch.equal(x, d) for x, d in zip(inputs, expected, strict=True))
    assert len(drawn) == per_step * steps  # fresh: the loader's next batches, one per stage
    assert all(not torch.equal(a, b) for a, b in itertools.pairwise(drawn))


def _config(optimizer: str, stage_batches: str) -> RunConfig:
    return RunConfig(
        "mlp-digits",
        optimizer,
        0.1 if optimizer == "rk4" else 1e-3,
        16,
        0,
        Budget(max_grad_evals=48),
        24,
        workload_options={"hidden": [8]},
        stage_batches=stage_batches,
    )


def test_fresh_batches_consume_a_batch_per_stage_and_are_recorded(tmp_path, environment):
    same, fresh = _config("rk4", "same"), _config("rk4", "fresh")
    assert "stage_batches" not in same.to_dict()  # run ids recorded before the option stay valid
    assert fresh.to_dict()["stage_batches"] == "fresh"
    assert "_fresh_" in fresh.run_id and "fresh" not in same.run_id
    assert RunConfig.from_dict(fresh.to_dict()) == fresh
    records = {}
    for config in (same, fresh, _config("adam", "fresh")):
        outcome = execute_run(config, tmp_path, environment)
        records[config.run_id] = load_run(tmp_path / "runs" / outcome.run_id)
    same_run, fresh_run, adam_run = records.values()
    assert same_run.manifest["stage_batches"] == "same" and fresh_run.manifest["stage_batches"] == "fresh"
    assert adam_run.manifest["stage_batches"] == "same"  # a baseline ignores it
    for run in (same_run, fresh_run, adam_run):
        assert run.result["grad_evals"] == 48
    # 12 RK4 steps: one batch each (same) or four (fresh); Adam: 48 steps, one batch each
    assert [r.result["samples"] for r in (same_run, fresh_run, adam_run)] == [12 * 16, 48 * 16, 48 * 16]
    assert fresh_run.metrics[-1]["samples"] == 48 * 16
    assert fresh_run.metrics[-1]["epoch"] == pytest.approx(4 * same_run.metrics[-1]["epoch"])
    assert same_run.metrics[-1]["epoch"] == pytest.approx(12 * 16 / 1197)
    assert fresh_run.metrics[-1]["val_loss"] != same_run.metrics[-1]["val_loss"]
    assert same_run.manifest["validation_examples"] == 300
    assert same_run.manifest["validation_resolution"] == pytest.approx(1 / 300)


def test_a_sweep_runs_the_ablation_side_by_side_without_repeating_baselines():
    config = SweepConfig.from_settings(
        {
            "workload": "mlp-digits",
            "optimizer": ["rk4", "adam"],
            "lr": ["0.1"],
            "stage_batches": ["same", "fresh"],
            "seed": [0, 1],
        }
    )
    assert [(c.optimizer, c.stage_batches) for c in config.cells()] == [
        ("rk4", "same"),
        ("rk4", "fresh"),
        ("adam", "same"),
    ]
    runs = config.runs()
    assert len(runs) == 3 * 2 and len({r.run_id for r in runs}) == 6
    assert SweepConfig.from_settings({"optimizer": "rk4"}).stage_batches == ("same",)  # the default
