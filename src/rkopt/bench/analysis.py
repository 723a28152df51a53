"""From finished runs to comparisons: best learning rate on validation data, test figures over seeds.

Runs are grouped into *variants* (workload, optimizer with its options, stage batches and backend,
batch size, budget). Learning-rate selection within a variant is deterministic (:func:`rank_learning_rates`),
among the lrs that have every seed of the variant (:func:`split_by_seeds`; the others are reported as
incomplete):

1. the final validation metric, mean over seeds, a diverged seed counting as the worst value;
2. ties broken by the final validation loss, mean over seeds (a diverged seed: +inf), lower first;
3. then the smaller learning rate.

The selected learning rate's test figures are summarised over seeds. Each variant also carries:

- ``runner_up_within_resolution``: the runner-up's score is within the validation set's resolution
  of the best (:func:`validation_resolution`: 1 / n_validation for accuracy, from the manifest);
- ``edge``: the best lr is the smallest or largest of the grid tried (``"low"``, ``"high"``, ``"both"``
  for a one-point grid): the optimum may lie outside, the variant is flagged as possibly untuned;
  ``bounded_by_divergence``: the next larger lr of the grid diverged (so the best is the optimum on
  that side, whether or not it was an edge before that point was added);
- ``robust``: the lr range around the best whose score is within :data:`ROBUSTNESS_TOLERANCE` of it,
  and its width in decades; ``divergence_boundary``: the smallest lr with a diverged seed.

Variants of the same workload, batch size and budget form a *comparison*: their metric is also read
at equal gradient evaluations and at equal training time (the smallest total among the variants).
:func:`performance_profiles` compares optimizers across comparisons (AlgoPerf-style);
:func:`head_to_heads` pits the best rkopt method against the best baseline in each comparison, seed
by seed (:class:`HeadToHead`);
:func:`backend_comparisons` pairs the variants of one configuration trained on the torch and JAX
backends.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rkopt.bench.backends import BACKENDS
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


FRESH_SUFFIX = " [fresh]"
"""Appended to the label of a variant run with ``stage_batches = "fresh"``."""


def backend_suffix(backend: str) -> str:
    """Appended to the label of a variant run on another backend than torch: `` [jax]``."""
    return "" if backend == "torch" else f" [{backend}]"


def optimizer_label(config: RunConfig) -> str:
    """The optimizer's name with its non-default options, e.g. ``adam(weight_decay=0.01)``,
    ``[fresh]`` for ``stage_batches = "fresh"`` and ``[jax]`` for the JAX backend."""
    options = ", ".join(f"{k}={v}" for k, v in sorted(config.optimizer_options.items()))
    label = f"{config.optimizer}({options})" if options else config.optimizer
    return label + (FRESH_SUFFIX if config.stage_batches == "fresh" else "") + backend_suffix(config.backend)


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


def final_loss(run: RunRecord, split: str) -> float | None:
    """The loss at the end of a run (None if it diverged)."""
    if run.diverged or not run.measurements:
        return None
    return run.measurements[-1].get(f"{split}_loss")


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

    def loss_score(self) -> float:
        """Mean final validation loss over seeds (the tie-break), a diverged seed counting as +inf."""
        values = [final_loss(run, "val") for run in self.runs]
        return statistics.fmean(math.inf if v is None else v for v in values)


def selection_key(result: LearningRateResult, higher_is_better: bool) -> tuple[float, float, float]:
    """Larger is better: (validation metric, then lower validation loss, then smaller lr)."""
    score = result.score(higher_is_better)
    return (score if higher_is_better else -score, -result.loss_score(), -result.lr)


def rank_learning_rates(
    results: Sequence[LearningRateResult], higher_is_better: bool
) -> list[LearningRateResult]:
    """``results`` best first, by :func:`selection_key` (a total order: the ranking is deterministic)."""
    return sorted(results, key=lambda r: selection_key(r, higher_is_better), reverse=True)


CONTINUOUS_RESOLUTION = 1e-3
"""Resolution of a metric without a natural one (perplexity), relative to the best value."""


def validation_resolution(runs: Sequence[RunRecord], best_score: float) -> float:
    """The smallest meaningful difference of the validation metric.

    From the manifests: ``validation_resolution`` (the task's: 1 / n_validation for accuracy, where
    ``validation_examples`` = n_validation is recorded too); for records written before it was
    recorded, 1 / ``workload.sizes.validation`` for accuracy. A continuous metric (perplexity; the
    manifest says None) uses :data:`CONTINUOUS_RESOLUTION` × |best score|.
    """
    for run in runs:
        manifest = run.manifest
        if "validation_resolution" in manifest:
            if manifest["validation_resolution"] is not None:
                return float(manifest["validation_resolution"])
            break
        size = manifest.get("workload", {}).get("sizes", {}).get("validation")
        if run.metric == "accuracy" and size:
            return 1.0 / size
    return CONTINUOUS_RESOLUTION * abs(best_score) if math.isfinite(best_score) else 0.0


ROBUSTNESS_TOLERANCE = {"accuracy": 0.01}
"""Tolerance of the lr-robustness width: an lr counts as good when its score is within this of the best.
Absolute for accuracy (0.01 = one point); relative for any other metric (:data:`RELATIVE_TOLERANCE`)."""
RELATIVE_TOLERANCE = 0.01
"""Relative tolerance for metrics without an entry in :data:`ROBUSTNESS_TOLERANCE` (perplexity: 1%)."""


@dataclass(frozen=True)
class RobustRange:
    """The contiguous lr range around the best whose score is within ``tolerance`` of the best."""

    low: float
    high: float
    tolerance: float
    relative: bool
    open_low: bool
    open_high: bool

    @property
    def decades(self) -> float:
        """Width in decades of lr, log10(high / low); a lower bound when the range is open."""
        return math.log10(self.high / self.low)

    @property
    def is_open(self) -> bool:
        """The range reaches an end of the grid tried (the true width may be larger)."""
        return self.open_low or self.open_high

    def format(self) -> str:
        return f"{'≥ ' if self.is_open else ''}{self.decades:.2f}"


def robustness_tolerance(metric: str, tolerance: float | None = None) -> tuple[float, bool]:
    """(tolerance, relative) for ``metric``; ``tolerance`` overrides the default value."""
    relative = metric not in ROBUSTNESS_TOLERANCE
    default = RELATIVE_TOLERANCE if relative else ROBUSTNESS_TOLERANCE[metric]
    return (default if tolerance is None else tolerance), relative


def robust_range(
    results: Sequence[LearningRateResult],
    best: LearningRateResult,
    higher_is_better: bool,
    tolerance: float,
    relative: bool,
) -> RobustRange | None:
    """The lr range (contiguous on the grid, containing the best) within ``tolerance`` of the best score;
    None when the best diverged (no lr is good)."""
    ordered = sorted(results, key=lambda r: r.lr)
    best_score = best.score(higher_is_better)
    if not math.isfinite(best_score):
        return None
    slack = tolerance * abs(best_score) if relative else tolerance
    slack *= 1 + 1e-9  # a score exactly at the tolerance counts as within it

    def good(result: LearningRateResult) -> bool:
        score = result.score(higher_is_better)
        return math.isfinite(score) and (
            score >= best_score - slack if higher_is_better else score <= best_score + slack
        )

    i = j = ordered.index(best)
    while i > 0 and good(ordered[i - 1]):
        i -= 1
    while j < len(ordered) - 1 and good(ordered[j + 1]):
        j += 1
    return RobustRange(ordered[i].lr, ordered[j].lr, tolerance, relative, i == 0, j == len(ordered) - 1)


def grid_edge(lrs: Sequence[float], lr: float) -> str | None:
    """Whether ``lr`` is the smallest (``"low"``), largest (``"high"``) or only (``"both"``) of ``lrs``."""
    low, high = lr <= min(lrs), lr >= max(lrs)
    return "both" if low and high else "low" if low else "high" if high else None


DEFAULT_EXTENSION_FACTOR = math.sqrt(10)
"""The step of an lr-grid extension past a one-point grid (half a decade)."""


def round_lr(lr: float) -> float:
    """Rounded to 3 significant digits, as the log grids are."""
    return float(f"{lr:.3g}")


def extension_lrs(
    results: Sequence[LearningRateResult],
    higher_is_better: bool,
    base: Sequence[float],
    max_per_side: int,
) -> list[float]:
    """The learning rates to add to a variant whose best is at an edge of its grid (empty when none).

    One point past the edge winner at the grid's log spacing there (the ratio of the two outermost
    points; :data:`DEFAULT_EXTENSION_FACTOR` for a one-point grid). Upward only when the winner did
    not diverge (when every lr diverged the winner is the smallest and the grid grows down); at most
    ``max_per_side`` points past each end of the ``base`` grid. Called again once the new points have
    run, this extends until the winner is interior, the new point is worse (or diverged: the edge
    winner is then the optimum on that side) or the cap is reached.
    """
    lrs = sorted(r.lr for r in results)
    best = rank_learning_rates(results, higher_is_better)[0]
    edge = grid_edge(lrs, best.lr)
    out: list[float] = []
    if edge in ("low", "both") and sum(lr < min(base) for lr in lrs) < max_per_side:
        factor = lrs[1] / lrs[0] if len(lrs) > 1 else DEFAULT_EXTENSION_FACTOR
        out.append(round_lr(lrs[0] / factor))
    if edge in ("high", "both") and not best.diverged and sum(lr > max(base) for lr in lrs) < max_per_side:
        factor = lrs[-1] / lrs[-2] if len(lrs) > 1 else DEFAULT_EXTENSION_FACTOR
        out.append(round_lr(lrs[-1] * factor))
    return [lr for lr in out if lr not in lrs and lr > 0 and math.isfinite(lr)]


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
    """The lrs with the variant's full set of seeds: the grid the selection is made on."""
    best: LearningRateResult
    runner_up: LearningRateResult | None = None
    resolution: float = 0.0
    robust: RobustRange | None = None
    at_equal_grad_evals: Stat = field(default_factory=Stat)
    at_equal_time: Stat = field(default_factory=Stat)
    incomplete: list[LearningRateResult] = field(default_factory=list)
    """The lrs with fewer seeds (:func:`split_by_seeds`): shown, never selected."""

    @property
    def stage_batches(self) -> str:
        return self.best.runs[0].config.stage_batches

    @property
    def backend(self) -> str:
        return self.best.runs[0].config.backend

    @property
    def lr_grid(self) -> list[float]:
        return [r.lr for r in self.learning_rates]

    @property
    def score(self) -> float:
        return self.best.score(self.higher_is_better)

    @property
    def runner_up_gap(self) -> float | None:
        """|best score - runner-up score| (None without a runner-up or when it diverged)."""
        if self.runner_up is None:
            return None
        gap = abs(self.score - self.runner_up.score(self.higher_is_better))
        return gap if math.isfinite(gap) else None

    @property
    def runner_up_within_resolution(self) -> bool:
        """The best and the runner-up differ by at most the validation set's resolution."""
        gap = self.runner_up_gap
        return gap is not None and gap <= self.resolution * (1 + 1e-9)

    @property
    def edge(self) -> str | None:
        """``low``/``high``/``both`` when the best lr is at an end of the grid tried, else None."""
        return grid_edge(self.lr_grid, self.best.lr)

    @property
    def lr_at_grid_edge(self) -> bool:
        return self.edge is not None

    @property
    def bounded_by_divergence(self) -> bool:
        """The next larger lr of the grid diverged (in at least one seed)."""
        above = [r for r in self.learning_rates if r.lr > self.best.lr]
        return bool(above) and above[0].diverged > 0

    @property
    def divergence_boundary(self) -> float | None:
        """The smallest lr with a diverged seed (None when none diverged)."""
        return min((r.lr for r in self.learning_rates if r.diverged), default=None)

    def final_mean(self, key: str) -> float:
        """Mean over the completed seeds of the best lr of ``key`` at their last measurement."""
        return Stat.of(run.measurements[-1].get(key) for run in self.completed_runs if run.measurements).mean

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


def split_by_seeds(
    results: Sequence[LearningRateResult],
) -> tuple[list[LearningRateResult], list[LearningRateResult]]:
    """(the lrs whose seeds are the variant's full set, the others).

    The full set is the union of the seeds of all the lrs. An lr with only some of them (a point an
    earlier sweep with fewer seeds added, or one whose other seeds have not finished) would be scored
    on other seeds than its neighbours, so it takes no part in the selection, the grid edges or the
    robustness range. When no lr has every seed, those with the most seeds form the grid.
    """

    # an lr's seeds are a subset of the full set, so having the most seeds is having them all when any has
    def seed_count(result: LearningRateResult) -> int:
        return len({run.config.seed for run in result.runs})

    most = max(map(seed_count, results))
    complete, incomplete = [], []
    for result in results:
        (complete if seed_count(result) == most else incomplete).append(result)
    return complete, incomplete


def variants(
    runs: Iterable[RunRecord], robustness: float | None = None
) -> dict[ComparisonKey, list[Variant]]:
    """Group finished runs into comparisons of variants, select learning rates, fill equal-budget figures.

    ``robustness``: the tolerance of the lr-robustness range (default :data:`ROBUSTNESS_TOLERANCE`).
    """
    grouped: dict[tuple[ComparisonKey, str], dict[float, list[RunRecord]]] = {}
    for run in runs:
        config = run.config
        key = ComparisonKey(_workload_label(config), config.batch_size, budget_label(config.budget))
        grouped.setdefault((key, optimizer_label(config)), {}).setdefault(config.lr, []).append(run)
    comparisons: dict[ComparisonKey, list[Variant]] = {}
    for (key, label), by_lr in sorted(grouped.items(), key=lambda item: item[0]):
        example = next(iter(by_lr.values()))[0]
        every = [
            LearningRateResult(lr, sorted(by_lr[lr], key=lambda r: r.config.seed)) for lr in sorted(by_lr)
        ]
        results, incomplete = split_by_seeds(every)
        ranked = rank_learning_rates(results, example.higher_is_better)
        best = ranked[0]
        tolerance, relative = robustness_tolerance(example.metric, robustness)
        comparisons.setdefault(key, []).append(
            Variant(
                comparison=key,
                optimizer=example.config.optimizer,
                label=label,
                metric=example.metric,
                higher_is_better=example.higher_is_better,
                target=example.target,
                learning_rates=results,
                incomplete=incomplete,
                best=best,
                runner_up=ranked[1] if len(ranked) > 1 else None,
                resolution=validation_resolution(best.runs, best.score(example.higher_is_better)),
                robust=robust_range(results, best, example.higher_is_better, tolerance, relative),
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


# -- backends side by side -----------------------------------------------------------------------


@dataclass(frozen=True)
class BackendComparison:
    """One optimizer configuration of one comparison on each backend it ran on (lr selected per
    backend): its variant per backend, in :data:`~rkopt.bench.backends.BACKENDS` order."""

    comparison: ComparisonKey
    label: str
    """The variants' label without the backend suffix."""
    variants: dict[str, Variant]

    def seconds_per_grad_eval(self, backend: str) -> float:
        """Mean training seconds / mean gradient evaluations of ``backend``'s completed seeds."""
        return self.variants[backend].seconds_per_1k_grad_evals / 1000

    def time_ratio(self, backend: str, reference: str = "torch") -> float:
        """Seconds per gradient evaluation of ``backend`` over ``reference``'s (> 1: ``backend`` slower)."""
        reference_seconds = self.seconds_per_grad_eval(reference)
        return self.seconds_per_grad_eval(backend) / reference_seconds if reference_seconds else math.nan


def backend_comparisons(comparisons: dict[ComparisonKey, list[Variant]]) -> list[BackendComparison]:
    """The optimizer configurations that ran on more than one backend, paired by comparison and label."""
    grouped: dict[tuple[ComparisonKey, str], dict[str, Variant]] = {}
    for key, members in comparisons.items():
        for v in members:
            grouped.setdefault((key, v.label.removesuffix(backend_suffix(v.backend))), {})[v.backend] = v
    return [
        BackendComparison(key, label, {backend: by[backend] for backend in BACKENDS if backend in by})
        for (key, label), by in grouped.items()
        if len(by) > 1
    ]


# -- performance profiles ------------------------------------------------------------------------

PROFILE_TAUS = (1.0, 1.25, 1.5, 2.0, 3.0, 4.0)
"""The τ at which the performance-profile table reads ρ(τ)."""
PROFILE_TAU_MAX = 4.0
"""The end of the profile's τ axis, and of the area score (AlgoPerf's r_max)."""


def time_to_target(variant: Variant, x_key: str) -> float:
    """Mean ``x_key`` at which the best lr's seeds first met the target; +inf unless every seed did."""
    stat = variant.to_target(x_key)
    return stat.mean if stat.n and stat.n == len(variant.runs) else math.inf


@dataclass
class PerformanceProfile:
    """For each optimizer (variant label), its time-to-target ratio to the best on every problem.

    A problem is a comparison (workload × batch size × budget); the ratio is t / min over optimizers
    of t, +inf where the optimizer did not reach the target with every seed or did not run. Problems
    that no optimizer solved are left out (listed in ``unsolved``).
    """

    x_key: str
    problems: list[ComparisonKey]
    ratios: dict[str, list[float]]
    unsolved: list[ComparisonKey] = field(default_factory=list)

    def fraction(self, label: str, tau: float) -> float:
        """ρ(τ): the fraction of problems on which ``label`` is within τ× of the best."""
        ratios = self.ratios[label]
        return sum(r <= tau * (1 + 1e-12) for r in ratios) / len(ratios) if ratios else math.nan

    def score(self, label: str, tau_max: float = PROFILE_TAU_MAX) -> float:
        """The normalised area under ρ from τ = 1 to ``tau_max`` (1: best everywhere; AlgoPerf's score)."""
        ratios = self.ratios[label]
        if not ratios:
            return math.nan
        return sum(max(0.0, tau_max - r) for r in ratios) / (len(ratios) * (tau_max - 1))


def performance_profiles(comparisons: dict[ComparisonKey, list[Variant]], x_key: str) -> PerformanceProfile:
    """The performance profile of every optimizer over the comparisons, by time to target in ``x_key``
    (``grad_evals`` or ``time``)."""
    labels = sorted({v.label for members in comparisons.values() for v in members})
    problems, unsolved = [], []
    ratios: dict[str, list[float]] = {label: [] for label in labels}
    for key, members in comparisons.items():
        times = {v.label: time_to_target(v, x_key) for v in members}
        best = min(times.values(), default=math.inf)
        if not math.isfinite(best) or best <= 0:
            unsolved.append(key)
            continue
        problems.append(key)
        for label in labels:
            ratios[label].append(times.get(label, math.inf) / best)
    return PerformanceProfile(x_key, problems, ratios, unsolved)


# -- the best rkopt method against the best baseline ---------------------------------------------


def seed_values(variant: Variant, quantity: str) -> list[float | None]:
    """One value per seed of the selected lr: ``quantity`` ``"final"``, the final test metric (None for a
    diverged seed); ``"grad_evals"``, ``"time"`` or ``"step"``, that count at the first measurement
    meeting the target (None for a seed that never did, or without a target)."""
    if quantity == "final":
        return [final_value(run, "test") for run in variant.runs]
    if variant.target is None:
        return [None] * len(variant.runs)
    reached = [first_reaching(run, variant.target) for run in variant.runs]
    return [None if m is None else float(m[quantity]) for m in reached]


def seed_outcomes(variant: Variant, quantity: str) -> list[float]:
    """:func:`seed_values` oriented so that smaller is better: the final metric negated when higher is
    better, +inf for a diverged seed or one that never reached the target."""
    sign = -1.0 if quantity == "final" and variant.higher_is_better else 1.0
    return [math.inf if v is None else sign * v for v in seed_values(variant, quantity)]


def seed_verdict(first: Sequence[float], second: Sequence[float], tolerance: float = 0.0) -> str:
    """Which of two seed samples (smaller is better) is ahead *beyond seed spread*, i.e. with every one of
    its seeds better than every seed of the other by more than ``tolerance`` (relative): ``"first"``,
    ``"second"``, ``"within"`` (the ranges overlap or touch) or ``"neither"`` (no finite value on
    either side)."""
    if not any(map(math.isfinite, first)) and not any(map(math.isfinite, second)):
        return "neither"

    def ahead(a: Sequence[float], b: Sequence[float]) -> bool:
        worst, best = max(a), min(b)
        return worst < best and (math.isinf(best) or best - worst > tolerance * abs(worst))

    return "first" if ahead(first, second) else "second" if ahead(second, first) else "within"


@dataclass(frozen=True)
class HeadToHead:
    """On one problem, the best rkopt method and the best baseline, each chosen like the learning rate
    (validation score, then validation loss, then label), compared seed by seed on the test set."""

    comparison: ComparisonKey
    rkopt: Variant
    baseline: Variant

    def verdict(self, quantity: str) -> str:
        """``"rkopt"``, ``"baseline"``, ``"within"`` (seed spread) or ``"neither"`` on ``quantity``
        (see :func:`seed_outcomes`). Counts to target within :data:`EQUAL_BUDGET_TOLERANCE` of each
        other are the same measurement (a Runge–Kutta step may overshoot it by a few evaluations)."""
        tolerance = 0.0 if quantity == "final" else EQUAL_BUDGET_TOLERANCE
        verdict = seed_verdict(
            seed_outcomes(self.rkopt, quantity), seed_outcomes(self.baseline, quantity), tolerance
        )
        return {"first": "rkopt", "second": "baseline"}.get(verdict, verdict)


def _best_by_validation(members: Sequence[Variant]) -> Variant:
    """The member whose selected lr ranks first by :func:`selection_key`, then by label."""

    def key(v: Variant) -> tuple[float, float, str]:
        score, negative_loss, _ = selection_key(v.best, v.higher_is_better)
        return (-score, -negative_loss, v.label)

    return min(members, key=key)


def head_to_heads(
    comparisons: dict[ComparisonKey, list[Variant]],
    baselines: Iterable[str],
    left_out: Iterable[str] = (),
) -> list[HeadToHead]:
    """Per comparison that has both, the best rkopt method against the best of ``baselines`` (optimizer
    names), in comparison order; the optimizers named in ``left_out`` are on neither side."""
    names, excluded = set(baselines), set(left_out)
    out = []
    for key, members in comparisons.items():
        base = [v for v in members if v.optimizer in names]
        ours = [v for v in members if v.optimizer not in names | excluded]
        if base and ours:
            out.append(HeadToHead(key, _best_by_validation(ours), _best_by_validation(base)))
    return out
