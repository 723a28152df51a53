"""The committed study (docs/results.md, docs/results/summary.json, written by
benchmarks/study_page.py from `rkopt sweep --config configs/study-laptop.toml`) says what the issue
asks of it: every offline workload, every optimizer, small and large batch, no edge-selected lr."""

from __future__ import annotations

import json
import re
from pathlib import Path

import rkopt
from rkopt.bench.optimizers import BASELINES

ROOT = Path(__file__).resolve().parents[2]
SUMMARY = ROOT / "docs" / "results" / "summary.json"
OFFLINE = {"mlp-mnist5k", "mlp-digits", "mlp-mnist1d", "cnn-bn", "charlm"}


def variants():
    return json.loads(SUMMARY.read_text(encoding="utf-8"))


def test_the_summary_is_small_and_covers_every_workload_optimizer_and_batch_size():
    assert SUMMARY.stat().st_size < 1 << 20
    every = set(BASELINES) | set(rkopt.PRESETS) | set(rkopt.CHEBYSHEV_PRESETS)
    covered: dict[str, dict[str, set[int]]] = {}
    for v in variants():
        if v["stage_batches"] == "same" and v["backend"] == "torch":
            workload = v["workload"].split("(")[0]
            covered.setdefault(workload, {}).setdefault(v["optimizer"], set()).add(v["batch_size"])
    assert set(covered) == OFFLINE
    for workload, optimizers in covered.items():
        assert set(optimizers) == every, workload
        assert all(len(batches) == 2 for batches in optimizers.values()), workload


def test_every_variant_has_two_seeds_and_every_workload_a_reachable_target():
    """Each workload is in the performance profiles: on one of its batch sizes at least, some optimizer
    reached the target with every seed (a target no one reaches leaves the workload out of them)."""
    solved: dict[str, bool] = {}
    for v in variants():
        best = [r for r in v["learning_rates"] if r["lr"] == v["best_lr"]]
        assert best[0]["runs"] >= 2, (v["workload"], v["optimizer"], v["batch_size"])
        workload = v["workload"].split("(")[0]
        reached = v["grad_evals_to_target"]["n"] == best[0]["runs"]
        solved[workload] = solved.get(workload, False) or reached
    assert set(solved) == OFFLINE and all(solved.values()), [w for w, ok in solved.items() if not ok]


def test_the_head_to_head_covers_every_problem():
    pairs = json.loads((SUMMARY.parent / "head_to_head.json").read_text(encoding="utf-8"))
    assert {p["workload"].split("(")[0] for p in pairs} == OFFLINE
    assert all(len(p["rkopt"]["final_test"]) >= 2 and len(p["baseline"]["final_test"]) >= 2 for p in pairs)


def test_no_reported_optimizer_was_selected_at_a_grid_edge_and_the_ablation_is_there():
    assert not [(v["workload"], v["optimizer"]) for v in variants() if v["lr_at_grid_edge"]]
    fresh = {v["optimizer"].split(" [")[0] for v in variants() if v["stage_batches"] == "fresh"}
    assert fresh >= {"rk4", "rkc2"}


def test_the_page_shows_its_figures_and_the_readme_points_to_it():
    page = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    figures = re.findall(r"\]\((results/[^)]+\.png)\)", page)
    assert "results/performance_profile.png" in figures
    assert all((ROOT / "docs" / figure).is_file() for figure in figures)
    assert "rkopt sweep --config configs/study-laptop.toml" in page
    assert "docs/results.md" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_page_gives_the_answers_before_the_full_tables():
    page = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    order = ["## The best rkopt method against the best baseline", "## Performance profiles", "## Results"]
    positions = [page.index(f"\n{title}") for title in order]
    assert positions == sorted(positions)
