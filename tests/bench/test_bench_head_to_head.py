"""The best rkopt method against the best baseline, seed by seed (issue 12: a comparison a careful
reader can trust says when a difference is within the seeds' spread)."""

from __future__ import annotations

import json
import math

import pytest
from synthetic import record, write

from rkopt.bench.analysis import head_to_heads, seed_outcomes, seed_verdict, variants
from rkopt.bench.optimizers import BASELINES
from rkopt.bench.report import HEAD_TO_HEAD_FILE, write_report

INF = math.inf


@pytest.mark.parametrize(
    ("first", "second", "verdict"),
    [
        ([1.0, 2.0], [3.0, 4.0], "first"),
        ([3.0, 4.0], [1.0, 2.0], "second"),
        ([1.0, 3.0], [2.0, 4.0], "within"),  # overlapping ranges
        ([1.0, 2.0], [2.0, 3.0], "within"),  # touching ranges are not separated
        ([5.0], [5.0], "within"),
        ([1.0, 2.0], [INF, INF], "first"),  # every seed of the other never reached the target
        ([1.0, INF], [INF, INF], "within"),  # one seed of two reached it
        ([INF, INF], [INF, INF], "neither"),
    ],
)
def test_seed_verdict_needs_every_seed_of_one_side_better_than_every_seed_of_the_other(
    first, second, verdict
):
    assert seed_verdict(first, second) == verdict


def test_counts_within_the_tolerance_are_the_same_measurement():
    assert seed_verdict([120.0, 120.0], [121.0, 241.0]) == "first"
    assert seed_verdict([120.0, 120.0], [121.0, 241.0], tolerance=0.01) == "within"
    assert seed_verdict([120.0, 120.0], [122.0, 241.0], tolerance=0.01) == "first"
    assert seed_verdict([120.0], [math.inf], tolerance=0.01) == "first"


def _pair(runs, left_out=()):
    (pair,) = head_to_heads(variants(runs), BASELINES, left_out)
    return pair


def test_each_side_is_its_best_variant_on_validation_and_compared_on_test_seed_by_seed():
    runs = [
        # adam's validation is better than sgd's; its test is worse (the choice is made on validation)
        *(record("adam", 1e-3, seed, val=0.92, test=t) for seed, t in enumerate([0.80, 0.81])),
        *(record("sgd", 0.1, seed, val=0.90, test=t) for seed, t in enumerate([0.95, 0.96])),
        *(record("rk4", 0.3, seed, val=0.91, test=t) for seed, t in enumerate([0.85, 0.86])),
        *(record("rk4-dal", 1.0, seed, val=0.89, test=t) for seed, t in enumerate([0.99, 0.99])),
    ]
    pair = _pair(runs)
    assert (pair.baseline.optimizer, pair.rkopt.optimizer) == ("adam", "rk4")
    assert seed_outcomes(pair.rkopt, "final") == [-0.85, -0.86]  # oriented: smaller is better
    assert pair.verdict("final") == "rkopt"


def test_overlapping_seeds_are_within_spread_and_a_diverged_seed_counts_as_worst():
    runs = [
        *(record("adam", 1e-3, seed, val=0.90, test=t) for seed, t in enumerate([0.90, 0.94])),
        *(record("rk4", 0.3, seed, val=0.91, test=t) for seed, t in enumerate([0.92, 0.96])),
    ]
    assert _pair(runs).verdict("final") == "within"
    runs = [
        *(record("adam", 1e-3, seed, val=0.90, test=0.90) for seed in range(2)),
        record("rk4", 0.3, 0, val=0.99, test=0.99),
        record("rk4", 0.3, 1, diverged=True),
    ]
    pair = _pair(runs)
    assert seed_outcomes(pair.rkopt, "final") == [-0.99, INF]
    assert pair.verdict("final") == "within"


def test_perplexity_is_oriented_lower_is_better():
    runs = [
        *(
            record("adamw", 1e-3, s, val=6.0, test=t, metric="perplexity", target=7.0)
            for s, t in enumerate([6, 6.1])
        ),
        *(
            record("rkc1", 0.3, s, val=5.0, test=t, metric="perplexity", target=7.0)
            for s, t in enumerate([5, 5.2])
        ),
    ]
    assert _pair(runs).verdict("final") == "rkopt"


def test_time_to_target_per_seed_and_a_seed_that_never_reaches_it():
    runs = [
        record("sgd", 0.1, 0, reach=(40, 0.4)),
        record("sgd", 0.1, 1, reach=(60, 0.6)),
        record("rk4", 0.3, 0, reach=(80, 0.8)),
        record("rk4", 0.3, 1, val=0.5, test=0.5),  # below the 0.8 target: never reached
    ]
    pair = _pair(runs)
    assert seed_outcomes(pair.baseline, "grad_evals") == [40.0, 60.0]
    overshoot = [record("sgd", 0.1, s, reach=(120, 1.0)) for s in (0, 1)]
    overshoot += [record("rk4", 0.3, s, reach=(121 + 120 * s, 1.0)) for s in (0, 1)]
    assert _pair(overshoot).verdict("grad_evals") == "within"  # 121 is the measurement at 120
    assert seed_outcomes(pair.rkopt, "grad_evals") == [80.0, INF]
    assert pair.verdict("grad_evals") == "baseline"
    untargeted = [record("sgd", 0.1, target=None), record("rk4", 0.3, target=None)]
    assert _pair(untargeted).verdict("grad_evals") == "neither"


def test_a_preset_equal_to_a_baseline_can_be_left_out_and_a_problem_without_both_sides_is_skipped():
    runs = [record("sgd", 0.1, val=0.8), record("euler", 0.1, val=0.9), record("rk4", 0.3, val=0.85)]
    assert _pair(runs).rkopt.optimizer == "euler"
    assert _pair(runs, left_out=["euler"]).rkopt.optimizer == "rk4"
    only_baselines = [record("sgd", 0.1), record("adam", 1e-3)]
    assert head_to_heads(variants(only_baselines), BASELINES) == []


def test_the_report_writes_the_section_and_its_json(tmp_path):
    results = tmp_path / "results"
    for seed, (base, ours) in enumerate([(0.90, 0.93), (0.91, 0.94)]):
        write(results, record("adam", 1e-3, seed, val=0.9, test=base, results_dir=results))
        write(results, record("rk4", 0.3, seed, val=0.9, test=ours, results_dir=results))
        write(results, record("euler", 0.1, seed, val=0.99, test=0.99, results_dir=results))
    report = write_report(results, tmp_path / "report")
    text = report.markdown.read_text(encoding="utf-8")
    assert "## The best rkopt method against the best baseline" in text
    assert "rkopt ahead on 1 of 1 problems, the baseline ahead on 0, within seed spread on 0" in text
    assert "| `adam` 1e-3 | 0.9, 0.91 | `rk4` 0.3 | 0.93, 0.94 | rkopt ahead |" in text
    (entry,) = json.loads((tmp_path / "report" / HEAD_TO_HEAD_FILE).read_text(encoding="utf-8"))
    assert entry["rkopt"]["optimizer"] == "rk4"  # euler (SGD's update) is on neither side
    assert entry["rkopt"]["final_test"] == [0.93, 0.94]
    assert entry["baseline"]["final_test"] == [0.90, 0.91]
    assert entry["verdict_final_test"] == "rkopt"
