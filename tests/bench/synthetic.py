"""Helpers of the benchmark-harness tests: synthetic finished runs (no training) and a tiny sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rkopt.bench.config import Budget, RunConfig, SweepConfig
from rkopt.bench.records import RunRecord, RunWriter, run_directory


def record(
    optimizer: str,
    lr: float,
    seed: int = 0,
    val: float | None = 0.9,
    val_loss: float = 0.3,
    test: float | None = None,
    *,
    workload: str = "toy",
    batch_size: int = 8,
    metric: str = "accuracy",
    target: float | None = 0.8,
    n_validation: int = 500,
    resolution: Any = "default",
    reach: tuple[int, float] | None = None,
    diverged: bool = False,
    stage_batches: str = "same",
    results_dir: Path = Path("."),
    config: RunConfig | None = None,
) -> RunRecord:
    """A finished run whose last measurement has validation metric ``val`` and loss ``val_loss``.

    ``reach``: (grad evals, seconds) of the measurement where the test metric first meets ``target``
    (the run ends there); ``diverged``: the run diverged after its first measurement. ``config``: the
    run's config (then ``optimizer``, ``lr``, ``seed``, ... are ignored).
    """
    config = config or RunConfig(
        workload, optimizer, lr, batch_size, seed, Budget(max_grad_evals=100), 10, stage_batches=stage_batches
    )
    seed, stage_batches = config.seed, config.stage_batches
    test = val if test is None else test
    start = {"step": 0, "grad_evals": 0, "time": 0.0, "epoch": 0.0, "samples": 0}
    untrained = 0.1 if metric == "accuracy" else 100.0
    start |= {f"val_{metric}": untrained, "val_loss": 2.3, f"test_{metric}": untrained, "test_loss": 2.3}
    evals, seconds = reach or (100, 1.0)
    end = {"step": evals, "grad_evals": evals, "time": seconds, "epoch": evals / 50, "samples": evals * 8}
    end |= {f"val_{metric}": val, "val_loss": val_loss, f"test_{metric}": test, "test_loss": val_loss}
    metrics = [start, end]
    divergence = None
    if diverged:
        divergence = {"step": 5, "grad_evals": 5, "time": 0.05, "message": "nan"}
        metrics = [start, {**divergence, "diverged": True}]
    result = {
        "status": "diverged" if diverged else "completed",
        "stop_reason": "diverged" if diverged else "max_grad_evals",
        "steps": metrics[-1]["step"],
        "grad_evals": metrics[-1]["grad_evals"],
        "train_seconds": metrics[-1]["time"],
        "eval_seconds": 0.0,
        "final": metrics[-1],
        "divergence": divergence,
    }
    manifest = {
        "run_id": config.run_id,
        "config": config.to_dict(),
        "seed": seed,
        "environment": {"threads": 1},
        "machine": {"processor": "test", "cpu_count": 2},
        "workload": {"sizes": {"train": 1000, "validation": n_validation, "test": 500}},
        "metric": metric,
        "higher_is_better": metric == "accuracy",
        "target": target,
        "stage_batches": stage_batches,
    }
    if resolution != "default":
        manifest["validation_resolution"] = resolution
    elif metric == "accuracy":
        manifest["validation_resolution"] = 1 / n_validation
    else:
        manifest["validation_resolution"] = None
    return RunRecord(run_directory(results_dir, config), manifest, metrics, result)


def write(results_dir: Path, run: RunRecord) -> RunRecord:
    """Write ``run`` into ``results_dir`` as a real run would be."""
    path = run_directory(results_dir, run.config)
    with RunWriter(path) as writer:
        writer.start(run.manifest)
        for measurement in run.metrics:
            writer.log(measurement)
        writer.finish(run.result)
    return RunRecord(path, run.manifest, run.metrics, run.result)


def tiny_sweep() -> SweepConfig:
    """Two tiny runs (rk4 and sgd) on MNIST-1D, read from the dataset cache: worker processes and Ray
    workers need not import scikit-learn."""
    return SweepConfig.from_settings(
        {
            "workload": "mlp-mnist1d",
            "workload_arg": ["hidden=[8]"],
            "optimizer": ["rk4", "sgd"],
            "lr": ["0.1"],
            "batch_size": [16],
            "seed": [0],
            "max_grad_evals": 24,
            "eval_every": 12,
        }
    )
