"""The ``rkopt`` command end to end on tiny budgets: train → sweep → report, list, help and errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import rkopt
from rkopt.bench.config import SweepConfig, load_toml, sweep_configs
from rkopt.bench.optimizers import BASELINES
from rkopt.bench.sweep import all_runs
from rkopt.cli import build_parser, main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY = ["--workload-arg", "hidden=[16]", "--eval-every", "12", "--quiet"]
FIGURES = ["metric_vs_grad_evals.png", "metric_vs_time.png", "metric_vs_steps.png", "lr_sensitivity.png"]


def _table_rows(markdown: str, header_start: str) -> list[list[str]]:
    """The rows of every Markdown table whose header starts with ``header_start``."""
    rows, inside = [], False
    for line in markdown.splitlines():
        if line.startswith(header_start):
            inside = True
        elif inside and line.startswith("|") and not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif not line.startswith("|"):
            inside = False
    return rows


def test_train_then_sweep_then_report(tmp_path, capsys):
    out = tmp_path / "demo"
    train = ["train", "--workload", "mlp-digits", "--optimizer", "rk4", "--lr", "0.1", "--batch-size", "32"]
    assert main([*train, "--max-grad-evals", "48", "--out", str(out), "--workload-arg", "hidden=[16]"]) == 0
    printed = capsys.readouterr().out
    assert "completed (max_grad_evals); 12 steps, 48 grad evals" in printed and "test_accuracy" in printed

    sweep = [
        "sweep", "--workload", "mlp-digits", "--optimizer", "rk4", "adam", "rk4-full", "sgd",
        "--lr", "rk4=0.1,0.3", "adam=1e-3,1e-2", "rk4-full=0.1,0.3", "sgd=0.1,1e9",
        "--batch-size", "16", "64", "--seed", "0", "1", "--max-grad-evals", "48", "--out", str(out),
        "--no-report", *TINY,
    ]  # fmt: skip
    assert main(sweep) == 0
    runs = list((out / "runs").iterdir())
    assert len(runs) == 1 + 4 * 2 * 2 * 2
    assert all((run / "result.json").exists() for run in runs)

    assert main(["report", str(out), "--quiet"]) == 0
    report = out / "report"
    for name in [*FIGURES, "step_size.png", "figure1.png"]:
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    markdown = (report / "report.md").read_text()
    headline = _table_rows(markdown, "| optimizer | best lr | seconds to target")
    assert sorted(row[0] for row in headline) == sorted(
        ["`adam`", "`rk4`", "`rk4-full`", "`sgd`"] * 2 + ["`rk4`"]  # batch 16, batch 64, the train run
    )
    assert "batch size 16" in markdown and "batch size 64" in markdown and "batch size 32" in markdown
    sensitivity = _table_rows(markdown, "| optimizer | lr | final val")
    diverging = [row for row in sensitivity if row[:2] == ["`sgd`", "1e+09"]]
    assert len(diverging) == 2 and all(row[-1].startswith("✗") for row in diverging)  # divergence marked
    assert ["`sgd`", "1e+09", "–", "–", "✗ 2/2"] in diverging
    assert "Diverged runs (" in markdown
    summary = json.loads((report / "summary.json").read_text())
    assert len(summary) == 9
    rk4 = next(s for s in summary if s["optimizer"] == "rk4" and s["batch_size"] == 64)
    assert rk4["best_lr"] in (0.1, 0.3) and rk4["seeds"] == 2 and 0 < rk4["final_test"]["mean"] <= 1
    for line in (next(iter((out / "runs").glob("*sgd*lr1e+09*"))) / "metrics.jsonl").read_text().splitlines():
        json.loads(line)


def test_report_of_a_language_model_sweep(tmp_path):
    out = tmp_path / "lm"
    options = ["context=16", "width=16", "heads=2", "layers=1", "corpus_chars=20000", "eval_windows=8"]
    args = ["sweep", "--workload", "charlm", "--workload-arg", *options, "--optimizer", "rk4", "adam"]
    args += [
        "--lr",
        "rk4=0.3",
        "adam=3e-3",
        "--batch-size",
        "8",
        "--max-grad-evals",
        "24",
        "--eval-every",
        "8",
    ]
    assert main([*args, "--out", str(out), "--target", "30", "--quiet"]) == 0
    markdown = (out / "report" / "report.md").read_text()
    assert "final test perplexity" in markdown and "Target: test perplexity ≤ 30.0" in markdown
    rows = _table_rows(markdown, "| optimizer | best lr | seconds to target")
    assert sorted(row[0] for row in rows) == ["`adam`", "`rk4`"]
    assert all(1 < float(row[5]) < 200 for row in rows)  # final test perplexity


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as info:
        main(["sweep", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for expected in [
        "--max-grad-evals",
        "default: 2000",
        "mnist5k)",
        "--workers",
        "LOW:HIGH:COUNT",
    ]:
        assert expected in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["train", "--workload", "mlp-cifar"],
            "--workload: unknown workload 'mlp-cifar'; valid workloads: mlp-mnist5k",
        ),
        (
            ["train", "--optimizer", "adamax"],
            "unknown optimizer 'adamax'; valid: baselines sgd, sgd-momentum, adam",
        ),
        (["train", "--optimizer", "rk4", "adam"], "unrecognized arguments"),
        (["sweep", "--optimizer", "rk4", "--opt-arg", "rk4:betas=1"], "--opt-arg"),
        (["train", "--workload", "mlp-mnist", "--offline", "--quiet"], "mlp-mnist5k"),
        (["report", "/nonexistent/results"], "no finished runs there"),
        (["sweep", "--stage-batches", "stale"], "rkopt sweep: error: --stage-batches 'stale': expected same"),
        (["train", "--stage-batches", "both"], "rkopt train: error: --stage-batches 'both'"),
        (
            ["sweep", "--executor", "slurm"],
            "rkopt sweep: error: --executor 'slurm': expected one of local, ray",
        ),
        (["sweep", "--address", "auto"], "rkopt sweep: error: --address is only used with --executor ray"),
        (["sweep", "--executor", "ray", "--runtime-env", "{pip"], "rkopt sweep: error: --runtime-env"),
        (
            ["sweep", "--lr-extend-max", "0"],
            "rkopt sweep: error: --lr-extend-max 0: expected an integer >= 1",
        ),
        (["sweep", "--robustness-tolerance", "-1"], "rkopt sweep: error: --robustness-tolerance -1.0"),
        (["sweep", "--lr-extend", "--workers", "0"], "rkopt sweep: error: --workers 0"),
        (["report", "/nonexistent", "--robustness-tolerance", "nan"], "rkopt report: error: --robustness"),
    ],
)
def test_bad_input_gives_a_clear_error(tmp_path, capsys, args, message):
    try:
        code = main([*args, *(["--out", str(tmp_path)] if args[0] != "report" else [])])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_ray_missing_gives_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: `import ray` raises ImportError
    args = ["sweep", "--workload", "mlp-digits", "--executor", "ray", "--out", str(tmp_path), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("rkopt sweep: error: --executor ray: Ray is not installed")
    assert 'pip install "rkopt[ray]"' in err
    assert not (tmp_path / "runs").exists()  # nothing ran


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('lr_extend = "maybe"\n', "--lr-extend 'maybe': expected true or false"),
        ('stage_batches = ["same", "stale"]\n', "--stage-batches 'stale'"),
        ('executor = "ray"\naddress = 5\n', "--address 5: expected a Ray address"),
        ('[[study]]\nworkload = "mlp-digits"\nworkers = 2\n', "[[study]] entry 1: unknown key(s) workers"),
        ("study = 3\n", "study: expected one or more [[study]] tables"),
    ],
)
def test_bad_new_config_keys_give_a_clear_error(tmp_path, capsys, toml, message):
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    assert main(["sweep", "--config", str(config), "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rkopt sweep: error: ") and message in err


def test_config_file_and_flags(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text(
        'workload = "mlp-digits"\noptimizer = "sgd"\nlr = 0.1\nmax_grad_evals = 24\nnot_a_key = 1\n'
    )
    assert main(["train", "--config", str(config), "--out", str(tmp_path)]) == 2
    assert "unknown key(s) not_a_key" in capsys.readouterr().err
    config.write_text('workload = "mlp-digits"\noptimizer = ["sgd", "adam"]\nmax_grad_evals = 24\n')
    assert main(["train", "--config", str(config), "--out", str(tmp_path)]) == 2
    assert "use `rkopt sweep`" in capsys.readouterr().err
    args = ["train", "--config", str(config), "--optimizer", "sgd", "--out", str(tmp_path), *TINY]
    assert main(args) == 0  # the flag overrides the file's list
    (run,) = (tmp_path / "runs").iterdir()
    assert json.loads((run / "manifest.json").read_text())["config"]["budget"]["max_grad_evals"] == 24


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    settings = load_toml(path)
    for config in sweep_configs(settings):
        assert isinstance(config, SweepConfig) and config.runs()
    known = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["sweep"]._actions}
    assert set(settings) - known <= {"study"}  # `rkopt sweep --config` accepts every key


def test_main_config_compares_rk4_variants_with_adam_on_two_offline_workloads():
    configs = sweep_configs(load_toml(CONFIGS / "main.toml"))
    assert [config.workloads for config in configs] == [("mlp-mnist5k",), ("mlp-digits",)]
    for config in configs:
        assert {"rk4", "rk4-full", "adam"} <= set(config.optimizers)
        assert len(config.batch_sizes) >= 2 and len(config.seeds) >= 2
        budget = {"mlp-mnist5k": 800, "mlp-digits": 1600}[config.workloads[0]]
        assert config.budget.max_grad_evals == budget  # the same for every optimizer of a workload
        assert config.lr_extend
    assert len(all_runs(configs)) == 2 * 4 * 3 * 2 * 2


@pytest.mark.parametrize(("name", "seeds"), [("study.toml", 3), ("study-laptop.toml", 2)])
def test_study_config_covers_every_workload_optimizer_and_preset(name, seeds):
    configs = sweep_configs(load_toml(CONFIGS / name))
    offline = {"mlp-mnist5k", "mlp-digits", "mlp-mnist1d", "cnn-bn", "charlm"}
    assert {w for config in configs for w in config.workloads} == offline
    every = set(BASELINES) | set(rkopt.PRESETS) | set(rkopt.CHEBYSHEV_PRESETS)
    assert {w for config in configs if set(config.optimizers) == every for w in config.workloads} == offline
    for config in configs:
        assert len(config.batch_sizes) == 2 and config.batch_sizes[0] < config.batch_sizes[1]
        assert len(config.seeds) >= seeds and config.lr_extend
        assert all(len(config.lrs[name]) >= 3 for name in config.optimizers)
    assert any("fresh" in config.stage_batches for config in configs)  # the stage-batches ablation
    cnn = next(config for config in configs if "cnn-bn" in config.workloads)
    assert cnn.workload_options["cnn-bn"]["dataset"] == "mnist5k"  # offline
    budgets = {config.workloads[0]: config.budget.max_grad_evals for config in configs}
    assert budgets["mlp-mnist1d"] != budgets["mlp-digits"]  # per-workload budgets


def test_list_through_the_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "rkopt.cli", "list"], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    for expected in [
        "workloads:",
        "mlp-mnist5k",
        "charlm",
        "optimizers:",
        "rk4-full",
        "adamw",
        "tableaux:",
        "rk38",
    ]:
        assert expected in out
