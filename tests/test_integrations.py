"""rkopt inside the training stacks users run: DistributedDataParallel and PyTorch Lightning."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import rkopt

STEPS = 3


def _problem():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(32, 5, generator=generator, dtype=torch.float64)
    y = torch.randn(32, 1, generator=generator, dtype=torch.float64)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    return model, x, y


def _train(model, x, y, steps=STEPS):
    optimizer = rkopt.preset("rk4-full", model.parameters(), lr=0.2)

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    for _ in range(steps):
        optimizer.step(closure)
    return optimizer


def _ddp_worker(rank: int, world_size: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        model, x, y = _problem()
        ddp = nn.parallel.DistributedDataParallel(model)
        shard = slice(rank * len(x) // world_size, (rank + 1) * len(x) // world_size)
        optimizer = _train(ddp, x[shard], y[shard])
        if rank == 0:
            torch.save(
                {"params": [p.detach() for p in model.parameters()], "evals": optimizer.counters.grad_evals},
                out_file,
            )
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built in")
def test_ddp_with_sharded_batches_matches_single_process_full_batch():
    """Each stage's backward all-reduces the gradient, so two ranks holding half the batch follow
    the full-batch trajectory of one process."""
    model, x, y = _problem()
    single = _train(model, x, y)
    with tempfile.TemporaryDirectory() as tmp:
        out_file = os.path.join(tmp, "result.pt")
        mp.spawn(_ddp_worker, args=(2, os.path.join(tmp, "init"), out_file), nprocs=2, join=True)
        result = torch.load(out_file, weights_only=True)
    for ours, theirs in zip(model.parameters(), result["params"], strict=True):
        torch.testing.assert_close(theirs, ours.detach(), rtol=1e-12, atol=1e-12)
    assert result["evals"] == single.counters.grad_evals == 4 * STEPS + 1  # + the first DAL probe


def test_lightning_automatic_optimization_passes_a_closure_called_once_per_stage():
    lightning = pytest.importorskip("lightning.pytorch")

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))
            self.calls = 0

        def training_step(self, batch, _):
            self.calls += 1
            x, y = batch
            return nn.functional.mse_loss(self.model(x), y)

        def configure_optimizers(self):
            optimizer = rkopt.RK4(self.parameters(), lr=0.05)
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
            return {"optimizer": optimizer, "lr_scheduler": scheduler}

    generator = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(
        torch.randn(64, 5, generator=generator), torch.randn(64, 1, generator=generator)
    )
    loader = torch.utils.data.DataLoader(data, batch_size=16)
    module = Module()
    before = [p.detach().clone() for p in module.parameters()]
    trainer = lightning.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader)
    optimizer = trainer.optimizers[0]
    assert optimizer.counters.steps == 8
    assert optimizer.counters.grad_evals == module.calls == 32
    assert optimizer.param_groups[0]["h"] == pytest.approx(0.025)  # the scheduler's epoch-2 lr
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


def _zero_worker(rank: int, world_size: int, init_file: str, out_file: str) -> None:
    from torch.distributed.optim import ZeroRedundancyOptimizer

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        model = nn.Linear(4, 2)
        try:
            ZeroRedundancyOptimizer(model.parameters(), optimizer_class=rkopt.RK4, lr=0.1)
            message = "constructed"
        except TypeError as error:
            message = str(error)
        if rank == 0:
            torch.save({"message": message}, out_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built in")
def test_zero_redundancy_optimizer_is_refused_with_a_pointer_to_fsdp():
    with tempfile.TemporaryDirectory() as tmp:
        out_file = os.path.join(tmp, "result.pt")
        mp.spawn(_zero_worker, args=(2, os.path.join(tmp, "init"), out_file), nprocs=2, join=True)
        message = torch.load(out_file, weights_only=True)["message"]
    assert "cannot run inside torch.distributed.optim.ZeroRedundancyOptimizer" in message
    assert "FSDP2" in message
