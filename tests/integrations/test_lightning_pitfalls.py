"""Two ways PyTorch Lightning (and torch's schedulers) go silently wrong with a Runge–Kutta optimizer,
and the fixes docs/integrations.md recommends.

1. In automatic optimization ``training_step`` is the closure, called once per stage: a
   ``self.log("train_loss", loss)`` there logs the LAST stage's loss (at a stage point, not θ_n).
2. ``OneCycleLR(cycle_momentum=True)`` (its default) writes ``group["momentum"]``, which is
   rkopt's heavy-ball β: plain RK4 silently becomes RK4 with momentum 0.85–0.95.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rkopt


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _data():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(16, 5, generator=generator), torch.randn(16, 1, generator=generator)


def _fit(module, steps=1):
    lightning = pytest.importorskip("lightning.pytorch")
    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    trainer = lightning.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader)
    return trainer


def _module(log: str):
    lightning = pytest.importorskip("lightning.pytorch")

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))
            self.losses: list[float] = []

        def training_step(self, batch, _):
            x, y = batch
            loss = nn.functional.mse_loss(self.model(x), y)
            self.losses.append(loss.item())
            if log == "naive" or (log == "first_evaluation" and rkopt.is_first_evaluation(self.optimizers())):
                self.log("train_loss", loss)
            return loss

        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
            loss = optimizer.step(closure=optimizer_closure)  # the loss at θ_n
            if log == "optimizer_step":
                self.log("train_loss", loss)

        def configure_optimizers(self):
            return rkopt.RK4(self.parameters(), lr=0.5)

    return Module()


def test_logging_in_training_step_records_the_last_stage_loss():
    module = _module("naive")
    trainer = _fit(module)
    assert len(module.losses) == 4  # one call per RK4 stage
    logged = float(trainer.callback_metrics["train_loss"])
    assert logged == pytest.approx(module.losses[-1])
    assert logged != pytest.approx(module.losses[0])  # not the loss at θ_n


@pytest.mark.parametrize("where", ["optimizer_step", "first_evaluation"])
def test_recommended_logging_records_the_loss_at_theta_n(where):
    module = _module(where)
    trainer = _fit(module, steps=2)
    assert len(module.losses) == 8
    assert float(trainer.callback_metrics["train_loss"]) == pytest.approx(module.losses[4])  # step 2, θ_n


def _quadratic():
    torch.manual_seed(0)
    theta = nn.Parameter(torch.randn(6))
    scale = torch.linspace(0.5, 2.0, 6)

    def make_closure(optimizer):
        def closure():
            optimizer.zero_grad()
            loss = 0.5 * (scale * theta**2).sum()
            loss.backward()
            return loss

        return closure

    return theta, make_closure


def _run(steps, scheduler_factory):
    theta, make_closure = _quadratic()
    optimizer = rkopt.RK4([theta], lr=0.1)
    scheduler = scheduler_factory(optimizer)
    momenta = []
    for _ in range(steps):
        momenta.append(optimizer.param_groups[0]["momentum"])
        optimizer.step(make_closure(optimizer))
        scheduler.step()
    return theta.detach().clone(), momenta, optimizer


def test_one_cycle_default_turns_heavy_ball_momentum_on():
    steps = 6
    cycled, momenta, optimizer = _run(
        steps, lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    )
    assert momenta[0] == pytest.approx(0.95)  # OneCycleLR wrote β = max_momentum into plain RK4
    assert all(0.85 <= m <= 0.95 for m in momenta)
    assert "momentum_buffer" in optimizer.state[optimizer.param_groups[0]["params"][0]]
    plain, momenta_off, optimizer_off = _run(
        steps,
        lambda opt: torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=0.1, total_steps=steps, cycle_momentum=False
        ),
    )
    assert momenta_off == [0.0] * steps
    assert not optimizer_off.state[optimizer_off.param_groups[0]["params"][0]]
    assert not torch.allclose(cycled, plain)


def test_one_cycle_without_momentum_cycling_is_plain_rk4_with_the_scheduled_lr():
    steps = 6
    plain, _, _ = _run(
        steps,
        lambda opt: torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=0.1, total_steps=steps, cycle_momentum=False
        ),
    )
    # the same learning rates by hand, no scheduler touching the group
    theta, make_closure = _quadratic()
    probe = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    lrs = []
    schedule = torch.optim.lr_scheduler.OneCycleLR(probe, max_lr=0.1, total_steps=steps, cycle_momentum=False)
    for _ in range(steps):
        lrs.append(probe.param_groups[0]["lr"])
        probe.step()
        schedule.step()
    for lr in lrs:
        optimizer = rkopt.RK4([theta], lr=lr)
        optimizer.step(make_closure(optimizer))
    torch.testing.assert_close(plain, theta.detach(), rtol=0, atol=0)
