"""A sweep: every run of a grid, in parallel worker processes, resumable.

Runs already finished in the results directory are skipped, so an interrupted sweep picks up where
it stopped. Each run is one call of :func:`rkopt.bench.runner.execute_run` with picklable arguments;
:class:`LocalPool` and :class:`InProcess` execute them here, and another executor with the same
``map_unordered`` method (a cluster queue writing to a shared results directory) could replace them.
"""

from __future__ import annotations

import multiprocessing
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rkopt.bench.config import Environment, RunConfig, SweepConfig
from rkopt.bench.records import is_finished, run_directory, write_json_atomic
from rkopt.bench.runner import RunOutcome, execute_run
from rkopt.bench.workloads import get_workload

SWEEP_FILE = "sweep.json"


@dataclass
class SweepSummary:
    """How a sweep went: counts, and the runs that failed with an error (retried on resume)."""

    total: int = 0
    already_finished: int = 0
    completed: int = 0
    diverged: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class _Task:
    config: RunConfig
    results_dir: Path
    environment: Environment
    progress: bool


def _attempt(task: _Task) -> RunOutcome | tuple[str, str]:
    """Execute one run; an exception becomes (run_id, traceback) so the sweep goes on."""
    try:
        return execute_run(task.config, task.results_dir, task.environment, task.progress)
    except Exception:
        return task.config.run_id, traceback.format_exc()


class InProcess:
    """Runs one after another in this process (per-run progress bars possible)."""

    def map_unordered(self, function: Callable[[_Task], object], tasks: Iterable[_Task]) -> Iterator[object]:
        for task in tasks:
            yield function(task)


class LocalPool:
    """Runs in ``workers`` fresh (spawned) processes on this machine."""

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def map_unordered(self, function: Callable[[_Task], object], tasks: Iterable[_Task]) -> Iterator[object]:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(self.workers, mp_context=context) as pool:
            futures = [pool.submit(function, task) for task in tasks]
            try:
                for future in as_completed(futures):
                    yield future.result()
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise


def pending_runs(config: SweepConfig, results_dir: Path) -> list[RunConfig]:
    """The sweep's runs not yet finished in ``results_dir``, in execution order.

    Most expensive (largest batch) first, and the optimizers interleaved (seed by seed, lr by lr) so that
    a change in the machine's background load affects every optimizer's wall-clock times alike.
    """
    runs = [run for run in config.runs() if not is_finished(run_directory(results_dir, run))]
    lr_rank = {(run.optimizer, run.lr): config.lrs[run.optimizer].index(run.lr) for run in runs}
    return sorted(runs, key=lambda run: (-run.batch_size, run.seed, lr_rank[run.optimizer, run.lr]))


def run_sweep(
    config: SweepConfig,
    results_dir: Path,
    environment: Environment,
    workers: int = 1,
    progress: bool = True,
) -> SweepSummary:
    """Execute every unfinished run of ``config`` into ``results_dir``; returns the summary.

    ``progress``: a sweep progress bar, a line per finished run and, with one worker, per-run bars.
    """
    from tqdm.auto import tqdm

    results_dir = Path(results_dir)
    write_json_atomic(
        results_dir / SWEEP_FILE, {"config": config.to_dict(), "environment": asdict(environment)}
    )
    for workload in config.workloads:  # fail fast (e.g. offline) and warm the dataset caches once
        get_workload(workload).problem(environment.source, config.workload_options.get(workload, {}), 0)
    pending = pending_runs(config, results_dir)
    total = len(config.runs())
    summary = SweepSummary(total=total, already_finished=total - len(pending))
    executor = InProcess() if workers <= 1 else LocalPool(workers)
    tasks = [_Task(run, results_dir, environment, progress and workers <= 1) for run in pending]
    with tqdm(
        total=total, initial=summary.already_finished, desc="sweep", unit="run", disable=not progress
    ) as bar:
        for outcome in executor.map_unordered(_attempt, tasks):
            bar.update(1)
            if isinstance(outcome, tuple):
                summary.failed.append(outcome)
                message = f"FAILED {outcome[0]}:\n{outcome[1]}"
            else:
                summary.completed += outcome.status == "completed"
                summary.diverged += outcome.status == "diverged"
                message = f"{outcome.status:9s} {outcome.run_id}"
            if progress:
                bar.write(message)
    return summary
