"""``rkopt report``: Markdown tables, a JSON summary and PNG figures for a results directory.

Files (in ``RESULTS/report`` by default): ``report.md`` (headline and lr tables per workload × batch
size, selection flags, the best rkopt method against the best baseline, the torch and JAX backends
side by side when both ran, performance profiles, figures, notes), ``summary.json`` (one entry per
variant: selected lr, scores, runner-up, grid-edge flag, robustness, backend, ...),
``readme_table.md`` (the result table in the README's format, :func:`render_readme_table`;
:func:`check_readme_table` checks a text against it), ``performance_profile.md``,
``head_to_head.json`` (per problem, the best rkopt method against the best baseline, seed by seed,
with the verdicts of :class:`rkopt.bench.analysis.HeadToHead`), ``skipped_runs.json`` (finished runs
left out because their records are damaged, each with its path and the reason; also a section of
``report.md``) and the figures below.
Every file is written to a temporary file renamed over the old one: a symlink planted in the report
directory is replaced, never written through.

Figures (matplotlib, Agg backend), one panel per workload × batch size, best learning rate per
optimizer, mean ± std over seeds:

- ``metric_vs_grad_evals.png``, ``metric_vs_time.png``, ``metric_vs_steps.png``: test metric over
  gradient evaluations, training wall time and optimizer steps;
- ``lr_sensitivity.png``: final validation metric against the learning rate, diverged runs marked ✗;
- ``step_size.png``: the step size h over training, for the variants that adapt it;
- ``figure1.png``: RK4 against Adam, one column per batch size (the setting of the paper's Figure 1);
- ``performance_profile.png``: AlgoPerf-style performance profiles, by time to target in gradient
  evaluations and in seconds (:func:`rkopt.bench.analysis.performance_profiles`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from rkopt.bench.analysis import (
    CONTINUOUS_RESOLUTION,
    PROFILE_TAU_MAX,
    PROFILE_TAUS,
    BackendComparison,
    ComparisonKey,
    HeadToHead,
    PerformanceProfile,
    Stat,
    Variant,
    backend_comparisons,
    equal_budgets,
    head_to_heads,
    performance_profiles,
    seed_values,
    variants,
)
from rkopt.bench.backends import BACKENDS
from rkopt.bench.errors import ConfigError
from rkopt.bench.optimizers import BASELINES
from rkopt.bench.records import (
    RunRecord,
    SkippedRun,
    atomic_file,
    read_results,
    write_json_atomic,
    write_text_atomic,
)

REPORT_DIR = "report"
SKIPPED_RUNS_FILE = "skipped_runs.json"
HEAD_TO_HEAD_FILE = "head_to_head.json"
SAME_AS_A_BASELINE = ("euler",)
"""rkopt presets whose update is a baseline's (Euler's step is SGD's): on neither side of the head-to-head."""
FIGURE1_OPTIMIZERS = ("rk4", "adam")
ACCURACY_ZOOM = 0.25
"""Accuracy axes start this far below the target."""


@dataclass
class Report:
    """The files a report wrote."""

    markdown: Path
    summary: Path
    figures: list[Path] = field(default_factory=list)
    readme_table: Path | None = None
    profiles: Path | None = None
    skipped_runs: list[SkippedRun] = field(default_factory=list)
    """Finished runs left out because their records are damaged (also in ``skipped_runs.json``)."""


def format_lr(lr: float) -> str:
    """A learning rate as the README writes it: ``1e-3``, ``3.16e-4``, ``0.3``, ``1``, ``1e9``."""
    if 0.01 <= lr < 1e4:
        return f"{lr:.3g}"
    mantissa, exponent = f"{lr:.2e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def _lr_cell(v: Variant) -> str:
    """The selected lr with its selection flags: (edge) at an end of the grid, (≈) runner-up within the
    validation resolution."""
    text = format_lr(v.best.lr)
    if v.lr_at_grid_edge:
        text += " (edge)"
    if v.runner_up_within_resolution:
        text += " (≈)"
    return text


def _robust_cell(v: Variant) -> str:
    return v.robust.format() if v.robust is not None else "–"


def _boundary_cell(v: Variant) -> str:
    boundary = v.divergence_boundary
    return format_lr(boundary) if boundary is not None else "none"


# -- tables ------------------------------------------------------------------------------------


def _target_cell(variant: Variant, x_key: str, digits: int) -> str:
    stat = variant.to_target(x_key)
    if variant.target is None:
        return "–"
    if not stat.n:
        return "not reached"
    return f"{stat.mean:.{digits}g} ({stat.n}/{len(variant.runs)})"


def _headline_table(members: Sequence[Variant]) -> list[str]:
    metric = members[0].metric
    evals, seconds = equal_budgets(members)
    header = [
        "optimizer",
        "best lr",
        "seconds to target",
        "grad evals to target",
        "steps to target",
        f"final test {metric}",
        f"test {metric} @ {evals:.0f} grad evals",
        f"test {metric} @ {seconds:.3g} s",
        "train s",
        "s / 1k grad evals",
        "epochs (data seen)",
        "lr range (decades)",
        "smallest diverged lr",
        "diverged runs (all lrs)",
    ]
    rows = []
    for v in members:
        runs_all = [run for lr in v.learning_rates for run in lr.runs]
        diverged = sum(run.diverged for run in runs_all)
        rows.append(
            [
                f"`{v.label}`",
                _lr_cell(v),
                _target_cell(v, "time", 3),
                _target_cell(v, "grad_evals", 4),
                _target_cell(v, "step", 4),
                v.best.test.format(),
                v.at_equal_grad_evals.format(),
                v.at_equal_time.format(),
                f"{v.mean_result('train_seconds'):.3g}",
                f"{v.seconds_per_1k_grad_evals:.3g}",
                _number(v.final_mean("epoch"), ".3g"),
                _robust_cell(v),
                _boundary_cell(v),
                f"{diverged}/{len(runs_all)}",
            ]
        )
    return _markdown_table(header, rows)


def _sensitivity_table(members: Sequence[Variant]) -> list[str]:
    metric = members[0].metric
    header = ["optimizer", "lr", f"final val {metric}", f"final test {metric}", "diverged seeds"]
    rows = []
    for v in members:
        for result in sorted([*v.learning_rates, *v.incomplete], key=lambda r: r.lr):
            best = result is v.best
            lr = f"**{result.lr:.3g}**" if best else f"{result.lr:.3g}"
            if result is v.runner_up and v.runner_up_within_resolution:
                lr += " (≈ best)"
            if result in v.incomplete:
                lr += f" ({len(result.runs)} of {len(v.runs)} seeds, not selectable)"
            rows.append(
                [
                    f"`{v.label}`",
                    lr,
                    result.validation.format(),
                    result.test.format(),
                    f"✗ {result.diverged}/{len(result.runs)}" if result.diverged else "0",
                ]
            )
    return _markdown_table(header, rows)


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _backend_comparison_json(
    comparisons: dict[ComparisonKey, list[Variant]], stat: Callable[[Stat], dict[str, Any]]
) -> dict[tuple[ComparisonKey, str], dict[str, Any]]:
    """For each variant with a twin on another backend, by (comparison, label): every backend's
    selected lr, final test figures and seconds per gradient evaluation, and the time ratios to torch."""
    out = {}
    for pair in backend_comparisons(comparisons):
        entry = {
            "backends": {
                backend: {
                    "optimizer": v.label,
                    "selected_lr": v.best.lr,
                    "final_test": stat(v.best.test),
                    "seconds_per_grad_eval": pair.seconds_per_grad_eval(backend),
                }
                for backend, v in pair.variants.items()
            },
            "seconds_per_grad_eval_ratio_to_torch": {
                backend: pair.time_ratio(backend) for backend in pair.variants if backend != "torch"
            },
        }
        out.update({(pair.comparison, v.label): entry for v in pair.variants.values()})
    return out


def _summary_json(comparisons: dict[ComparisonKey, list[Variant]]) -> list[dict[str, Any]]:
    def stat(s: Stat) -> dict[str, Any]:
        return {"mean": s.mean if s.n else None, "std": s.std if s.n else None, "n": s.n}

    twins = _backend_comparison_json(comparisons, stat)
    out = []
    for key, members in comparisons.items():
        for v in members:
            out.append(
                {
                    "workload": key.workload,
                    "batch_size": key.batch_size,
                    "budget": key.budget,
                    "optimizer": v.label,
                    "optimizer_name": v.optimizer,
                    "stage_batches": v.stage_batches,
                    "backend": v.backend,
                    "backend_comparison": twins.get((key, v.label)),
                    "metric": v.metric,
                    "higher_is_better": v.higher_is_better,
                    "target": v.target,
                    "best_lr": v.best.lr,
                    "selected_lr": v.best.lr,
                    "selection": {
                        "validation_score": v.score,
                        "validation_loss": v.best.loss_score(),
                        "runner_up_lr": v.runner_up.lr if v.runner_up else None,
                        "runner_up_score": v.runner_up.score(v.higher_is_better) if v.runner_up else None,
                        "runner_up_gap": v.runner_up_gap,
                        "resolution": v.resolution,
                        "runner_up_within_resolution": v.runner_up_within_resolution,
                    },
                    "lr_grid": v.lr_grid,
                    "incomplete_lrs": [r.lr for r in v.incomplete],
                    "lr_at_grid_edge": v.lr_at_grid_edge,
                    "lr_edge": v.edge,
                    "lr_bounded_by_divergence": v.bounded_by_divergence,
                    "lr_robustness": None
                    if v.robust is None
                    else {
                        "decades": v.robust.decades,
                        "low": v.robust.low,
                        "high": v.robust.high,
                        "open": v.robust.is_open,
                        "tolerance": v.robust.tolerance,
                        "relative": v.robust.relative,
                    },
                    "divergence_boundary": v.divergence_boundary,
                    "seeds": len(v.runs),
                    "final_test": stat(v.best.test),
                    "final_validation": stat(v.best.validation),
                    "at_equal_grad_evals": stat(v.at_equal_grad_evals),
                    "at_equal_time": stat(v.at_equal_time),
                    "seconds_to_target": stat(v.to_target("time")),
                    "grad_evals_to_target": stat(v.to_target("grad_evals")),
                    "steps_to_target": stat(v.to_target("step")),
                    "train_seconds": v.mean_result("train_seconds"),
                    "seconds_per_1k_grad_evals": v.seconds_per_1k_grad_evals,
                    "epochs": v.final_mean("epoch"),
                    "samples": v.final_mean("samples"),
                    "learning_rates": [
                        {
                            "lr": r.lr,
                            "score": r.score(v.higher_is_better),
                            "validation_loss": r.loss_score(),
                            "validation": stat(r.validation),
                            "test": stat(r.test),
                            "diverged": r.diverged,
                            "runs": len(r.runs),
                        }
                        for r in v.learning_rates
                    ],
                }
            )
    return out


# -- figures -----------------------------------------------------------------------------------


def _colors(comparisons: dict[ComparisonKey, list[Variant]]) -> dict[str, Any]:
    labels = sorted({v.label for members in comparisons.values() for v in members})
    cmap, size = (plt.get_cmap("tab10"), 10) if len(labels) <= 10 else (plt.get_cmap("tab20"), 20)
    return {label: cmap(i % size) for i, label in enumerate(labels)}


def _panels(keys: Sequence[ComparisonKey], title: str) -> tuple[Any, dict[ComparisonKey, Any]]:
    """A figure with one panel per comparison: a row per workload, its batch sizes/budgets across (each
    workload its own, so a study whose workloads use different batch sizes fills every row from the left)."""
    rows = sorted({k.workload for k in keys})
    columns = {w: sorted({(k.batch_size, k.budget) for k in keys if k.workload == w}) for w in rows}
    width = max(len(c) for c in columns.values())
    fig, axes = plt.subplots(len(rows), width, figsize=(4.6 * width, 3.6 * len(rows)), squeeze=False)
    panels = {}
    for key in keys:
        ax = axes[rows.index(key.workload)][columns[key.workload].index((key.batch_size, key.budget))]
        ax.set_title(f"{key.workload}\nbatch {key.batch_size}, {key.budget}", fontsize=9)
        ax.grid(alpha=0.3)
        panels[key] = ax
    for ax in axes.flat:
        if ax not in panels.values():
            ax.set_visible(False)
    fig.suptitle(title)
    return fig, panels


def _save(fig: Any, path: Path) -> Path:
    handles = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(
            handles.values(), handles.keys(), loc="lower center", ncol=min(len(handles), 5), fontsize=8
        )
    fig.tight_layout(rect=(0, 0.08 if handles else 0, 1, 1))
    with atomic_file(path, "wb") as file:
        fig.savefig(file, dpi=110, format="png")
    plt.close(fig)
    return path


def mean_curve(runs: Sequence[RunRecord], x_key: str, y_key: str) -> tuple[np.ndarray, ...] | None:
    """(x, mean y, std y) over the non-diverged runs, interpolated onto their common range of x."""
    curves = []
    for run in runs:
        points = [(m[x_key], m[y_key]) for m in run.measurements if m.get(y_key) is not None]
        if not run.diverged and len(points) > 1:
            curves.append(np.array(points, dtype=float).T)
    if not curves:
        return None
    end = min(x[-1] for x, _ in curves)
    grid = np.unique(np.concatenate([x for x, _ in curves]))
    grid = grid[grid <= end]
    ys = np.stack([np.interp(grid, x, y) for x, y in curves])
    return grid, ys.mean(axis=0), ys.std(axis=0)


def _plot_mean(ax: Any, variant: Variant, x_key: str, y_key: str, color: Any, label: str) -> bool:
    curve = mean_curve(variant.runs, x_key, y_key)
    if curve is None:
        return False
    x, mean, std = curve
    ax.plot(x, mean, color=color, label=label)
    ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2)
    return True


def plot_curves(
    comparisons: dict[ComparisonKey, list[Variant]],
    x_key: str,
    xlabel: str,
    path: Path,
    select: Callable[[Variant], bool] = lambda v: True,
    title: str = "",
) -> Path | None:
    """Test metric over ``x_key`` for each selected variant's best lr; None if nothing to plot."""
    keys = [k for k, members in comparisons.items() if any(select(v) for v in members)]
    if not keys:
        return None
    fig, panels = _panels(keys, title or f"test metric vs {xlabel} (best lr, mean ± std over seeds)")
    colors = _colors(comparisons)
    for key, ax in panels.items():
        metric = comparisons[key][0].metric
        for v in filter(select, comparisons[key]):
            if not _plot_mean(ax, v, x_key, f"test_{v.metric}", colors[v.label], v.label):
                ax.plot([], [], color=colors[v.label], label=f"{v.label}: diverged")
        target = comparisons[key][0].target
        if target is not None:
            ax.axhline(target, color="gray", linestyle=":", linewidth=1)
            if metric == "accuracy":  # zoom on the region around the target; early points run off the bottom
                ax.set_ylim(max(0.0, target - ACCURACY_ZOOM), 1.0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"test {metric}")
        if metric == "perplexity":
            ax.set_yscale("log")
    return _save(fig, path)


def plot_lr_sensitivity(comparisons: dict[ComparisonKey, list[Variant]], path: Path) -> Path:
    """Final validation metric against the learning rate; ✗ marks a learning rate with a diverged seed."""
    fig, panels = _panels(
        list(comparisons), "learning-rate sensitivity: final validation metric (✗ diverged)"
    )
    colors = _colors(comparisons)
    for key, ax in panels.items():
        metric = comparisons[key][0].metric
        for v in comparisons[key]:
            color = colors[v.label]
            points = [(r.lr, r.validation.mean) for r in v.learning_rates if r.validation.n]
            if points:
                ax.plot(*zip(*points, strict=True), "o-", color=color, label=v.label, markersize=4)
            if v.best.validation.n:
                ax.plot(v.best.lr, v.best.validation.mean, "*", color=color, markersize=12)
            for r in v.learning_rates:
                if r.diverged:
                    ax.plot(
                        r.lr, 0.03, "x", color=color, markersize=9, mew=2, transform=ax.get_xaxis_transform()
                    )
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (cap of h for adaptive variants)")
        ax.set_ylabel(f"final validation {metric}")
    return _save(fig, path)


def _adapts_step_size(variant: Variant) -> bool:
    return any(
        m.get("h") is not None and not math.isclose(m["h"], m["lr"], rel_tol=1e-9)
        for run in variant.runs
        for m in run.measurements
    )


def plot_step_sizes(comparisons: dict[ComparisonKey, list[Variant]], path: Path) -> Path | None:
    """The step size h over training for adaptive variants (dashed: the lr cap); None if there are none."""
    keys = [k for k, members in comparisons.items() if any(map(_adapts_step_size, members))]
    if not keys:
        return None
    fig, panels = _panels(
        keys, "step size h of adaptive variants (best lr; dashed: lr cap; one line per seed)"
    )
    colors = _colors(comparisons)
    for key, ax in panels.items():
        for v in filter(_adapts_step_size, comparisons[key]):
            for i, run in enumerate(v.runs):
                points = [(m["grad_evals"], m["h"]) for m in run.measurements if m["step"] > 0]
                if points:
                    ax.plot(
                        *zip(*points, strict=True), color=colors[v.label], label=v.label if i == 0 else None
                    )
            ax.axhline(v.best.lr, color=colors[v.label], linestyle="--", linewidth=1)
        ax.set_yscale("log")
        ax.set_xlabel("gradient evaluations")
        ax.set_ylabel("step size h")
    return _save(fig, path)


def _figure1_variant(v: Variant) -> bool:
    return v.label in FIGURE1_OPTIMIZERS


def plot_figure1(comparisons: dict[ComparisonKey, list[Variant]], path: Path) -> Path | None:
    """RK4 against Adam per workload and batch size, like the paper's Figure 1 (at equal gradient budgets)."""
    return plot_curves(
        comparisons,
        "grad_evals",
        "gradient evaluations",
        path,
        select=_figure1_variant,
        title="RK4 vs Adam, small vs large batch (setting of Dherin et al. 2025, Fig. 1); "
        "test metric, best lr, mean ± std",
    )


def plot_performance_profiles(profiles: Sequence[PerformanceProfile], path: Path) -> Path | None:
    """ρ(τ) of every optimizer, one panel per profile (gradient evaluations, seconds); None if no
    problem was solved by anyone."""
    if not any(p.problems for p in profiles):
        return None
    labels = sorted({label for p in profiles for label in p.ratios})
    cmap, size = (plt.get_cmap("tab10"), 10) if len(labels) <= 10 else (plt.get_cmap("tab20"), 20)
    fig, axes = plt.subplots(1, len(profiles), figsize=(5.5 * len(profiles), 4.2), squeeze=False)
    taus = np.geomspace(1.0, PROFILE_TAU_MAX, 400)
    for ax, profile in zip(axes[0], profiles, strict=True):
        for i, label in enumerate(labels):
            if profile.problems:
                ax.step(
                    taus,
                    [profile.fraction(label, t) for t in taus],
                    where="post",
                    label=label,
                    color=cmap(i % size),
                )
        ax.set_xscale("log", base=2)
        ax.set_xticks([t for t in PROFILE_TAUS if t <= PROFILE_TAU_MAX], [f"{t:g}" for t in PROFILE_TAUS])
        ax.minorticks_off()
        ax.set_xlim(1.0, PROFILE_TAU_MAX)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("τ (time to target / best time to target)")
        ax.set_ylabel("fraction of workloads × batch sizes")
        what = "gradient evaluations" if profile.x_key == "grad_evals" else "seconds"
        ax.set_title(f"time to target in {what}\n({len(profile.problems)} solved problems)", fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle("performance profiles (AlgoPerf-style): ρ(τ) = share within τ× of the best")
    return _save(fig, path)


# -- the README table --------------------------------------------------------------------------

README_COLUMNS = (
    "workload",
    "target",
    "batch",
    "optimizer",
    "best lr",
    "grad evals to target",
    "seconds to target",
    "final test",
    "lr range (decades)",
    "diverges from lr",
    "epochs",
    "s per 1k grad evals",
)
"""The columns of the README's result table (:func:`render_readme_table`)."""
README_LEGEND = (
    "best lr: selected on validation data (metric, then loss, then the smaller lr); (edge): at an end of "
    "the lr grid tried; (≈): the runner-up is within the validation set's resolution. To target: mean over "
    "seeds, (k/n) when only k of n seeds reached it. final test: mean ± std over seeds at the best lr. lr "
    "range: width in decades of the lrs within {tolerance} of the best validation score (≥: it reaches "
    "the grid's end). diverges from lr: the smallest lr with a diverged seed. epochs: training data seen."
)

_NUMBER = r"\d+(?:\.\d+)?(?:e[-+]?\d+)?"
_LR = r"\d+(?:\.\d+)?(?:e-?\d+)?"
_TO_TARGET = rf"(?:{_NUMBER}(?: \(\d+/\d+\))?|not reached|–)"
README_CELL_PATTERNS = {
    "workload": r"\S.*",
    "target": rf"(?:\w+ [≥≤] {_NUMBER}|–)",
    "batch": r"\d+",
    "optimizer": r"\S.*",
    "best lr": rf"{_LR}(?: \(edge\))?(?: \(≈\))?",
    "grad evals to target": _TO_TARGET,
    "seconds to target": _TO_TARGET,
    "final test": rf"(?:{_NUMBER}(?: ± {_NUMBER})?|–)",
    "lr range (decades)": rf"(?:(?:≥ )?{_NUMBER}|–)",
    "diverges from lr": rf"(?:{_LR}|none)",
    "epochs": rf"(?:{_NUMBER}|–)",
    "s per 1k grad evals": rf"(?:{_NUMBER}|–)",
}
"""What each README table cell must look like (regular expressions, matched in full)."""


def _to_target_readme(v: Variant, x_key: str, digits: str) -> str:
    if v.target is None:
        return "–"
    stat = v.to_target(x_key)
    if not stat.n:
        return "not reached"
    text = f"{stat.mean:{digits}}"
    return text if stat.n == len(v.runs) else f"{text} ({stat.n}/{len(v.runs)})"


def _final_test_readme(v: Variant) -> str:
    stat = v.best.test
    if not stat.n:
        return "–"
    spec = (".3f", ".3f") if v.metric == "accuracy" else (".4g", ".2g")
    return f"{stat.mean:{spec[0]}} ± {stat.std:{spec[1]}}" if stat.n > 1 else f"{stat.mean:{spec[0]}}"


def _number(value: float, spec: str) -> str:
    return f"{value:{spec}}" if math.isfinite(value) else "–"


def readme_rows(comparisons: dict[ComparisonKey, list[Variant]]) -> list[list[str]]:
    """The README table's rows: one per variant, by workload, batch size, budget and optimizer."""
    rows = []
    for key, members in comparisons.items():
        for v in members:
            target = (
                "–" if v.target is None else f"{v.metric} {'≥' if v.higher_is_better else '≤'} {v.target:g}"
            )
            rows.append(
                [
                    key.workload,
                    target,
                    str(key.batch_size),
                    v.label,
                    _lr_cell(v),
                    _to_target_readme(v, "grad_evals", ".0f"),
                    _to_target_readme(v, "time", ".2f"),
                    _final_test_readme(v),
                    _robust_cell(v),
                    _boundary_cell(v),
                    _number(v.final_mean("epoch"), ".3g"),
                    _number(v.seconds_per_1k_grad_evals, ".3g"),
                ]
            )
    return rows


def _tolerance_text(comparisons: dict[ComparisonKey, list[Variant]]) -> str:
    parts = sorted(
        {
            f"{v.robust.tolerance:g}{' relative' if v.robust.relative else ''} ({v.metric})"
            for members in comparisons.values()
            for v in members
            if v.robust is not None
        }
    )
    return ", ".join(parts) or "the tolerance"


def render_readme_table(comparisons: dict[ComparisonKey, list[Variant]]) -> str:
    """The result table exactly as the README shows it: a Markdown table and a legend line."""
    legend = README_LEGEND.format(tolerance=_tolerance_text(comparisons))
    return "\n".join([*_markdown_table(README_COLUMNS, readme_rows(comparisons)), "", legend]) + "\n"


def _split_row(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def readme_table_rows(text: str) -> list[list[str]] | None:
    """The rows of the first table in ``text`` with the README table's header (None if there is none)."""
    header = "| " + " | ".join(README_COLUMNS) + " |"
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == header:
            rows = []
            for row in lines[i + 2 :]:
                if not row.strip().startswith("|"):
                    break
                rows.append(_split_row(row))
            return rows
    return None


def check_readme_table(text: str, expected: str | None = None) -> list[str]:
    """Problems with the result table in ``text`` (e.g. README.md); an empty list when there are none.

    The table must have the report's header (:data:`README_COLUMNS`) and separator, at least one row,
    and every cell in the report's format (:data:`README_CELL_PATTERNS`). With ``expected`` (the text
    of a report's ``readme_table.md``), its rows must also be exactly the report's rows.
    """
    header = "| " + " | ".join(README_COLUMNS) + " |"
    lines = [line.strip() for line in text.splitlines()]
    if header not in lines:
        return [f"no table with the report's header {header!r}"]
    problems = []
    start = lines.index(header)
    separator = "|" + "---|" * len(README_COLUMNS)
    if start + 1 >= len(lines) or lines[start + 1].replace(" ", "") != separator:
        problems.append(f"the header is not followed by the separator {separator!r}")
    rows = readme_table_rows(text) or []
    if not rows:
        problems.append("the table has no rows")
    for number, row in enumerate(rows, 1):
        if len(row) != len(README_COLUMNS):
            problems.append(f"row {number}: {len(row)} cells, expected {len(README_COLUMNS)}: {row}")
            continue
        for column, cell in zip(README_COLUMNS, row, strict=True):
            if not re.fullmatch(README_CELL_PATTERNS[column], cell):
                problems.append(
                    f"row {number} ({row[0]}, batch {row[2]}, {row[3]}): {column} {cell!r} is not "
                    "in the report's format"
                )
    if expected is not None:
        wanted = readme_table_rows(expected)
        if wanted is None:
            problems.append("the expected text has no README table")
        elif rows != wanted:
            have = {tuple(r) for r in rows}
            want = {tuple(r) for r in wanted}
            problems += [
                f"missing or different row (the report has it): {' | '.join(r)}"
                for r in wanted
                if tuple(r) not in have
            ]
            problems += [f"row not in the report: {' | '.join(r)}" for r in rows if tuple(r) not in want]
            if not problems:
                problems.append("the rows are the report's but in a different order")
    return problems


# -- the report --------------------------------------------------------------------------------


def profile_tables(profiles: Sequence[PerformanceProfile]) -> list[str]:
    """A Markdown table per profile: ρ(τ) at :data:`PROFILE_TAUS` and the area score, per optimizer."""
    lines = []
    for profile in profiles:
        what = "gradient evaluations" if profile.x_key == "grad_evals" else "seconds"
        lines += [f"### Time to target in {what}", ""]
        if not profile.problems:
            lines += ["No workload × batch size where any optimizer reached the target with every seed.", ""]
            continue
        header = [
            "optimizer",
            *(f"ρ({tau:g})" for tau in PROFILE_TAUS),
            f"score (area to τ={PROFILE_TAU_MAX:g})",
        ]
        rows = [
            [
                f"`{label}`",
                *(f"{profile.fraction(label, tau):.2f}" for tau in PROFILE_TAUS),
                f"{profile.score(label):.3f}",
            ]
            for label in sorted(profile.ratios, key=lambda label: (-profile.score(label), label))
        ]
        lines += _markdown_table(header, rows)
        lines += [
            "",
            f"Problems ({len(profile.problems)}): "
            + ", ".join(f"{k.workload} batch {k.batch_size}" for k in profile.problems)
            + (
                ". Not reached by any optimizer (left out): "
                + ", ".join(f"{k.workload} batch {k.batch_size}" for k in profile.unsolved)
                if profile.unsolved
                else ""
            )
            + ".",
            "",
        ]
    return lines


def _profile_section(profiles: Sequence[PerformanceProfile]) -> list[str]:
    return [
        "## Performance profiles",
        "",
        "AlgoPerf-style: for each optimizer, ρ(τ) is the fraction of problems (workload × batch size × "
        "budget) on which its time to target is within τ× of the best optimizer's there. Time to target: "
        "mean over seeds at the selected lr, counted only when every seed reached the target (else "
        "infinite). Score: the area under ρ from τ = 1 to "
        f"{PROFILE_TAU_MAX:g}, normalised (1 = fastest everywhere).",
        "",
        *profile_tables(profiles),
    ]


def _selection_flags(comparisons: dict[ComparisonKey, list[Variant]]) -> list[str]:
    members = [v for vs in comparisons.values() for v in vs]
    edge = [v for v in members if v.lr_at_grid_edge]
    close = [v for v in members if v.runner_up_within_resolution]
    bounded = [v for v in members if v.bounded_by_divergence]

    def name(v: Variant) -> str:
        where = f"{v.comparison.workload}, batch {v.comparison.batch_size}"
        return f"`{v.label}` ({where}) lr {format_lr(v.best.lr)}"

    lines = ["## Selection flags", ""]
    lines.append(
        "- Selected lr at an edge of its grid (possibly untuned; `--lr-extend` extends the grid): "
        + (", ".join(f"{name(v)} [{v.edge}]" for v in edge) if edge else "none")
        + "."
    )
    lines.append(
        "- Runner-up within the validation set's resolution (the choice between the two is a coin toss): "
        + (
            ", ".join(
                f"{name(v)} vs {format_lr(v.runner_up.lr)} (gap {v.runner_up_gap:.3g} ≤ {v.resolution:.3g})"
                for v in close
                if v.runner_up is not None
            )
            if close
            else "none"
        )
        + "."
    )
    incomplete = [v for v in members if v.incomplete]
    lines.append(
        "- Learning rates with fewer seeds than the rest of their variant (left out of the selection, the "
        "grid edges and the lr range; listed in the lr tables): "
        + (
            ", ".join(
                f"`{v.label}` ({v.comparison.workload}, batch {v.comparison.batch_size}) lr "
                + ", ".join(f"{format_lr(r.lr)} ({len(r.runs)}/{len(v.runs)} seeds)" for r in v.incomplete)
                for v in incomplete
            )
            if incomplete
            else "none"
        )
        + "."
    )
    lines.append(
        "- Selected lr just below a diverged lr (the optimum on that side): "
        + (", ".join(name(v) for v in bounded) if bounded else "none")
        + "."
    )
    return [*lines, ""]


def _notes(runs: Sequence[RunRecord], comparisons: dict[ComparisonKey, list[Variant]]) -> list[str]:
    machines = {
        (
            r.manifest["machine"]["processor"],
            r.manifest["machine"]["cpu_count"],
            r.manifest["environment"]["threads"],
        )
        for r in runs
    }
    lines = [
        "## Notes",
        "",
        "- Learning rates are selected on the validation split: final metric, mean over seeds (a diverged "
        "seed counts as worst), ties broken by the mean final validation loss, then by the smaller lr; all "
        "test figures are at the selected lr, mean ± std over seeds. (edge): the selected lr is at an end "
        "of its grid; (≈): the runner-up is within the validation resolution (1 / n_validation for "
        f"accuracy, {CONTINUOUS_RESOLUTION:g} × the best value for other metrics).",
        f"- lr range: the width in decades of the contiguous lrs of the grid, around the selected one, whose "
        f"validation score is within {_tolerance_text(comparisons)} of the best (≥: the range reaches an "
        "end of the grid). Smallest diverged lr: the divergence boundary. Epochs: training data seen (with "
        "stage batches `fresh` a Runge–Kutta step draws one batch per stage).",
        "- Time is training wall-clock only (batch sampling and optimizer steps; evaluation excluded), "
        "measured with the other runs of the sweep executing in parallel on the same machine: it varies with "
        "the machine's load (see the s / 1k grad evals column); for timing-grade figures use --workers 1 on "
        "an idle machine.",
        "- Equal-budget columns read each run's last measurement at or before the smallest average budget "
        "reached by any optimizer of the comparison (+1%). Target columns: mean over the seeds that "
        "reached the target (count in parentheses); the target is the dotted line in the figures.",
        "- Machine(s): "
        + "; ".join(
            f"{proc or 'cpu'}, {cpus} cores, {threads} torch thread(s) per run"
            for proc, cpus, threads in sorted(machines, key=str)
        ),
    ]
    diverged = [r for r in runs if r.diverged]
    if diverged:
        lines.append(
            f"- Diverged runs ({len(diverged)}): "
            + ", ".join(
                f"`{r.config.optimizer}` lr {r.config.lr:.3g} bs {r.config.batch_size} seed {r.config.seed} "
                f"(step {r.result['divergence']['step']})"
                for r in diverged
            )
        )
    return lines


def _backend_cells(pair: BackendComparison, backend: str) -> list[str]:
    variant = pair.variants.get(backend)
    if variant is None:
        return ["–"] * 3
    return [_lr_cell(variant), variant.best.test.format(), _number(variant.seconds_per_1k_grad_evals, ".3g")]


def _backend_section(comparisons: dict[ComparisonKey, list[Variant]]) -> list[str]:
    """The configurations trained on both backends, side by side (none: no section)."""
    pairs = backend_comparisons(comparisons)
    if not pairs:
        return []
    backends = [b for b in BACKENDS if any(b in pair.variants for pair in pairs)]
    others = [b for b in backends if b != "torch"]
    header = [
        "workload",
        "batch",
        "optimizer",
        *(f"{b}: {column}" for b in backends for column in ("best lr", "final test", "s / 1k grad evals")),
        *(f"time {b} / torch" for b in others),
    ]
    rows = [
        [
            pair.comparison.workload,
            str(pair.comparison.batch_size),
            f"`{pair.label}`",
            *(cell for b in backends for cell in _backend_cells(pair, b)),
            *(_number(pair.time_ratio(b), ".3g") for b in others),
        ]
        for pair in pairs
    ]
    return [
        "## Backends side by side",
        "",
        "The same workload, data, splits, batch order, initial weights and budget, trained by each backend "
        "(`--backend`); the lr is selected per backend on validation data. final test: the test metric at "
        "the selected lr, mean ± std over seeds. s / 1k grad evals: training seconds per 1000 gradient "
        "evaluations (= ms per evaluation), mean over the completed seeds; time jax / torch > 1: the JAX "
        "backend is slower. The JAX step is compiled before the clock starts.",
        "",
        *_markdown_table(header, rows),
        "",
    ]


def _seed_cells(variant: Variant, quantity: str) -> str:
    """:func:`seed_values` as a cell: ✗ a diverged seed, – one that never reached the target."""
    missing = "✗" if quantity == "final" else "–"
    return ", ".join(missing if v is None else f"{v:.4g}" for v in seed_values(variant, quantity))


VERDICT_TEXT = {
    "rkopt": "rkopt ahead",
    "baseline": "baseline ahead",
    "within": "within seed spread",
    "neither": "neither reached",
}


def _head_to_head_json(pairs: Sequence[HeadToHead]) -> list[dict[str, Any]]:
    def side(v: Variant) -> dict[str, Any]:
        return {
            "optimizer": v.label,
            "lr": v.best.lr,
            "final_test": seed_values(v, "final"),
            "grad_evals_to_target": seed_values(v, "grad_evals"),
        }

    return [
        {
            "workload": pair.comparison.workload,
            "batch_size": pair.comparison.batch_size,
            "budget": pair.comparison.budget,
            "metric": pair.rkopt.metric,
            "target": pair.rkopt.target,
            "rkopt": side(pair.rkopt),
            "baseline": side(pair.baseline),
            "verdict_final_test": pair.verdict("final"),
            "verdict_grad_evals_to_target": pair.verdict("grad_evals"),
        }
        for pair in pairs
    ]


def _head_to_head_section(pairs: Sequence[HeadToHead]) -> list[str]:
    """The best rkopt method against the best baseline per problem, seed by seed (none: no section)."""
    if not pairs:
        return []
    rows = [
        [
            pair.comparison.workload,
            str(pair.comparison.batch_size),
            f"`{pair.baseline.label}` {format_lr(pair.baseline.best.lr)}",
            _seed_cells(pair.baseline, "final"),
            f"`{pair.rkopt.label}` {format_lr(pair.rkopt.best.lr)}",
            _seed_cells(pair.rkopt, "final"),
            VERDICT_TEXT[pair.verdict("final")],
            _seed_cells(pair.baseline, "grad_evals"),
            _seed_cells(pair.rkopt, "grad_evals"),
            VERDICT_TEXT[pair.verdict("grad_evals")],
        ]
        for pair in pairs
    ]
    header = [
        "workload",
        "batch",
        "best baseline, lr",
        "final test per seed",
        "best rkopt method, lr",
        "final test per seed",
        "final test",
        "baseline: grad evals to target per seed",
        "rkopt: grad evals to target per seed",
        "grad evals to target",
    ]
    counts = {name: sum(pair.verdict("final") == name for pair in pairs) for name in VERDICT_TEXT}
    seeds = sorted({len(v.runs) for pair in pairs for v in (pair.rkopt, pair.baseline)})
    return [
        "## The best rkopt method against the best baseline",
        "",
        "Per problem, the rkopt method and the baseline ("
        + ", ".join(f"`{b}`" for b in BASELINES)
        + ") with the best validation score (chosen like the lr; "
        + ", ".join(f"`{name}`" for name in SAME_AS_A_BASELINE)
        + " is on neither side: its update is SGD's), at their selected lr, seed by seed on the "
        "test set. *Ahead*: every seed of one is better than every seed of the other; otherwise the "
        "difference is *within seed spread*. With "
        + "/".join(map(str, seeds))
        + " seed(s) this says a difference exceeds the spread of the seeds that ran, not that it is "
        "statistically significant.",
        "",
        f"On the final test metric: rkopt ahead on {counts['rkopt']} of {len(pairs)} problems, the baseline "
        f"ahead on {counts['baseline']}, within seed spread on {counts['within']}.",
        "",
        *_markdown_table(header, rows),
        "",
    ]


def _skipped_section(skipped: Sequence[SkippedRun]) -> list[str]:
    """The finished runs left out of the report because their records are damaged (none: no section)."""
    if not skipped:
        return []
    return [
        "## Skipped runs",
        "",
        f"{len(skipped)} finished run(s) left out of this report: their records cannot be read back. "
        "Delete such a run's directory and run the sweep again to redo it.",
        "",
        *(f"- `{run.path}`: {run.reason}" for run in skipped),
        "",
    ]


def write_report(results_dir: Path, out_dir: Path | None = None, robustness: float | None = None) -> Report:
    """Summarise every finished run under ``results_dir`` into ``out_dir`` (default ``RESULTS/report``).

    ``robustness``: the tolerance of the lr-robustness range (default
    :data:`rkopt.bench.analysis.ROBUSTNESS_TOLERANCE`: 0.01 absolute for accuracy, 1% relative else).
    """
    results_dir = Path(results_dir)
    runs, skipped = read_results(results_dir)
    if not runs:
        damaged = "; ".join(f"{run.path}: {run.reason}" for run in skipped)
        raise ConfigError(
            f"rkopt report {results_dir}: no finished runs there"
            + (f" that can be read ({len(skipped)} damaged: {damaged})" if skipped else "")
            + f"; run `rkopt train` or `rkopt sweep --out {results_dir}` first"
        )
    out_dir = Path(out_dir) if out_dir is not None else results_dir / REPORT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    comparisons = variants(runs, robustness)
    profiles = [performance_profiles(comparisons, "grad_evals"), performance_profiles(comparisons, "time")]
    pairs = head_to_heads(comparisons, BASELINES, left_out=SAME_AS_A_BASELINE)
    figures = {
        "Test metric vs gradient evaluations": plot_curves(
            comparisons, "grad_evals", "gradient evaluations", out_dir / "metric_vs_grad_evals.png"
        ),
        "Test metric vs training wall time": plot_curves(
            comparisons, "time", "training seconds", out_dir / "metric_vs_time.png"
        ),
        "Test metric vs optimizer steps": plot_curves(
            comparisons, "step", "steps", out_dir / "metric_vs_steps.png"
        ),
        "Learning-rate sensitivity": plot_lr_sensitivity(comparisons, out_dir / "lr_sensitivity.png"),
        "Step size h of the adaptive variants": plot_step_sizes(comparisons, out_dir / "step_size.png"),
        "RK4 vs Adam (paper's Figure 1 setting)": plot_figure1(comparisons, out_dir / "figure1.png"),
        "Performance profiles": plot_performance_profiles(profiles, out_dir / "performance_profile.png"),
    }
    lines = [
        "# rkopt benchmark report",
        "",
        f"{len(runs)} finished runs in `{results_dir}`, "
        f"{sum(r.diverged for r in runs)} diverged. Headline: time to reach the target test metric.",
        "",
        *_skipped_section(skipped),
        "## Results (README table)",
        "",
        render_readme_table(comparisons),
        *_selection_flags(comparisons),
        *_head_to_head_section(pairs),
        *_backend_section(comparisons),
    ]
    for key, members in comparisons.items():
        target, metric = members[0].target, members[0].metric
        lines += [
            f"## {key.workload}, batch size {key.batch_size}, budget {key.budget}",
            "",
            f"Target: test {metric} {'≥' if members[0].higher_is_better else '≤'} {target}. "
            f"Seeds per optimizer: {max(len(v.runs) for v in members)}.",
            "",
            *_headline_table(members),
            "",
            "Learning-rate grid (selected lr in bold):",
            "",
            *_sensitivity_table(members),
            "",
        ]
    lines += ["## Figures", ""]
    for title, path in figures.items():
        if path is None:
            reason = (
                "no adaptive variant in these runs"
                if "Step size" in title
                else "no optimizer reached the target"
                if "profiles" in title
                else "neither rk4 nor adam ran"
            )
            lines += [f"- {title}: not drawn ({reason}).", ""]
        else:
            lines += [f"### {title}", "", f"![{title}]({path.name})", ""]
    lines += _profile_section(profiles)
    lines += _notes(runs, comparisons)
    markdown = out_dir / "report.md"
    write_text_atomic(markdown, "\n".join(lines) + "\n")
    summary = out_dir / "summary.json"
    write_json_atomic(summary, _summary_json(comparisons))
    readme = out_dir / "readme_table.md"
    write_text_atomic(readme, render_readme_table(comparisons))
    profile_md = out_dir / "performance_profile.md"
    write_text_atomic(profile_md, "\n".join(["# Performance profiles", "", *profile_tables(profiles)]) + "\n")
    write_json_atomic(out_dir / HEAD_TO_HEAD_FILE, _head_to_head_json(pairs))
    write_json_atomic(
        out_dir / SKIPPED_RUNS_FILE, [{"path": str(run.path), "reason": run.reason} for run in skipped]
    )
    figure_paths = [p for p in figures.values() if p is not None]
    return Report(markdown, summary, figure_paths, readme, profile_md, skipped)
