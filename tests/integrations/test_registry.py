"""rkopt's presets by name in timm's create_optimizer_v2 and pytorch_optimizer's create_optimizer."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

import rkopt
from rkopt.integrations import registry


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 1))


def _closure(model, optimizer):
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 4, generator=generator), torch.randn(16, 1, generator=generator)

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    return closure


def _same_trajectory(optimizer, model, name, lr, steps=3):
    """``optimizer`` follows rkopt.preset(name, ...) step for step."""
    reference_model = _model()
    reference = rkopt.preset(name, reference_model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.step(_closure(model, optimizer))
        reference.step(_closure(reference_model, reference))
    for ours, theirs in zip(model.parameters(), reference_model.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert optimizer.counters.grad_evals == reference.counters.grad_evals


def test_one_class_per_preset_with_its_settings():
    assert set(registry.PRESET_CLASSES) == {f"rkopt-{name}" for name in rkopt.PRESETS}
    cls = registry.PRESET_CLASSES["rkopt-rk4-full"]
    assert cls.__name__ == "Rk4FullPreset" and issubclass(cls, rkopt.RungeKutta)
    optimizer = cls(_model().parameters(), lr=0.1, momentum=0.5)
    group = optimizer.param_groups[0]
    assert (group["preconditioner"], group["lr_policy"], group["momentum"]) == ("adagrad", "dal", 0.5)
    clone = pickle.loads(pickle.dumps(optimizer))
    assert type(clone) is cls and copy.deepcopy(optimizer).param_groups[0]["momentum"] == 0.5
    with pytest.raises(TypeError, match="needs a learning rate"):
        cls(_model().parameters())


@pytest.mark.parametrize("name", ["rk4", "rk4-full", "dopri5-adaptive", "euler"])
def test_timm_create_optimizer_v2(name):
    timm_optim = pytest.importorskip("timm.optim")
    names = registry.register_with_timm()
    assert registry.register_with_timm() == names  # idempotent
    assert f"rkopt-{name}" in timm_optim.list_optimizers("rkopt-*")
    model = _model()
    optimizer = timm_optim.create_optimizer_v2(model, opt=f"rkopt-{name}", lr=0.1)
    assert isinstance(optimizer, rkopt.RungeKutta) and not optimizer.stagewise
    expected_momentum = rkopt.PRESETS[name].get("momentum", 0.0)
    assert all(group["momentum"] == expected_momentum for group in optimizer.param_groups)
    _same_trajectory(optimizer, model, name, lr=0.1)


def test_timm_weight_decay_groups_stagewise_and_momentum():
    timm_optim = pytest.importorskip("timm.optim")
    registry.register_with_timm()
    model = _model()
    optimizer = timm_optim.create_optimizer_v2(
        model, opt="rkopt-rk4", lr=0.1, weight_decay=1e-4, momentum=0.7, stagewise=True
    )
    assert optimizer.stagewise
    assert sorted(group["weight_decay"] for group in optimizer.param_groups) == [0.0, 1e-4]  # 1-d: none
    assert all(group["momentum"] == 0.0 for group in optimizer.param_groups)  # plain RK4 stays plain
    with_momentum = timm_optim.create_optimizer_v2(model, opt="rkopt-rk4-momentum", lr=0.1, momentum=0.7)
    assert with_momentum.param_groups[0]["momentum"] == 0.7
    with pytest.raises(RuntimeError, match="needs a closure"):
        timm_optim.create_optimizer_v2(model, opt="rkopt-rk4", lr=0.1).step()


def test_timm_underscore_names_resolve_to_their_last_part():
    """Why the names use hyphens: timm reads ``a_b`` as wrapper ``a`` around optimizer ``b``."""
    timm_optim = pytest.importorskip("timm.optim")
    registry.register_with_timm()
    with pytest.raises(ValueError, match="rk4 not found"):
        timm_optim.create_optimizer_v2(_model(), opt="rkopt_rk4", lr=0.1)
    wrapped = timm_optim.create_optimizer_v2(_model(), opt="lookahead_rkopt-rk4", lr=0.1)
    assert isinstance(wrapped._base_optimizer, rkopt.RungeKutta)


@pytest.mark.parametrize("name", ["rk4", "rk4-precond", "rk4-momentum"])
def test_pytorch_optimizer_create_and_load(name):
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
    names = registry.register_with_pytorch_optimizer()
    assert f"rkopt-{name}" in names
    assert f"rkopt-{name}" in pytorch_optimizer.get_supported_optimizers("rkopt-*")
    assert pytorch_optimizer.load_optimizer(f"rkopt-{name}") is registry.PRESET_CLASSES[f"rkopt-{name}"]
    model = _model()
    optimizer = pytorch_optimizer.create_optimizer(model, f"rkopt-{name}", lr=0.1)
    assert isinstance(optimizer, rkopt.RungeKutta)
    _same_trajectory(optimizer, model, name, lr=0.1)
    decayed = pytorch_optimizer.create_optimizer(_model(), f"RKOPT-{name.upper()}", lr=0.1, weight_decay=1e-3)
    assert sorted(group["weight_decay"] for group in decayed.param_groups) == [0.0, 1e-3]
    staged = pytorch_optimizer.create_optimizer(_model(), f"rkopt-{name}", lr=0.1, stagewise=True)
    assert staged.stagewise


def test_register_all_registers_what_is_installed():
    done = registry.register_all()
    for library in ("timm", "pytorch_optimizer"):
        try:
            __import__(library)
        except ImportError:
            assert library not in done
        else:
            assert done[library] == list(registry.PRESET_CLASSES)
