"""From finished runs to comparisons: best learning rate on validation data, test figures over seeds.

Runs are grouped into *variants* (workload, optimizer with its options, batch size, budget); within a
variant, each learning rate is scored by its final validation metric averaged over seeds (a diverged
seed scores worst), the best learning rate is kept, and its test figures are summarised over seeds.
Variants of the same workload, batch size and budget form a *comparison*: their metric is also read
at equal gradient evaluations and at equal training time (the smallest total among the variants).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rkopt.bench.config import Budget, RunConfig
from rkopt.bench.records import RunRecord


@dataclass(frozen=True)
class Stat:
    """Mean and standard deviation over ``n`` values (seeds); n = 0 when there are none."""

    mean: float = math.nan
    std: float = math.nan
    n: int = 0

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Stat:
        kept = [float(v) for v in values if v is not None and math.isfinite(v)]
        if not kept:
            return cls()
        return cls(statistics.fmean(kept), statistics.stdev(kept) if len(kept) > 1 else 0.0, len(kept))

    def format(self, digits: int = 4) -> str:
        if not self.n:
            return "–"
        return f"{self.mean:.{digits}g} ± {self.std:.2g}" if self.n > 1 else f"{self.mean:.{digits}g}"


def optimizer_label(config: RunConfig) -> str:
    """The optimizer's name with its non-default options, e.g. ``adam(weight_decay=0.01)``."""
    options = ", ".join(f"{k}={v}" for k, v in sorted(config.optimizer_options.items()))
    return f"{config.optimizer}({options})" if options else config.optimizer


def budget_label(budget: Budget) -> str:
    parts = []
    if budget.max_grad_evals is not None:
        parts.append(f"{budget.max_grad_evals} grad evals")
    if budget.max_seconds is not None:
        parts.append(f"{budget.max_seconds:g} s")
    if budget.steps is not None:
        parts.append(f"{budget.steps} steps")
    return ", ".join(parts)


def _workload_label(config: RunConfig) -> str:
    options = ", ".join(f"{k}={v}" for k, v in sorted(config.workload_options.items()))
    return f"{config.workload}({options})" if options else config.workload


@dataclass(frozen=True, order=True)
class ComparisonKey:
    """What variants are compared within: a workload (with options), batch size and budget."""

    workload: str
    batch_size: int
    budget: str


def _metric_key(split: str, run: RunRecord) -> str:
    return f"{split}_{run.metric}"


def final_value(run: RunRecord, split: str) -> float | None:
    """The metric at the end of a run (None if it diverged)."""
    if run.diverged or not run.measurements:
        return None
    return run.measurements[-1][_metric_key(split, run)]


EQUAL_BUDGET_TOLERANCE = 0.01
"""Measurements up to 1% past an equal budget count as at it (an RK step may overshoot by a few evals)."""


def value_at(run: RunRecord, x_key: str, limit: float) -> float | None:
    """The test metric at the last measurement with ``x_key`` <= ``limit`` (+1%); None if diverged before."""
    limit *= 1 + EQUAL_BUDGET_TOLERANCE
    if run.diverged and run.result["divergence"][x_key] <= limit:
        return None
    reached = [m for m in run.measurements if m[x_key] <= limit]
    return reached[-1][_metric_key("test", run)] if reached else None


def first_reaching(run: RunRecord, target: float) -> dict[str, Any] | None:
    """The first measurement whose test metric meets ``target`` (>= for accuracy, <= for perplexity)."""
    key = _metric_key("test", run)
    for m in run.measurements:
        value = m[key]
        if value is not None and (value >= target if run.higher_is_better else value <= target):
            return m
    return None


@dataclass
class LearningRateResult:
    """All seeds of one learning rate of a variant, scored on validation data."""

    lr: float
    runs: list[RunRecord]

    @property
    def diverged(self) -> int:
        return sum(run.diverged for run in self.runs)

    @property
    def validation(self) -> Stat:
        return Stat.of(final_value(run, "val") for run in self.runs)

    @property
    def test(self) -> Stat:
        return Stat.of(final_value(run, "test") for run in self.runs)

    def score(self, higher_is_better: bool) -> float:
        """Mean final validation metric over seeds, a diverged seed counting as the worst value."""
        worst = -math.inf if higher_is_better else math.inf
        values = [final_value(run, "val") for run in self.runs]
        return statistics.fmean(worst if v is None else v for v in values)


@dataclass
class Variant:
    """One optimizer configuration in one comparison: its learning rates and the selected one."""

    comparison: ComparisonKey
    optimizer: str
    label: str
    metric: str
    higher_is_better: bool
    target: float | None
    learning_rates: list[LearningRateResult]
    best: LearningRateResult
    at_equal_grad_evals: Stat = field(default_factory=Stat)
    at_equal_time: Stat = field(default_factory=Stat)

    @property
    def runs(self) -> list[RunRecord]:
        """The best learning rate's runs, one per seed."""
        return self.best.runs

    @property
    def completed_runs(self) -> list[RunRecord]:
        return [run for run in self.runs if not run.diverged]

    def mean_result(self, key: str) -> float:
        return Stat.of(run.result[key] for run in self.completed_runs).mean

    def to_target(self, x_key: str) -> Stat:
        """Mean ``x_key`` (time, grad_evals, step) at which the seeds that reached the target did."""
        if self.target is None:
            return Stat()
        return Stat.of((m or {}).get(x_key) for m in (first_reaching(run, self.target) for run in self.runs))

    @property
    def seconds_per_1k_grad_evals(self) -> float:
        seconds, evals = self.mean_result("train_seconds"), self.mean_result("grad_evals")
        return 1000 * seconds / evals if evals else math.nan


def _select(learning_rates: Sequence[LearningRateResult], higher_is_better: bool) -> LearningRateResult:
    sign = 1.0 if higher_is_better else -1.0
    return max(learning_rates, key=lambda result: sign * result.score(higher_is_better))


def variants(runs: Iterable[RunRecord]) -> dict[ComparisonKey, list[Variant]]:
    """Group finished runs into comparisons of variants, select learning rates, fill equal-budget figures."""
    grouped: dict[tuple[ComparisonKey, str], dict[float, list[RunRecord]]] = {}
    for run in runs:
        config = run.config
        key = ComparisonKey(_workload_label(config), config.batch_size, budget_label(config.budget))
        grouped.setdefault((key, optimizer_label(config)), {}).setdefault(config.lr, []).append(run)
    comparisons: dict[ComparisonKey, list[Variant]] = {}
    for (key, label), by_lr in sorted(grouped.items(), key=lambda item: item[0]):
        example = next(iter(by_lr.values()))[0]
        results = [
            LearningRateResult(lr, sorted(by_lr[lr], key=lambda r: r.config.seed)) for lr in sorted(by_lr)
        ]
        comparisons.setdefault(key, []).append(
            Variant(
                comparison=key,
                optimizer=example.config.optimizer,
                label=label,
                metric=example.metric,
                higher_is_better=example.higher_is_better,
                target=example.target,
                learning_rates=results,
                best=_select(results, example.higher_is_better),
            )
        )
    for members in comparisons.values():
        _fill_equal_budgets(members)
    return comparisons


def equal_budgets(members: Sequence[Variant]) -> tuple[float, float]:
    """(gradient evaluations, seconds) that every variant of a comparison reached on average."""
    evals = [v.mean_result("grad_evals") for v in members if v.completed_runs]
    seconds = [v.mean_result("train_seconds") for v in members if v.completed_runs]
    return (min(evals), min(seconds)) if evals else (math.nan, math.nan)


def _fill_equal_budgets(members: Sequence[Variant]) -> None:
    evals, seconds = equal_budgets(members)
    for variant in members:
        variant.at_equal_grad_evals = Stat.of(value_at(run, "grad_evals", evals) for run in variant.runs)
        variant.at_equal_time = Stat.of(value_at(run, "time", seconds) for run in variant.runs)
