"""Property-based fuzzing of what users hand the optimizer: options, tableaux, state_dicts and
closures that fail at a random stage. Bad input raises ValueError/TypeError naming the key; a failed
step or load leaves parameters and state bit-identical to before."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import rkopt  # noqa: E402
from rkopt.torch.config import group_options  # noqa: E402
from support import make_closure, make_data, make_mlp  # noqa: E402

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = sorted(group_options())
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 20),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from(["free", "finite_difference", "adagrad", "rmsprop", "dal", "error_control", "x", ""]),
    st.lists(st.integers(0, 2), max_size=2),
)
TABLEAUX = st.sampled_from([*rkopt.TABLEAUX, "rk5", "RK4", "dopri5"])


def snapshot(model, optimizer):
    state = {
        id(p): {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
        for p, s in optimizer.state.items()
    }
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    return [p.detach().clone() for p in model.parameters()], state, copy.deepcopy(groups)


def assert_same(before, after):
    params0, state0, groups0 = before
    params1, state1, groups1 = after
    assert all(torch.equal(a, b) for a, b in zip(params0, params1))
    assert state0.keys() == state1.keys()
    for key, entry in state0.items():
        assert entry.keys() == state1[key].keys()
        for name, value in entry.items():
            other = state1[key][name]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other
    assert repr(groups0) == repr(groups1)  # repr: NaN-safe equality of the group values


@SETTINGS
@given(options=st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=4), tableau=TABLEAUX)
def test_constructor_options_either_work_or_name_the_bad_key(options, tableau):
    lr = options.pop("lr", 0.1)
    try:
        optimizer = rkopt.RungeKutta(make_mlp().parameters(), lr=lr, tableau=tableau, **options)
    except (TypeError, ValueError) as error:
        named = [key for key in [*options, "lr", "tableau"] if key in str(error)]
        assert named or "tableau" in str(error) or "atol and rtol" in str(error), str(error)
        return
    group = optimizer.param_groups[0]
    assert all(group[key] == value or value != value for key, value in options.items())


@SETTINGS
@given(
    c=st.lists(st.floats(-2, 2, allow_nan=False), min_size=1, max_size=4),
    entries=st.lists(st.floats(-2, 2, allow_nan=False), max_size=10),
    order=st.integers(-1, 30),
)
def test_custom_tableaux_are_validated_quickly(c, entries, order):
    stages = len(c)
    rows, taken = [], 0
    for i in range(stages):
        rows.append(tuple(entries[taken : taken + i]) + (0.0,) * max(0, i - len(entries[taken : taken + i])))
        taken += i
    b = [1.0 / stages] * stages
    try:
        rkopt.ButcherTableau(name="fuzzed", c=tuple(c), a=tuple(rows), b=tuple(b), order=order)
    except ValueError as error:
        assert "ButcherTableau" in str(error)


def valid_state_dict():
    x, y = make_data()
    model = make_mlp()
    optimizer = rkopt.preset("rk4-full", model.parameters(), lr=0.1)
    optimizer.step(make_closure(model, optimizer, x, y))
    return model, optimizer


MODEL, OPTIMIZER = valid_state_dict()
SAVED = copy.deepcopy(OPTIMIZER.state_dict())


@st.composite
def mutated_state_dicts(draw):
    saved = copy.deepcopy(SAVED)
    where = draw(st.sampled_from(["counters", "group", "state", "rkopt", "top"]))
    if where == "counters":
        key = draw(st.sampled_from(["steps", "grad_evals", "rejected_steps", "skipped_steps", "bogus"]))
        saved["counters"][key] = draw(VALUES)
    elif where == "group":
        saved["param_groups"][0][draw(st.sampled_from([*KEYS, "momentun", "initial_lr"]))] = draw(VALUES)
    elif where == "state":
        entry = saved["state"][draw(st.integers(0, len(saved["state"]) - 1))]
        key = draw(st.sampled_from(["sum_sq", "momentum_buffer", "precond_steps", "exp_avg"]))
        entry[key] = draw(st.one_of(VALUES, st.just(torch.zeros(2)), st.just(torch.zeros(16, 6))))
    elif where == "rkopt":
        saved["rkopt"]["method"] = draw(st.sampled_from(["rk4", "heun", None, "x"]))
    else:
        saved.pop(draw(st.sampled_from(["counters", "state", "param_groups", "rkopt"])))
    return saved


@SETTINGS
@given(saved=mutated_state_dicts())
def test_a_state_dict_loads_completely_or_not_at_all(saved):
    optimizer = rkopt.preset("rk4-full", MODEL.parameters(), lr=0.1)
    optimizer.load_state_dict(copy.deepcopy(SAVED))
    before = snapshot(MODEL, optimizer), optimizer.counters
    try:
        optimizer.load_state_dict(saved)
    except (TypeError, ValueError, KeyError) as error:
        assert not isinstance(error, KeyError) or "param_groups" in str(error) or "state" in str(error)
        assert_same(before[0], snapshot(MODEL, optimizer))
        assert optimizer.counters == before[1]


@SETTINGS
@given(
    preset=st.sampled_from(list(rkopt.PRESETS)),
    fail_at=st.integers(1, 12),
    how=st.sampled_from(["raise", "nan loss", "inf grad"]),
    stagewise=st.booleans(),
)
def test_a_step_that_fails_at_any_evaluation_changes_nothing_but_the_work_count(
    preset, fail_at, how, stagewise
):
    x, y = make_data()
    model = make_mlp()
    optimizer = rkopt.preset(preset, model.parameters(), lr=0.2, stagewise=stagewise, max_retries=2)
    warm = make_closure(model, optimizer, x, y)
    for _ in range(2):  # some state to protect
        if stagewise:
            for _ in rkopt.repeat_batches([0], optimizer):
                optimizer.step(warm)
        else:
            optimizer.step(warm)
    before, counters = snapshot(model, optimizer), copy.copy(optimizer.counters)
    calls = 0

    def closure():
        nonlocal calls
        calls += 1
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        if calls == fail_at and how == "raise":
            raise KeyError("boom")
        if calls == fail_at and how == "nan loss":
            loss = loss * math.nan
        loss.backward()
        if calls == fail_at and how == "inf grad":
            next(model.parameters()).grad.fill_(math.inf)
        return loss

    try:
        if stagewise:
            for _ in rkopt.repeat_batches([0], optimizer):
                optimizer.step(closure)
        else:
            optimizer.step(closure)
    except (KeyError, rkopt.NonFiniteStepError, rkopt.StepRejectedError):
        assert_same(before, snapshot(model, optimizer))
        assert optimizer.step_complete
        assert (optimizer.counters.steps, optimizer.counters.skipped_steps) == (
            counters.steps,
            counters.skipped_steps,
        )
        completed = calls - (how == "raise")  # the evaluations that returned are counted
        assert optimizer.counters.grad_evals == counters.grad_evals + completed
        return
    assert optimizer.counters.steps == counters.steps + 1  # the failure came after the step's last call
