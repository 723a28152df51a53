"""One training run: the loop, the closure, budgets, measurements and divergence.

Every optimizer, rkopt or torch.optim, is driven the same way: ``step(closure)`` on one minibatch.
With ``stage_batches = "same"`` (the default) the closure re-evaluates that same batch for every
Runge–Kutta stage; with ``"fresh"`` every call after the first draws the next batch of the loader (as
the DAL authors' reference code does), so a step of s stages consumes s batches. BatchNorm running
statistics are updated only by the first evaluation of a step (:func:`rkopt.frozen_buffers`). Each
measurement records the data consumed (``samples``, ``epoch``) from the batches actually drawn.

The model and its optimizer are a backend's :class:`Learner` (``config.backend``): a
:class:`TorchLearner` or, for ``jax``, :class:`rkopt.bench.jax_backend.JaxLearner` (imported only
then); the loop, the batches, the budget and the measurements below are the same for both.

Measurements are taken every ``eval_every`` gradient evaluations (so all optimizers are measured at
comparable budgets), at the start and at the end. The clock counts training only: sampling the batch
and the optimizer step, never evaluation.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

import rkopt
from rkopt.bench.backends import load_jax_backend
from rkopt.bench.config import Environment, RunConfig, stage_batches_for
from rkopt.bench.errors import ConfigError
from rkopt.bench.optimizers import TrackedOptimizer, build_optimizer
from rkopt.bench.records import (
    RUN_FILES,
    RunWriter,
    environment_info,
    is_finished,
    load_run,
    run_directory,
)
from rkopt.bench.workloads import Batch, Problem, Split, Task, get_workload


def make_closure(
    model: nn.Module,
    task: Task,
    optimizer: torch.optim.Optimizer,
    inputs: Tensor,
    targets: Tensor,
    next_batch: Callable[[], Batch] | None = None,
) -> Callable[[], Tensor]:
    """The closure of one step: zero the gradients, loss on this batch, backward, return the loss.

    Every call uses ``(inputs, targets)``, or, with ``next_batch`` (``stage_batches = "fresh"``), every
    call after the first uses ``next_batch()``. Buffers (BatchNorm running statistics) change only in
    the step's first evaluation.
    """
    calls = 0

    def closure() -> Tensor:
        nonlocal calls, inputs, targets
        if calls and next_batch is not None:
            inputs, targets = next_batch()
        calls += 1
        optimizer.zero_grad()
        with rkopt.frozen_buffers(model, enabled=not rkopt.is_first_evaluation(optimizer)):
            loss = task.loss(model(inputs), targets)
        loss.backward()
        return loss.detach()

    return closure


class WorkCounters(Protocol):
    """What the loop reads of a backend's optimizer (:class:`TrackedOptimizer`'s counters)."""

    is_runge_kutta: bool
    steps: int
    grad_evals: int
    lr: float
    step_size: float
    rejected_steps: int
    skipped_steps: int


class Learner(Protocol):
    """A backend's model and optimizer, as the training loop drives them: :class:`TorchLearner` or
    :class:`rkopt.bench.jax_backend.JaxLearner` (:data:`rkopt.bench.backends.BACKENDS`)."""

    optimizer: WorkCounters
    device: torch.device
    """Where the loop puts the batches."""
    versions: dict[str, str]
    """Versions the manifest records besides :func:`~rkopt.bench.records.environment_info`'s."""
    machine: dict[str, Any]
    """Settings of the machine the manifest records besides ``environment_info``'s."""

    def train_step(self, inputs: Tensor, targets: Tensor, next_batch: Callable[[], Batch] | None) -> float:
        """One optimizer step on this batch (every stage after the first on ``next_batch()`` when
        given); the loss of its first evaluation. Raises ``rkopt.NonFiniteStepError``."""
        ...

    def evaluate(self, split: Split) -> dict[str, float]:
        """The task's metrics on a whole split (off the clock)."""
        ...


class TorchLearner:
    """The torch backend: the problem's module and a torch or rkopt optimizer, stepped by closures."""

    def __init__(
        self, problem: Problem, optimizer: str, lr: float, options: Mapping[str, Any], device: torch.device
    ) -> None:
        self.model, self.task, self.device = problem.model.to(device), problem.task, device
        self.optimizer = TrackedOptimizer(build_optimizer(optimizer, self.model.parameters(), lr, options))
        self.versions: dict[str, str] = {}
        self.machine: dict[str, Any] = {}

    def train_step(self, inputs: Tensor, targets: Tensor, next_batch: Callable[[], Batch] | None) -> float:
        closure = make_closure(self.model, self.task, self.optimizer.optimizer, inputs, targets, next_batch)
        return float(self.optimizer.step(closure))

    def evaluate(self, split: Split) -> dict[str, float]:
        self.model.eval()
        try:
            return self.task.evaluate(self.model, split, self.device)
        finally:
            self.model.train()


def make_learner(config: RunConfig, problem: Problem, device: torch.device) -> Learner:
    """The learner of ``config.backend`` for this run's problem, optimizer and learning rate."""
    if config.backend == "jax":
        return load_jax_backend().JaxLearner(
            problem, config.optimizer, config.lr, config.optimizer_options, config.batch_size, device
        )
    return TorchLearner(problem, config.optimizer, config.lr, config.optimizer_options, device)


@dataclass
class RunOutcome:
    """What a finished run reports back (the full record is on disk)."""

    run_id: str
    status: str
    stop_reason: str
    final: dict[str, Any]
    skipped: bool = False


class _Trainer:
    """The training loop of one run, writing measurements through ``log``."""

    def __init__(
        self, config: RunConfig, problem: Problem, learner: Learner, log: Callable[[dict[str, Any]], None]
    ) -> None:
        self.config, self.problem, self.learner, self.log = config, problem, learner, log
        self.optimizer = learner.optimizer
        self.train_seconds = 0.0
        self.eval_seconds = 0.0
        self.batches_drawn = 0
        self.loss_sum, self.loss_count = 0.0, 0
        self.last_measured = -1

    def measure(self) -> dict[str, Any]:
        """Evaluate on validation and test data (off the clock) and log a measurement."""
        started = time.perf_counter()
        task, data, opt = self.problem.task, self.problem.data, self.optimizer
        record: dict[str, Any] = {
            "step": opt.steps,
            "grad_evals": opt.grad_evals,
            "time": self.train_seconds,
            "samples": self.batches_drawn * self.config.batch_size,
            "epoch": self.batches_drawn * self.config.batch_size / task.epoch_size(data.train),
            "lr": opt.lr,
            "h": opt.step_size,
            "train_loss": self.loss_sum / self.loss_count if self.loss_count else None,
            "rejected_steps": opt.rejected_steps,
            "skipped_steps": opt.skipped_steps,
        }
        for name, split in (("val", data.validation), ("test", data.test)):
            for key, value in self.learner.evaluate(split).items():
                record[f"{name}_{key}"] = value
        self.loss_sum, self.loss_count = 0.0, 0
        self.last_measured = opt.grad_evals
        self.eval_seconds += time.perf_counter() - started
        self.log(record)
        return record

    def train(self, progress: bool = False) -> dict[str, Any]:
        """Train until the budget is spent or the loss diverges; returns the result summary."""
        config, opt = self.config, self.optimizer
        generator = torch.Generator().manual_seed(config.seed)
        torch.manual_seed(config.seed)  # dropout and other noise
        batches = self.problem.task.batches(self.problem.data.train, config.batch_size, generator)

        def draw() -> Batch:
            self.batches_drawn += 1
            inputs, targets = next(batches)
            return inputs.to(self.learner.device), targets.to(self.learner.device)

        fresh = draw if config.stage_batches == "fresh" and opt.is_runge_kutta else None
        next_measurement = config.eval_every
        final = self.measure()
        divergence: dict[str, Any] | None = None
        bar = _progress_bar(config, progress)
        while (reason := config.budget.stop_reason(opt.grad_evals, self.train_seconds, opt.steps)) is None:
            started = time.perf_counter()
            inputs, targets = draw()
            before = opt.grad_evals
            try:
                loss = self.learner.train_step(inputs, targets, fresh)
                error = None if math.isfinite(loss) else f"non-finite training loss {loss}"
            except rkopt.NonFiniteStepError as err:
                error = str(err)
            self.train_seconds += time.perf_counter() - started
            if error is not None:
                reason = "diverged"
                divergence = {"step": opt.steps, "grad_evals": opt.grad_evals, "time": self.train_seconds}
                self.log({**divergence, "diverged": True, "message": error})
                divergence["message"] = error
                break
            self.loss_sum += loss
            self.loss_count += 1
            bar.update(opt.grad_evals - before)
            if opt.grad_evals >= next_measurement:
                final = self.measure()
                next_measurement = (opt.grad_evals // config.eval_every + 1) * config.eval_every
                bar.set_postfix(loss=f"{final['train_loss']:.3g}", **{_metric(self.problem): _fmt(final)})
        bar.close()
        if divergence is None and self.last_measured != opt.grad_evals:
            final = self.measure()
        return {
            "status": "diverged" if divergence else "completed",
            "stop_reason": reason,
            "backend": config.backend,
            "steps": opt.steps,
            "grad_evals": opt.grad_evals,
            "samples": self.batches_drawn * config.batch_size,
            "train_seconds": self.train_seconds,
            "eval_seconds": self.eval_seconds,
            "final": final,
            "divergence": divergence,
        }


def _metric(problem: Problem) -> str:
    return f"test_{problem.task.metric}"


def _fmt(record: dict[str, Any]) -> str:
    value = next(v for k, v in record.items() if k.startswith("test_") and k != "test_loss")
    return f"{value:.4g}"


def _progress_bar(config: RunConfig, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    total = config.budget.max_grad_evals
    label = f"{config.optimizer} lr={config.lr:g} bs={config.batch_size} seed={config.seed}"
    return tqdm(total=total, desc=label, unit="grad", disable=not enabled, leave=False, dynamic_ncols=True)


def execute_run(
    config: RunConfig, results_dir: Path, environment: Environment, progress: bool = False
) -> RunOutcome:
    """Train one run into ``results_dir`` unless it is already finished there (then just report it).

    The unit of work of a sweep: plain, picklable arguments and the results directory as the only
    shared state, so the same call can run in a local worker process or on a cluster node.
    """
    run_dir = run_directory(results_dir, config)
    if is_finished(run_dir):
        record = load_run(run_dir)
        result = record.result
        return RunOutcome(
            config.run_id, result["status"], result["stop_reason"], result["final"], skipped=True
        )
    torch.set_num_threads(environment.threads)
    workload = get_workload(config.workload)
    problem = workload.problem(environment.source, config.workload_options, config.seed)
    if config.batch_size > problem.task.epoch_size(problem.data.train):
        raise ConfigError(
            f"--batch-size {config.batch_size} exceeds the {problem.data.name} training set "
            f"({problem.task.epoch_size(problem.data.train)} examples); choose a smaller batch size"
        )
    data = problem.data
    learner = make_learner(config, problem, torch.device(environment.device))
    info = environment_info()
    info["versions"].update(learner.versions)
    info["machine"].update(learner.machine)
    manifest = {
        "run_id": config.run_id,
        "backend": config.backend,
        "config": config.to_dict(),
        "seed": config.seed,
        "environment": asdict(environment),
        "workload": {
            "description": workload.description,
            "options": workload.options(config.workload_options),
            "dataset": data.name,
            "dataset_fingerprint": data.fingerprint(),
            "sizes": {"train": len(data.train), "validation": len(data.validation), "test": len(data.test)},
            "parameters": sum(p.numel() for p in problem.model.parameters()),
        },
        "metric": problem.task.metric,
        "higher_is_better": problem.task.higher_is_better,
        "validation_examples": problem.task.evaluated_examples(data.validation),
        "validation_resolution": problem.task.resolution(data.validation),
        "stage_batches": stage_batches_for(config.optimizer, config.stage_batches),
        "target": config.target if config.target is not None else data.target,
        **info,
    }
    with RunWriter(run_dir) as writer:
        writer.start(manifest)
        result = _Trainer(config, problem, learner, writer.log).train(progress)
        writer.finish(result)
    return RunOutcome(config.run_id, result["status"], result["stop_reason"], result["final"])


@dataclass
class DetachedRun:
    """A run executed away from the results directory: its outcome and its record files' text."""

    outcome: RunOutcome
    files: dict[str, str] = field(default_factory=dict)


def execute_run_detached(config: RunConfig, environment: Environment) -> DetachedRun:
    """Train one run in a private temporary directory and return its records (for a remote worker:
    no shared filesystem; the driver publishes them with :func:`rkopt.bench.records.publish_run`)."""
    with tempfile.TemporaryDirectory(prefix="rkopt-run-") as scratch:
        outcome = execute_run(config, Path(scratch), environment)
        run_dir = run_directory(Path(scratch), config)
        files = {name: (run_dir / name).read_text() for name in RUN_FILES}
    return DetachedRun(outcome, files)
