"""Gradients the step did not ask for are detected, not integrated; closure misuse is a clear error."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import rkopt
from support import flat, make_closure, make_data, make_mlp


def loss_of(model, x, y):
    return nn.functional.cross_entropy(model(x), y)


def closure_without_zeroing(model, x, y):
    """A closure that backpropagates onto whatever gradients are present."""

    def closure():
        loss = loss_of(model, x, y)
        loss.backward()
        return loss

    return closure


@pytest.mark.parametrize("preset", ["rk4", "rk4-full", "dopri5-adaptive"])
def test_a_closure_that_never_calls_backward_again_is_refused(preset):
    x, y = make_data()
    model = make_mlp()
    optimizer = rkopt.preset(preset, model.parameters(), lr=0.1)
    before = flat(model).clone()
    calls = 0

    def closure():
        nonlocal calls
        calls += 1
        loss = loss_of(model, x, y)
        if calls == 1:
            optimizer.zero_grad()
            loss.backward()
        return loss

    with pytest.raises(rkopt.StaleGradientError, match="did not recompute the gradients"):
        optimizer.step(closure)
    assert torch.equal(flat(model), before)
    assert optimizer.counters == rkopt.Counters(grad_evals=2)


@pytest.mark.parametrize("set_to_none", [True, False])
def test_a_closure_that_accumulates_across_stages_is_refused(set_to_none):
    """Zeroing only once per step (as gradient accumulation does) sums the stages' gradients."""
    x, y = make_data()
    model = make_mlp()
    optimizer = rkopt.RK4(model.parameters(), lr=0.1)
    optimizer.zero_grad(set_to_none=set_to_none)
    before = flat(model).clone()
    with pytest.raises(rkopt.StaleGradientError, match="accumulated its backward"):
        optimizer.step(closure_without_zeroing(model, x, y))
    assert torch.equal(flat(model), before)


@pytest.mark.parametrize("preset", ["euler", "rk4", "rk4-full"])
def test_gradients_a_backward_outside_the_closure_left_are_not_integrated(preset):
    """Accumulation outside the closure (a backward per micro-batch, then step(closure) with a closure
    that does not zero): the first evaluation would add micro-batch 2 to micro-batch 1's gradient,
    which no stage asked for. Euler (one evaluation) used to take that step silently."""
    x, y = make_data()
    model = make_mlp()
    optimizer = rkopt.preset(preset, model.parameters(), lr=0.1)
    loss_of(model, x[:24], y[:24]).backward()  # micro-batch 1, outside the step
    before = flat(model).clone()
    with pytest.raises(rkopt.StaleGradientError, match="present before optimizer.step"):
        optimizer.step(closure_without_zeroing(model, x[24:], y[24:]))
    assert torch.equal(flat(model), before)
    assert optimizer.counters == rkopt.Counters(grad_evals=1)


def test_gradients_present_before_the_step_are_fine_when_zero_or_replaced():
    x, y = make_data()
    model, reference = make_mlp(), make_mlp()
    euler = rkopt.Euler(model.parameters(), lr=0.1)
    sgd = torch.optim.SGD(reference.parameters(), lr=0.1)
    for net, optimizer in ((model, euler), (reference, sgd)):
        loss_of(net, x, y).backward()
        optimizer.zero_grad(set_to_none=False)  # zeros present: a backward onto them is a fresh one
        optimizer.step(closure_without_zeroing(net, x, y))
        optimizer.step(make_closure(net, optimizer, x, y))  # the previous step's gradients, replaced
    assert torch.equal(flat(model), flat(reference))


def test_zeroing_in_place_and_accumulating_micro_batches_within_one_evaluation_is_fine():
    x, y = make_data()
    model, reference = make_mlp(), make_mlp()
    optimizer = rkopt.RK4(model.parameters(), lr=0.1)

    def closure():
        optimizer.zero_grad(set_to_none=False)
        total = 0.0
        for part in (slice(0, 24), slice(24, 48)):  # two micro-batches, one evaluation
            loss = loss_of(model, x[part], y[part]) / 2
            loss.backward()
            total += loss.detach()
        return total

    optimizer.step(closure)
    reference_optimizer = rkopt.RK4(reference.parameters(), lr=0.1)
    reference_optimizer.step(make_closure(reference, reference_optimizer, x, y))
    torch.testing.assert_close(flat(model), flat(reference), rtol=1e-6, atol=1e-7)


def test_stagewise_steps_without_a_fresh_backward_are_refused():
    x, y = make_data()
    model = make_mlp()
    optimizer = rkopt.RK4(model.parameters(), lr=0.1, stagewise=True)
    before = flat(model).clone()
    optimizer.zero_grad()
    loss_of(model, x, y).backward()
    optimizer.step()
    with pytest.raises(rkopt.StaleGradientError, match="did not recompute"):
        optimizer.step()  # no backward since the last call
    assert optimizer.step_complete and torch.equal(flat(model), before)
    optimizer.zero_grad()
    loss_of(model, x, y).backward()
    optimizer.step()
    loss_of(model, x, y).backward()  # forgot zero_grad
    with pytest.raises(rkopt.StaleGradientError, match="accumulated"):
        optimizer.step()
    assert optimizer.step_complete and torch.equal(flat(model), before)


@pytest.mark.parametrize("preset", ["euler", "rk4", "dopri5-adaptive"])
def test_a_stagewise_step_whose_first_backward_accumulates_onto_the_previous_step_is_refused(preset):
    """A loop that forgets zero_grad() between steps adds the previous step's last-stage gradient to
    the new step's first one; that used to go unnoticed (only later evaluations were checked)."""
    x, y = make_data()
    model = make_mlp()
    optimizer = rkopt.preset(preset, model.parameters(), lr=0.1, stagewise=True)
    while True:  # one whole step, done right
        optimizer.zero_grad()
        loss_of(model, x, y).backward()
        optimizer.step()
        if optimizer.step_complete:
            break
    after_one, counters = flat(model).clone(), copy.copy(optimizer.counters)
    loss_of(model, x, y).backward()  # the next step's first backward, without zero_grad()
    with pytest.raises(rkopt.StaleGradientError, match="present before optimizer.step.*stage-wise"):
        optimizer.step()
    assert optimizer.step_complete and torch.equal(flat(model), after_one)
    assert optimizer.counters == counters
    evaluations = 0
    while evaluations < 2 or not optimizer.step_complete:
        # zeroing, in place or not, then a backward is a fresh gradient
        optimizer.zero_grad(set_to_none=evaluations % 2 == 1)
        loss_of(model, x, y).backward()
        optimizer.step()
        evaluations += 1
    assert optimizer.counters.steps > counters.steps
    assert optimizer.counters.grad_evals == counters.grad_evals + evaluations


def test_lightning_gradient_accumulation_is_refused_with_advice():
    lightning = pytest.importorskip("lightning.pytorch")

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))

        def training_step(self, batch, _):
            x, y = batch
            return nn.functional.mse_loss(self.model(x), y)

        def configure_optimizers(self):
            return rkopt.RK4(self.parameters(), lr=0.05)

    generator = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(
        torch.randn(32, 5, generator=generator), torch.randn(32, 1, generator=generator)
    )
    module = Module()
    before = [p.detach().clone() for p in module.parameters()]
    trainer = lightning.Trainer(
        max_epochs=1,
        accelerator="cpu",
        accumulate_grad_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.raises(rkopt.StaleGradientError, match="Gradient accumulation across micro-batches"):
        trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


@pytest.mark.parametrize("returned", [("loss", "logits"), {"loss": 1}, "0.3"])
def test_a_closure_must_return_the_loss_itself(returned):
    x, y = make_data()
    model = make_mlp()
    optimizer = rkopt.RK4(model.parameters(), lr=0.1)

    def closure():
        optimizer.zero_grad()
        loss = loss_of(model, x, y)
        loss.backward()
        return (loss, None) if returned == ("loss", "logits") else returned

    with pytest.raises(TypeError, match="must return the loss"):
        optimizer.step(closure)


def test_step_called_from_inside_its_closure_is_refused():
    x, y = make_data()
    model = make_mlp()
    optimizer = rkopt.RK4(model.parameters(), lr=0.1)
    closure = make_closure(model, optimizer, x, y)

    def reentrant():
        optimizer.step(closure)
        return closure()

    before = flat(model).clone()
    with pytest.raises(RuntimeError, match="while a step of the same optimizer is running"):
        optimizer.step(reentrant)
    assert torch.equal(flat(model), before)
    optimizer.step(closure)  # usable afterwards
    assert optimizer.counters.steps == 1
