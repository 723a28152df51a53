"""Loss scaling (torch.amp.GradScaler): with stage-wise steps an overflowing stage is skipped by the
scaler and evaluated again at the lower scale, on the same batch and point; in closure mode
rkopt.ScaledStep unscales every evaluation and skips a step with an overflowing one; bfloat16
autocast."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import rkopt
from support import flat, make_closure, make_data, make_mlp


def test_grad_scaler_with_stagewise_steps_matches_unscaled_training_and_skips_overflows():
    x, y = make_data()
    model, reference = make_mlp(dropout=0.3), make_mlp(dropout=0.3)
    optimizer = rkopt.RK4(model.parameters(), lr=0.2, stagewise=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    calls = 0
    torch.manual_seed(5)
    for _ in range(3):
        for xb, yb in rkopt.repeat_batches([(x, y)], optimizer):
            calls += 1
            optimizer.zero_grad()
            scaler.scale(nn.functional.cross_entropy(model(xb), yb)).backward()
            if calls == 2:  # an overflow in stage 2 of the first step
                next(model.parameters()).grad[0, 0] = math.inf
            scaler.step(optimizer)
            scaler.update()
    assert scaler.get_scale() == 2.0**9  # halved once, by the overflow
    assert optimizer.counters.steps == 3 and optimizer.counters.grad_evals == 12 and calls == 13
    closure_optimizer = rkopt.RK4(reference.parameters(), lr=0.2)
    torch.manual_seed(5)
    for _ in range(3):
        closure_optimizer.step(make_closure(reference, closure_optimizer, x, y))
    assert torch.equal(flat(model), flat(reference))  # power-of-two scaling is exact


def test_bfloat16_autocast_trains_float32_parameters():
    x, y = make_data()
    model = make_mlp()
    optimizer = rkopt.preset("rk4-full", model.parameters(), lr=0.2)

    def closure():
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    losses = [float(optimizer.step(closure).detach()) for _ in range(10)]
    assert losses[-1] < losses[0] and all(p.dtype == torch.float32 for p in model.parameters())


# -- closure mode: rkopt.ScaledStep ---------------------------------------------------------------


def scaled_closure(model, optimizer, scaled, x, y, dtype=torch.bfloat16, clip=None):
    def closure():
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=dtype):
            loss = nn.functional.cross_entropy(model(x), y)
        scaled.backward(loss)
        if clip is not None:
            scaled.unscale_()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        return loss

    return closure


def autocast_closure(model, optimizer, x, y, dtype=torch.bfloat16, clip=None):
    def closure():
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=dtype):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        return loss

    return closure


@pytest.mark.parametrize("preset", ["rk4", "rk4-full", "dopri5-adaptive"])
@pytest.mark.parametrize("clip", [None, 0.5])
def test_scaled_closure_steps_match_unscaled_training(preset, clip):
    x, y = make_data()
    model, reference = make_mlp(dropout=0.3), make_mlp(dropout=0.3)
    optimizer = rkopt.preset(preset, model.parameters(), lr=0.2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**14)
    scaled = rkopt.ScaledStep(optimizer, scaler)
    plain = rkopt.preset(preset, reference.parameters(), lr=0.2)
    for step in range(3):
        torch.manual_seed(step)
        loss = scaled.step(scaled_closure(model, optimizer, scaled, x, y, clip=clip))
        scaler.update()
        torch.manual_seed(step)
        assert torch.equal(loss, plain.step(autocast_closure(reference, plain, x, y, clip=clip)))
    assert torch.equal(flat(model), flat(reference))  # power-of-two scaling is exact
    assert optimizer.counters == plain.counters and scaler.get_scale() == 2.0**14


def test_an_overflow_in_any_stage_skips_the_step_and_halves_the_scale_once():
    x, y = make_data()
    model = make_mlp()
    optimizer = rkopt.preset("rk4-full", model.parameters(), lr=0.2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scaled = rkopt.ScaledStep(optimizer, scaler)
    closure = scaled_closure(model, optimizer, scaled, x, y)
    scaled.step(closure)  # a good step first: state to keep
    scaler.update()
    overflow_at = {"evaluation": 2}
    first = next(model.parameters())
    first.register_hook(
        lambda g: g * math.inf if optimizer.evaluation_index == overflow_at["evaluation"] else g
    )
    before = (flat(model).clone(), copy.deepcopy(optimizer.state_dict()), copy.copy(optimizer.counters))
    assert scaled.step(closure) is None  # skipped, as GradScaler.step skips optimizer.step
    scaler.update()
    assert torch.equal(flat(model), before[0])
    after = optimizer.state_dict()
    for key, entry in before[1]["state"].items():
        for name, value in entry.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(after["state"][key][name]))
    assert after["param_groups"] == before[1]["param_groups"]  # h, dal_rho, ... untouched
    counters = optimizer.counters
    assert counters.steps == before[2].steps and counters.skipped_steps == before[2].skipped_steps + 1
    assert counters.grad_evals == before[2].grad_evals + 3  # evaluations 1..3; 3 overflowed
    assert scaler.get_scale() == 2.0**9  # halved once, not once per evaluation
    overflow_at["evaluation"] = None
    scaled.step(closure)
    scaler.update()
    assert optimizer.counters.steps == before[2].steps + 1 and not torch.equal(flat(model), before[0])


def test_the_scale_grows_after_growth_interval_steps_without_overflow():
    x, y = make_data()
    model = make_mlp()
    optimizer = rkopt.RK4(model.parameters(), lr=0.2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=3)
    scaled = rkopt.ScaledStep(optimizer, scaler)
    scales = []
    for _ in range(6):
        scaled.step(scaled_closure(model, optimizer, scaled, x, y))
        scaler.update()
        scales.append(scaler.get_scale())
    assert scales == [2.0**8, 2.0**8, 2.0**9, 2.0**9, 2.0**9, 2.0**10]
    assert optimizer.counters.steps == 6 and optimizer.counters.grad_evals == 24


def test_a_huge_initial_scale_overflows_float32_and_backs_off_until_steps_succeed():
    x, y = make_data()
    model = make_mlp()
    before = flat(model).clone()
    optimizer = rkopt.RK4(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)  # S·L overflows float32
    scaled = rkopt.ScaledStep(optimizer, scaler)

    def closure():
        optimizer.zero_grad()
        loss = 8.0 * nn.functional.cross_entropy(model(x), y)  # about 9: S·L = inf until S <= 2^124
        scaled.backward(loss)
        return loss

    losses = []
    while optimizer.counters.steps == 0:
        losses.append(scaled.step(closure))
        scaler.update()
        if optimizer.counters.steps == 0:
            assert torch.equal(flat(model), before)
    skipped = optimizer.counters.skipped_steps
    assert skipped >= 3 and losses[:skipped] == [None] * skipped and losses[-1] is not None
    assert scaler.get_scale() == 2.0 ** (127 - skipped)
    assert optimizer.counters.grad_evals == skipped + 4  # an overflow at θ_n costs one evaluation


def test_several_backward_calls_per_evaluation_accumulate_before_the_unscaling():
    x, y = make_data()
    model, reference = make_mlp(), make_mlp()
    optimizer, plain = rkopt.RK4(model.parameters(), lr=0.2), rkopt.RK4(reference.parameters(), lr=0.2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**6)
    scaled = rkopt.ScaledStep(optimizer, scaler)

    def micro_batches(net, backward):
        total = 0.0
        for half in (slice(0, 24), slice(24, 48)):
            loss = nn.functional.cross_entropy(net(x[half]), y[half]) / 2
            backward(loss)
            total = total + loss.detach()
        return total

    def closure():
        optimizer.zero_grad()
        return micro_batches(model, scaled.backward)

    def plain_closure():
        plain.zero_grad()
        return micro_batches(reference, torch.Tensor.backward)

    scaled.step(closure)
    scaler.update()
    plain.step(plain_closure)
    assert torch.equal(flat(model), flat(reference))


def test_scaled_step_refuses_what_would_unscale_wrongly():
    x, y = make_data()
    model = make_mlp()
    scaler = torch.amp.GradScaler("cpu")
    with pytest.raises(TypeError, match="in stage-wise mode call scaler.scale"):
        rkopt.ScaledStep(rkopt.RK4(model.parameters(), lr=0.1, stagewise=True), scaler)
    optimizer = rkopt.RK4(model.parameters(), lr=0.1)
    scaled = rkopt.ScaledStep(optimizer, scaler)
    before = flat(model).clone()

    def unscaled_backward():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        return loss

    def torch_unscale():
        loss = unscaled_backward()
        scaler.unscale_(optimizer)
        return loss

    with pytest.raises(RuntimeError, match=r"must backpropagate with scaled.backward\(loss\)"):
        scaled.step(unscaled_backward)
    scaler.update()
    with pytest.raises(RuntimeError, match=r"call scaled.unscale_\(\) instead"):
        scaled.step(torch_unscale)
    scaler.update()
    with pytest.raises(RuntimeError, match="belongs in the closure"):
        scaled.backward(nn.functional.cross_entropy(model(x), y))
    assert torch.equal(flat(model), before) and optimizer.counters.steps == 0
    scaled.step(scaled_closure(model, optimizer, scaled, x, y))
    with pytest.raises(RuntimeError, match=r"twice without scaler.update\(\)"):
        scaled.step(scaled_closure(model, optimizer, scaled, x, y))


def test_a_scaled_closure_that_accumulates_across_stages_is_still_refused():
    """The unscaling writes the gradients in place, yet the gradient witness still sees a closure
    that never zeroes them."""
    x, y = make_data()
    model = make_mlp()
    optimizer = rkopt.RK4(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    scaled = rkopt.ScaledStep(optimizer, scaler)
    before = flat(model).clone()

    def closure():
        loss = nn.functional.cross_entropy(model(x), y)
        scaled.backward(loss)
        return loss

    with pytest.raises(rkopt.StaleGradientError, match="accumulated its backward"):
        scaled.step(closure)
    assert torch.equal(flat(model), before)


@pytest.mark.parametrize("on_nonfinite", ["raise", "skip"])
def test_a_non_finite_loss_is_no_overflow_and_follows_on_nonfinite(on_nonfinite):
    x, y = make_data()
    model = make_mlp()
    optimizer = rkopt.RK4(model.parameters(), lr=0.1, on_nonfinite=on_nonfinite)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    scaled = rkopt.ScaledStep(optimizer, scaler)
    before = flat(model).clone()

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        if optimizer.evaluation_index == 1:
            loss = loss * math.nan  # the model diverged at stage 2: not the scaler's doing
        scaled.backward(loss)
        return loss

    if on_nonfinite == "raise":
        with pytest.raises(rkopt.NonFiniteStepError):
            scaled.step(closure)
    else:
        assert torch.isfinite(scaled.step(closure))  # the loss at θ_n: the step was evaluated
        assert optimizer.counters.skipped_steps == 1
    assert torch.equal(flat(model), before) and optimizer.counters.grad_evals == 4
    scaler.update()
    assert scaler.get_scale() == 2.0**3  # its gradients were not finite: GradScaler backs off too


def test_scaled_step_takes_the_steps_of_the_rkopt_optimizer_a_wrapper_holds():
    """accelerate's AcceleratedOptimizer (any ``.optimizer`` chain) is unwrapped: ScaledStep scales,
    unscales and counts on the rkopt optimizer inside, exactly as when given that optimizer."""
    accelerate = pytest.importorskip("accelerate")
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    try:
        x, y = make_data()
        model, reference = make_mlp(), make_mlp()
        accelerator = accelerate.Accelerator(cpu=True)
        inner = rkopt.RK4(model.parameters(), lr=0.2)
        model, wrapped = accelerator.prepare(model, inner)
        assert wrapped is not inner and wrapped.optimizer is inner
        scaler, reference_scaler = (torch.amp.GradScaler("cpu", init_scale=2.0**12) for _ in range(2))
        scaled = rkopt.ScaledStep(wrapped, scaler)
        plain = rkopt.RK4(reference.parameters(), lr=0.2)
        reference_scaled = rkopt.ScaledStep(plain, reference_scaler)
        for _ in range(2):
            scaled.step(scaled_closure(model, wrapped, scaled, x, y))
            scaler.update()
            reference_scaled.step(scaled_closure(reference, plain, reference_scaled, x, y))
            reference_scaler.update()
        assert torch.equal(flat(model), flat(reference))
        assert inner.counters == plain.counters == rkopt.Counters(steps=2, grad_evals=8)
        with pytest.raises(TypeError, match="ScaledStep needs a torch.amp.GradScaler"):
            rkopt.ScaledStep(wrapped, accelerator.scaler)  # None without mixed_precision="fp16"
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


def test_scaled_step_refuses_an_optimizer_that_is_not_rkopt():
    model = make_mlp()
    with pytest.raises(
        TypeError, match="ScaledStep needs an rkopt optimizer .* got <class 'torch.optim.sgd.SGD'>"
    ):
        rkopt.ScaledStep(torch.optim.SGD(model.parameters(), lr=0.1), torch.amp.GradScaler("cpu"))
