"""Settings → runs: learning-rate grids, per-optimizer options, budgets and clear errors."""

from __future__ import annotations

import pytest

from rkopt.bench.config import (
    Budget,
    RunConfig,
    SweepConfig,
    load_toml,
    log_grid,
    parse_assignments,
    parse_executor,
    parse_lr_grid,
    sweep_configs,
)
from rkopt.bench.errors import ConfigError


def test_lr_grids_accept_numbers_lists_and_log_ranges():
    assert parse_lr_grid(0.1) == (0.1,)
    assert parse_lr_grid("0.01,0.1") == (0.01, 0.1)
    assert parse_lr_grid([1, 2]) == (1.0, 2.0)
    assert parse_lr_grid("1e-3:1e-1:3") == (0.001, 0.01, 0.1)
    assert log_grid(0.01, 1, 5) == (0.01, 0.0316, 0.1, 0.316, 1.0)


@pytest.mark.parametrize("spec", ["abc", "0", "-1", "1:2", "1e-3:1e-1:x"])
def test_bad_lr_names_the_flag(spec):
    with pytest.raises(ConfigError, match="--lr"):
        parse_lr_grid(spec)


def test_assignments_per_name_and_for_all():
    parsed = parse_assignments(
        ["adam:weight_decay=0.01", "momentum=0.5", "adam:betas=[0.9, 0.99]"], "--opt-arg"
    )
    assert parsed == {"adam": {"weight_decay": 0.01, "betas": [0.9, 0.99]}, None: {"momentum": 0.5}}
    assert parse_assignments({"adam": {"eps": 1e-6}, "foreach": False}, "--opt-arg") == {
        None: {"foreach": False},
        "adam": {"eps": 1e-6},
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_assignments(["weight_decay"], "--opt-arg")


def test_sweep_expands_the_grid_with_per_optimizer_lrs_and_options():
    config = SweepConfig.from_settings(
        {
            "workload": "mlp-digits",
            "optimizer": ["rk4", "adam", "bs3"],
            "lr": ["adam=1e-3,1e-2", "0.1"],
            "opt_arg": ["adam:weight_decay=0.01"],
            "batch_size": [16, 64],
            "seed": [0, 1],
            "max_grad_evals": 120,
        }
    )
    assert config.optimizers == ("rk4", "adam", "bogacki_shampine")  # aliases resolve
    assert config.lrs == {"rk4": (0.1,), "adam": (0.001, 0.01), "bogacki_shampine": (0.1,)}
    runs = config.runs()
    assert len(runs) == (1 + 2 + 1) * 2 * 2
    adam = [r for r in runs if r.optimizer == "adam"]
    assert all(r.optimizer_options == {"weight_decay": 0.01} for r in adam)
    assert all(r.optimizer_options == {} for r in runs if r.optimizer != "adam")
    assert config.eval_every == 6  # 120 / 20 measurements
    assert len({r.run_id for r in runs}) == len(runs)


def test_default_lr_grid_and_budget():
    config = SweepConfig.from_settings({"optimizer": ["adam", "rk4"]}, lr_factors=(1 / 3, 1.0, 3.0))
    assert config.lrs["adam"] == pytest.approx((1e-3 / 3, 1e-3, 3e-3))
    assert config.lrs["rk4"] == pytest.approx((0.1 / 3, 0.1, 0.3))
    assert config.budget == Budget(max_grad_evals=2000)
    assert config.eval_every == 108  # 2000 / 20 = 100 → next multiple of 12


def test_run_id_is_stable_and_depends_on_every_setting():
    a = RunConfig("mlp-digits", "rk4", 0.1, 32, 0, Budget(max_grad_evals=100), 12)
    assert a.run_id == RunConfig.from_dict(a.to_dict()).run_id
    assert a.run_id.startswith("mlp-digits_rk4_bs32_lr0.1_seed0_")
    b = RunConfig(
        "mlp-digits", "rk4", 0.1, 32, 0, Budget(max_grad_evals=100), 12, optimizer_options={"igr": 1.0}
    )
    assert a.run_id != b.run_id


def test_budget_stops_at_the_first_limit():
    budget = Budget(max_grad_evals=100, max_seconds=2.0, steps=30)
    assert budget.stop_reason(99, 1.0, 29) is None
    assert budget.stop_reason(100, 1.0, 10) == "max_grad_evals"
    assert budget.stop_reason(10, 2.5, 10) == "max_seconds"
    assert budget.stop_reason(10, 1.0, 30) == "steps"
    with pytest.raises(ConfigError, match="--max-grad-evals"):
        Budget()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"workload": "mlp-imagenet"}, "valid workloads: mlp-mnist5k"),
        ({"optimizer": "adamax"}, "valid: baselines sgd"),
        ({"optimizer": "rk4", "lr": "adam=0.1"}, "--lr names adam"),
        ({"optimizer": "adam", "opt_arg": ["adam:no_such=1"]}, "--opt-arg"),
        ({"optimizer": "rk4", "opt_arg": ["lr_policy=bogus"]}, "lr_policy"),
        ({"workload": "mlp-digits", "workload_arg": ["depth=3"]}, "valid options: hidden"),
        ({"workload": "mlp-digits", "workload_arg": ["hidden=wide"]}, "expected a list"),
        ({"batch_size": [0]}, "--batch-size"),
        ({"seed": ["x"]}, "--seed"),
        ({"max_grad_evals": -5}, "--max-grad-evals"),
    ],
)
def test_bad_settings_name_the_flag_and_the_valid_values(settings, message):
    with pytest.raises(ConfigError, match=message):
        SweepConfig.from_settings(settings)


def test_toml_config(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(
        'workload = "mlp-digits"\noptimizer = ["rk4", "adam"]\nbatch_size = [8, 16]\nseed = [0, 1]\n'
        'max_grad_evals = 48\n[lr]\nrk4 = [0.1, 0.3]\nadam = "1e-3:1e-2:2"\n'
        "[opt_arg.adam]\nweight_decay = 0.0\n[workload_arg]\nhidden = [8]\n"
    )
    config = SweepConfig.from_settings(load_toml(path))
    assert config.lrs == {"rk4": (0.1, 0.3), "adam": (0.001, 0.01)}
    assert config.workload_options == {"mlp-digits": {"hidden": [8]}}
    assert config.optimizer_options["adam"] == {"weight_decay": 0.0}
    assert len(config.runs()) == 4 * 2 * 2
    with pytest.raises(ConfigError, match="no such file"):
        load_toml(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("optimizer = [")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_toml(tmp_path / "bad.toml")


def test_study_entries_override_the_top_level_and_flags_override_both(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text(
        'optimizer = ["sgd", "rk4"]\nseed = [0, 1]\nmax_grad_evals = 100\nlr_extend = true\n'
        "[lr]\nsgd = [0.1]\nrk4 = [0.3]\n"
        '[[study]]\nworkload = "mlp-digits"\nbatch_size = [16, 64]\n[study.lr]\nrk4 = [1.0, 3.0]\n'
        '[[study]]\nworkload = "charlm"\nbatch_size = [8]\nmax_grad_evals = 50\nlr_extend = false\n'
        'stage_batches = ["same", "fresh"]\n[study.workload_arg]\ncontext = 16\n'
    )
    digits, charlm = sweep_configs(load_toml(path))
    assert digits.workloads == ("mlp-digits",) and digits.batch_sizes == (16, 64)
    assert digits.lrs == {"sgd": (0.1,), "rk4": (1.0, 3.0)}  # [lr] tables merge key by key
    assert digits.budget.max_grad_evals == 100 and digits.lr_extend and digits.seeds == (0, 1)
    assert charlm.budget.max_grad_evals == 50 and not charlm.lr_extend
    assert charlm.lrs == {"sgd": (0.1,), "rk4": (0.3,)}
    assert charlm.workload_options == {"charlm": {"context": 16}}
    assert charlm.stage_batches == ("same", "fresh") and len(charlm.cells()) == 3  # sgd once
    overridden = sweep_configs(load_toml(path), overrides={"max_grad_evals": 24, "seed": [3]})
    assert [c.budget.max_grad_evals for c in overridden] == [24, 24]
    assert all(c.seeds == (3,) for c in overridden)
    (only,) = sweep_configs(load_toml(path), overrides={"workload": ["charlm"]})  # selects entries
    assert only.workloads == ("charlm",) and only.batch_sizes == (8,)
    with pytest.raises(ConfigError, match="no \\[\\[study\\]\\] entry has that workload"):
        sweep_configs(load_toml(path), overrides={"workload": ["cnn-bn"]})
    (plain,) = sweep_configs({"workload": "mlp-digits", "optimizer": "sgd", "lr": 0.1})
    assert (
        plain.runs()
        == SweepConfig.from_settings({"workload": "mlp-digits", "optimizer": "sgd", "lr": 0.1}).runs()
    )


def test_new_settings_are_validated():
    config = SweepConfig.from_settings({"lr_extend": "true", "lr_extend_max": 2, "stage_batches": "fresh"})
    assert (config.lr_extend, config.lr_extend_max, config.stage_batches) == (True, 2, ("fresh",))
    assert parse_executor({}) == ("local", None, None)
    assert parse_executor({"executor": "ray", "address": "auto", "runtime_env": '{"pip": ["x"]}'}) == (
        "ray",
        "auto",
        {"pip": ["x"]},
    )
    for settings, message in [
        ({"lr_extend": 1}, "--lr-extend 1: expected true or false"),
        ({"lr_extend_max": 0}, "--lr-extend-max"),
        ({"stage_batches": []}, "--stage-batches"),
    ]:
        with pytest.raises(ConfigError, match=message):
            SweepConfig.from_settings(settings)
    with pytest.raises(ConfigError, match="only used with --executor ray"):
        parse_executor({"runtime_env": {"pip": []}})
