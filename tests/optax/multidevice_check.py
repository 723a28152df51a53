"""Run as a script with 2 forced host devices: pmap and sharded-jit updates equal the 1-device one."""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=2"
    + " --xla_backend_optimization_level=0"
)

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import rkopt.optax as ro

assert jax.local_device_count() == 2
x = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
y = jnp.sum(x, axis=1)


def loss(params, x, y):
    return jnp.mean((jnp.tanh(x @ params["w"]) @ params["v"] - y) ** 2)


params = {"w": jax.random.normal(jax.random.PRNGKey(1), (4, 6)) * 0.5, "v": jnp.ones(6) * 0.1}
tx = ro.preset("rk4-full", 0.3)
full_grad = jax.grad(lambda p: loss(p, x, y))
reference, reference_state = jax.jit(lambda p, s: tx.update(full_grad(p), s, p, grad_fn=full_grad))(
    params, tx.init(params)
)


def device_step(p, s, xb, yb):  # each device holds half the batch; gradients are averaged
    grad_fn = lambda q: jax.lax.pmean(jax.grad(loss)(q, xb, yb), "batch")  # noqa: E731
    return tx.update(grad_fn(p), s, p, grad_fn=grad_fn)


replicated = jax.tree_util.tree_map(lambda a: jnp.stack([a, a]), (params, tx.init(params)))
updates, state = jax.pmap(device_step, axis_name="batch")(*replicated, x.reshape(2, 4, 4), y.reshape(2, 4))
for device in range(2):
    for key in params:
        np.testing.assert_allclose(updates[key][device], reference[key], rtol=2e-5, atol=1e-7)
assert int(state.grad_evals[0]) == int(reference_state.grad_evals) == 5

mesh = Mesh(np.array(jax.devices()), ("model",))
columns = NamedSharding(mesh, PartitionSpec(None, "model"))
sharded = {"w": jax.device_put(params["w"], columns), "v": params["v"]}
step = jax.jit(lambda p, s: tx.update(full_grad(p), s, p, grad_fn=full_grad))
sharded_updates, _ = step(sharded, tx.init(sharded))
assert len(sharded_updates["w"].sharding.device_set) == 2
for key in params:
    np.testing.assert_allclose(sharded_updates[key], reference[key], rtol=2e-5, atol=1e-7)
print("ok")
