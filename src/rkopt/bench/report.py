"""``rkopt report``: Markdown tables, a JSON summary and PNG figures for a results directory.

Figures (matplotlib, Agg backend), one panel per workload × batch size, best learning rate per
optimizer, mean ± std over seeds:

- ``metric_vs_grad_evals.png``, ``metric_vs_time.png``, ``metric_vs_steps.png``: test metric over
  gradient evaluations, training wall time and optimizer steps;
- ``lr_sensitivity.png``: final validation metric against the learning rate, diverged runs marked ✗;
- ``step_size.png``: the step size h over training, for the variants that adapt it;
- ``figure1.png``: RK4 against Adam, one column per batch size (the setting of the paper's Figure 1).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from rkopt.bench.analysis import ComparisonKey, Stat, Variant, equal_budgets, variants
from rkopt.bench.errors import ConfigError
from rkopt.bench.records import RunRecord, clean_floats, load_results

REPORT_DIR = "report"
FIGURE1_OPTIMIZERS = ("rk4", "adam")
ACCURACY_ZOOM = 0.25
"""Accuracy axes start this far below the target."""


@dataclass
class Report:
    """The files a report wrote."""

    markdown: Path
    summary: Path
    figures: list[Path] = field(default_factory=list)


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
        "diverged runs (all lrs)",
    ]
    rows = []
    for v in members:
        runs_all = [run for lr in v.learning_rates for run in lr.runs]
        diverged = sum(run.diverged for run in runs_all)
        rows.append(
            [
                f"`{v.label}`",
                f"{v.best.lr:.3g}",
                _target_cell(v, "time", 3),
                _target_cell(v, "grad_evals", 4),
                _target_cell(v, "step", 4),
                v.best.test.format(),
                v.at_equal_grad_evals.format(),
                v.at_equal_time.format(),
                f"{v.mean_result('train_seconds'):.3g}",
                f"{v.seconds_per_1k_grad_evals:.3g}",
                f"{diverged}/{len(runs_all)}",
            ]
        )
    return _markdown_table(header, rows)


def _sensitivity_table(members: Sequence[Variant]) -> list[str]:
    metric = members[0].metric
    header = ["optimizer", "lr", f"final val {metric}", f"final test {metric}", "diverged seeds"]
    rows = []
    for v in members:
        for result in v.learning_rates:
            best = result is v.best
            rows.append(
                [
                    f"`{v.label}`",
                    f"**{result.lr:.3g}**" if best else f"{result.lr:.3g}",
                    result.validation.format(),
                    result.test.format(),
                    f"✗ {result.diverged}/{len(result.runs)}" if result.diverged else "0",
                ]
            )
    return _markdown_table(header, rows)


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _summary_json(comparisons: dict[ComparisonKey, list[Variant]]) -> list[dict[str, Any]]:
    def stat(s: Stat) -> dict[str, Any]:
        return {"mean": s.mean if s.n else None, "std": s.std if s.n else None, "n": s.n}

    out = []
    for key, members in comparisons.items():
        for v in members:
            out.append(
                {
                    "workload": key.workload,
                    "batch_size": key.batch_size,
                    "budget": key.budget,
                    "optimizer": v.label,
                    "metric": v.metric,
                    "target": v.target,
                    "best_lr": v.best.lr,
                    "seeds": len(v.runs),
                    "final_test": stat(v.best.test),
                    "final_validation": stat(v.best.validation),
                    "at_equal_grad_evals": stat(v.at_equal_grad_evals),
                    "at_equal_time": stat(v.at_equal_time),
                    "seconds_to_target": stat(v.to_target("time")),
                    "grad_evals_to_target": stat(v.to_target("grad_evals")),
                    "steps_to_target": stat(v.to_target("step")),
                    "train_seconds": v.mean_result("train_seconds"),
                    "learning_rates": [
                        {
                            "lr": r.lr,
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
    cmap = plt.get_cmap("tab10")
    return {label: cmap(i % 10) for i, label in enumerate(labels)}


def _panels(keys: Sequence[ComparisonKey], title: str) -> tuple[Any, dict[ComparisonKey, Any]]:
    """A figure with one panel per comparison: a row per workload, a column per batch size/budget."""
    rows = sorted({k.workload for k in keys})
    columns = sorted({(k.batch_size, k.budget) for k in keys})
    fig, axes = plt.subplots(
        len(rows), len(columns), figsize=(4.6 * len(columns), 3.6 * len(rows)), squeeze=False
    )
    panels = {}
    for key in keys:
        ax = axes[rows.index(key.workload)][columns.index((key.batch_size, key.budget))]
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
    fig.savefig(path, dpi=110)
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


# -- the report --------------------------------------------------------------------------------


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
        "- Learning rates are selected on the validation split (final value, mean over seeds; a diverged "
        "seed counts as worst); all test figures are at the selected lr, mean ± std over seeds.",
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


def write_report(results_dir: Path, out_dir: Path | None = None) -> Report:
    """Summarise every finished run under ``results_dir`` into ``out_dir`` (default ``RESULTS/report``)."""
    results_dir = Path(results_dir)
    runs = load_results(results_dir)
    if not runs:
        raise ConfigError(
            f"rkopt report {results_dir}: no finished runs there; run `rkopt train` or `rkopt sweep --out "
            f"{results_dir}` first"
        )
    out_dir = Path(out_dir) if out_dir is not None else results_dir / REPORT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    comparisons = variants(runs)
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
    }
    lines = [
        "# rkopt benchmark report",
        "",
        f"{len(runs)} finished runs in `{results_dir}`, "
        f"{sum(r.diverged for r in runs)} diverged. Headline: time to reach the target test metric.",
        "",
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
                "no adaptive variant in these runs" if "Step size" in title else "neither rk4 nor adam ran"
            )
            lines += [f"- {title}: not drawn ({reason}).", ""]
        else:
            lines += [f"### {title}", "", f"![{title}]({path.name})", ""]
    lines += _notes(runs, comparisons)
    markdown = out_dir / "report.md"
    markdown.write_text("\n".join(lines) + "\n")
    summary = out_dir / "summary.json"
    summary.write_text(json.dumps(clean_floats(_summary_json(comparisons)), indent=2) + "\n")
    return Report(markdown, summary, [p for p in figures.values() if p is not None])
