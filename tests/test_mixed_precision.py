"""Loss scaling (torch.amp.GradScaler) with stage-wise steps: an overflowing stage is skipped by the
scaler and evaluated again at the lower scale, on the same batch and point; bfloat16 autocast."""

from __future__ import annotations

import math

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

