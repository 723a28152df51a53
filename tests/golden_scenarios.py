"""Recorded trajectories: every preset, tableau and ingredient combination, float64, a few steps.

``tests/fixtures/trajectories.json`` was written by ``python tests/golden_scenarios.py`` from the
engine as it stood before the engine was restructured (commit "Record trajectories ..."); the
tests in ``test_golden_trajectories.py`` replay every scenario and require the same bits. Each
scenario trains a small dropout MLP on two alternating minibatches (so that the random number
snapshots, per-step batches and param groups are all exercised) and records, after every step,
a hash of the parameters' bytes; at the end the parameters themselves, the group observables,
the counters and the losses ``step`` returned.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

import rkopt

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "trajectories.json"
STEPS = 4
OBSERVABLES = ("h", "dal_rho", "dal_rho_next", "ec_error", "ec_h_next")


def make_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Dropout(0.2), nn.Linear(8, 3))
    return model.to(torch.float64)


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(24, 4, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (24,), generator=generator)
    return [(x[:12], y[:12]), (x[12:], y[12:])]


def param_groups(model: nn.Module, split: list[dict[str, Any]] | None) -> list[Any]:
    """All parameters in one group, or the first layer's and the last layer's in two."""
    if split is None:
        return list(model.parameters())
    first, last = model[0], model[3]
    return [
        {"params": list(first.parameters()), **split[0]},
        {"params": list(last.parameters()), **split[1]},
    ]


# -- the scenarios -------------------------------------------------------------------------------

EMBEDDED = ("heun_euler", "bogacki_shampine", "fehlberg", "cash_karp", "dormand_prince", "tsitouras")


def scenarios() -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, spec): spec holds lr, the optimizer keyword arguments and optionally groups,
    set_to_none and a learning-rate schedule factor."""
    for name in rkopt.TABLEAUX:
        yield f"tableau/{name}", {"lr": 0.3, "kwargs": {"tableau": name}}
    for name, kwargs in rkopt.PRESETS.items():
        yield f"preset/{name}", {"lr": 0.3, "kwargs": dict(kwargs)}
    ingredients = {
        "coupled-decay": {"weight_decay": 0.05},
        "decoupled-decay": {"weight_decay": 0.05, "decoupled_weight_decay": True},
        "maximize": {"maximize": True},
        "maximize-decay-precond": {"maximize": True, "weight_decay": 0.02, "preconditioner": "adagrad"},
        "momentum": {"momentum": 0.8},
        "nesterov": {"momentum": 0.8, "nesterov": True},
        "nesterov-decoupled": {
            "momentum": 0.5,
            "nesterov": True,
            "weight_decay": 0.1,
            "decoupled_weight_decay": True,
        },
        "adagrad": {"preconditioner": "adagrad", "precond_delta": 0.5},
        "adagrad-decay": {"preconditioner": "adagrad", "weight_decay": 0.05},
        "rmsprop": {"preconditioner": "rmsprop", "precond_beta2": 0.9},
        "rmsprop-momentum": {"preconditioner": "rmsprop", "momentum": 0.9},
        "dal-free": {"lr_policy": "dal"},
        "dal-fd": {"lr_policy": "dal", "dal_estimator": "finite_difference", "dal_power": 0.5},
        "dal-precond-momentum-decay": {
            "lr_policy": "dal",
            "preconditioner": "rmsprop",
            "momentum": 0.5,
            "weight_decay": 0.01,
        },
        "igr": {"igr": 0.5},
        "igr-maximize": {"igr": 0.5, "maximize": True},
        "igr-precond-dal": {"igr": 0.3, "preconditioner": "adagrad", "lr_policy": "dal"},
        "igr-momentum-decay": {"igr": 0.3, "momentum": 0.5, "weight_decay": 0.05},
    }
    for tableau in ("rk4", "heun", "ssprk3"):
        for name, kwargs in ingredients.items():
            yield f"{tableau}/{name}", {"lr": 0.3, "kwargs": {"tableau": tableau, **kwargs}}
    for tableau in EMBEDDED:
        base = {"tableau": tableau, "lr_policy": "error_control"}
        yield f"ec/{tableau}", {"lr": 0.5, "kwargs": base}
        yield f"ec/{tableau}/tight", {"lr": 2.0, "kwargs": {**base, "atol": 1e-7, "rtol": 1e-5}}
    ec = {"tableau": "dormand_prince", "lr_policy": "error_control", "atol": 1e-8, "rtol": 1e-6}
    yield "ec/forced-accept", {"lr": 3.0, "kwargs": {**ec, "max_retries": 1}}
    yield "ec/momentum", {"lr": 1.0, "kwargs": {**ec, "momentum": 0.5}}
    yield (
        "ec/nesterov-precond",
        {
            "lr": 1.0,
            "kwargs": {**ec, "momentum": 0.5, "nesterov": True, "preconditioner": "rmsprop"},
        },
    )
    yield "ec/igr-decay", {"lr": 1.0, "kwargs": {**ec, "igr": 0.2, "weight_decay": 0.01}}
    yield (
        "ec/bs3-decoupled",
        {
            "lr": 1.0,
            "kwargs": {"tableau": "bs3", "lr_policy": "error_control", "weight_decay": 0.1, "rtol": 1e-4},
        },
    )
    groups = {
        "fixed+dal": [{"lr": 0.2}, {"lr": 0.4, "lr_policy": "dal"}],
        "dal-fd+dal-free": [
            {"lr_policy": "dal", "dal_estimator": "finite_difference"},
            {"lr_policy": "dal", "lr": 0.5},
        ],
        "precond+momentum": [{"preconditioner": "adagrad"}, {"momentum": 0.9, "nesterov": True}],
        "coupled+decoupled-decay": [
            {"weight_decay": 0.1},
            {"weight_decay": 0.1, "decoupled_weight_decay": True},
        ],
        "igr+plain": [{"igr": 0.5}, {"lr": 0.1}],
    }
    for name, split in groups.items():
        for set_to_none in (True, False):
            yield (
                f"groups/{name}/set_to_none={set_to_none}",
                {
                    "lr": 0.3,
                    "kwargs": {"tableau": "rk4"},
                    "groups": split,
                    "set_to_none": set_to_none,
                },
            )
    ec_groups = [
        {"lr_policy": "error_control", "rtol": 1e-5, "atol": 1e-7},
        {"lr_policy": "dal", "lr": 0.3},
    ]
    for set_to_none in (True, False):
        yield (
            f"groups/ec+dal/set_to_none={set_to_none}",
            {
                "lr": 1.5,
                "kwargs": {"tableau": "dormand_prince"},
                "groups": ec_groups,
                "set_to_none": set_to_none,
            },
        )
        yield (
            f"groups/ec+fixed-momentum/set_to_none={set_to_none}",
            {
                "lr": 1.5,
                "kwargs": {"tableau": "tsitouras"},
                "groups": [ec_groups[0], {"lr": 0.2, "momentum": 0.9}],
                "set_to_none": set_to_none,
            },
        )
    yield "schedule/rk4-full", {"lr": 0.3, "kwargs": dict(rkopt.PRESETS["rk4-full"]), "gamma": 0.7}
    yield (
        "schedule/dopri5-adaptive",
        {
            "lr": 0.5,
            "kwargs": dict(rkopt.PRESETS["dopri5-adaptive"]),
            "gamma": 0.5,
        },
    )


SCENARIOS: dict[str, dict[str, Any]] = dict(scenarios())


# -- running one ---------------------------------------------------------------------------------

Driver = Callable[[torch.optim.Optimizer, nn.Module, torch.Tensor, torch.Tensor, bool], Any]


def closure_driver(optimizer, model, x, y, set_to_none) -> Any:
    """One ``step(closure)`` on the batch (x, y)."""

    def closure():
        optimizer.zero_grad(set_to_none=set_to_none)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return optimizer.step(closure)


def stagewise_driver(optimizer, model, x, y, set_to_none, *, pass_loss: bool = False) -> Any:
    """One step of a stage-wise optimizer in a plain ``backward(); step()`` loop over
    ``repeat_batches``; returns the loss of the step's first evaluation."""
    first = None
    for xb, yb in rkopt.repeat_batches([(x, y)], optimizer):
        optimizer.zero_grad(set_to_none=set_to_none)
        loss = nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step(loss=loss if pass_loss else None)
        first = loss if first is None else first
    return first


def run(
    spec: dict[str, Any], *, foreach: bool = False, driver: Driver = closure_driver, **overrides: Any
) -> dict[str, Any]:
    """Train STEPS steps of the scenario ``spec``; what the fixture records of it."""
    model = make_model()
    kwargs = {**spec["kwargs"], "foreach": foreach, **overrides}
    optimizer = rkopt.RungeKutta(param_groups(model, spec.get("groups")), spec["lr"], **kwargs)
    scheduler = None
    if "gamma" in spec:
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=spec["gamma"])
    data = batches()
    torch.manual_seed(1)  # dropout draws from here
    hashes, losses = [], []
    for step in range(STEPS):
        x, y = data[step % len(data)]
        loss = driver(optimizer, model, x, y, spec.get("set_to_none", True))
        losses.append(None if loss is None else float(loss.detach()))
        if scheduler is not None:
            scheduler.step()
        hashes.append(parameter_hash(model))
    return {
        "hashes": hashes,
        "parameters": [float(v) for v in flat_parameters(model)],
        "observables": [
            {key: group.get(key) for key in OBSERVABLES if group.get(key) is not None}
            for group in optimizer.param_groups
        ],
        "counters": {
            key: getattr(optimizer.counters, key)
            for key in ("steps", "grad_evals", "rejected_steps", "skipped_steps")
        },
        "losses": losses,
        "rng": hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest(),
    }


def flat_parameters(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def parameter_hash(model: nn.Module) -> str:
    return hashlib.sha256(flat_parameters(model).numpy().tobytes()).hexdigest()[:16]


def record() -> dict[str, Any]:
    return {name: run(spec) for name, spec in SCENARIOS.items()}


if __name__ == "__main__":
    FIXTURE.parent.mkdir(exist_ok=True)
    recorded = record()
    FIXTURE.write_text(json.dumps(recorded, indent=0, sort_keys=True) + "\n")
    print(f"recorded {len(recorded)} scenarios into {FIXTURE}", file=sys.stderr)
