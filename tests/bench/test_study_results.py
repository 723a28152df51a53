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
