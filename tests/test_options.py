"""One table of param-group options and one validation rule for all of them."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from torch import nn

import rkopt
from rkopt.core.options import ENGINE_OPTIONS
from rkopt.torch.config import group_options
from support import make_mlp


def make(**options):
    return rkopt.RungeKutta(make_mlp().parameters(), lr=0.1, **options)


def test_every_key_is_declared_once_with_its_default_and_plan_flag():
    TABLE = group_options()
    optimizer = make()
    group = optimizer.param_groups[0]
    assert {k for k in group if k not in ("params", "h")} == set(TABLE)
    assert all(group[name] == option.default for name, option in TABLE.items() if name != "lr")
    assert set(TABLE.plan_keys) >= {
        "weight_decay",
        "decoupled_weight_decay",
        "maximize",
        "momentum",
        "nesterov",
        "foreach",
        "preconditioner",
        "lr_policy",
    }
    signature = inspect.signature(rkopt.RungeKutta)
    assert not set(signature.parameters) & (set(TABLE) - {"lr"})  # the signature repeats no key
    shipped = [*ENGINE_OPTIONS[1:], *rkopt.core.DriftAdjusted.options, *rkopt.core.ErrorControl.options]
    shipped += [*rkopt.AdaGrad.options, *rkopt.RMSProp.options]
    assert all(
        f"{option.name} (default {option.default!r})" in rkopt.RungeKutta.__doc__ for option in shipped
    )


NUMBERS = ["weight_decay", "momentum", "igr", "igr_eps", "dal_power", "dal_fd_eps", "atol", "rtol"]
NUMBERS += ["safety", "min_factor", "max_factor", "precond_delta", "precond_beta2", "precond_eps"]


@pytest.mark.parametrize("key", NUMBERS)
def test_a_bool_is_not_a_number(key):
    with pytest.raises(TypeError, match=f"{key} must be a real number.*True.*bool"):
        make(**{key: True})


@pytest.mark.parametrize("key", NUMBERS)
@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_inf_and_nan_are_refused_where_a_finite_value_is_needed(key, value):
    with pytest.raises(ValueError, match=f"^{key} must be"):
        make(**{key: value})


@pytest.mark.parametrize("key", ["decoupled_weight_decay", "maximize", "nesterov"])
@pytest.mark.parametrize("value", [1, 0, "yes", None])
def test_flags_accept_only_real_booleans(key, value):
    with pytest.raises(TypeError, match=f"{key} must be True or False"):
        make(**{key: value})


def test_foreach_is_a_flag_or_none():
    make(foreach=None)
    make(foreach=True)
    with pytest.raises(TypeError, match="foreach must be True, False or None"):
        make(foreach=1)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"max_retries": 1.5}, TypeError, "max_retries must be an int"),
        ({"max_retries": True}, TypeError, "max_retries must be an int"),
        ({"max_retries": -1}, ValueError, "max_retries must be an int >= 0"),
        ({"lr_policy": 3}, ValueError, "unknown lr_policy 3"),
        ({"preconditioner": 3}, ValueError, "unknown preconditioner 3"),
        ({"dal_estimator": "exact"}, ValueError, "dal_estimator must be one of"),
        ({"on_max_retries": True}, ValueError, "on_max_retries must be one of"),
        ({"weight_decay": "0.1"}, TypeError, "weight_decay must be a real number"),
        ({"momentum": 1.0}, ValueError, r"momentum must be in \[0, 1\)"),
        ({"safety": 0.0}, ValueError, r"safety must be in \(0, 1\]"),
        ({"keep_workspace": 1}, TypeError, "keep_workspace must be True or False"),
    ],
)
def test_wrong_values_name_the_key(options, error, message):
    with pytest.raises(error, match=message):
        make(**options)


def test_lr_is_checked_like_every_number():
    with pytest.raises(TypeError, match="lr must be a real number"):
        rkopt.RK4(make_mlp().parameters(), lr=True)
    assert rkopt.RK4(make_mlp().parameters(), lr=torch.tensor(0.5)).param_groups[0]["lr"] == 0.5


def test_a_misspelt_constructor_keyword_is_a_type_error_with_a_suggestion():
    with pytest.raises(TypeError, match="unknown keyword argument.*'momentun'.*Did you mean 'momentum'"):
        make(momentun=0.9)


@pytest.mark.parametrize(("key", "suggestion"), [("momentun", "momentum"), ("weight_decy", "weight_decay")])
def test_a_misspelt_param_group_key_is_refused(key, suggestion):
    model = make_mlp()
    with pytest.raises(ValueError, match=f"unknown param-group key '{key}'; did you mean '{suggestion}'"):
        rkopt.RK4([{"params": model.parameters(), key: 0.9}], lr=0.1)
    optimizer = rkopt.RK4(model[0].parameters(), lr=0.1)
    with pytest.raises(ValueError, match="did you mean"):
        optimizer.add_param_group({"params": model[2].parameters(), key: 0.9})
    assert len(optimizer.param_groups) == 1


@pytest.mark.parametrize(
    "key", ["initial_lr", "lr_scale", "max_momentum", "base_momentum", "param_names", "my_own_tag"]
)
def test_keys_that_frameworks_add_pass_through(key):
    optimizer = rkopt.RK4([{"params": make_mlp().parameters(), key: 1.0}], lr=0.1)
    assert optimizer.param_groups[0][key] == 1.0


def test_schedulers_that_add_keys_keep_working():
    optimizer = make()
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=0.5, total_steps=10, cycle_momentum=False
    )
    assert "initial_lr" in optimizer.param_groups[0]
    optimizer.add_param_group({"params": [nn.Parameter(torch.ones(2))], "initial_lr": 0.1, "max_lr": 0.5})
    assert scheduler.get_last_lr()


def test_a_plugin_with_a_clashing_option_is_refused():
    class Clash(rkopt.StepSizePolicy):
        options = (rkopt.Option("atol", 0.0, lambda key, value: None),)

    with pytest.raises(ValueError, match="belong to another policy"):
        rkopt.register_policy("clash", Clash)
    assert "clash" not in rkopt.POLICIES
