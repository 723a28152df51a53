"""Small models, data and closures shared by the optimizer tests."""

from __future__ import annotations

import torch
from torch import nn

import rkopt


def make_mlp(seed: int = 0, dtype: torch.dtype = torch.float32, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(6, 16), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(16, 3))
    return nn.Sequential(*layers).to(dtype)


def make_data(
    seed: int = 1, n: int = 48, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=generator, dtype=dtype)
    y = torch.randint(0, 3, (n,), generator=generator)
    return x, y


def make_closure(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor):
    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def quadratic_closure(theta: torch.Tensor, optimizer: torch.optim.Optimizer, q: torch.Tensor):
    """L = ½ θᵀQθ (Q = 0 gives the zero loss)."""

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = 0.5 * theta @ q @ theta
        loss.backward()
        return loss

    return closure


def train_both_modes(make_optimizer, steps: int, dtype: torch.dtype = torch.float64):
    """(model, optimizer) after ``steps`` steps on one batch of a dropout MLP, in closure mode and in
    stage-wise mode (``make_optimizer(params, stagewise)``), from the same seeds."""
    x, y = make_data(dtype=dtype)
    trained = []
    for stagewise in (False, True):
        model = make_mlp(dtype=dtype, dropout=0.2)
        optimizer = make_optimizer(model.parameters(), stagewise)
        torch.manual_seed(3)
        for _ in range(steps):
            if stagewise:
                for xb, yb in rkopt.repeat_batches([(x, y)], optimizer):
                    optimizer.zero_grad()
                    nn.functional.cross_entropy(model(xb), yb).backward()
                    optimizer.step()
            else:
                optimizer.step(make_closure(model, optimizer, x, y))
        trained.append((model, optimizer))
    return trained
