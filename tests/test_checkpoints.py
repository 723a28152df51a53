"""load_state_dict checks everything before it changes anything; nothing a user saved is lost."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

import rkopt
from support import flat, make_closure, make_data, make_mlp


def trained(preset="rk4-full", steps=2, **options):
    x, y = make_data()
    model = make_mlp()
    optimizer = rkopt.preset(preset, model.parameters(), lr=0.1, **options)
    for _ in range(steps):
        optimizer.step(make_closure(model, optimizer, x, y))
    return model, optimizer


def untouched(optimizer):
    return copy.deepcopy((optimizer.state_dict(), optimizer.param_groups))


def assert_refused(optimizer, saved, error, match):
    before = untouched(optimizer)
    with pytest.raises(error, match=match):
        optimizer.load_state_dict(saved)
    after = untouched(optimizer)
    assert after[0]["counters"] == before[0]["counters"]
    assert [{k: v for k, v in g.items() if k != "params"} for g in after[1]] == [
        {k: v for k, v in g.items() if k != "params"} for g in before[1]
    ]
    for key, entry in before[0]["state"].items():
        for name, value in entry.items():
            assert torch.equal(torch.as_tensor(after[0]["state"][key][name]), torch.as_tensor(value))


def test_a_round_trip_through_torch_save_keeps_everything(tmp_path):
    model, optimizer = trained()
    torch.save(optimizer.state_dict(), tmp_path / "opt.pt")
    saved = torch.load(tmp_path / "opt.pt", weights_only=True)
    assert saved["rkopt"] == {"method": "rk4"}
    fresh = rkopt.preset("rk4-full", model.parameters(), lr=0.1)
    fresh.load_state_dict(saved)
    assert fresh.counters == optimizer.counters


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (lambda s: s.pop("counters"), ValueError, "no 'counters'.*torch.optim.Adam"),
        (lambda s: s["counters"].update(steps=-1), ValueError, r"counters\['steps'\] must be an int"),
        (lambda s: s["counters"].update(steps="3"), ValueError, r"counters\['steps'\]"),
        (lambda s: s["counters"].update(extra=1), ValueError, "'counters' must be a dict with the keys"),
        (lambda s: s["param_groups"][0].update(momentum=2.0), ValueError, r"group 0: momentum must be in"),
        (lambda s: s["param_groups"][0].update(momentun=0.5), ValueError, "did you mean 'momentum'"),
        (lambda s: s["param_groups"][0].update(lr=float("nan")), ValueError, "lr must be"),
        (
            lambda s: s["param_groups"][0].update(lr_policy="fixed"),
            ValueError,
            "saved with lr_policy='fixed'",
        ),
        (lambda s: s["param_groups"][0].update(preconditioner=None), ValueError, "preconditioner=None"),
        (lambda s: s["rkopt"].update(method="dormand_prince"), ValueError, "saved by a dormand_prince"),
        (lambda s: s["state"][0].update(exp_avg=torch.zeros(1)), ValueError, r"holds \['exp_avg'\]"),
        (lambda s: s["state"][0].update(sum_sq=torch.zeros(3)), ValueError, "must be a tensor of shape"),
        (lambda s: s["state"][0].update(precond_steps=-2), ValueError, "precond_steps"),
        (lambda s: s["param_groups"].append(dict(s["param_groups"][0])), ValueError, "it has 2 param groups"),
    ],
)
def test_a_bad_state_dict_is_refused_before_anything_changes(mutate, error, match):
    _, optimizer = trained()
    saved = copy.deepcopy(optimizer.state_dict())
    mutate(saved)
    assert_refused(optimizer, saved, error, match)


def test_an_adam_state_dict_is_refused():
    model, optimizer = trained()
    adam = torch.optim.Adam(model.parameters(), lr=1e-3)
    adam.step()  # no gradients: state stays empty, the dict is still Adam's
    assert_refused(optimizer, adam.state_dict(), ValueError, "not saved by rkopt.RungeKutta")


def test_keys_that_schedulers_add_are_accepted():
    model, optimizer = trained()
    torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.2, total_steps=10, cycle_momentum=False)
    saved = copy.deepcopy(optimizer.state_dict())
    assert "initial_lr" in saved["param_groups"][0]
    fresh = rkopt.preset("rk4-full", model.parameters(), lr=0.1)
    fresh.load_state_dict(saved)
    assert fresh.param_groups[0]["initial_lr"] == saved["param_groups"][0]["initial_lr"]


def test_a_chebyshev_checkpoint_names_its_method():
    model, optimizer = trained("rkc2", stages=5)
    saved = optimizer.state_dict()
    assert saved["rkopt"]["method"] == "rkc2(stages=5, damping=0.15384615384615385)"
    other = rkopt.preset("rkc2", model.parameters(), lr=0.1, stages=6)
    assert_refused(other, saved, ValueError, r"saved by a rkc2\(stages=5")
    same = rkopt.preset("rkc2", model.parameters(), lr=0.1, stages=5)
    same.load_state_dict(saved)
    x, y = make_data()
    before = flat(model).clone()
    same.step(make_closure(model, same, x, y))
    assert not torch.equal(flat(model), before)


# -- state_dict hooks see the whole dict, counters included --------------------------------------


def test_state_dict_post_hooks_see_the_counters_and_may_change_them():
    _, optimizer = trained()
    seen = []

    def post_hook(opt, state_dict):
        seen.append((dict(state_dict["counters"]), state_dict["rkopt"]["method"]))
        state_dict["counters"]["steps"] += 100

    optimizer.register_state_dict_post_hook(post_hook)
    saved = optimizer.state_dict()
    assert seen == [(dataclasses.asdict(optimizer.counters), "rk4")]
    assert saved["counters"]["steps"] == optimizer.counters.steps + 100 == 102


def test_load_state_dict_pre_hooks_get_the_counters_and_may_change_them():
    model, optimizer = trained()
    saved = copy.deepcopy(optimizer.state_dict())
    fresh = rkopt.preset("rk4-full", model.parameters(), lr=0.1)
    seen, loaded = [], []

    def pre_hook(opt, state_dict):
        seen.append(dict(state_dict["counters"]))
        state_dict["counters"] = {**state_dict["counters"], "steps": 7}

    fresh.register_load_state_dict_pre_hook(pre_hook)
    fresh.register_load_state_dict_post_hook(lambda opt: loaded.append(dataclasses.asdict(opt.counters)))
    fresh.load_state_dict(saved)
    assert seen == [saved["counters"]] and saved["counters"]["steps"] == 2  # the caller's dict is kept
    assert fresh.counters.steps == 7 and loaded == [{**saved["counters"], "steps": 7}]


def test_a_load_pre_hook_can_migrate_a_dict_without_counters_and_its_result_is_checked():
    model, optimizer = trained()
    foreign = {k: v for k, v in copy.deepcopy(optimizer.state_dict()).items() if k != "counters"}
    fresh = rkopt.preset("rk4-full", model.parameters(), lr=0.1)
    zeros = dataclasses.asdict(rkopt.Counters())
    handle = fresh.register_load_state_dict_pre_hook(lambda opt, sd: {**sd, "counters": zeros})
    fresh.load_state_dict(foreign)
    assert fresh.counters == rkopt.Counters()
    handle.remove()
    fresh.register_load_state_dict_pre_hook(lambda opt, sd: {**sd, "counters": {"steps": -1}})
    assert_refused(fresh, copy.deepcopy(optimizer.state_dict()), ValueError, "'counters' must be a dict")
