"""One run: budgets, the measurement schedule, training-only time, divergence, records on disk."""

from __future__ import annotations

import json
import time

import pytest

from rkopt.bench.config import Budget, RunConfig
from rkopt.bench.records import METRICS, PARTIAL, RESULT, load_run, run_directory
from rkopt.bench.runner import execute_run
from rkopt.bench.workloads import ClassificationTask


def _config(optimizer: str = "rk4", lr: float = 0.1, **changes) -> RunConfig:
    settings = {
        "workload": "mlp-digits",
        "optimizer": optimizer,
        "lr": lr,
        "batch_size": 16,
        "seed": 0,
        "budget": Budget(max_grad_evals=96),
        "eval_every": 24,
        "workload_options": {"hidden": [16]},
    }
    return RunConfig(**{**settings, **changes})


def test_grad_eval_budget_and_measurement_schedule(tmp_path, environment):
    rk4 = execute_run(_config("rk4"), tmp_path, environment)
    adam = execute_run(_config("adam", 1e-3), tmp_path, environment)
    assert rk4.status == adam.status == "completed"
    assert rk4.stop_reason == "max_grad_evals"
    for outcome, steps in ((rk4, 24), (adam, 96)):
        record = load_run(tmp_path / "runs" / outcome.run_id)
        assert record.result["grad_evals"] == 96 and record.result["steps"] == steps
        assert [m["grad_evals"] for m in record.metrics] == [0, 24, 48, 72, 96]  # same budgets for both
        assert [m["step"] for m in record.metrics] == [0, steps // 4, steps // 2, 3 * steps // 4, steps]
        first, last = record.metrics[0], record.metrics[-1]
        assert first["train_loss"] is None and first["time"] == 0.0
        assert 0.0 < last["test_accuracy"] <= 1.0 and last["val_loss"] > 0 and last["train_loss"] > 0
        assert last["h"] == last["lr"] == record.config.lr
        assert record.manifest["workload"]["sizes"] == {"train": 1197, "validation": 300, "test": 300}
        assert record.manifest["metric"] == "accuracy" and record.manifest["target"] == 0.9
        assert record.manifest["versions"]["torch"] and record.manifest["machine"]["cpu_count"]


def test_step_and_time_budgets(tmp_path, environment):
    steps = execute_run(_config(budget=Budget(steps=5)), tmp_path, environment)
    assert (steps.final["step"], steps.final["grad_evals"], steps.stop_reason) == (5, 20, "steps")
    timed = execute_run(_config("sgd", budget=Budget(max_seconds=0.2)), tmp_path, environment)
    assert timed.stop_reason == "max_seconds"
    assert 0.2 <= timed.final["time"] < 1.0


def test_wall_time_excludes_evaluation(tmp_path, environment, monkeypatch):
    evaluate = ClassificationTask.evaluate

    def slow_evaluate(self, *args):
        time.sleep(0.25)
        return evaluate(self, *args)

    monkeypatch.setattr(ClassificationTask, "evaluate", slow_evaluate)
    outcome = execute_run(_config(), tmp_path, environment)
    result = load_run(tmp_path / "runs" / outcome.run_id).result
    assert result["eval_seconds"] >= 5 * 2 * 0.25  # 5 measurements × (validation + test)
    assert result["train_seconds"] < 1.0
    assert outcome.final["time"] == result["train_seconds"]


@pytest.mark.parametrize(("optimizer", "message"), [("sgd", "non-finite training loss"), ("rk4", "Runge")])
def test_divergence_ends_the_run_and_is_recorded(tmp_path, environment, optimizer, message):
    outcome = execute_run(_config(optimizer, lr=1e8), tmp_path, environment)
    assert outcome.status == "diverged" and outcome.stop_reason == "diverged"
    record = load_run(tmp_path / "runs" / outcome.run_id)
    assert record.diverged
    divergence = record.result["divergence"]
    assert message in divergence["message"]
    assert divergence["grad_evals"] < 96
    assert record.metrics[-1]["diverged"] is True and record.metrics[-1]["step"] == divergence["step"]
    text = (record.path / METRICS).read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON


def test_finished_runs_are_not_redone_and_interrupted_ones_are(tmp_path, environment):
    config = _config()
    first = execute_run(config, tmp_path, environment)
    run_dir = run_directory(tmp_path, config)
    stamp = (run_dir / RESULT).stat().st_mtime_ns
    again = execute_run(config, tmp_path, environment)
    assert again.skipped and again.final == first.final
    assert (run_dir / RESULT).stat().st_mtime_ns == stamp
    (run_dir / RESULT).unlink()  # as if killed before finishing: the partial log is left behind
    (run_dir / METRICS).rename(run_dir / PARTIAL)
    redone = execute_run(config, tmp_path, environment)
    assert not redone.skipped
    assert {**redone.final, "time": 0} == {**first.final, "time": 0}  # seeded: the same numbers again
    assert not (run_dir / PARTIAL).exists()
    assert len((run_dir / METRICS).read_text().splitlines()) == 5
    assert json.loads((run_dir / RESULT).read_text())["status"] == "completed"
