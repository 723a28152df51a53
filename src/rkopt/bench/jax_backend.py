"""The JAX backend of the harness: the MLP workloads trained with the optax binding.

A run starts from the torch model's initial weights (:func:`mlp_parameters`: the same point for a
given seed), draws the same batches (the workload's seeded loader) and stops at the same budget; the
training loop and its measurements are :mod:`rkopt.bench.runner`'s, and evaluation runs the task's
own code on this model's logits. One jitted step, compiled before the clock starts, computes

    L(θ; batch) = mean cross-entropy(MLP_θ(x), y),    (updates, state) = tx.update(∇L, state, θ, grad_fn)

with ``tx`` the optax binding's ``rkopt.optax.preset``/``runge_kutta`` (gradient evaluations and h
read from its state's counters) or an optax baseline matching the torch one (one evaluation a
step). Everything is float32, as the torch models are. Imported only when ``--backend jax`` is
selected (:func:`rkopt.bench.backends.load_jax_backend`).
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from torch import Tensor, nn

import rkopt.optax
from rkopt.bench.errors import ConfigError
from rkopt.bench.optimizers import BASELINES, canonical_optimizer
from rkopt.bench.workloads import WORKLOADS, Batch, Problem, Split, get_workload
from rkopt.core.errors import NonFiniteStepError
from rkopt.core.presets import PRESETS

Params = list[dict[str, jax.Array]]
"""The MLP's layers in torch's layout: ``weight`` (out, in) and ``bias`` (out), y = x Wᵀ + b."""

MLP_WORKLOADS = tuple(name for name, workload in WORKLOADS.items() if workload.architecture == "mlp")


def _sgd(lr: float, momentum: float = 0.0, nesterov: bool = False) -> optax.GradientTransformation:
    """torch.optim.SGD: v ← μ v + g, θ ← θ - lr v (the gradient itself with ``nesterov``: g + μ v)."""
    return optax.sgd(lr, momentum=momentum or None, nesterov=nesterov)


def _adam(
    lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
) -> optax.GradientTransformation:
    """torch.optim.Adam: θ ← θ - lr m̂ / (√v̂ + ε)."""
    return optax.adam(lr, b1=betas[0], b2=betas[1], eps=eps)


def _adamw(
    lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01
) -> optax.GradientTransformation:
    """torch.optim.AdamW: θ ← θ - lr (m̂ / (√v̂ + ε) + λ θ), λ = 0.01 as torch's default."""
    return optax.adamw(lr, b1=betas[0], b2=betas[1], eps=eps, weight_decay=weight_decay)


OPTAX_BASELINES: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": _sgd,
    "sgd-momentum": _sgd,
    "adam": _adam,
    "adamw": _adamw,
}
"""The optax twin of each torch baseline, called with its default options (``BASELINES``) and the
``--opt-arg`` values; the keyword arguments of each are the options it supports."""


def versions() -> dict[str, str]:
    """The versions a JAX run's manifest records besides the torch backend's."""
    return {"jax": jax.__version__, "jaxlib": jax.lib.__version__, "optax": optax.__version__}


def build_transformation(
    optimizer: str, lr: float, options: Mapping[str, Any]
) -> tuple[optax.GradientTransformationExtraArgs, bool]:
    """(the optax transformation of ``optimizer`` at ``lr`` with ``options``, whether a non-finite
    step ends the run) — rkopt steps are built with ``on_nonfinite="skip"`` and a skipped step then
    raises on the host, as the torch binding's default ``"raise"`` does."""
    name = canonical_optimizer(optimizer)
    options = dict(options)
    if name in BASELINES:
        make = OPTAX_BASELINES[name]
        supported = [key for key in inspect.signature(make).parameters if key != "lr"]
        unknown = sorted(set(options) - set(supported))
        if unknown:
            raise ConfigError(
                f"--backend jax: --opt-arg {', '.join(unknown)} is not supported for {name!r} by the JAX "
                f"backend (supported: {', '.join(supported) or 'none'}); use --backend torch"
            )
        return optax.with_extra_args_support(make(lr, **{**BASELINES[name][1], **options})), False
    raise_on_nonfinite = options.pop("on_nonfinite", "raise") == "raise"
    try:
        if name in PRESETS:
            transformation = rkopt.optax.preset(name, lr, on_nonfinite="skip", **options)
        else:
            transformation = rkopt.optax.runge_kutta(lr, name, on_nonfinite="skip", **options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"--backend jax: --opt-arg / --lr for optimizer {name!r}: {err}") from err
    return transformation, raise_on_nonfinite


def check_run(
    workload: str, optimizer: str, lr: float, options: Mapping[str, Any], stage_batches: str
) -> None:
    """Raise ConfigError if the JAX backend cannot run this combination."""
    if get_workload(workload).architecture != "mlp":
        raise ConfigError(
            f"--backend jax supports the MLP workloads ({', '.join(MLP_WORKLOADS)}), not {workload!r}; "
            "run it with --backend torch"
        )
    if stage_batches != "same":
        raise ConfigError(
            f"--backend jax supports --stage-batches same only, not {stage_batches!r} (optimizer "
            f"{optimizer!r}); run the stage-batches ablation with --backend torch"
        )
    build_transformation(optimizer, lr, options)


JAX_PLATFORMS = {"cpu": "cpu", "cuda": "gpu"}
"""torch device types and the JAX platform that runs them."""


def jax_device(device: torch.device) -> jax.Device:
    """The JAX device of the harness's ``--device`` (a torch name: ``cpu``, ``cuda``, ``cuda:1``)."""
    platform = JAX_PLATFORMS.get(device.type)
    if platform is None:
        raise ConfigError(
            f"--backend jax --device {device}: the JAX backend runs on "
            f"{', '.join(JAX_PLATFORMS)} devices; use --device cpu or --backend torch"
        )
    try:
        devices = jax.devices(platform)
    except RuntimeError as err:  # no backend for the platform (jax without CUDA support)
        raise ConfigError(
            f"--backend jax --device {device}: JAX has no {platform} backend here ({err}); install "
            "jax with CUDA support (pip install 'jax[cuda12]') or use --device cpu"
        ) from err
    index = device.index or 0
    if index >= len(devices):
        raise ConfigError(
            f"--backend jax --device {device}: JAX sees {len(devices)} {platform} device(s); "
            f"use an index below {len(devices)}"
        )
    return devices[index]


def mlp_parameters(model: nn.Module) -> Params:
    """The layers of a :func:`rkopt.bench.models.mlp` (Flatten, (Linear, ReLU)*, Linear) as float32
    arrays with the module's current values."""
    layers = list(model.children())
    shape = [type(layer) for layer in layers]
    hidden = (len(layers) - 2) // 2
    if shape != [nn.Flatten, *[nn.Linear, nn.ReLU] * hidden, nn.Linear]:
        raise ConfigError(f"--backend jax: expected an MLP (Flatten, Linear, ReLU, ..., Linear), got {shape}")
    return [
        {key: jnp.asarray(getattr(layer, key).detach().cpu().numpy()) for key in ("weight", "bias")}
        for layer in layers
        if isinstance(layer, nn.Linear)
    ]


def forward(params: Params, inputs: jax.Array) -> jax.Array:
    """The logits: x ← ReLU(x Wᵀ + b) per hidden layer, then x Wᵀ + b."""
    x = inputs.reshape(inputs.shape[0], -1)
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["weight"].T + layer["bias"])
    return x @ params[-1]["weight"].T + params[-1]["bias"]


def loss(params: Params, inputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean cross-entropy of the logits against the labels (``torch.nn.functional.cross_entropy``)."""
    return optax.softmax_cross_entropy_with_integer_labels(forward(params, inputs), targets).mean()


def _arrays(inputs: Tensor, targets: Tensor, device: jax.Device) -> tuple[jax.Array, jax.Array]:
    return jax.device_put((inputs.numpy(), targets.numpy().astype(np.int32)), device)


@dataclass
class OptaxCounters:
    """The work counters the training loop reads (as
    :class:`rkopt.bench.optimizers.TrackedOptimizer`'s), updated from the optax state after every step."""

    lr: float
    is_runge_kutta: bool
    step_size: float
    steps: int = 0
    grad_evals: int = 0
    rejected_steps: int = 0
    skipped_steps: int = 0


class JaxLearner:
    """A problem's MLP trained by an optax transformation, one jitted step per batch."""

    def __init__(
        self,
        problem: Problem,
        optimizer: str,
        lr: float,
        options: Mapping[str, Any],
        batch_size: int,
        device: torch.device,
    ) -> None:
        """``device``: the run's ``--device``; parameters, state and batches are placed on its JAX
        device (:func:`jax_device`), where the jitted step then runs."""
        self.task, self.device = problem.task, torch.device("cpu")  # batches reach jax through numpy
        self.jax_device = jax_device(device)
        self.params = jax.device_put(mlp_parameters(problem.model), self.jax_device)
        transformation, self.raise_on_nonfinite = build_transformation(optimizer, lr, options)
        self.state = jax.device_put(transformation.init(self.params), self.jax_device)
        self.optimizer = OptaxCounters(lr, isinstance(self.state, rkopt.optax.RungeKuttaState), step_size=lr)
        self.versions = versions()
        where = f"{self.jax_device.platform}:{self.jax_device.id}"
        self.machine = {"xla_flags": os.environ.get("XLA_FLAGS"), "jax_device": where}

        def step(params, state, inputs, targets):
            value, gradient = jax.value_and_grad(loss)(params, inputs, targets)
            grad_fn = jax.grad(lambda p: loss(p, inputs, targets))  # every stage on this batch
            updates, state = transformation.update(gradient, state, params, grad_fn=grad_fn)
            return optax.apply_updates(params, updates), state, value

        # compiled and run once on a batch of zeros (first transfer and execution cost ~0.1 s each)
        # before the clock starts; that step's results are dropped
        zeros = _arrays(
            torch.zeros(batch_size, *problem.data.input_shape), torch.zeros(batch_size), self.jax_device
        )
        self._step = jax.jit(step).lower(self.params, self.state, *zeros).compile()
        jax.block_until_ready(self._step(self.params, self.state, *zeros))
        self._forward = jax.jit(forward)

    def train_step(self, inputs: Tensor, targets: Tensor, next_batch: Callable[[], Batch] | None) -> float:
        """One step on this batch; the loss at θ_n. Raises ``NonFiniteStepError`` for a non-finite
        step (θ_n kept) unless ``on_nonfinite="skip"`` was asked for."""
        if next_batch is not None:
            raise ConfigError("--backend jax supports --stage-batches same only")
        batch = _arrays(inputs, targets, self.jax_device)
        self.params, self.state, value = self._step(self.params, self.state, *batch)
        counters = self.optimizer
        if not counters.is_runge_kutta:
            counters.steps += 1
            counters.grad_evals += 1
            return float(value)
        skipped, state = counters.skipped_steps, self.state
        *counts, h = jax.device_get(
            (state.steps, state.grad_evals, state.rejected_steps, state.skipped_steps, state.count, state.h)
        )
        counters.steps, counters.grad_evals, counters.rejected_steps, counters.skipped_steps, count = map(
            int, counts
        )
        # h is float32 here: recorded as the shortest decimal of its numpy scalar (0.1, not 0.10000000149)
        counters.step_size = counters.lr if math.isnan(h) else float(np.format_float_scientific(h[()]))
        if self.raise_on_nonfinite and counters.skipped_steps > skipped:
            raise NonFiniteStepError(
                f"a non-finite gradient or update occurred during the Runge–Kutta step {count} "
                "(rkopt.optax); θ_n is kept. Lower lr, use an adaptive lr_policy, or pass "
                "on_nonfinite='skip'"
            )
        return float(value)

    def _logits(self, inputs: Tensor) -> Tensor:
        logits = self._forward(self.params, jax.device_put(inputs.numpy(), self.jax_device))
        return torch.from_numpy(np.array(logits))

    def evaluate(self, split: Split) -> dict[str, float]:
        """The task's metrics on ``split``, computed by its own code from this model's logits."""
        return self.task.evaluate(self._logits, split, self.device)
