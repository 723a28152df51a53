"""Stage-wise mode: one evaluation per ``step()`` call, the same numbers as closure mode."""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
from torch import nn

import rkopt
from golden_scenarios import SCENARIOS, closure_driver, run, stagewise_driver
from support import flat, make_closure, make_data, make_mlp

# -- the same trajectories as closure mode -----------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_stagewise_training_reproduces_closure_training(name):
    """Every preset, tableau, ingredient and policy (error-control retries, DAL probes, IGR
    evaluations included): same parameters, observables, counters, losses and RNG state."""
    spec = SCENARIOS[name]
    assert run(spec, driver=stagewise_driver, stagewise=True) == run(spec, driver=closure_driver)


@pytest.mark.parametrize("name", ["preset/rk4-full", "preset/dopri5-adaptive", "rk4/igr-precond-dal"])
def test_stagewise_with_losses_reproduces_closure_training(name):
    driver = functools.partial(stagewise_driver, pass_loss=True)
    spec = SCENARIOS[name]
    assert run(spec, driver=driver, stagewise=True, foreach=True) == run(spec, foreach=True)


# -- the protocol --------------------------------------------------------------------------------


def backward(model, optimizer, x, y) -> torch.Tensor:
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return loss


def test_step_complete_and_evaluation_index_follow_the_stages():
    model, (x, y) = make_mlp(), make_data()
    optimizer = rkopt.RK4(model.parameters(), lr=0.1, stagewise=True)
    theta0 = flat(model).clone()
    seen = []
    for call in range(4):
        assert rkopt.is_first_evaluation(optimizer) == (call == 0)
        backward(model, optimizer, x, y)
        optimizer.step()
        seen.append((optimizer.step_complete, optimizer.evaluation_index, optimizer.counters.grad_evals))
        if call < 3:
            assert not torch.equal(flat(model), theta0) or call == 0  # at a stage point
    assert seen == [(False, 1, 0), (False, 2, 0), (False, 3, 0), (True, None, 4)]
    assert optimizer.counters.steps == 1


def test_repeat_batches_hands_out_each_batch_until_its_step_completes():
    model, (x, y) = make_mlp(), make_data()
    optimizer = rkopt.preset("dopri5-adaptive", model.parameters(), lr=5.0, rtol=1e-6, stagewise=True)
    batches = [(x[:16], y[:16]), (x[16:32], y[16:32])]
    handed, evaluations = [], []
    for xb, yb in rkopt.repeat_batches(batches, optimizer):
        handed.append(next(i for i, batch in enumerate(batches) if batch[0] is xb))
        backward(model, optimizer, xb, yb)
        optimizer.step()
        if optimizer.step_complete:
            evaluations.append(optimizer.counters.grad_evals - sum(evaluations))
    counters = optimizer.counters
    assert counters.steps == 2 and counters.rejected_steps > 0  # retries got the same batch
    assert handed == [0] * evaluations[0] + [1] * evaluations[1]


def test_h_is_fixed_at_the_first_stage_when_a_scheduler_steps_every_call():
    x, y = make_data()
    model, reference = make_mlp(), make_mlp()
    optimizer = rkopt.RK4(model.parameters(), lr=0.2, stagewise=True)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    for _ in range(4):  # one Runge–Kutta step; the scheduler halves lr after every call
        backward(model, optimizer, x, y)
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["h"] == 0.2
    closure_optimizer = rkopt.RK4(reference.parameters(), lr=0.2)
    closure_optimizer.step(make_closure(reference, closure_optimizer, x, y))
    assert torch.equal(flat(model), flat(reference))
    assert optimizer.param_groups[0]["lr"] == 0.2 / 16


def test_dropout_draws_the_same_masks_in_every_stage():
    x, y = make_data()
    model = make_mlp(dropout=0.5)
    optimizer = rkopt.RK4(model.parameters(), lr=0.1, stagewise=True)
    masks = []
    model[2].register_forward_hook(lambda module, inputs, output: masks.append(output != 0))
    for xb, yb in rkopt.repeat_batches([(x, y)], optimizer):
        torch.rand(3)  # random draws between stages (e.g. by the loop) are undone
        backward(model, optimizer, xb, yb)
        optimizer.step()
    assert len(masks) == 4 and all(torch.equal(mask, masks[0]) for mask in masks)


def test_random_draws_between_stages_without_a_captured_state_warn():
    x, y = make_data()
    model = make_mlp(dropout=0.5)
    optimizer = rkopt.RK4(model.parameters(), lr=0.1, stagewise=True)
    with pytest.warns(RuntimeWarning, match="repeat_batches"):
        for _ in range(4):
            backward(model, optimizer, x, y)
            optimizer.step()
    assert optimizer.step_complete


def test_a_checkpoint_mid_step_is_refused_and_one_between_steps_resumes_exactly():
    x, y = make_data()
    model = make_mlp()
    optimizer = rkopt.preset("rk4-full", model.parameters(), lr=0.1, stagewise=True)
    for _ in range(6):  # a step of 5 evaluations (DAL probes first), and the next one begun
        backward(model, optimizer, x, y)
        optimizer.step()
    assert not optimizer.step_complete
    for what in (optimizer.state_dict, lambda: copy.deepcopy(optimizer), optimizer.free_workspace):
        with pytest.raises(rkopt.StepInProgressError, match="step_complete"):
            what()
    with pytest.raises(rkopt.StepInProgressError):
        optimizer.load_state_dict({})
    for _ in range(3):
        backward(model, optimizer, x, y)
        optimizer.step()
    assert optimizer.step_complete
    saved_model, saved = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    resumed_model = make_mlp()
    resumed_model.load_state_dict(saved_model)
    resumed = rkopt.preset("rk4-full", resumed_model.parameters(), lr=0.1, stagewise=True)
    resumed.load_state_dict(saved)
    for m, opt in ((model, optimizer), (resumed_model, resumed)):
        for _ in range(8):
            backward(m, opt, x, y)
            opt.step()
    assert torch.equal(flat(model), flat(resumed_model))
    assert optimizer.counters == resumed.counters


def test_abort_step_restores_theta_n_and_keeps_the_work_counted():
    x, y = make_data()
    model = make_mlp()
    optimizer = rkopt.preset("rk4-momentum", model.parameters(), lr=0.1, stagewise=True)
    theta0 = flat(model).clone()
    for _ in range(2):
        backward(model, optimizer, x, y)
        optimizer.step()
    optimizer.abort_step()
    assert optimizer.step_complete and torch.equal(flat(model), theta0)
    assert optimizer.counters == rkopt.Counters(grad_evals=2)
    assert all(not state["momentum_buffer"].any() for state in optimizer.state.values())  # none committed
    optimizer.state_dict()  # between steps again


@pytest.mark.parametrize("on_nonfinite", ["raise", "skip"])
def test_a_non_finite_stage_gradient_restores_theta_n(on_nonfinite):
    x, y = make_data()
    model = make_mlp()
    optimizer = rkopt.RK4(model.parameters(), lr=0.1, stagewise=True, on_nonfinite=on_nonfinite)
    theta0 = flat(model).clone()
    for call in range(4):  # the step is judged after its last evaluation, as in closure mode
        backward(model, optimizer, x, y)
        if call == 2:
            next(model.parameters()).grad[0, 0] = math.nan
        if call == 3 and on_nonfinite == "raise":
            with pytest.raises(rkopt.NonFiniteStepError):
                optimizer.step()
        else:
            optimizer.step()
    assert optimizer.step_complete and torch.equal(flat(model), theta0)
    assert optimizer.counters == rkopt.Counters(grad_evals=4, skipped_steps=int(on_nonfinite == "skip"))


def test_a_closure_is_evaluated_once_per_call_in_stagewise_mode():
    x, y = make_data()
    model = make_mlp()
    optimizer = rkopt.RK4(model.parameters(), lr=0.1, stagewise=True)
    closure = make_closure(model, optimizer, x, y)
    losses = [optimizer.step(closure) for _ in range(4)]
    assert all(isinstance(loss, torch.Tensor) for loss in losses)
    assert optimizer.counters == rkopt.Counters(steps=1, grad_evals=4)


def test_repeat_batches_unwraps_a_wrapper_and_refuses_other_optimizers():
    model = make_mlp()
    optimizer = rkopt.RK4(model.parameters(), lr=0.1, stagewise=True)

    class Wrapper:
        def __init__(self, optimizer):
            self.optimizer = optimizer

    assert list(rkopt.repeat_batches([1, 2], Wrapper(optimizer))) == [1, 2]
    with pytest.raises(TypeError, match="rkopt optimizer"):
        list(rkopt.repeat_batches([1], torch.optim.SGD(model.parameters(), lr=0.1)))


def test_stagewise_must_be_a_bool():
    with pytest.raises(TypeError, match="stagewise must be True or False"):
        rkopt.RK4(make_mlp().parameters(), lr=0.1, stagewise=1)


def test_leaving_repeat_batches_mid_step_abandons_the_step_and_restores_theta_n():
    x, y = make_data()
    model = make_mlp()
    optimizer = rkopt.RK4(model.parameters(), lr=0.1, stagewise=True)
    theta0 = flat(model).clone()
    batches = rkopt.repeat_batches([(x, y)], optimizer)
    for calls, (xb, yb) in enumerate(batches, start=1):
        backward(model, optimizer, xb, yb)
        optimizer.step()
        if calls == 2:
            break
    assert not optimizer.step_complete
    with pytest.warns(RuntimeWarning, match="abandoned and θ_n restored"):
        batches.close()
    assert optimizer.step_complete and torch.equal(flat(model), theta0)


def test_an_error_in_a_stagewise_closure_restores_theta_n():
    x, y = make_data()
    model = make_mlp()
    optimizer = rkopt.RK4(model.parameters(), lr=0.1, stagewise=True)
    theta0 = flat(model).clone()
    optimizer.step(make_closure(model, optimizer, x, y))

    def failing():
        raise KeyError("data")

    with pytest.raises(KeyError):
        optimizer.step(failing)
    assert optimizer.step_complete and torch.equal(flat(model), theta0)
    assert optimizer.counters == rkopt.Counters(grad_evals=1)
