"""Sweeps: resume after an interruption without redoing or losing runs; worker processes; failures."""

from __future__ import annotations

import pytest
from synthetic import tiny_sweep

from rkopt.bench.config import SweepConfig
from rkopt.bench.records import RESULT, RunWriter, load_results, run_directory
from rkopt.bench.sweep import pending_runs, run_sweep


def _sweep(**changes) -> SweepConfig:
    settings = {
        "workload": "mlp-mnist1d",  # read from the .npz cache: worker processes need not import sklearn
        "workload_arg": ["hidden=[8]"],
        "optimizer": ["rk4", "sgd"],
        "lr": ["0.05,0.2"],
        "batch_size": [16],
        "seed": [0],
        "max_grad_evals": 48,
        "eval_every": 12,
    }
    return SweepConfig.from_settings({**settings, **changes})


def test_interrupted_sweep_resumes_without_redoing_or_losing_runs(tmp_path, environment, monkeypatch):
    config = _sweep()
    log = RunWriter.log
    calls = {"n": 0}

    def interrupt_in_third_run(self, record):
        calls["n"] += 1
        if calls["n"] == 2 * 5 + 3:  # 5 measurements per run: stop in the middle of the third run
            raise KeyboardInterrupt
        log(self, record)

    monkeypatch.setattr(RunWriter, "log", interrupt_in_third_run)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(config, tmp_path, environment, progress=False)
    monkeypatch.setattr(RunWriter, "log", log)

    finished = load_results(tmp_path)
    assert len(finished) == 2
    stamps = {run.path.name: (run.path / RESULT).stat().st_mtime_ns for run in finished}
    interrupted = [p for p in (tmp_path / "runs").iterdir() if not (p / RESULT).exists()]
    assert len(interrupted) == 1 and (interrupted[0] / "metrics.jsonl.partial").exists()
    assert len(pending_runs(config, tmp_path)) == 2

    summary = run_sweep(config, tmp_path, environment, progress=False)
    assert (summary.total, summary.already_finished, summary.completed, summary.failed) == (4, 2, 2, [])
    assert len(load_results(tmp_path)) == 4
    assert not list(tmp_path.rglob("*.partial"))
    for name, stamp in stamps.items():  # finished results untouched
        assert (tmp_path / "runs" / name / RESULT).stat().st_mtime_ns == stamp
    again = run_sweep(config, tmp_path, environment, progress=False)
    assert (again.already_finished, again.completed) == (4, 0)


def test_worker_processes_give_the_same_results_as_one_process(tmp_path, environment, pooled_sweep):
    config = tiny_sweep()  # run by 2 worker processes in the fixture
    single = run_sweep(config, tmp_path, environment, workers=1, progress=False)
    assert single.completed == 2
    for run in config.runs():
        a, b = (load_results(run_directory(d, run))[0] for d in (pooled_sweep, tmp_path))
        assert [{**m, "time": 0} for m in a.metrics] == [{**m, "time": 0} for m in b.metrics]
        assert len(a.metrics) == 3 and a.result["grad_evals"] == 24


def test_a_failing_run_is_reported_and_the_sweep_goes_on(tmp_path, environment):
    config = _sweep(optimizer=["sgd"], lr=["0.1"], batch_size=[16, 5000])  # 5000 > the 3500 training examples
    summary = run_sweep(config, tmp_path, environment, progress=False)
    assert summary.completed == 1
    ((run_id, error),) = summary.failed
    assert "bs5000" in run_id and "--batch-size 5000 exceeds" in error
