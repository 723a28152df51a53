"""A sweep: every run of a grid (or of a study's grids), in parallel, resumable, lr grids extended.

Runs already finished in the results directory are skipped, so an interrupted sweep picks up where
it stopped. Each run is one call of :func:`rkopt.bench.runner.execute_run` with picklable arguments.
Executors (context managers with a ``map_unordered(tasks)`` method yielding one outcome per task):

- :class:`InProcess`: one after another in this process;
- :class:`LocalPool`: ``workers`` spawned processes on this machine, writing the results directory;
- :class:`RayExecutor`: each run a Ray task (``--executor ray [--address ADDR]``); the task trains in a
  private scratch directory on its node and sends the records back, and the driver writes them with
  the same atomic records as a local run (:func:`rkopt.bench.records.publish_run`): no shared
  filesystem is needed, and resuming works as for local runs.

With ``lr_extend``, once the grid has run the sweep looks at every variant (workload × optimizer ×
batch size × stage batches): if its selected lr is at an edge of its grid, the next point past that
edge (same log spacing) is added for every seed and run, and so on, round after round
(:func:`extension_runs`). The extension runs are ordinary runs in the same results directory; the
rounds are a deterministic function of the finished records, so a resumed sweep replays them and
runs only what is missing.

One sweep at a time writes a results directory: :func:`exclusive_results_dir` holds an exclusive
``flock`` on its lock file for the whole sweep, and a second sweep into it fails at once. Local worker
processes end with the sweep's process however it ends (:func:`_end_with_parent`), and SIGTERM to it
unwinds as Ctrl-C does, terminating the runs in progress (finished runs are kept).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from rkopt.bench.analysis import LearningRateResult, extension_lrs
from rkopt.bench.config import Cell, Environment, RunConfig, SweepConfig
from rkopt.bench.errors import ConfigError
from rkopt.bench.records import is_finished, load_run, publish_run, run_directory, write_json_atomic
from rkopt.bench.runner import DetachedRun, RunOutcome, execute_run, execute_run_detached
from rkopt.bench.workloads import get_workload

SWEEP_FILE = "sweep.json"
LOCK_FILE = ".sweep.lock"
"""In a results directory: locked by the sweep writing it, and holding that process's pid."""
PARENT_POLL_SECONDS = 1.0
"""How often a worker checks that the sweep's process still runs (where the kernel cannot tell it)."""
_PR_SET_PDEATHSIG = 1
Outcome = RunOutcome | tuple[str, str]
"""What an executor yields per run: its outcome, or (run_id, traceback) when it failed."""


@dataclass
class SweepSummary:
    """How a sweep went: counts, and the runs that failed with an error (retried on resume)."""

    total: int = 0
    already_finished: int = 0
    completed: int = 0
    diverged: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    extension_runs: int = 0
    """Runs added by ``lr_extend`` (counted in ``total`` too)."""


@dataclass(frozen=True)
class _Task:
    config: RunConfig
    results_dir: Path
    environment: Environment
    progress: bool


def _attempt(task: _Task) -> Outcome:
    """Execute one run into the results directory; an exception becomes (run_id, traceback)."""
    try:
        return execute_run(task.config, task.results_dir, task.environment, task.progress)
    except Exception:
        return task.config.run_id, traceback.format_exc()


def _attempt_detached(config: RunConfig, environment: Environment) -> DetachedRun | tuple[str, str]:
    """Execute one run away from the results directory (a Ray task); returns its records."""
    try:
        return execute_run_detached(config, environment)
    except Exception:
        return config.run_id, traceback.format_exc()


class InProcess:
    """Runs one after another in this process (per-run progress bars possible)."""

    def __enter__(self) -> InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def map_unordered(self, tasks: Iterable[_Task]) -> Iterator[Outcome]:
        for task in tasks:
            yield _attempt(task)


def _watch_parent(parent: int) -> None:
    """End this process as soon as its parent is no longer ``parent`` (it died: the orphan was adopted)."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)


def _end_with_parent(parent: int) -> None:
    """Initializer of a local worker: end with the sweep's process ``parent``, however it ends (on Linux
    the kernel sends SIGTERM at once; everywhere a thread polls for a new parent), and leave Ctrl-C to
    the parent, which terminates its workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):  # sent when the thread that started us ends: run_sweep's
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    threading.Thread(target=_watch_parent, args=(parent,), name="watch-parent", daemon=True).start()


def _interrupt(signum: int, frame: object) -> None:
    """A SIGTERM handler: unwind as Ctrl-C does."""
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


class LocalPool:
    """Runs in ``workers`` fresh (spawned) processes on this machine, kept for the whole sweep.

    The workers end with this process; while the pool is open, SIGTERM (in the main thread) raises
    KeyboardInterrupt, and leaving the pool by an exception terminates the runs in progress.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._sigterm: Any = None

    def __enter__(self) -> LocalPool:
        self._pool = ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_end_with_parent,
            initargs=(os.getpid(),),
        )
        if threading.current_thread() is threading.main_thread():
            self._sigterm = signal.signal(signal.SIGTERM, _interrupt) or signal.SIG_DFL  # None: not Python's
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        pool, self._pool = self._pool, None
        assert pool is not None
        if self._sigterm is not None:
            signal.signal(signal.SIGTERM, self._sigterm)
            self._sigterm = None
        if exc_type is None:
            pool.shutdown(wait=True)
            return
        workers = list((pool._processes or {}).values())  # no public API before Python 3.14
        pool.shutdown(wait=False, cancel_futures=True)
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.join()

    def map_unordered(self, tasks: Iterable[_Task]) -> Iterator[Outcome]:
        assert self._pool is not None, "use LocalPool as a context manager"
        futures = [self._pool.submit(_attempt, task) for task in tasks]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def import_ray() -> ModuleType:
    """Ray, imported only when its executor is chosen; a clear error when it is not installed."""
    try:
        import ray
    except ImportError as err:
        raise ConfigError(
            f'--executor ray: Ray is not installed ({err}); install it with `pip install "rkopt[ray]"` '
            '(or `pip install "ray>=2.9"`), or use --executor local'
        ) from err
    return ray


class RayExecutor:
    """Each run a Ray task; its records come back to the driver, which writes them atomically.

    Connects to ``address`` (``auto``, ``ray://HOST:10001``, ...) or, without one, starts a local Ray
    instance with ``workers`` CPUs; a Ray session already initialised in this process is used as it is
    (and left running). ``runtime_env`` is passed to ``ray.init`` (how workers get rkopt installed).
    Each task reserves ``threads`` CPUs.
    """

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        runtime_env: dict[str, Any] | None = None,
        threads: int = 1,
    ) -> None:
        self.address, self.workers, self.runtime_env, self.threads = address, workers, runtime_env, threads
        self._ray: ModuleType | None = None
        self._started = False
        self._remote: Any = None

    def __enter__(self) -> RayExecutor:
        ray = self._ray = import_ray()
        if not ray.is_initialized():
            options: dict[str, Any] = {"address": self.address, "runtime_env": self.runtime_env}
            if self.address is None:  # a local instance of our own
                options.update(num_cpus=self.workers, include_dashboard=False)
            try:
                ray.init(**{k: v for k, v in options.items() if v is not None})
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise ConfigError(f"--executor ray --address {self.address}: cannot connect ({err})") from err
            self._started = True
        self._remote = ray.remote(num_cpus=self.threads, max_retries=1)(_attempt_detached)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started and self._ray is not None:
            self._ray.shutdown()
        self._started = False

    def map_unordered(self, tasks: Iterable[_Task]) -> Iterator[Outcome]:
        ray = self._ray
        assert ray is not None and self._remote is not None, "use RayExecutor as a context manager"
        by_ref = {self._remote.remote(task.config, task.environment): task for task in tasks}
        pending = list(by_ref)
        try:
            while pending:
                (done,), pending = ray.wait(pending, num_returns=1)
                task = by_ref.pop(done)
                try:
                    result = ray.get(done)
                except Exception:  # the worker died, the task was cancelled, ...
                    yield task.config.run_id, traceback.format_exc()
                    continue
                if isinstance(result, tuple):
                    yield result
                    continue
                publish_run(run_directory(task.results_dir, task.config), result.files)
                yield result.outcome
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise


def make_executor(
    executor: str = "local",
    workers: int = 1,
    address: str | None = None,
    runtime_env: dict[str, Any] | None = None,
    threads: int = 1,
) -> InProcess | LocalPool | RayExecutor:
    if executor == "ray":  # workers: the CPUs of a local Ray instance (0: all of them)
        return RayExecutor(address, workers or None, runtime_env, threads)
    if executor != "local":
        raise ConfigError(f"--executor {executor!r}: expected local or ray")
    return InProcess() if workers <= 1 else LocalPool(workers)


def _lock_exclusively(descriptor: int) -> None:
    """Lock the open file ``descriptor`` without waiting (BlockingIOError or PermissionError when
    another process holds it); the lock goes with the process."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)


@contextmanager
def exclusive_results_dir(results_dir: Path) -> Iterator[None]:
    """Hold ``results_dir`` for one sweep: an exclusive ``flock`` on its :data:`LOCK_FILE`, taken
    without waiting (ConfigError, naming the holder's pid, when another process holds it) and released
    when this process exits, however it exits. The directory is created if needed."""
    lock = Path(results_dir) / LOCK_FILE
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as err:
        raise ConfigError(f"--out {results_dir}: cannot open the lock file {lock} ({err})") from err
    try:
        try:
            _lock_exclusively(descriptor)
        except (BlockingIOError, PermissionError):
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
            raise ConfigError(
                f"{results_dir} is in use by another sweep (pid {holder}); wait for it or choose another "
                "--out"
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(descriptor)


def _as_configs(configs: SweepConfig | Sequence[SweepConfig]) -> list[SweepConfig]:
    return [configs] if isinstance(configs, SweepConfig) else list(configs)


def all_runs(configs: SweepConfig | Sequence[SweepConfig]) -> list[RunConfig]:
    """Every run of the initial grids of ``configs``, each once."""
    return list({run.run_id: run for config in _as_configs(configs) for run in config.runs()}.values())


def _execution_order(runs: Iterable[RunConfig]) -> list[RunConfig]:
    """Most expensive (largest batch) first, and the optimizers interleaved (seed by seed, lr by lr) so
    that a change in the machine's background load affects every optimizer's wall-clock times alike."""
    runs = list(runs)
    grids: dict[tuple[Any, ...], list[float]] = {}
    for run in runs:
        grids.setdefault((run.workload, run.optimizer, run.batch_size, run.stage_batches), []).append(run.lr)
    rank = {key: sorted(set(lrs)) for key, lrs in grids.items()}

    def lr_rank(run: RunConfig) -> int:
        return rank[run.workload, run.optimizer, run.batch_size, run.stage_batches].index(run.lr)

    return sorted(runs, key=lambda run: (-run.batch_size, run.seed, lr_rank(run)))


def pending_runs(configs: SweepConfig | Sequence[SweepConfig], results_dir: Path) -> list[RunConfig]:
    """The initial grid's runs not yet finished in ``results_dir``, in execution order."""
    return _execution_order(
        run for run in all_runs(configs) if not is_finished(run_directory(results_dir, run))
    )


def _cell_results(
    config: SweepConfig, cell: Cell, lrs: Iterable[float], results_dir: Path
) -> list[LearningRateResult] | None:
    """The records of ``cell`` at ``lrs`` (None if any of its runs is not finished)."""
    results = []
    for lr in sorted(lrs):
        runs = [run_directory(results_dir, run) for run in config.cell_runs(cell, [lr])]
        if not all(is_finished(path) for path in runs):
            return None
        results.append(LearningRateResult(lr, [load_run(path) for path in runs]))
    return results


def extension_runs(
    configs: SweepConfig | Sequence[SweepConfig],
    results_dir: Path,
    give_up: frozenset[str] = frozenset(),
) -> list[RunConfig]:
    """The next round of ``lr_extend`` (see :func:`extension_plan`): the runs to execute now."""
    return extension_plan(configs, results_dir, give_up)[0]


def extension_plan(
    configs: SweepConfig | Sequence[SweepConfig],
    results_dir: Path,
    give_up: frozenset[str] = frozenset(),
) -> tuple[list[RunConfig], list[RunConfig]]:
    """(runs to execute now, extension runs already finished) of the next round of ``lr_extend``.

    The next round of ``lr_extend``: for every variant whose selected lr is at an edge of its grid
    (the initial grid plus the extension points already finished), the runs of the next point.

    Replays the extension from the records (points finished by an earlier, interrupted sweep are
    taken as they are), so the result depends on the finished runs only. A variant with an unfinished
    initial run, or whose next point includes a run in ``give_up`` (it failed), is not extended.
    """
    planned: dict[str, RunConfig] = {}
    finished: dict[str, RunConfig] = {}
    for config in _as_configs(configs):
        if not config.lr_extend:
            continue
        for cell in config.cells():
            base = config.lrs[cell.optimizer]
            grid = list(base)
            while True:
                results = _cell_results(config, cell, grid, results_dir)
                if results is None:
                    break
                higher = results[0].runs[0].higher_is_better
                new = extension_lrs(results, higher, base, config.lr_extend_max)
                runs = config.cell_runs(cell, new)
                if not new or any(run.run_id in give_up for run in runs):
                    break
                todo = [run for run in runs if not is_finished(run_directory(results_dir, run))]
                finished.update((run.run_id, run) for run in runs if run not in todo)
                if todo:
                    planned.update((run.run_id, run) for run in todo)
                    break
                grid += new
    return _execution_order(planned.values()), list(finished.values())


def sweep_record(configs: Sequence[SweepConfig], environment: Environment) -> dict[str, Any]:
    """What ``sweep.json`` holds: the config (``configs`` for a study) and the environment."""
    data: dict[str, Any] = {"environment": asdict(environment)}
    if len(configs) == 1:
        data["config"] = configs[0].to_dict()
    else:
        data["configs"] = [config.to_dict() for config in configs]
    return data


def run_sweep(
    configs: SweepConfig | Sequence[SweepConfig],
    results_dir: Path,
    environment: Environment,
    workers: int = 1,
    progress: bool = True,
    executor: str = "local",
    address: str | None = None,
    runtime_env: dict[str, Any] | None = None,
) -> SweepSummary:
    """Execute every unfinished run of ``configs`` (a sweep or a study's sweeps) into ``results_dir``,
    then the ``lr_extend`` rounds; returns the summary.

    ``progress``: a sweep progress bar, a line per finished run and, with one local worker, per-run bars.
    ``executor``: ``local`` (``workers`` processes; 1: this process) or ``ray`` (``address``; without one
    a local Ray instance with ``workers`` CPUs, 0 for all). ConfigError, before anything is written, if
    another sweep is writing ``results_dir`` (:func:`exclusive_results_dir`).
    """
    from tqdm.auto import tqdm

    configs = _as_configs(configs)
    results_dir = Path(results_dir)
    with exclusive_results_dir(results_dir):
        write_json_atomic(results_dir / SWEEP_FILE, sweep_record(configs, environment))
        for config in configs:  # fail fast (e.g. offline) and warm the dataset caches once
            for workload in config.workloads:
                get_workload(workload).problem(
                    environment.source, config.workload_options.get(workload, {}), 0
                )
        pending = pending_runs(configs, results_dir)
        total = len(all_runs(configs))
        summary = SweepSummary(total=total, already_finished=total - len(pending))
        in_process = executor == "local" and workers <= 1
        failed: set[str] = set()
        with (
            make_executor(executor, workers, address, runtime_env, environment.threads) as pool,
            tqdm(
                total=total, initial=summary.already_finished, desc="sweep", unit="run", disable=not progress
            ) as bar,
        ):

            def execute(runs: Sequence[RunConfig]) -> None:
                tasks = [_Task(run, results_dir, environment, progress and in_process) for run in runs]
                for outcome in pool.map_unordered(tasks):
                    bar.update(1)
                    if isinstance(outcome, tuple):
                        summary.failed.append(outcome)
                        failed.add(outcome[0])
                        message = f"FAILED {outcome[0]}:\n{outcome[1]}"
                    else:
                        summary.completed += outcome.status == "completed"
                        summary.diverged += outcome.status == "diverged"
                        message = f"{outcome.status:9s} {outcome.run_id}"
                    if progress:
                        bar.write(message)

            execute(pending)
            counted: set[str] = set()
            while True:
                new, done = extension_plan(configs, results_dir, frozenset(failed))
                earlier = [run for run in done if run.run_id not in counted]  # by an interrupted sweep
                counted.update(run.run_id for run in [*new, *earlier])
                summary.total += len(earlier)
                summary.already_finished += len(earlier)
                summary.extension_runs += len(earlier)
                if not new:
                    break
                summary.total += len(new)
                summary.extension_runs += len(new)
                bar.total = summary.total
                bar.n = summary.total - len(new)
                bar.refresh()
                if progress:
                    lrs = sorted({f"{run.optimizer} bs{run.batch_size} lr {run.lr:g}" for run in new})
                    bar.write(f"lr-extend: {len(new)} runs ({'; '.join(lrs)})")
                execute(new)
    return summary
