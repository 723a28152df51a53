"""Learning-rate selection on validation data, test figures over seeds, equal budgets, time to target."""

from __future__ import annotations

from pathlib import Path

import pytest

from rkopt.bench.analysis import Stat, first_reaching, value_at, variants
from rkopt.bench.config import Budget, RunConfig
from rkopt.bench.records import RunRecord


def _run(
    optimizer: str,
    lr: float,
    seed: int,
    curve: list[tuple[int, float, float, float]],
    metric: str = "accuracy",
    diverged_at: int | None = None,
) -> RunRecord:
    """A finished run; ``curve``: (grad_evals, seconds, validation, test) per measurement."""
    config = RunConfig("toy", optimizer, lr, 8, seed, Budget(max_grad_evals=100), 10)
    metrics = [
        {"step": g, "grad_evals": g, "time": t, f"val_{metric}": v, f"test_{metric}": x}
        for g, t, v, x in curve
    ]
    divergence = None
    if diverged_at is not None:
        divergence = {"step": diverged_at, "grad_evals": diverged_at, "time": 0.5, "message": "nan"}
        metrics.append({**divergence, "diverged": True})
    result = {
        "status": "diverged" if divergence else "completed",
        "grad_evals": metrics[-1]["grad_evals"],
        "train_seconds": metrics[-1]["time"],
        "divergence": divergence,
    }
    manifest = {
        "config": config.to_dict(),
        "metric": metric,
        "higher_is_better": metric == "accuracy",
        "target": 0.8 if metric == "accuracy" else 5.0,
    }
    return RunRecord(Path("."), manifest, metrics, result)


def test_best_lr_is_chosen_on_validation_and_reported_on_test():
    runs = [
        # lr 0.1: best on validation, worse on test; lr 1.0: the reverse. Selection must not peek at test.
        _run("rk4", 0.1, 0, [(0, 0, 0.1, 0.1), (10, 1.0, 0.9, 0.7)]),
        _run("rk4", 0.1, 1, [(0, 0, 0.1, 0.1), (10, 1.0, 0.8, 0.8)]),
        _run("rk4", 1.0, 0, [(0, 0, 0.1, 0.1), (10, 1.0, 0.7, 0.95)]),
        _run("rk4", 1.0, 1, [(0, 0, 0.1, 0.1), (10, 1.0, 0.7, 0.95)]),
        # lr 3.0 has the best validation seed but one diverged seed: it counts as the worst value.
        _run("rk4", 3.0, 0, [(0, 0, 0.1, 0.1), (10, 1.0, 0.99, 0.99)]),
        _run("rk4", 3.0, 1, [(0, 0, 0.1, 0.1)], diverged_at=4),
    ]
    (members,) = variants(runs).values()
    (variant,) = members
    assert variant.best.lr == 0.1
    assert variant.best.test.mean == pytest.approx(0.75) and variant.best.test.n == 2
    assert variant.best.validation.mean == pytest.approx(0.85)
    assert [r.diverged for r in variant.learning_rates] == [0, 0, 1]


def test_perplexity_is_selected_lowest():
    runs = [
        _run("adam", 1e-3, 0, [(0, 0, 50, 50), (10, 1, 8, 8)], metric="perplexity"),
        _run("adam", 1e-2, 0, [(0, 0, 50, 50), (10, 1, 4, 4.5)], metric="perplexity"),
    ]
    (variant,) = next(iter(variants(runs).values()))
    assert variant.best.lr == 1e-2
    assert first_reaching(runs[1], 5.0)["grad_evals"] == 10
    assert first_reaching(runs[0], 5.0) is None


def test_equal_budgets_and_time_to_target():
    fast = [(0, 0.0, 0.1, 0.1), (10, 1.0, 0.85, 0.85), (20, 2.0, 0.9, 0.9)]
    slow = [(0, 0.0, 0.1, 0.1), (10, 3.0, 0.7, 0.7), (20, 6.0, 0.95, 0.95)]
    runs = [_run("sgd", 0.1, 0, fast), _run("rk4", 0.1, 0, slow)]
    (members,) = variants(runs).values()
    by_name = {v.optimizer: v for v in members}
    # equal gradient budget: both at 20; equal time: the faster optimizer's total, 2 s
    assert by_name["sgd"].at_equal_grad_evals.mean == 0.9 and by_name["rk4"].at_equal_grad_evals.mean == 0.95
    assert by_name["sgd"].at_equal_time.mean == 0.9 and by_name["rk4"].at_equal_time.mean == 0.1
    assert by_name["sgd"].to_target("time").mean == 1.0  # target 0.8 first met at 10 evals, 1 s
    assert by_name["rk4"].to_target("time").mean == 6.0
    assert by_name["rk4"].to_target("grad_evals").mean == 20


def test_value_at_a_budget_before_and_after_divergence():
    run = _run("sgd", 9.0, 0, [(0, 0.0, 0.1, 0.1), (2, 0.2, 0.3, 0.3)], diverged_at=4)
    assert value_at(run, "grad_evals", 3) == 0.3
    assert value_at(run, "grad_evals", 10) is None


def test_stat_formatting():
    assert Stat.of([1.0, None, float("nan")]).format() == "1"
    assert Stat.of([]).format() == "–"
    assert Stat.of([0.9, 0.8]).format() == "0.85 ± 0.071"
