"""The tiny MLP of ``support.make_mlp`` in JAX, and both bindings run side by side."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

import rkopt
import rkopt.optax as ro
from support import flat, make_closure, make_data, make_mlp


def mlp_loss(params, x, y):
    """Cross-entropy of Linear(6, 16) - tanh - Linear(16, 3), params as torch orders them."""
    w1, b1, w2, b2 = params
    logits = jnp.tanh(x @ w1.T + b1) @ w2.T + b2
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(y.shape[0]), y])


def jitted_step(tx, grad_fn):
    @jax.jit
    def step(params, state):
        updates, state = tx.update(grad_fn(params), state, params, grad_fn=grad_fn)
        return optax.apply_updates(params, updates), state

    return step


def both_bindings(steps: int, lr: float, preset: str | None = None, **options):
    """(max relative difference of the parameters over the steps, torch counters, optax state,
    torch group) for the same float64 MLP, batch and configuration."""
    model = make_mlp(dtype=torch.float64)
    x, y = make_data(dtype=torch.float64)
    if preset is None:
        optimizer, tx = rkopt.RungeKutta(model.parameters(), lr, **options), ro.runge_kutta(lr, **options)
    else:
        optimizer, tx = (
            rkopt.preset(preset, model.parameters(), lr, **options),
            ro.preset(preset, lr, **options),
        )
    params = [jnp.asarray(p.detach().numpy()) for p in model.parameters()]
    xj, yj = jnp.asarray(x.numpy()), jnp.asarray(y.numpy())
    step = jitted_step(tx, jax.grad(lambda p: mlp_loss(p, xj, yj)))
    state = tx.init(params)
    closure = make_closure(model, optimizer, x, y)
    worst = 0.0
    for _ in range(steps):
        optimizer.step(closure)
        params, state = step(params, state)
        reference = flat(model).numpy()
        ours = np.concatenate([np.ravel(p) for p in params])
        worst = max(worst, float(np.max(np.abs(ours - reference)) / np.max(np.abs(reference))))
    return worst, optimizer.counters, state, optimizer.param_groups[0]
