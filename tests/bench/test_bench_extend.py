"""``--lr-extend``: a sweep extends every lr grid past an edge winner until the winner is interior, the new
point diverges or the cap is reached; resumable; the report flags what stays at an edge."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
from synthetic import record, write

from rkopt.bench import sweep as sweep_module
from rkopt.bench.config import SweepConfig
from rkopt.bench.records import RESULT, load_results
from rkopt.bench.report import write_report
from rkopt.bench.runner import RunOutcome
from rkopt.bench.sweep import extension_runs, run_sweep


def _score(optimizer: str, lr: float) -> float | None:
    """Validation accuracy of the fake runs (None: diverged)."""
    if optimizer == "adam":  # better and better: the grid can never be wide enough
        return 0.5 + 0.1 * math.log10(lr / 1e-3)
    return None if lr > 5 else 0.9 - 0.1 * abs(math.log10(lr))  # optimum at 1, diverges above 5


@pytest.fixture
def fake_runs(monkeypatch):
    """Replace training by synthetic records (instant); returns the Counter of finished run ids."""
    finished: Counter[str] = Counter()
    calls = {"n": 0, "interrupt_at": None}

    def fake_execute_run(config, results_dir, environment, progress=False):
        calls["n"] += 1
        if calls["n"] == calls["interrupt_at"]:
            raise KeyboardInterrupt
        val = _score(config.optimizer, config.lr)
        run = write(
            results_dir, record("", 0, val=val, val_loss=1 - (val or 0), diverged=val is None, config=config)
        )
        finished[config.run_id] += 1
        return RunOutcome(config.run_id, run.result["status"], run.result["stop_reason"], run.result["final"])

    monkeypatch.setattr(sweep_module, "execute_run", fake_execute_run)
    finished.calls = calls  # type: ignore[attr-defined]
    return finished


def _config(**changes) -> SweepConfig:
    settings = {
        "workload": "mlp-digits",
        "optimizer": ["sgd", "rk4", "adam"],
        "lr": ["sgd=0.01,0.1", "rk4=10,30", "adam=1e-3,3e-3"],
        "batch_size": [16],
        "seed": [0, 1],
        "max_grad_evals": 48,
        "lr_extend": True,
        "lr_extend_max": 3,
    }
    return SweepConfig.from_settings({**settings, **changes})


def _grids(results_dir) -> dict[str, list[float]]:
    grids: dict[str, set[float]] = {}
    for run in load_results(results_dir):
        grids.setdefault(run.config.optimizer, set()).add(run.config.lr)
    return {name: sorted(lrs) for name, lrs in grids.items()}


def test_grids_extend_until_interior_or_diverged_and_the_report_flags_the_capped_one(
    tmp_path, environment, fake_runs
):
    summary = run_sweep(_config(), tmp_path, environment, progress=False)
    assert _grids(tmp_path) == {
        "sgd": [0.01, 0.1, 1.0, 10.0],  # up to 1 (better), then 10 diverged: stop
        "rk4": [0.37, 1.11, 3.33, 10.0, 30.0],  # all diverged: down until 1.11 wins inside
        "adam": [1e-3, 3e-3, 9e-3, 0.027, 0.081],  # always better upward: 3 points, the cap
    }
    assert (summary.total, summary.extension_runs, summary.completed + summary.diverged) == (28, 16, 28)
    assert set(fake_runs.values()) == {1}  # every run once

    report = write_report(tmp_path)
    summary_json = {entry["optimizer"]: entry for entry in json.loads(report.summary.read_text())}
    sgd, rk4, adam = (summary_json[name] for name in ("sgd", "rk4", "adam"))
    assert (sgd["selected_lr"], sgd["lr_at_grid_edge"], sgd["lr_bounded_by_divergence"]) == (1.0, False, True)
    assert sgd["divergence_boundary"] == 10.0
    assert (rk4["selected_lr"], rk4["lr_at_grid_edge"], rk4["lr_edge"]) == (1.11, False, None)
    assert (adam["selected_lr"], adam["lr_at_grid_edge"], adam["lr_edge"]) == (0.081, True, "high")
    assert adam["lr_grid"] == [1e-3, 3e-3, 9e-3, 0.027, 0.081]
    assert sgd["selection"]["validation_score"] == pytest.approx(0.9)
    markdown = report.markdown.read_text()
    assert "`adam` (mlp-digits, batch 16) lr 0.081 [high]" in markdown  # the selection-flags section
    assert "| mlp-digits | accuracy ≥ 0.8 | 16 | adam | 0.081 (edge) |" in report.readme_table.read_text()

    again = run_sweep(_config(), tmp_path, environment, progress=False)  # resumed: nothing to do
    assert (again.total, again.already_finished, again.extension_runs, again.completed) == (28, 28, 16, 0)
    assert set(fake_runs.values()) == {1}


def test_an_interrupted_extension_resumes_without_redoing_runs(tmp_path, environment, fake_runs):
    fake_runs.calls["interrupt_at"] = 21  # 12 initial runs, 6 in the first round, then 2 of the second
    with pytest.raises(KeyboardInterrupt):
        run_sweep(_config(), tmp_path, environment, progress=False)
    before = {run.path.name: (run.path / RESULT).stat().st_mtime_ns for run in load_results(tmp_path)}
    assert len(before) == 20
    assert len(extension_runs(_config(), tmp_path)) >= 1  # the round in progress is still to do
    summary = run_sweep(_config(), tmp_path, environment, progress=False)
    assert (summary.total, summary.already_finished, summary.completed + summary.diverged) == (28, 20, 8)
    assert set(fake_runs.values()) == {1} and len(fake_runs) == 28
    for name, stamp in before.items():
        assert (tmp_path / "runs" / name / RESULT).stat().st_mtime_ns == stamp


def test_without_lr_extend_nothing_is_added(tmp_path, environment, fake_runs):
    summary = run_sweep(_config(lr_extend=False), tmp_path, environment, progress=False)
    assert (summary.total, summary.extension_runs) == (12, 0)
    assert _grids(tmp_path)["adam"] == [1e-3, 3e-3]
