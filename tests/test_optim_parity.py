"""PyTorch's generic optimizer tests (``test/test_optim.py::TestOptimRenewed`` with the inputs of
``torch.testing._internal.common_optimizers``), ported to a closure optimizer.

Every property runs for every preset in ``rkopt.PRESETS`` and a few more solvers, on both list-op
flavours (``foreach=False/True``). Where rkopt intentionally differs from ``torch.optim`` (a step
needs a closure that recomputes the gradient; a parameter listed twice is refused) the clear error
is asserted instead. Trajectories are compared bit for bit.
"""

from __future__ import annotations

import copy
import io
import math
import pickle
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR, StepLR
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import rkopt
from rkopt.torch import group_options

CONFIGS: dict[str, dict[str, Any]] = {
    **{name: {"preset": name} for name in rkopt.PRESETS},
    "midpoint": {"tableau": "midpoint"},
    "ralston": {"tableau": "ralston"},
    "bogacki_shampine-error_control": {"tableau": "bogacki_shampine", "lr_policy": "error_control"},
    "rkc2-4": {"preset": "rkc2", "stages": 4},
}
LR = 0.02
CASES = [(name, foreach) for name in CONFIGS for foreach in (False, True)]
IDS = [f"{name}-{'foreach' if foreach else 'per-tensor'}" for name, foreach in CASES]
MATRIX = pytest.mark.parametrize(("config", "foreach"), CASES, ids=IDS)
SCHEDULERS = {
    "none": lambda optimizer: None,
    "StepLR": lambda optimizer: StepLR(optimizer, step_size=3, gamma=0.5),
    "LambdaLR": lambda optimizer: LambdaLR(optimizer, lambda epoch: 0.9**epoch),
    "OneCycleLR": lambda optimizer: OneCycleLR(optimizer, max_lr=LR, total_steps=40, cycle_momentum=False),
}


def build(config: str, params: Any, foreach: bool, lr: Any = LR, **options: Any) -> rkopt.RungeKutta:
    settings = dict(CONFIGS[config])
    name = settings.pop("preset", None)
    if name is None:
        return rkopt.RungeKutta(params, lr=lr, foreach=foreach, **settings, **options)
    return rkopt.preset(name, params, lr=lr, foreach=foreach, **settings, **options)


def problem(dtype: torch.dtype = torch.float32, contiguous: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """torch's test problem: L = ‖W x + b‖², W 10×5 (contiguous or a strided view)."""
    generator = torch.Generator().manual_seed(0)
    shape = (10, 5) if contiguous else (10, 5, 2)
    weight = torch.randn(*shape, generator=generator, dtype=dtype)
    bias = torch.randn(10 if contiguous else (10, 2), generator=generator, dtype=dtype)
    if not contiguous:
        weight, bias = weight[..., 0], bias[..., 0]
    x = torch.randn(5, generator=generator, dtype=dtype)
    return nn.Parameter(weight), nn.Parameter(bias), x


def loss_of(weight: Tensor, bias: Tensor, x: Tensor) -> Tensor:
    return (weight.mv(x) + bias).pow(2).sum()


def value(weight: Tensor, bias: Tensor, x: Tensor) -> float:
    with torch.no_grad():
        return float(loss_of(weight, bias, x))


def closure_for(optimizer: torch.optim.Optimizer, weight: Tensor, bias: Tensor, x: Tensor):
    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = loss_of(weight, bias, x)
        loss.backward()
        return loss

    return closure


def twin(*params: Tensor) -> list[nn.Parameter]:
    return [nn.Parameter(p.detach().clone()) for p in params]


def assert_same(a: Any, b: Any, path: str = "value") -> None:
    """Equal to the last bit, tensors included (dtype too), NaN equal to NaN."""
    if isinstance(a, Tensor):
        assert isinstance(b, Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, Mapping):
        assert isinstance(b, Mapping) and set(a) == set(b), f"{path}: keys {set(a) ^ set(b)} differ"
        for key in a:
            assert_same(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for index, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{index}]")
    else:
        assert a == b or (a != a and b != b), f"{path}: {a!r} != {b!r}"


# -- the update goes the right way -----------------------------------------------------------------


@MATRIX
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_steps_go_the_right_direction(config, foreach, contiguous, scheduler):
    weight, bias, x = problem(contiguous=contiguous)
    optimizer = build(config, [weight, bias], foreach)
    schedule = SCHEDULERS[scheduler](optimizer)
    closure = closure_for(optimizer, weight, bias, x)
    initial = value(weight, bias, x)
    for _ in range(20):
        optimizer.step(closure)
        if schedule is not None:
            schedule.step()
    assert value(weight, bias, x) < initial
    assert optimizer.counters.steps + optimizer.counters.skipped_steps == 20


@MATRIX
def test_maximize_goes_up(config, foreach):
    weight, bias, x = problem()
    optimizer = build(config, [weight, bias], foreach, maximize=True)
    initial = value(weight, bias, x)
    for _ in range(5):
        optimizer.step(closure_for(optimizer, weight, bias, x))
    assert value(weight, bias, x) > initial


@MATRIX
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_foreach_matches_the_per_tensor_loop_with_a_0_dim_and_an_empty_parameter(config, foreach, dtype):
    """torch's test_foreach_matches_forloop: same parameters and state, to the last bit."""
    runs = []
    initial = value(*problem(dtype))
    for flavour in (False, True):
        weight, bias, x = problem(dtype)
        scalar = nn.Parameter(torch.tensor(0.3, dtype=dtype))
        empty = nn.Parameter(torch.empty(0, dtype=dtype))
        optimizer = build(config, [weight, bias, scalar, empty], flavour)

        def closure(optimizer=optimizer, weight=weight, bias=bias, scalar=scalar, empty=empty, x=x):
            optimizer.zero_grad()
            loss = loss_of(weight, bias, x) + scalar.square() + empty.sum()
            loss.backward()
            return loss

        for _ in range(4):
            optimizer.step(closure)
        runs.append(([weight, bias, scalar, empty], optimizer.state_dict()))
        assert value(weight, bias, x) < initial
    assert_same(runs[0][0], runs[1][0], "parameters")
    for dict_ in (runs[0][1], runs[1][1]):
        for group in dict_["param_groups"]:
            group.pop("foreach")
    assert_same(runs[0][1], runs[1][1], "state_dict")


# -- parameter groups ------------------------------------------------------------------------------


@pytest.mark.parametrize(("config", "foreach"), CASES, ids=IDS)
def test_param_groups_with_their_own_lr(config, foreach):
    weight, bias, x = problem()
    irrelevant = nn.Parameter(torch.randn(2))
    before = irrelevant.detach().clone()
    groups = [{"params": [weight, bias], "lr": LR}, {"params": [irrelevant]}]
    optimizer = build(config, groups, foreach, lr=1e-28)

    def closure():
        optimizer.zero_grad()
        loss = loss_of(weight, bias, x)
        loss.backward()
        irrelevant.grad = torch.rand_like(irrelevant)
        return loss

    initial = value(weight, bias, x)
    for _ in range(10):
        optimizer.step(closure)
    assert value(weight, bias, x) < initial
    assert torch.equal(irrelevant, before)  # lr 1e-28 moves it below float32 resolution
    assert [group["lr"] for group in optimizer.param_groups] == [LR, 1e-28]


@MATRIX
def test_param_groups_with_their_own_weight_decay(config, foreach):
    weight, bias, x = problem()
    optimizer = build(
        config, [{"params": [weight], "weight_decay": 0.1}, {"params": [bias], "weight_decay": 0.0}], foreach
    )
    initial = value(weight, bias, x)
    for _ in range(10):
        optimizer.step(closure_for(optimizer, weight, bias, x))
    assert value(weight, bias, x) < initial
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.1, 0.0]


@MATRIX
def test_add_param_group_takes_the_defaults_and_steps_the_new_group(config, foreach):
    weight, bias, x = problem()
    optimizer = build(config, [weight], foreach)
    closure = closure_for(optimizer, weight, bias, x)
    optimizer.step(closure)
    frozen = bias.detach().clone()
    assert torch.equal(bias, frozen)
    optimizer.add_param_group({"params": [bias], "lr": LR / 2})
    group = optimizer.param_groups[1]
    assert group["lr"] == LR / 2 and group["h"] is None
    assert set(group_options()) <= set(group)  # every option, with its default
    optimizer.step(closure)
    assert not torch.equal(bias, frozen)
    fresh = build(config, [twin(weight)[0]], foreach)
    fresh.add_param_group({"params": twin(bias), "lr": LR / 2})
    fresh.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    assert fresh.counters == optimizer.counters


@MATRIX
def test_params_as_generator_list_of_dicts_or_named(config, foreach):
    reference = None
    for form in ("list", "generator", "dicts", "named"):
        weight, bias, x = problem()
        params = {
            "list": [weight, bias],
            "generator": (p for p in (weight, bias)),
            "dicts": [{"params": [weight]}, {"params": [bias]}],
            "named": [("weight", weight), ("bias", bias)],
        }[form]
        optimizer = build(config, params, foreach)
        for _ in range(3):
            optimizer.step(closure_for(optimizer, weight, bias, x))
        reference = reference or [weight, bias]
        if form != "dicts":  # two groups: a policy measuring each group apart may take other steps
            assert_same([weight, bias], reference, form)
        if form == "named":
            assert optimizer.state_dict()["param_groups"][0]["param_names"] == ["weight", "bias"]


@pytest.mark.filterwarnings("ignore:optimizer contains a parameter group with duplicate parameters")
@pytest.mark.parametrize("config", list(CONFIGS))
def test_duplicate_non_leaf_and_unordered_params_are_refused(config):
    weight, bias, _ = problem()
    with pytest.raises(ValueError, match="lists a parameter more than once"):
        build(config, [weight, bias, weight], False)
    with pytest.raises(ValueError, match="more than one parameter group"):
        build(config, [{"params": [weight]}, {"params": [weight, bias]}], False)
    with pytest.raises(ValueError, match="non-leaf"):
        build(config, [weight * 2.0], False)
    with pytest.raises(TypeError, match="ordered collections"):
        build(config, [{"params": {weight, bias}}], False)


# -- steps without gradients -----------------------------------------------------------------------


@MATRIX
def test_a_step_on_parameters_without_gradients_changes_nothing(config, foreach):
    params = [torch.randn(2, 3, requires_grad=False) for _ in range(2)]
    before = [p.clone() for p in params]
    optimizer = build(config, params, foreach)
    loss = optimizer.step(lambda: torch.tensor([1.0]))
    assert torch.equal(loss, torch.tensor([1.0]))
    assert_same(params, before, "parameters")
    assert optimizer.counters.grad_evals == 1 and optimizer.state == {}


@pytest.mark.parametrize(("config", "foreach"), CASES, ids=IDS)
def test_zero_gradients_leave_parameters_unchanged(config, foreach):
    param = nn.Parameter(torch.randn(5, 1))
    before = param.detach().clone()
    optimizer = build(config, [param], foreach)

    def closure():
        optimizer.zero_grad(set_to_none=False)
        loss = (param * 0.0).sum()
        loss.backward()
        return loss

    for _ in range(3):
        optimizer.step(closure)
    assert torch.equal(param, before)


@pytest.mark.parametrize(("config", "evaluations"), [("euler", 1), ("rk4", 4)])
def test_a_closure_that_does_not_recompute_the_gradient(config, evaluations):
    """torch's test_step_is_noop_for_zero_grads sets the gradient once and passes a closure that only
    returns a loss: a one-evaluation step (Euler = SGD) takes it; a Runge–Kutta step needs a fresh
    gradient at every stage and refuses the closure."""
    param = nn.Parameter(torch.randn(5, 1))
    before = param.detach().clone()
    param.grad = torch.zeros_like(param)
    optimizer = build(config, [param], False)
    if evaluations == 1:
        optimizer.step(lambda: torch.tensor([1.0]))
        assert torch.equal(param, before)
    else:
        with pytest.raises(rkopt.StaleGradientError, match="did not recompute the gradients"):
            optimizer.step(lambda: torch.tensor([1.0]))
        assert torch.equal(param, before) and optimizer.counters.steps == 0


@pytest.mark.parametrize("config", list(CONFIGS))
def test_step_without_a_closure_is_a_clear_error_in_closure_mode(config):
    weight, bias, x = problem()
    optimizer = build(config, [weight, bias], False)
    loss_of(weight, bias, x).backward()
    with pytest.raises(RuntimeError, match="needs a closure"):
        optimizer.step()
    stagewise = build(config, [weight, bias], False, stagewise=True)
    stagewise.step()  # one evaluation of a stage-wise step (all of an Euler step)
    assert stagewise.counters.grad_evals == int(stagewise.step_complete)
    stagewise.abort_step()


@MATRIX
def test_zero_grad_sets_to_none_or_zeroes(config, foreach):
    weight, bias, x = problem()
    optimizer = build(config, [weight, bias], foreach)
    optimizer.step(closure_for(optimizer, weight, bias, x))
    assert weight.grad is not None
    optimizer.zero_grad()
    assert weight.grad is None and bias.grad is None
    optimizer.step(closure_for(optimizer, weight, bias, x))
    optimizer.zero_grad(set_to_none=False)
    assert not weight.grad.any() and not bias.grad.any()


# -- dtypes, complex, clipping ---------------------------------------------------------------------


@MATRIX
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_float32_and_float64_go_the_right_direction_in_their_dtype(config, foreach, dtype):
    weight, bias, x = problem(dtype)
    optimizer = build(config, [weight, bias], foreach)
    initial = value(weight, bias, x)
    for _ in range(10):
        optimizer.step(closure_for(optimizer, weight, bias, x))
    assert value(weight, bias, x) < initial
    assert weight.dtype == bias.dtype == dtype
    for entry in optimizer.state.values():
        assert all(value.dtype == dtype for value in entry.values() if isinstance(value, Tensor))


@MATRIX
def test_complex_parameters_step_as_their_real_views(config, foreach):
    """torch's test_complex: complex parameters (and a real one) step exactly as their real views."""
    generator = torch.Generator().manual_seed(3)
    complex_params = [
        nn.Parameter(torch.randn(10, 5, dtype=torch.complex64, generator=generator)),
        nn.Parameter(torch.randn(10, dtype=torch.complex64, generator=generator)),
        nn.Parameter(torch.randn(10, 5, generator=generator)),
    ]
    real_params = twin(*(torch.view_as_real(p) if p.is_complex() else p for p in complex_params))
    target = torch.randn(10, 5, 2, generator=generator)

    def loss_fn(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
        return (a - target).square().sum() + b.square().sum() + torch.tanh(c).sum()

    complex_optimizer = build(config, complex_params, foreach)
    real_optimizer = build(config, real_params, foreach)

    def complex_closure():
        complex_optimizer.zero_grad()
        a, b = (torch.view_as_real(p) for p in complex_params[:2])
        loss = loss_fn(a, b, complex_params[2])
        loss.backward()
        return loss

    def real_closure():
        real_optimizer.zero_grad()
        loss = loss_fn(*real_params)
        loss.backward()
        return loss

    for _ in range(3):
        assert_same(complex_optimizer.step(complex_closure), real_optimizer.step(real_closure), "loss")
    as_real = [torch.view_as_real(p) if p.is_complex() else p for p in complex_params]
    assert_same([p.detach() for p in as_real], [p.detach() for p in real_params], "parameters")


@pytest.mark.parametrize("foreach", [False, True])
def test_clip_grad_norm_inside_the_closure(foreach):
    """The clipped gradient is the field: Euler with clipping is SGD with clipping, bit for bit; every
    RK4 evaluation integrates a gradient of norm <= max_norm."""
    weight, bias, x = problem()
    sgd_weight, sgd_bias = twin(weight, bias)
    euler = rkopt.Euler([weight, bias], lr=LR, foreach=foreach)
    sgd = torch.optim.SGD([sgd_weight, sgd_bias], lr=LR, foreach=foreach)
    norms = []

    def clipped(optimizer, w, b):
        def closure():
            optimizer.zero_grad()
            loss = loss_of(w, b, x)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([w, b], max_norm=0.5)
            norms.append(float(torch.cat([w.grad.reshape(-1), b.grad.reshape(-1)]).norm()))
            return loss

        return closure

    for _ in range(5):
        euler.step(clipped(euler, weight, bias))
        sgd.step(clipped(sgd, sgd_weight, sgd_bias))
    assert_same([weight, bias], [sgd_weight, sgd_bias], "Euler vs SGD")
    rk4_weight, rk4_bias = twin(weight, bias)
    rk4 = rkopt.RK4([rk4_weight, rk4_bias], lr=LR, foreach=foreach)
    norms.clear()
    rk4.step(clipped(rk4, rk4_weight, rk4_bias))
    assert len(norms) == 4 and max(norms) <= 0.5 * (1 + 1e-5)


# -- state_dict ------------------------------------------------------------------------------------


def primed(config: str, foreach: bool, steps: int = 4, **options: Any):
    weight, bias, x = problem()
    optimizer = build(config, [weight, bias], foreach, **options)
    for _ in range(steps):
        optimizer.step(closure_for(optimizer, weight, bias, x))
    return weight, bias, x, optimizer


@MATRIX
def test_resuming_from_a_state_dict_is_bit_identical_and_deterministic(config, foreach):
    weight, bias, x, optimizer = primed(config, foreach)
    weight_c, bias_c = twin(weight, bias)
    resumed = build(config, [weight_c, bias_c], foreach)
    saved = copy.deepcopy(optimizer.state_dict())
    untouched = copy.deepcopy(saved)
    resumed.load_state_dict(saved)
    assert_same(saved, untouched, "the loaded dict")  # loading does not modify it
    for _ in range(4):
        assert_same(
            optimizer.step(closure_for(optimizer, weight, bias, x)),
            resumed.step(closure_for(resumed, weight_c, bias_c, x)),
            "loss",
        )
        assert_same([weight, bias], [weight_c, bias_c], "parameters")
    assert_same(optimizer.state_dict(), resumed.state_dict(), "state_dict")
    resumed.param_groups.extend(resumed.param_groups)  # repeated parameters: one representation
    assert_same(optimizer.state_dict()["param_groups"][-1], resumed.state_dict()["param_groups"][-1])


@MATRIX
@pytest.mark.parametrize("scheduler", ["StepLR", "LambdaLR", "OneCycleLR"])
def test_state_dict_with_an_lr_scheduler_resumes_exactly(config, foreach, scheduler):
    weight, bias, x = problem()
    optimizer = build(config, [weight, bias], foreach)
    schedule = SCHEDULERS[scheduler](optimizer)
    for _ in range(3):
        optimizer.step(closure_for(optimizer, weight, bias, x))
        schedule.step()
    saved = copy.deepcopy(optimizer.state_dict())
    assert "initial_lr" in saved["param_groups"][0]
    weight_c, bias_c = twin(weight, bias)
    resumed = build(config, [weight_c, bias_c], foreach)
    resumed_schedule = SCHEDULERS[scheduler](resumed)
    resumed_schedule.load_state_dict(schedule.state_dict())  # the scheduler first, as torch says
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["initial_lr"] == optimizer.param_groups[0]["initial_lr"]
    for _ in range(3):
        optimizer.step(closure_for(optimizer, weight, bias, x))
        resumed.step(closure_for(resumed, weight_c, bias_c, x))
        schedule.step()
        resumed_schedule.step()
        assert resumed.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    assert_same([weight, bias], [weight_c, bias_c], "parameters")


@pytest.mark.parametrize("config", list(CONFIGS))
def test_an_older_state_dict_without_newer_keys_loads_with_the_defaults(config):
    weight, bias, x, optimizer = primed(config, True)
    older = copy.deepcopy(optimizer.state_dict())
    for group in older["param_groups"]:
        del group["foreach"], group["h"]
    optimizer.load_state_dict(older)
    assert optimizer.param_groups[0]["foreach"] is None and optimizer.param_groups[0]["h"] is None
    optimizer.step(closure_for(optimizer, weight, bias, x))


@MATRIX
@pytest.mark.parametrize("lr", ["float", "tensor"])
def test_save_and_load_with_weights_only(config, foreach, lr):
    weight, bias, x = problem()
    optimizer = build(config, [weight, bias], foreach, lr=LR if lr == "float" else torch.tensor(LR))
    for _ in range(3):
        optimizer.step(closure_for(optimizer, weight, bias, x))
    saved = optimizer.state_dict()
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    for weights_only in (False, True):
        buffer.seek(0)
        assert_same(torch.load(buffer, weights_only=weights_only), saved, f"weights_only={weights_only}")


# -- hooks -----------------------------------------------------------------------------------------


def _state_dict_pre_hook(optimizer):
    optimizer.state["test"] = 1


def _state_dict_post_hook(optimizer, state_dict):
    ran = "test" in state_dict["state"]
    state_dict["state"].pop("test", None)
    state_dict["ran_state_dict_pre_hook"] = ran
    return state_dict


@MATRIX
def test_state_dict_pre_and_post_hooks(config, foreach):
    weight, bias, _ = problem()
    optimizer = build(config, [weight, bias], foreach)
    optimizer.register_state_dict_pre_hook(_state_dict_pre_hook)
    assert optimizer.state_dict()["state"]["test"] == 1  # the pre-hook runs before the dict is built
    optimizer.register_state_dict_post_hook(_state_dict_post_hook)
    state_dict = optimizer.state_dict()
    assert "test" not in state_dict["state"] and state_dict["ran_state_dict_pre_hook"]
    assert state_dict["counters"] == {"steps": 0, "grad_evals": 0, "rejected_steps": 0, "skipped_steps": 0}


@MATRIX
def test_load_state_dict_pre_hooks_in_order_and_prepended(config, foreach):
    weight, bias, _ = problem()
    optimizer = build(config, [weight, bias], foreach)
    state_dict = optimizer.state_dict()

    def set_lr(optimizer, state_dict):
        state_dict["param_groups"][0]["lr"] = 0.002

    def replace_dict(optimizer, state_dict):
        replaced = copy.deepcopy(state_dict)
        replaced["param_groups"][0]["lr"] = 0.003
        return replaced

    optimizer.register_load_state_dict_pre_hook(set_lr)
    optimizer.load_state_dict(state_dict)
    assert optimizer.param_groups[0]["lr"] == 0.002
    optimizer.register_load_state_dict_pre_hook(replace_dict, prepend=True)
    optimizer.load_state_dict(state_dict)
    assert optimizer.param_groups[0]["lr"] == 0.002  # prepended: the appended hook has the last word


@MATRIX
def test_load_state_dict_post_hook_sees_the_loaded_optimizer(config, foreach):
    *_, optimizer = primed(config, foreach, steps=2)
    seen = []
    optimizer.register_load_state_dict_post_hook(
        lambda opt: seen.append((opt.param_groups[0]["lr"], opt.counters.steps))
    )
    saved = optimizer.state_dict()
    saved["param_groups"][0]["lr"] = 0.003
    optimizer.load_state_dict(saved)
    assert seen == [(0.003, saved["counters"]["steps"])] and saved["counters"]["steps"] > 0


@MATRIX
def test_step_hooks_run_in_order_around_a_whole_step(config, foreach):
    weight, bias, x = problem()
    optimizer = build(config, [weight, bias], foreach)
    other = torch.optim.SGD([nn.Parameter(torch.ones(2))])  # torch's default lr
    events = []

    def snapshot(tag):
        def hook(opt, args, kwargs):
            if opt is optimizer:
                events.append((tag, weight.detach().clone(), opt.counters.steps, opt.evaluation_index))
            else:
                events.append((tag, None, None, None))

        return hook

    handles = [
        register_optimizer_step_pre_hook(snapshot("global pre")),
        register_optimizer_step_post_hook(snapshot("global post")),
        optimizer.register_step_pre_hook(snapshot("pre")),
        optimizer.register_step_post_hook(snapshot("post")),
        other.register_step_pre_hook(snapshot("pre")),
        other.register_step_post_hook(snapshot("post")),
    ]
    try:
        theta_n = weight.detach().clone()
        optimizer.step(closure_for(optimizer, weight, bias, x))
        other.step()
    finally:
        for handle in handles:
            handle.remove()
    assert [tag for tag, *_ in events] == ["global pre", "pre", "post", "global post"] * 2
    (_, before, steps_before, index_before), _, (_, after, steps_after, index_after), _ = events[:4]
    assert torch.equal(before, theta_n) and steps_before == 0 and index_before is None
    assert torch.equal(after, weight.detach()) and not torch.equal(after, theta_n)
    assert steps_after + optimizer.counters.skipped_steps == 1 and index_after is None
    optimizer.step(closure_for(optimizer, weight, bias, x))
    assert len(events) == 8  # removed


@pytest.mark.parametrize("config", list(CONFIGS))
def test_a_step_pre_hook_may_replace_the_closure(config):
    weight, bias, x = problem()
    optimizer = build(config, [weight, bias], False)
    calls = []

    def counting(opt, args, kwargs):
        inner = args[1] if len(args) > 1 else kwargs.pop("closure")

        def closure():
            calls.append(opt.evaluation_index)
            return inner()

        return (args[0], closure), kwargs

    optimizer.register_step_pre_hook(counting)
    optimizer.step(closure_for(optimizer, weight, bias, x))
    assert calls == list(range(optimizer.counters.grad_evals))


# -- copies and repr -------------------------------------------------------------------------------


@MATRIX
@pytest.mark.parametrize("copier", ["deepcopy", "pickle"])
def test_copies_keep_every_public_attribute_and_continue_exactly(config, foreach, copier):
    weight, bias, x, optimizer = primed(config, foreach, steps=3)
    duplicate = {
        "deepcopy": copy.deepcopy,
        "pickle": lambda objects: pickle.loads(pickle.dumps(objects)),
    }[copier]
    weight_c, bias_c, copied = duplicate((weight, bias, optimizer))
    public = {key for key in vars(optimizer) if not key.startswith("_")}
    assert public == {key for key in vars(copied) if not key.startswith("_")}
    assert copied.counters == optimizer.counters and copied.counters is not optimizer.counters
    for _ in range(3):
        optimizer.step(closure_for(optimizer, weight, bias, x))
        copied.step(closure_for(copied, weight_c, bias_c, x))
    assert_same([weight, bias], [weight_c, bias_c], "parameters")


@MATRIX
def test_repr_lists_every_group_and_key(config, foreach):
    weight, bias, _ = problem()
    optimizer = build(config, [{"params": [weight]}, {"params": [bias], "lr": 0.5}], foreach)
    text = repr(optimizer)
    assert text.startswith(f"{type(optimizer).__name__} (\nParameter Group 0\n")
    assert "Parameter Group 1\n" in text and f"    lr: {LR}\n" in text and "    lr: 0.5\n" in text
    assert f"    foreach: {foreach}\n" in text and "params" not in text
    tensor_lr = build(config, [weight], foreach, lr=torch.tensor(0.25))
    assert "    lr: 0.25\n" in repr(tensor_lr)


# -- Tensor lr -------------------------------------------------------------------------------------


@MATRIX
@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_a_tensor_lr_stays_a_tensor_and_steps_exactly_as_its_float(config, foreach, scheduler):
    runs = []
    for lr in (LR, torch.tensor(LR, dtype=torch.float64)):
        weight, bias, x = problem()
        optimizer = build(config, [weight, bias], foreach, lr=lr)
        schedule = SCHEDULERS[scheduler](optimizer)
        for _ in range(4):
            optimizer.step(closure_for(optimizer, weight, bias, x))
            if schedule is not None:
                schedule.step()
        runs.append((weight, bias, optimizer))
    (weight, bias, by_float), (weight_t, bias_t, by_tensor) = runs
    assert_same([weight, bias], [weight_t, bias_t], "parameters")
    lr = by_tensor.param_groups[0]["lr"]
    assert isinstance(lr, Tensor) and lr.dim() == 0 and float(lr) == by_float.param_groups[0]["lr"]
    saved = copy.deepcopy(by_tensor.state_dict())
    resumed = build(config, twin(weight_t, bias_t), foreach, lr=torch.tensor(1.0, dtype=torch.float64))
    resumed.load_state_dict(saved)
    loaded = resumed.param_groups[0]["lr"]
    assert isinstance(loaded, Tensor) and float(loaded) == float(lr)
    assert resumed.param_groups[0]["h"] == by_float.param_groups[0]["h"]


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before `optimizer.step\\(\\)`")
def test_a_float32_tensor_lr_steps_as_its_value_and_survives_a_scheduler():
    lr = torch.tensor(0.1)  # 0.100000001490116... in float32
    weight, bias, x = problem()
    optimizer = rkopt.RK4([weight, bias], lr=lr)
    reference_weight, reference_bias = twin(weight, bias)
    reference = rkopt.RK4([reference_weight, reference_bias], lr=float(lr))
    for _ in range(3):
        optimizer.step(closure_for(optimizer, weight, bias, x))
        reference.step(closure_for(reference, reference_weight, reference_bias, x))
    assert_same([weight, bias], [reference_weight, reference_bias], "parameters")
    StepLR(optimizer, step_size=1, gamma=0.5).step()
    assert optimizer.param_groups[0]["lr"] is lr and float(lr) == float(torch.tensor(0.05))


def test_a_tensor_lr_in_stagewise_mode_matches_closure_mode():
    weight, bias, x = problem()
    stagewise = rkopt.preset("rk4-full", [weight, bias], lr=torch.tensor(LR), stagewise=True)
    closure_weight, closure_bias = twin(weight, bias)
    closure_mode = rkopt.preset("rk4-full", [closure_weight, closure_bias], lr=torch.tensor(LR))
    for _ in range(3):
        closure_mode.step(closure_for(closure_mode, closure_weight, closure_bias, x))
        while True:
            stagewise.step(closure_for(stagewise, weight, bias, x))
            if stagewise.step_complete:
                break
    assert_same([weight, bias], [closure_weight, closure_bias], "parameters")


@pytest.mark.parametrize(
    ("lr", "error", "match"),
    [
        (torch.tensor([[0.1, 0.2]]), ValueError, "one real floating-point number"),
        (torch.tensor(1), ValueError, "one real floating-point number"),
        (torch.tensor(0.1 + 0j), ValueError, "one real floating-point number"),
        (torch.tensor(0.1, requires_grad=True), ValueError, "must not require grad"),
        (torch.tensor(-0.1), ValueError, "lr must be a finite number >= 0"),
        (torch.tensor(math.nan), ValueError, "lr must be a finite number >= 0"),
        (torch.tensor(0.1, device="meta"), ValueError, "on the CPU or on its parameters' device"),
        (None, TypeError, "no default"),
    ],
)
def test_bad_tensor_lrs_and_a_missing_lr_are_refused(lr, error, match):
    weight, bias, _ = problem()
    with pytest.raises(error, match=match):
        rkopt.RK4([weight, bias], lr=lr)


def test_lr_has_no_default():
    """torch.optim.SGD defaults to lr=1e-3; rkopt's lr is the integrator's step, so it is required."""
    weight, bias, _ = problem()
    with pytest.raises(TypeError, match="lr"):
        rkopt.RungeKutta([weight, bias])
    with pytest.raises(TypeError, match="no default because a stable h depends on the loss's curvature"):
        rkopt.RungeKutta([weight, bias], lr=None)
    assert "Required" in rkopt.RungeKutta.__doc__
