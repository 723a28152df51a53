"""rkopt.RungeKutta as a torch.optim optimizer: API, numerics, state, failures, memory."""

from __future__ import annotations

import copy
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import rkopt
from support import flat, make_closure, make_data, make_mlp, quadratic_closure

PRESETS = list(rkopt.PRESETS)


def train(model, optimizer, steps, x, y):
    closure = make_closure(model, optimizer, x, y)
    return [float(optimizer.step(closure).detach()) for _ in range(steps)]


# -- Euler is SGD ------------------------------------------------------------------------------


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize(("weight_decay", "maximize"), [(0.0, False), (0.05, False), (0.05, True)])
def test_euler_reproduces_sgd_to_the_last_bit(foreach, weight_decay, maximize):
    x, y = make_data()
    sgd_model, rk_model = make_mlp(dropout=0.3), make_mlp(dropout=0.3)
    sgd = torch.optim.SGD(
        sgd_model.parameters(), lr=0.1, weight_decay=weight_decay, maximize=maximize, foreach=foreach
    )
    euler = rkopt.Euler(
        rk_model.parameters(), lr=0.1, weight_decay=weight_decay, maximize=maximize, foreach=foreach
    )
    for step in range(5):
        torch.manual_seed(step)
        sgd.step(make_closure(sgd_model, sgd, x, y))
        torch.manual_seed(step)
        euler.step(make_closure(rk_model, euler, x, y))
    assert torch.equal(flat(sgd_model), flat(rk_model))
    assert euler.counters.grad_evals == 5


# -- the closure contract ----------------------------------------------------------------------


def test_step_without_a_closure_is_a_clear_error():
    model = make_mlp()
    optimizer = rkopt.RK4(model.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="needs a closure.*same minibatch"):
        optimizer.step()


def test_closure_returning_none_is_a_clear_error_and_changes_nothing():
    model = make_mlp()
    x, y = make_data()
    before = flat(model).clone()
    optimizer = rkopt.RK4(model.parameters(), lr=0.1)

    def closure():
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()

    with pytest.raises(ValueError, match="closure returned None"):
        optimizer.step(closure)
    assert torch.equal(flat(model), before)
    assert optimizer.counters == rkopt.Counters(grad_evals=1)  # the call was made, no step taken


@pytest.mark.parametrize(("name", "calls"), [("euler", 1), ("heun", 2), ("rk4", 4), ("dormand_prince", 6)])
def test_each_step_calls_the_closure_once_per_needed_stage(name, calls):
    model = make_mlp()
    x, y = make_data()
    optimizer = rkopt.RungeKutta(model.parameters(), lr=0.1, tableau=name)
    count = 0
    inner = make_closure(model, optimizer, x, y)

    def closure():
        nonlocal count
        count += 1
        return inner()

    loss = optimizer.step(closure)
    assert count == calls == optimizer.counters.grad_evals
    assert optimizer.counters.steps == 1
    # the returned loss is the one at θ_n, the first call
    with torch.no_grad():
        expected = float(nn.functional.cross_entropy(make_mlp()(x), y))
    assert float(loss.detach()) == pytest.approx(expected)


def test_every_stage_sees_the_same_random_numbers_and_the_rng_advances_as_after_one_call():
    model = make_mlp(dropout=0.5)
    twin = copy.deepcopy(model)
    x, y = make_data()
    optimizer = rkopt.RK4(model.parameters(), lr=0.1)
    draws = []

    def closure():
        optimizer.zero_grad()
        draws.append(torch.rand(3))
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    torch.manual_seed(0)
    optimizer.step(closure)
    after_step = torch.rand(1)
    assert len(draws) == 4 and all(torch.equal(d, draws[0]) for d in draws)
    # reference: one plain closure call from the same seed, then the next draw
    torch.manual_seed(0)
    torch.rand(3)
    nn.functional.cross_entropy(twin(x), y)
    assert torch.equal(after_step, torch.rand(1))


def test_dropout_masks_are_identical_across_stages():
    model = make_mlp(dropout=0.5)
    x, y = make_data()
    optimizer = rkopt.RK4(model.parameters(), lr=0.1)
    masks = []
    model[2].register_forward_hook(lambda module, inputs, output: masks.append(output != 0))
    optimizer.step(make_closure(model, optimizer, x, y))
    assert len(masks) == 4 and all(torch.equal(m, masks[0]) for m in masks)


# -- learning rates, groups, schedulers ---------------------------------------------------------


def test_lr_scheduler_sets_the_step():
    model = make_mlp()
    x, y = make_data()
    optimizer = rkopt.RK4(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    used = []
    for _ in range(3):
        optimizer.step(make_closure(model, optimizer, x, y))
        used.append(optimizer.param_groups[0]["h"])
        scheduler.step()
    assert used == [0.1, 0.05, 0.025]


def test_lr_zero_leaves_parameters_unchanged():
    model = make_mlp()
    x, y = make_data()
    before = flat(model).clone()
    optimizer = rkopt.RK4(model.parameters(), lr=0.0)
    optimizer.step(make_closure(model, optimizer, x, y))
    assert torch.equal(flat(model), before)


def test_parameters_without_gradient_are_skipped():
    model = make_mlp()
    frozen = nn.Parameter(torch.ones(4))
    x, y = make_data()
    optimizer = rkopt.RungeKutta(
        [{"params": model.parameters()}, {"params": [frozen], "weight_decay": 1.0}], lr=0.1
    )
    optimizer.step(make_closure(model, optimizer, x, y))
    assert torch.equal(frozen, torch.ones(4))
    assert frozen not in optimizer.state or not optimizer.state[frozen]


def test_sparse_gradients_are_refused():
    embedding = nn.Embedding(10, 3, sparse=True)
    optimizer = rkopt.RK4(embedding.parameters(), lr=0.1)

    def closure():
        optimizer.zero_grad()
        loss = embedding(torch.tensor([1, 2])).sum()
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match="sparse"):
        optimizer.step(closure)
    assert torch.equal(embedding.weight.grad.to_dense().abs().sum(), torch.tensor(6.0))


def test_coupled_weight_decay_is_part_of_the_field():
    """With L = 0 the flow is dθ/dt = -λθ, so one RK step multiplies θ by R(-hλ)."""
    theta = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    h, decay = 0.3, 2.0
    optimizer = rkopt.RK4([theta], lr=h, weight_decay=decay)
    optimizer.step(quadratic_closure(theta, optimizer, torch.zeros(2, 2, dtype=torch.float64)))
    z = -h * decay
    amplification = sum(r * z**k for k, r in enumerate(rkopt.get_tableau("rk4").stability_polynomial()))
    assert torch.allclose(theta, torch.tensor([1.0, -2.0], dtype=torch.float64) * amplification, rtol=1e-15)


def test_decoupled_weight_decay_is_applied_once_per_step():
    theta = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    optimizer = rkopt.RK4([theta], lr=0.3, weight_decay=2.0, decoupled_weight_decay=True)
    optimizer.step(quadratic_closure(theta, optimizer, torch.zeros(2, 2, dtype=torch.float64)))
    assert torch.allclose(theta, torch.tensor([1.0, -2.0], dtype=torch.float64) * (1 - 0.3 * 2.0))


# -- numerics on quadratics --------------------------------------------------------------------


def _quadratic(n: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    eigenvalues = torch.linspace(0.1, 1.0, n, dtype=torch.float64)
    return basis @ torch.diag(eigenvalues) @ basis.T, torch.randn(n, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(rkopt.TABLEAUX))
@pytest.mark.parametrize("foreach", [False, True])
def test_a_step_on_a_quadratic_applies_the_stability_polynomial(name, foreach):
    """On L = ½θᵀQθ one step is θ ← R(-hQ) θ, R the tableau's stability polynomial."""
    q, theta0 = _quadratic()
    theta = nn.Parameter(theta0.clone())
    h = 0.7
    optimizer = rkopt.RungeKutta([theta], lr=h, tableau=name, foreach=foreach)
    optimizer.step(quadratic_closure(theta, optimizer, q))
    matrix = torch.zeros_like(q)
    power = torch.eye(5, dtype=torch.float64)
    for r in rkopt.get_tableau(name).stability_polynomial():
        matrix += r * power
        power = power @ (-h * q)
    torch.testing.assert_close(theta.detach(), matrix @ theta0, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize(
    ("name", "h_lambda", "stable"),
    [("rk4", 2.78, True), ("rk4", 2.80, False), ("euler", 1.99, True), ("euler", 2.05, False)],
)
def test_stability_limit_along_the_sharpest_direction(name, h_lambda, stable):
    q, theta0 = _quadratic()
    lam_max = float(torch.linalg.eigvalsh(q).max())
    theta = nn.Parameter(theta0.clone())
    optimizer = rkopt.RungeKutta([theta], lr=h_lambda / lam_max, tableau=name)
    closure = quadratic_closure(theta, optimizer, q)
    for _ in range(2000):
        optimizer.step(closure)
    assert (float(theta.detach().norm()) < float(theta0.norm())) == stable


def _network_flow_problem():
    """Full-batch squared loss of a 3-4-1 tanh network on fixed data, θ flattened (21 values)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, generator=generator, dtype=torch.float64)
    y = torch.randn(16, 1, generator=generator, dtype=torch.float64)
    theta0 = torch.randn(21, generator=generator, dtype=torch.float64)

    def loss_fn(theta):
        hidden = torch.tanh(x @ theta[:12].reshape(4, 3).T + theta[12:16])
        return ((hidden @ theta[16:20].reshape(1, 4).T + theta[20:] - y) ** 2).mean()

    return loss_fn, theta0


@pytest.fixture(scope="module")
def network_flow_reference():
    """θ(T) of the gradient flow, by SciPy's DOP853 at tolerance 1e-13: an independent solver."""
    integrate = pytest.importorskip("scipy.integrate")
    loss_fn, theta0 = _network_flow_problem()

    def field(_, theta):
        theta = torch.tensor(theta, requires_grad=True)
        return -torch.autograd.grad(loss_fn(theta), theta)[0].numpy()

    end = 0.5
    solution = integrate.solve_ivp(field, (0, end), theta0.numpy(), method="DOP853", rtol=1e-13, atol=1e-13)
    return end, solution.y[:, -1]


@pytest.mark.parametrize(
    "name", ["euler", "heun", "heun3", "ssprk3", "rk4", "rk38", "bogacki_shampine", "fehlberg", "cash_karp"]
)
def test_optimizer_converges_at_the_tableau_order_on_a_network_gradient_flow(name, network_flow_reference):
    """Slope of log(error at T) against log(h) matches the order (covers every storage pattern:
    no accumulator, zero a_ij, slots, truncated trailing stages)."""
    end, reference = network_flow_reference
    loss_fn, theta0 = _network_flow_problem()
    order = rkopt.get_tableau(name).order
    steps = np.array([{1: 128, 2: 32, 3: 16}.get(order, 8) * 2**k for k in range(3)])
    errors = []
    for n in steps:
        theta = nn.Parameter(theta0.clone())
        optimizer = rkopt.RungeKutta([theta], lr=end / n, tableau=name)

        def closure():
            optimizer.zero_grad()
            loss = loss_fn(theta)
            loss.backward()
            return loss

        for _ in range(n):
            optimizer.step(closure)
        errors.append(np.abs(theta.detach().numpy() - reference).max())
    observed = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert observed == pytest.approx(order, abs=0.3)


def test_float64_training_is_reproducible_to_machine_precision_across_paths():
    x, y = make_data(dtype=torch.float64)
    models = [make_mlp(dtype=torch.float64) for _ in range(2)]
    for model, foreach in zip(models, [False, True]):
        optimizer = rkopt.RK4(model.parameters(), lr=0.2, foreach=foreach)
        train(model, optimizer, 5, x, y)
    assert torch.equal(flat(models[0]), flat(models[1]))


# -- single-tensor and foreach paths -----------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_foreach_and_single_tensor_paths_are_bit_identical(preset):
    x, y = make_data()
    results = []
    for foreach in (False, True):
        model = make_mlp()
        optimizer = rkopt.preset(preset, model.parameters(), lr=0.3, foreach=foreach, weight_decay=0.01)
        train(model, optimizer, 6, x, y)
        results.append((flat(model), optimizer.state_dict()))
    (params_a, state_a), (params_b, state_b) = results
    assert torch.equal(params_a, params_b)
    assert state_a["counters"] == state_b["counters"]
    for group_a, group_b in zip(state_a["param_groups"], state_b["param_groups"]):
        assert group_a["h"] == group_b["h"]
    for key, value in state_a["state"].items():
        for name, tensor in value.items():
            other = state_b["state"][key][name]
            assert torch.equal(torch.as_tensor(tensor), torch.as_tensor(other)), name


# -- state_dict --------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_resuming_from_a_checkpoint_is_bit_identical(preset):
    x, y = make_data()
    model = make_mlp(dropout=0.2)
    optimizer = rkopt.preset(preset, model.parameters(), lr=0.3)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
    closure = make_closure(model, optimizer, x, y)

    def run(opt, sched, steps, clos):
        for _ in range(steps):
            opt.step(clos)
            sched.step()

    torch.manual_seed(0)
    run(optimizer, scheduler, 3, closure)
    buffer = io.BytesIO()
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
        },
        buffer,
    )
    run(optimizer, scheduler, 4, closure)
    uninterrupted = flat(model).clone()

    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)  # only plain types and tensors are saved
    resumed_model = make_mlp(seed=123, dropout=0.2)
    resumed_model.load_state_dict(checkpoint["model"])
    resumed = rkopt.preset(preset, resumed_model.parameters(), lr=0.3)
    resumed_scheduler = torch.optim.lr_scheduler.ExponentialLR(resumed, gamma=0.9)
    resumed.load_state_dict(checkpoint["optimizer"])
    resumed_scheduler.load_state_dict(checkpoint["scheduler"])
    torch.set_rng_state(checkpoint["rng"])
    run(resumed, resumed_scheduler, 4, make_closure(resumed_model, resumed, x, y))
    assert torch.equal(flat(resumed_model), uninterrupted)
    assert resumed.counters == optimizer.counters
    assert resumed.counters.steps == 7


def test_counters_are_saved_and_documented_fields():
    model = make_mlp()
    x, y = make_data()
    optimizer = rkopt.RK4(model.parameters(), lr=0.1)
    train(model, optimizer, 2, x, y)
    state = optimizer.state_dict()
    assert state["counters"] == {"steps": 2, "grad_evals": 8, "rejected_steps": 0, "skipped_steps": 0}


# -- failures ----------------------------------------------------------------------------------


def _failing_closure(model, optimizer, x, y, fail_at_call, how):
    calls = 0

    def closure():
        nonlocal calls
        calls += 1
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        if calls == fail_at_call and how == "loss":
            loss = loss * float("nan")
        loss.backward()
        if calls == fail_at_call and how == "grad":
            next(model.parameters()).grad[0, 0] = float("inf")
        return loss

    return closure


@pytest.mark.parametrize("preset", ["rk4", "rk4-full", "dopri5-adaptive"])
@pytest.mark.parametrize("how", ["loss", "grad"])
@pytest.mark.parametrize("fail_at_call", [1, 3])
def test_a_non_finite_stage_restores_theta_n_exactly_and_raises(preset, how, fail_at_call):
    x, y = make_data()
    model = make_mlp()
    optimizer = rkopt.preset(preset, model.parameters(), lr=0.1, max_retries=0)
    train(model, optimizer, 2, x, y)
    params, state = flat(model).clone(), copy.deepcopy(optimizer.state_dict())
    with pytest.raises(rkopt.NonFiniteStepError, match="restored"):
        optimizer.step(_failing_closure(model, optimizer, x, y, fail_at_call, how))
    assert torch.equal(flat(model), params)
    after = optimizer.state_dict()
    spent = after["counters"]["grad_evals"] - state["counters"]["grad_evals"]
    assert {**after["counters"], "grad_evals": 0} == {**state["counters"], "grad_evals": 0}
    assert spent >= fail_at_call  # the work done before the failure is counted, nothing else
    assert [g["h"] for g in after["param_groups"]] == [g["h"] for g in state["param_groups"]]
    for key, value in state["state"].items():
        for name, tensor in value.items():
            assert torch.equal(torch.as_tensor(after["state"][key][name]), torch.as_tensor(tensor))


def test_on_nonfinite_skip_restores_and_counts():
    x, y = make_data()
    model = make_mlp()
    optimizer = rkopt.preset("rk4-momentum", model.parameters(), lr=0.1, on_nonfinite="skip")
    train(model, optimizer, 1, x, y)
    params = flat(model).clone()
    momentum = [optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    optimizer.step(_failing_closure(model, optimizer, x, y, 2, "loss"))
    assert torch.equal(flat(model), params)
    assert all(
        torch.equal(optimizer.state[p]["momentum_buffer"], m) for p, m in zip(model.parameters(), momentum)
    )
    assert optimizer.counters.skipped_steps == 1
    assert optimizer.counters.steps == 1
    assert optimizer.counters.grad_evals == 8


def test_an_exception_in_the_closure_restores_theta_n():
    x, y = make_data()
    model = make_mlp()
    optimizer = rkopt.RK4(model.parameters(), lr=0.1)
    params = flat(model).clone()
    inner = make_closure(model, optimizer, x, y)
    calls = 0

    def closure():
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt
        return inner()

    with pytest.raises(KeyboardInterrupt):
        optimizer.step(closure)
    assert torch.equal(flat(model), params)
    assert optimizer.evaluation_index is None


# -- bad arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"lr": -0.1}, ValueError, "lr must be a finite number >= 0"),
        ({"lr": float("nan")}, ValueError, "lr must be a finite number >= 0"),
        ({"lr": float("inf")}, ValueError, "lr must be a finite number >= 0"),
        ({"lr": 0.1, "tableau": "rk5"}, ValueError, "unknown tableau 'rk5'; valid names"),
        ({"lr": 0.1, "weight_decay": -1.0}, ValueError, "weight_decay must be"),
        ({"lr": 0.1, "momentum": 1.0}, ValueError, "momentum must be in \\[0, 1\\)"),
        ({"lr": 0.1, "nesterov": True}, ValueError, "nesterov=True needs momentum > 0"),
        ({"lr": 0.1, "preconditioner": "adam"}, ValueError, "unknown preconditioner 'adam'"),
        ({"lr": 0.1, "precond_delta": 0.0, "preconditioner": "adagrad"}, ValueError, "precond_delta"),
        ({"lr": 0.1, "lr_policy": "cosine"}, ValueError, "unknown lr_policy 'cosine'"),
        ({"lr": 0.1, "lr_policy": "error_control"}, ValueError, "needs an embedded pair"),
        ({"lr": 0.1, "lr_policy": "dal", "tableau": "euler"}, ValueError, "finite_difference"),
        ({"lr": 0.1, "lr_policy": "dal", "dal_power": 0}, ValueError, "dal_power"),
        ({"lr": 0.1, "on_nonfinite": "ignore"}, ValueError, "on_nonfinite must be"),
        ({"lr": 0.1, "betas": (0.9, 0.99)}, TypeError, "unknown keyword argument.*betas"),
    ],
)
def test_bad_arguments_get_clear_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        rkopt.RungeKutta(make_mlp().parameters(), **kwargs)


def test_malformed_custom_tableau_is_rejected():
    with pytest.raises(ValueError, match="row sum"):
        rkopt.RungeKutta(
            make_mlp().parameters(),
            lr=0.1,
            tableau=rkopt.ButcherTableau(name="bad", c=(0, 1), a=((), (0.5,)), b=(0.5, 0.5), order=1),
        )


def test_custom_tableau_object_is_used():
    tableau = rkopt.ButcherTableau(name="my_heun", c=(0, 1), a=((), (1,)), b=(0.5, 0.5), order=2)
    results = []
    for t in (tableau, "heun"):
        model = make_mlp()
        optimizer = rkopt.RungeKutta(model.parameters(), lr=0.1, tableau=t)
        train(model, optimizer, 2, *make_data())
        results.append(flat(model))
    assert torch.equal(*results)


def test_aliases_fix_their_tableau():
    assert rkopt.RK4(make_mlp().parameters(), lr=0.1).tableau.name == "rk4"
    assert rkopt.Heun(make_mlp().parameters(), lr=0.1).tableau.name == "heun"
    assert rkopt.Midpoint(make_mlp().parameters(), lr=0.1).tableau.name == "midpoint"
    assert rkopt.DormandPrince(make_mlp().parameters(), lr=0.1).tableau.name == "dormand_prince"
    with pytest.raises(TypeError, match="fixes tableau"):
        rkopt.RK4(make_mlp().parameters(), lr=0.1, tableau="euler")
    assert isinstance(rkopt.Euler(make_mlp().parameters(), lr=0.1), rkopt.RungeKutta)


def test_integer_parameters_are_refused():
    with pytest.raises(ValueError, match="floating-point or complex"):
        rkopt.RK4([torch.zeros(3, dtype=torch.int64)], lr=0.1)


def test_bad_group_added_later_leaves_the_optimizer_intact():
    optimizer = rkopt.RK4(make_mlp().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="lr must be"):
        optimizer.add_param_group({"params": [nn.Parameter(torch.ones(2))], "lr": -1.0})
    assert len(optimizer.param_groups) == 1


# -- memory ------------------------------------------------------------------------------------


def _buffer_roles(optimizer):
    return {role for buffers in optimizer._workspace.values() for role in buffers}


@pytest.mark.parametrize(
    ("preset", "roles", "state_keys"),
    [
        ("euler", {"theta0"}, set()),
        ("rk4", {"theta0", "accumulator"}, set()),
        ("rk4-momentum", {"theta0", "accumulator"}, {"momentum_buffer"}),
        (
            "rk4-precond",
            {"theta0", "accumulator", "scratch", "precond_scale", "precond_sum_sq"},
            {"sum_sq", "precond_steps"},
        ),
        ("rk4-dal", {"theta0", "accumulator", "slot0"}, set()),
        (
            "dopri5-adaptive",
            {"theta0", "error", "slot0", "slot1", "slot2", "slot3", "slot4"},
            set(),
        ),
    ],
)
def test_work_buffers_and_state_hold_only_what_the_method_needs(preset, roles, state_keys):
    model = make_mlp()
    optimizer = rkopt.preset(preset, model.parameters(), lr=0.1)
    train(model, optimizer, 2, *make_data())
    assert _buffer_roles(optimizer) == roles
    assert {key for state in optimizer.state.values() for key in state} == state_keys


def test_workspace_can_be_freed_or_not_kept():
    model = make_mlp()
    x, y = make_data()
    optimizer = rkopt.RK4(model.parameters(), lr=0.1)
    train(model, optimizer, 1, x, y)
    assert optimizer._workspace
    optimizer.free_workspace()
    assert not optimizer._workspace
    lean = rkopt.RK4(model.parameters(), lr=0.1, keep_workspace=False)
    train(model, lean, 1, x, y)
    assert not lean._workspace


def test_vanilla_rk4_state_dict_has_no_tensors():
    model = make_mlp()
    optimizer = rkopt.RK4(model.parameters(), lr=0.1)
    train(model, optimizer, 2, *make_data())
    state = optimizer.state_dict()
    assert all(not value for value in state["state"].values())


# -- BatchNorm statistics ----------------------------------------------------------------------


def test_frozen_buffers_update_batchnorm_statistics_once_per_step():
    x, y = make_data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    reference = copy.deepcopy(model)
    optimizer = rkopt.RK4(model.parameters(), lr=0.1)

    def closure():
        optimizer.zero_grad()
        with rkopt.frozen_buffers(model, enabled=not rkopt.is_first_evaluation(optimizer)):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    reference(x)  # one forward pass at θ_n
    assert torch.equal(model[1].running_mean, reference[1].running_mean)
    assert torch.equal(model[1].running_var, reference[1].running_var)
    assert int(model[1].num_batches_tracked) == 1


def test_evaluation_index_during_a_step():
    model = make_mlp()
    x, y = make_data()
    optimizer = rkopt.RK4(model.parameters(), lr=0.1)
    seen = []
    inner = make_closure(model, optimizer, x, y)

    def closure():
        seen.append(optimizer.evaluation_index)
        return inner()

    assert optimizer.evaluation_index is None
    optimizer.step(closure)
    assert seen == [0, 1, 2, 3]
    assert optimizer.evaluation_index is None
    assert rkopt.is_first_evaluation(torch.optim.SGD(model.parameters(), lr=0.1))


def test_loss_decreases_for_every_preset():
    x, y = make_data()
    for preset in PRESETS:
        model = make_mlp()
        optimizer = rkopt.preset(preset, model.parameters(), lr=0.3)
        losses = train(model, optimizer, 15, x, y)
        assert losses[-1] < losses[0] - 0.05, preset
        assert all(math.isfinite(v) for v in losses)


def test_readme_cost_and_memory_table_matches_the_optimizer():
    """The README documents evaluations and work buffers per tableau; keep it true."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `") and line.count("|") == 8]
    documented = {line.split("`")[1]: [c.strip() for c in line.split("|")[4:8]] for line in rows}
    assert set(documented) == set(rkopt.TABLEAUX)
    for name, (evals, buffers, ec_evals, ec_buffers) in documented.items():
        policies = [("fixed", evals, buffers)]
        if rkopt.TABLEAUX[name].is_embedded:
            policies.append(("error_control", ec_evals, ec_buffers))
        for policy, expected_evals, expected_buffers in policies:
            theta = nn.Parameter(torch.ones(4))
            optimizer = rkopt.RungeKutta([theta], lr=1e-3, tableau=name, lr_policy=policy)

            def closure(optimizer=optimizer, theta=theta):
                optimizer.zero_grad()
                loss = (theta**2).sum()
                loss.backward()
                return loss

            optimizer.step(closure)
            assert optimizer.counters.grad_evals == int(expected_evals), (name, policy)
            assert len(optimizer._workspace[theta]) == int(expected_buffers), (name, policy)


def test_huge_but_finite_parameters_are_not_mistaken_for_a_divergence():
    """The fast finite check sums each tensor; a sum that overflows must be confirmed elementwise."""
    theta = nn.Parameter(torch.full((8,), 1e38))
    optimizer = rkopt.RK4([theta], lr=1e-3)
    optimizer.step(quadratic_closure(theta, optimizer, torch.zeros(8, 8)))
    assert optimizer.counters.steps == 1
    assert torch.isfinite(theta).all()


# -- plans kept between steps, copies ------------------------------------------------------------


@pytest.mark.parametrize("copier", ["deepcopy", "pickle"])
@pytest.mark.parametrize("preset", ["rk4", "rk4-full", "dopri5-adaptive"])
def test_a_copied_optimizer_continues_exactly_like_the_original(preset, copier):
    """deepcopy / pickle keep the tableau, options and counters (torch.optim only keeps the groups)."""
    x, y = make_data()
    model = make_mlp()
    optimizer = rkopt.preset(preset, model.parameters(), lr=0.1, on_nonfinite="skip")
    train(model, optimizer, 2, x, y)
    if copier == "deepcopy":
        model_copy, optimizer_copy = copy.deepcopy((model, optimizer))
    else:
        import pickle

        model_copy, optimizer_copy = pickle.loads(pickle.dumps((model, optimizer)))
    assert optimizer_copy.tableau == optimizer.tableau
    assert optimizer_copy.on_nonfinite == "skip"
    assert optimizer_copy.counters == optimizer.counters
    assert not optimizer_copy._workspace  # rebuilt on demand, not copied
    train(model, optimizer, 2, x, y)
    train(model_copy, optimizer_copy, 2, x, y)
    assert torch.equal(flat(model_copy), flat(model))
    assert optimizer_copy.counters == optimizer.counters


def test_changing_a_group_between_steps_rebuilds_its_plan():
    """The per-group plan is reused across steps only while the group's shape-giving options and its
    parameters with gradients are unchanged; every change takes effect at the next step."""
    x, y = make_data()
    changes = [
        lambda opt, model: opt.param_groups[0].update(momentum=0.9),
        lambda opt, model: opt.param_groups[0].update(weight_decay=0.01),
        lambda opt, model: opt.param_groups[0].update(maximize=True),
        lambda opt, model: opt.param_groups[0].update(foreach=True),
        lambda opt, model: opt.param_groups[0].update(preconditioner="adagrad"),
        lambda opt, model: model[0].bias.requires_grad_(False),
        lambda opt, model: setattr(opt, "tableau", rkopt.get_tableau("rk38")),
    ]
    for change in changes:
        model, reference_model = make_mlp(), make_mlp()
        optimizer = rkopt.RK4(model.parameters(), lr=0.1)
        train(model, optimizer, 2, x, y)
        train(reference_model, rkopt.RK4(reference_model.parameters(), lr=0.1), 2, x, y)
        change(optimizer, model)
        reference = rkopt.RK4(reference_model.parameters(), lr=0.1)
        change(reference, reference_model)
        train(model, optimizer, 2, x, y)
        train(reference_model, reference, 2, x, y)
        assert torch.equal(flat(model), flat(reference_model))


def test_no_gradient_is_kept_alive_between_steps():
    """A kept plan must not pin the last step's gradients (they alias the stage directions)."""
    import weakref

    model = make_mlp()
    x, y = make_data()
    optimizer = rkopt.RK4(model.parameters(), lr=0.1)
    closure = make_closure(model, optimizer, x, y)
    gradients: list[weakref.ref] = []

    def recording_closure():
        loss = closure()
        gradients.extend(weakref.ref(p.grad) for p in model.parameters())
        return loss

    optimizer.step(recording_closure)
    optimizer.zero_grad(set_to_none=True)
    assert gradients and all(ref() is None for ref in gradients)


@pytest.mark.parametrize(("preset", "key"), [("rk4-momentum", "momentum_buffer"), ("rk4-precond", "sum_sq")])
def test_a_state_reset_by_the_user_is_honoured_by_the_kept_plan(preset, key):
    """Replacing ``optimizer.state`` (a common way to reset momentum) restarts from fresh state."""
    from collections import defaultdict

    x, y = make_data()
    model, reference_model = make_mlp(), make_mlp()
    optimizer = rkopt.preset(preset, model.parameters(), lr=0.1)
    train(model, optimizer, 2, x, y)
    train(reference_model, rkopt.preset(preset, reference_model.parameters(), lr=0.1), 2, x, y)
    optimizer.state = defaultdict(dict)
    train(model, optimizer, 2, x, y)
    train(reference_model, rkopt.preset(preset, reference_model.parameters(), lr=0.1), 2, x, y)
    assert torch.equal(flat(model), flat(reference_model))
    assert len(optimizer.state) == len(list(model.parameters()))
    assert all(key in state for state in optimizer.state.values())


@pytest.mark.parametrize(
    ("kind", "name"),
    [*(("preset", name) for name in PRESETS), *(("tableau", name) for name in rkopt.TABLEAUX)],
)
def test_a_step_holds_no_gradient_of_an_earlier_closure_call(kind, name):
    """With ``zero_grad(set_to_none=True)`` every backward allocates fresh gradients; the step must
    let the previous ones go (directions that outlive a call live in slots), so that at most the
    current gradients exist besides the workspace, as in SGD."""
    import weakref

    model = make_mlp()
    x, y = make_data()
    if kind == "preset":
        optimizer = rkopt.preset(name, model.parameters(), lr=0.1)
    else:
        optimizer = rkopt.RungeKutta(model.parameters(), lr=0.1, tableau=name)
    closure = make_closure(model, optimizer, x, y)
    calls: list[list[weakref.ref]] = []
    stale: list[int] = []

    def recording_closure():
        # on entry the last call's gradients are p.grad; any older one still alive is held by the step
        stale.append(sum(ref() is not None for refs in calls[:-1] for ref in refs))
        loss = closure()
        calls.append([weakref.ref(p.grad) for p in model.parameters()])
        return loss

    for _ in range(2):
        optimizer.step(recording_closure)
    assert len(calls) >= 2 and max(stale) == 0, stale


@pytest.mark.parametrize("preset", ["rk4", "rk4-full", "dopri5-adaptive"])
@pytest.mark.parametrize("stagewise", [False, True])
def test_complex_parameters_are_stepped_as_pairs_of_reals(preset, stagewise):
    """As in torch.optim: a complex parameter follows the same trajectory as its real view."""
    target = torch.tensor([1.0 + 2.0j, -0.5 + 0.25j, 3.0 - 1.0j], dtype=torch.complex128)
    z = nn.Parameter(torch.zeros(3, dtype=torch.complex128))
    pair = nn.Parameter(torch.zeros(3, 2, dtype=torch.float64))
    complex_opt = rkopt.preset(preset, [z], lr=0.1, stagewise=stagewise)
    real_opt = rkopt.preset(preset, [pair], lr=0.1, stagewise=stagewise)
    real_target = torch.view_as_real(target)
    for _ in range(3):
        for optimizer, loss_fn in (
            (complex_opt, lambda: (z - target).abs().pow(2).sum()),
            (real_opt, lambda: (pair - real_target).pow(2).sum()),
        ):

            def closure(optimizer=optimizer, loss_fn=loss_fn):
                optimizer.zero_grad()
                loss = loss_fn()
                loss.backward()
                return loss

            if stagewise:
                for _ in rkopt.repeat_batches([0], optimizer):
                    optimizer.step(closure)
            else:
                optimizer.step(closure)
    torch.testing.assert_close(torch.view_as_real(z.detach()), pair.detach(), rtol=1e-12, atol=1e-14)
    assert complex_opt.counters == real_opt.counters
