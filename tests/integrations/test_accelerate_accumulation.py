"""accelerate's gradient accumulation and rkopt: ``accumulator.accumulate(model)`` makes
``AcceleratedOptimizer.step()`` run only on every k-th micro-batch, so a Runge–Kutta step would never
evaluate the others (closure mode) or mix micro-batches and points across its stages (stage-wise);
rkopt refuses it with what to do instead, and the recommended loop (accumulation inside the
closure) trains as on the full batch."""

from __future__ import annotations

import pytest
import torch

import rkopt
from rkopt.integrations import unwrap_optimizer

accelerate = pytest.importorskip("accelerate")


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate's state is a process-wide singleton: start and leave it clean."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def setup(stagewise: bool, accumulation: int, batch_size: int = 8):
    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=accumulation)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    data = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size)
    optimizer = rkopt.RK4(model.parameters(), lr=0.1, stagewise=stagewise)
    return accelerator, *accelerator.prepare(model, optimizer, loader)


def parameters(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_closure_mode_under_accumulate_is_refused_before_anything_changes():
    accelerator, model, optimizer, loader = setup(stagewise=False, accumulation=2)
    before, evaluated = parameters(model), []
    batches = iter(loader)
    for index in range(2):
        x, y = next(batches)
        with accelerator.accumulate(model):

            def closure(x=x, y=y, index=index):
                evaluated.append(index)
                optimizer.zero_grad()
                loss = torch.nn.functional.mse_loss(model(x), y)
                accelerator.backward(loss)
                return loss

            if index == 0:
                optimizer.step(closure)  # not a sync micro-batch: accelerate skips the step
                assert evaluated == [] and accelerator.sync_gradients is False
            else:
                with pytest.raises(RuntimeError, match="gradient_accumulation_steps=2.*accumulate inside"):
                    optimizer.step(closure)
    assert evaluated == []  # micro-batch 0 was never evaluated; micro-batch 1 is refused
    assert torch.equal(parameters(model), before) and unwrap_optimizer(optimizer).counters.grad_evals == 0


def test_stagewise_mode_under_accumulate_is_refused():
    accelerator, model, optimizer, loader = setup(stagewise=True, accumulation=2)
    before = parameters(model)
    with pytest.raises(RuntimeError, match="stages would mix different micro-batches"):
        for x, y in rkopt.repeat_batches(loader, optimizer):
            with accelerator.accumulate(model):
                optimizer.zero_grad()
                accelerator.backward(torch.nn.functional.mse_loss(model(x), y))
                optimizer.step()
    assert torch.equal(parameters(model), before)
    assert unwrap_optimizer(optimizer).step_complete


def test_accumulating_inside_the_closure_trains_as_the_full_batch():
    """The advice of the error: gradient_accumulation_steps=1 and the micro-batches in the closure."""
    accelerator, model, optimizer, loader = setup(stagewise=False, accumulation=1, batch_size=16)
    _, full_model, full_optimizer, full_loader = setup(stagewise=False, accumulation=1, batch_size=16)
    for (x, y), (full_x, full_y) in zip(loader, full_loader):

        def closure(x=x, y=y):
            optimizer.zero_grad()
            total = 0.0
            for half in (slice(0, 8), slice(8, 16)):
                loss = torch.nn.functional.mse_loss(model(x[half]), y[half]) / 2
                accelerator.backward(loss)
                total += loss.detach()
            return total

        def full_closure(x=full_x, y=full_y):
            full_optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(full_model(x), y)
            accelerator.backward(loss)
            return loss

        optimizer.step(closure)
        full_optimizer.step(full_closure)
    torch.testing.assert_close(parameters(model), parameters(full_model), rtol=1e-6, atol=1e-7)
    assert unwrap_optimizer(optimizer).counters.steps == 2
