"""``--backend jax``: the optax binding on the MLP workloads, side by side with the torch backend."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys

import pytest
import torch

from rkopt.bench import backends
from rkopt.bench.config import RunConfig, SweepConfig
from rkopt.bench.errors import ConfigError
from rkopt.bench.runner import TorchLearner
from rkopt.bench.workloads import get_workload
from rkopt.cli import main

pytest.importorskip("jax")
pytest.importorskip("optax")

import jax

from rkopt.bench.jax_backend import JaxLearner

TINY = ["--workload", "mlp-digits", "--workload-arg", "hidden=[16]", "--batch-size", "32", "--quiet"]
LOSS_RTOL = 1e-5
"""float32 on both sides, the same weights and batches: the losses of the first 8 steps agree to
float32 rounding (measured on a 2-core CPU VM: at most 2.1e-7 relative for rk4 and sgd, hidden [16]
and [64]; 5.9e-6 for adamw, whose first steps divide by √v̂ + ε and so amplify the rounding of the
smallest gradients); the bound leaves room for other BLAS libraries."""


@pytest.mark.parametrize("optimizer", ["rk4", "sgd"])
def test_the_first_steps_match_the_torch_backend(optimizer, environment):
    workload = get_workload("mlp-digits")
    problem = lambda: workload.problem(environment.source, {"hidden": [16]}, seed=0)  # noqa: E731
    reference, candidate = problem(), problem()
    on_torch = TorchLearner(reference, optimizer, 0.1, {}, torch.device("cpu"))
    on_jax = JaxLearner(candidate, optimizer, 0.1, {}, batch_size=32, device=torch.device("cpu"))
    batches = reference.task.batches(reference.data.train, 32, torch.Generator().manual_seed(0))
    losses = []
    for _ in range(8):
        inputs, targets = next(batches)
        losses.append((on_torch.train_step(inputs, targets, None), on_jax.train_step(inputs, targets, None)))
    expected, actual = torch.tensor(losses, dtype=torch.float64).T
    torch.testing.assert_close(actual, expected, rtol=LOSS_RTOL, atol=0.0)
    assert (on_jax.optimizer.steps, on_jax.optimizer.grad_evals) == (
        on_torch.optimizer.steps,
        on_torch.optimizer.grad_evals,
    )
    assert on_jax.optimizer.step_size == on_torch.optimizer.step_size == 0.1
    cpu = {jax.devices("cpu")[0]}
    assert all(leaf.devices() == cpu for leaf in jax.tree_util.tree_leaves((on_jax.params, on_jax.state)))
    validation = (on_torch.evaluate(reference.data.validation), on_jax.evaluate(candidate.data.validation))
    assert validation[0]["accuracy"] == validation[1]["accuracy"]
    assert validation[1]["loss"] == pytest.approx(validation[0]["loss"], rel=LOSS_RTOL)


def test_a_sweep_on_both_backends_reports_them_side_by_side(tmp_path):
    out = tmp_path / "both"
    sweep = [
        "sweep", *TINY, "--optimizer", "rk4", "sgd", "--lr", "0.1", "--backend", "torch", "jax",
        "--seed", "0", "1", "--max-grad-evals", "48", "--eval-every", "12", "--out", str(out),
    ]  # fmt: skip
    assert main(sweep) == 0
    runs = sorted(path.name for path in (out / "runs").iterdir())
    assert len(runs) == 2 * 2 * 2 and sum("_jax_" in run for run in runs) == 4
    for run in (out / "runs").iterdir():
        manifest, result = (json.loads((run / name).read_text()) for name in ("manifest.json", "result.json"))
        backend = "jax" if "_jax_" in run.name else "torch"
        assert manifest["backend"] == result["backend"] == backend
        assert ("jax" in manifest["versions"] and "optax" in manifest["versions"]) == (backend == "jax")
        assert result["grad_evals"] == 48
        assert (manifest["machine"].get("jax_device") == "cpu:0") == (backend == "jax")
    markdown = (out / "report" / "report.md").read_text()
    section = markdown.split("## Backends side by side")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| mlp-digits")]
    assert len(rows) == 2 and {"`rk4`", "`sgd`"} == {row.split(" | ")[2] for row in rows}
    assert "time jax / torch" in section and "torch: final test" in section and "jax: best lr" in section
    ratios = [float(row.strip(" |").split(" | ")[-1]) for row in rows]
    assert all(ratio > 0 for ratio in ratios)
    summary = json.loads((out / "report" / "summary.json").read_text())
    by_label = {entry["optimizer"]: entry for entry in summary}
    assert by_label["rk4 [jax]"]["backend"] == "jax" and by_label["rk4"]["backend"] == "torch"
    twins = by_label["rk4"]["backend_comparison"]
    assert twins == by_label["rk4 [jax]"]["backend_comparison"] and set(twins["backends"]) == {"torch", "jax"}
    assert twins["seconds_per_grad_eval_ratio_to_torch"]["jax"] > 0


def test_torch_run_ids_and_old_records_do_not_change():
    torch_run = SweepConfig.from_settings({"workload": "mlp-digits", "seed": 0}).runs()[0]
    assert torch_run.backend == "torch" and "backend" not in torch_run.to_dict()
    recorded = torch_run.to_dict()  # as a record written before --backend existed
    assert RunConfig.from_dict(recorded).run_id == torch_run.run_id
    jax_run = SweepConfig.from_settings({"workload": "mlp-digits", "seed": 0, "backend": "jax"}).runs()[0]
    assert jax_run.run_id.startswith("mlp-digits_rk4_jax_bs32_") and jax_run.run_id != torch_run.run_id


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"workload": "charlm"}, "--backend jax supports the MLP workloads .* not 'charlm'"),
        ({"workload": "cnn-bn"}, "--backend jax supports the MLP workloads .* not 'cnn-bn'"),
        ({"stage_batches": "fresh"}, "--backend jax supports --stage-batches same only, not 'fresh'"),
        ({"opt_arg": ["foreach=true"]}, "'foreach'"),
        ({"optimizer": "adam", "opt_arg": ["amsgrad=true"]}, "--opt-arg amsgrad is not supported for 'adam'"),
    ],
)
def test_what_the_jax_backend_cannot_run_is_refused_before_any_run(settings, message):
    with pytest.raises(ConfigError, match=message):
        SweepConfig.from_settings({"workload": "mlp-digits", **settings, "backend": "jax"})


def test_an_unknown_backend_and_a_missing_jax_are_command_line_errors(tmp_path, capsys, monkeypatch):
    train = ["train", *TINY, "--max-grad-evals", "4", "--out", str(tmp_path)]
    assert main([*train, "--backend", "tensorflow"]) == 2
    assert "rkopt train: error: --backend 'tensorflow': expected torch or jax" in capsys.readouterr().err
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        backends.importlib.util, "find_spec", lambda name, *a: None if name == "jax" else find_spec(name, *a)
    )
    assert main([*train, "--backend", "jax"]) == 2
    assert "install rkopt[jax]" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def _has_jax_gpu() -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("mps", "--backend jax --device mps: the JAX backend runs on cpu, cuda devices"),
        ("cpu:3", r"--backend jax --device cpu:3: JAX sees 1 cpu device\(s\); use an index below 1"),
        pytest.param(
            "cuda",
            "--backend jax --device cuda: JAX has no gpu backend here",
            marks=pytest.mark.skipif(_has_jax_gpu(), reason="this JAX has a GPU backend"),
        ),
    ],
)
def test_a_device_the_jax_backend_cannot_use_is_a_command_line_error(device, message, tmp_path, capsys):
    for command in ("train", "sweep"):
        args = [command, *TINY, "--backend", "jax", "--device", device, "--max-grad-evals", "4"]
        assert main([*args, "--out", str(tmp_path / command)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"rkopt {command}: error: ") and re.search(message, err), err
        assert not (tmp_path / command).exists()


def test_importing_the_harness_does_not_import_jax():
    code = "import sys, rkopt.bench, rkopt.bench.runner, rkopt.cli; assert 'jax' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
