"""Fair selection (issue 12): tie-breaks, runner-up resolution, grid edges, lr robustness, divergence
boundary, lr-grid extension and performance profiles, on synthetic records."""

from __future__ import annotations

import itertools
import json
import math

import pytest
from synthetic import record

from rkopt.bench.analysis import (
    LearningRateResult,
    extension_lrs,
    performance_profiles,
    rank_learning_rates,
    validation_resolution,
    variants,
)


def _variant(runs, robustness=None):
    ((variant,),) = variants(runs, robustness).values()
    return variant


def test_equal_validation_metric_is_broken_by_validation_loss_then_by_the_smaller_lr():
    runs = [
        record("sgd", 0.1, val=0.9, val_loss=0.40),
        record("sgd", 0.3, val=0.9, val_loss=0.35),  # same accuracy, lower loss: selected
        record("sgd", 1.0, val=0.9, val_loss=0.35),  # same accuracy and loss: the smaller lr (0.3) wins
        record("sgd", 3.0, val=0.8, val_loss=0.10),  # the best loss does not beat a better metric
    ]
    for order in itertools.permutations(runs):  # deterministic: independent of the order of the records
        variant = _variant(list(order))
        assert variant.best.lr == 0.3
        assert variant.runner_up.lr == 1.0
    ranked = rank_learning_rates([LearningRateResult(r.config.lr, [r]) for r in runs], True)
    assert [r.lr for r in ranked] == [0.3, 1.0, 0.1, 3.0]


def test_loss_tie_break_for_a_lower_is_better_metric_and_diverged_seeds():
    runs = [
        *(record("adam", 1e-3, s, val=5.0, val_loss=1.61, metric="perplexity", target=6.0) for s in (0, 1)),
        *(record("adam", 3e-3, s, val=5.0, val_loss=1.60, metric="perplexity", target=6.0) for s in (0, 1)),
        record("adam", 1e-2, 0, val=4.0, val_loss=1.3, metric="perplexity", target=6.0),
        record("adam", 1e-2, 1, val=None, diverged=True, metric="perplexity", target=6.0),
    ]
    variant = _variant(runs)
    assert variant.best.lr == 3e-3  # 1e-2 has a diverged seed: it scores worst
    assert variant.runner_up.lr == 1e-3
    assert variant.learning_rates[2].score(False) == math.inf


def test_runner_up_within_the_validation_resolution_is_marked():
    # 500 validation examples: resolution 1/500 = 0.002, recorded in the manifest
    close = [record("rk4", 0.1, val=0.900), record("rk4", 0.3, val=0.902), record("rk4", 1.0, val=0.5)]
    variant = _variant(close)
    assert variant.resolution == pytest.approx(0.002)
    assert variant.runner_up_gap == pytest.approx(0.002)
    assert variant.runner_up_within_resolution
    apart = [record("rk4", 0.1, val=0.900), record("rk4", 0.3, val=0.904), record("rk4", 1.0, val=0.5)]
    assert not _variant(apart).runner_up_within_resolution
    # records written before the field existed: 1 / the validation size of the manifest
    old = record("rk4", 0.1, n_validation=250)
    del old.manifest["validation_resolution"]
    assert validation_resolution([old], 0.9) == pytest.approx(0.004)
    # perplexity has no natural resolution: 0.1% of the best value
    lm = record("adam", 1e-3, val=5.0, metric="perplexity", target=None)
    assert validation_resolution([lm], 5.0) == pytest.approx(0.005)
    # a diverged runner-up is never "close"
    lone = [record("rk4", 0.1, val=0.9), record("rk4", 10.0, val=None, diverged=True)]
    assert not _variant(lone).runner_up_within_resolution


@pytest.mark.parametrize(
    ("scores", "edge", "bounded"),
    [
        ({0.1: 0.8, 0.3: 0.9, 1.0: 0.85}, None, False),
        ({0.1: 0.8, 0.3: 0.85, 1.0: 0.9}, "high", False),
        ({0.1: 0.9, 0.3: 0.85, 1.0: 0.8}, "low", False),
        ({0.3: 0.9}, "both", False),
        ({0.1: 0.8, 0.3: 0.9, 1.0: None}, None, True),  # the point above the best diverged
    ],
)
def test_grid_edge_and_divergence_flags(scores, edge, bounded):
    runs = [record("sgd", lr, val=v, diverged=v is None) for lr, v in scores.items()]
    variant = _variant(runs)
    assert variant.edge == edge
    assert variant.lr_at_grid_edge == (edge is not None)
    assert variant.bounded_by_divergence == bounded


def test_robustness_width_in_decades_and_divergence_boundary():
    scores = {0.01: 0.50, 0.03: 0.893, 0.1: 0.90, 0.3: 0.891, 1.0: 0.95, 3.0: None, 10.0: None}
    runs = [record("sgd", lr, val=v, diverged=v is None) for lr, v in scores.items()]
    variant = _variant(runs)
    assert variant.best.lr == 1.0
    assert variant.robust.low == variant.robust.high == 1.0  # only 1.0 is within 0.01 of 0.95
    assert variant.robust.decades == 0.0 and not variant.robust.open_low
    assert variant.divergence_boundary == 3.0
    assert variant.bounded_by_divergence
    # without the outlier at 1.0: 0.03..0.3 are within 0.01 of 0.9 (0.891 >= 0.89), 0.01 is not
    runs = [record("sgd", lr, val=v, diverged=v is None) for lr, v in scores.items() if lr != 1.0]
    variant = _variant(runs)
    assert (variant.robust.low, variant.robust.high) == (0.03, 0.3)
    assert variant.robust.decades == pytest.approx(1.0)
    assert not variant.robust.is_open and variant.robust.format() == "1.00"
    # a tighter tolerance shrinks it; a range reaching the end of the grid is open (a lower bound)
    assert _variant(runs, robustness=0.008).robust.decades == pytest.approx(math.log10(0.1 / 0.03))
    edge = [record("sgd", lr, val=v) for lr, v in {0.1: 0.9, 0.3: 0.895, 1.0: 0.7}.items()]
    assert _variant(edge).robust.open_low and _variant(edge).robust.format() == "≥ 0.48"
    # perplexity: 1% relative by default
    lm = {1e-3: 5.04, 3e-3: 5.0, 1e-2: 5.06}
    runs = [record("adam", lr, val=v, metric="perplexity", target=None) for lr, v in lm.items()]
    variant = _variant(runs)
    assert (variant.robust.low, variant.robust.high, variant.robust.relative) == (1e-3, 3e-3, True)
    all_diverged = [record("sgd", lr, val=None, diverged=True) for lr in (1.0, 3.0)]
    assert _variant(all_diverged).robust is None


def _results(scores: dict[float, float | None]) -> list[LearningRateResult]:
    return [
        LearningRateResult(lr, [record("sgd", lr, val=v, diverged=v is None)]) for lr, v in scores.items()
    ]


def test_extension_points_past_an_edge_winner():
    base = (0.01, 0.1)
    assert extension_lrs(_results({0.01: 0.5, 0.1: 0.9}), True, base, 6) == [1.0]  # same log spacing
    assert extension_lrs(_results({0.01: 0.9, 0.1: 0.5}), True, base, 6) == [0.001]
    assert extension_lrs(_results({0.01: 0.5, 0.1: 0.9, 1.0: 0.8}), True, base, 6) == []  # interior
    assert extension_lrs(_results({0.01: 0.5, 0.1: 0.9, 1.0: None}), True, base, 6) == []  # diverged
    assert extension_lrs(_results({0.3: 0.9}), True, (0.3,), 6) == [0.0949, 0.949]  # half a decade
    assert extension_lrs(_results({3.0: None, 10.0: None}), True, (3.0, 10.0), 6) == [0.9]  # down only
    three = {0.01: 0.5, 0.1: 0.6, 1.0: 0.7, 10.0: 0.8}
    assert extension_lrs(_results(three), True, base, 2) == []  # two points past the grid: capped
    assert extension_lrs(_results(three), True, base, 3) == [100.0]


def test_performance_profiles_on_synthetic_times():
    def runs(workload, optimizer, evals, seconds, seeds=(0, 1), reached=True):
        return [
            record(
                optimizer, 0.1, seed, val=0.9, test=0.9 if reached or seed == 0 else 0.5,
                workload=workload, reach=(evals, seconds),
            )
            for seed in seeds
        ]  # fmt: skip

    records = [
        *runs("a", "adam", 100, 1.0),
        *runs("a", "rk4", 150, 0.5),
        *runs("a", "sgd", 400, 4.0),
        *runs("b", "adam", 200, 2.0),
        *runs("b", "rk4", 100, 2.0),
        *runs("b", "sgd", 100, 1.0, reached=False),  # one seed of two misses: not reached (infinite)
        *runs("c", "adam", 100, 1.0, reached=False, seeds=(1,)),  # nobody reaches c: left out
    ]
    comparisons = variants(records)
    by_evals = performance_profiles(comparisons, "grad_evals")
    assert [k.workload for k in by_evals.problems] == ["a", "b"]
    assert [k.workload for k in by_evals.unsolved] == ["c"]
    assert by_evals.ratios == {"adam": [1.0, 2.0], "rk4": [1.5, 1.0], "sgd": [4.0, math.inf]}
    assert [by_evals.fraction("adam", t) for t in (1.0, 1.5, 2.0)] == [0.5, 0.5, 1.0]
    assert [by_evals.fraction("rk4", t) for t in (1.0, 1.5, 2.0)] == [0.5, 1.0, 1.0]
    assert by_evals.fraction("sgd", 4.0) == 0.5 and by_evals.fraction("sgd", 3.9) == 0.0
    assert by_evals.score("adam") == pytest.approx((3 + 2) / 2 / 3)
    assert by_evals.score("rk4") == pytest.approx((2.5 + 3) / 2 / 3)
    assert by_evals.score("sgd") == 0.0
    by_time = performance_profiles(comparisons, "time")
    assert by_time.ratios == {"adam": [2.0, 1.0], "rk4": [1.0, 1.0], "sgd": [8.0, math.inf]}
    assert by_time.fraction("rk4", 1.0) == 1.0


def test_an_lr_with_fewer_seeds_than_the_rest_is_shown_but_never_selected():
    """A point an earlier sweep with fewer seeds added (seed 0 only) would be scored on other seeds than
    its neighbours: it takes no part in the selection, the grid edges or the robustness range."""
    runs = [
        *(record("rk4", lr, s, val=0.90 + 0.01 * (lr == 0.3)) for lr in (0.1, 0.3, 1.0) for s in (0, 1)),
        record("rk4", 0.03, 0, val=0.99),  # the best score, on one seed of two
    ]
    variant = _variant(runs)
    assert variant.best.lr == 0.3 and not variant.lr_at_grid_edge
    assert variant.lr_grid == [0.1, 0.3, 1.0] and [r.lr for r in variant.incomplete] == [0.03]
    assert variant.robust.low == 0.1  # 0.03 is not part of the range's grid


def test_when_no_lr_has_every_seed_the_lrs_with_the_most_seeds_form_the_grid():
    runs = [record("sgd", 0.1, 0), record("sgd", 0.1, 1), record("sgd", 0.3, 1), record("sgd", 1.0, 2)]
    variant = _variant(runs)
    assert variant.lr_grid == [0.1] and [r.lr for r in variant.incomplete] == [0.3, 1.0]


def test_the_report_lists_incomplete_lrs(tmp_path):
    from synthetic import write

    from rkopt.bench.report import write_report

    results = tmp_path / "results"
    for lr, seeds in ((0.1, (0, 1)), (0.3, (0, 1)), (1.0, (0, 1)), (0.03, (0,))):
        for seed in seeds:
            write(results, record("rk4", lr, seed, val=0.9 + 0.01 * (lr == 0.3), results_dir=results))
    report = write_report(results, tmp_path / "report")
    text = report.markdown.read_text(encoding="utf-8")
    assert "lr 0.03 (1/2 seeds)" in text and "| 0.03 (1 of 2 seeds, not selectable) |" in text
    (entry,) = json.loads(report.summary.read_text(encoding="utf-8"))
    assert entry["incomplete_lrs"] == [0.03] and entry["best_lr"] == 0.3
