"""The optax transformation in optax's style: convergence, extra args, errors, jit/pmap, state."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import rkopt
import rkopt.optax as ro

PRESETS = [*rkopt.PRESETS, "rkc2"]
ROSENBROCK_LR = {"rk4-precond": 0.5, "rk4-full": 0.5, "rkc2": 1e-2, "dopri5-adaptive": 0.1, "rk4-dal": 0.01}


def parabola(theta):
    return 0.5 * (theta[0] ** 2 + 10.0 * theta[1] ** 2)


def rosenbrock(theta):
    return (1.0 - theta[0]) ** 2 + 100.0 * (theta[1] - theta[0] ** 2) ** 2


def make(name, lr, **options):
    return ro.preset(name, lr, **({"stages": 5} if name == "rkc2" else {}), **options)


def train(tx, loss, theta, steps):
    """``steps`` jitted updates in one ``lax.fori_loop``; returns (θ, state)."""
    grad_fn = jax.grad(loss)

    @jax.jit
    def run(params):
        def body(_, carry):
            params, state = carry
            updates, state = tx.update(grad_fn(params), state, params, grad_fn=grad_fn)
            return optax.apply_updates(params, updates), state

        return jax.lax.fori_loop(0, steps, body, (params, tx.init(params)))

    return run(theta)


@pytest.mark.parametrize("name", PRESETS)
def test_each_preset_converges_on_a_parabola_and_on_rosenbrock(name, x64):
    lr = 0.5 if name in ("rk4-precond", "rk4-full") else 0.1  # AdaGrad's P_n <= 1 shrinks steps
    theta, state = train(make(name, lr), parabola, jnp.array([1.0, 1.0]), 200)
    assert parabola(theta) < 1e-7 and int(state.steps) == 200
    theta, state = train(make(name, ROSENBROCK_LR.get(name, 2e-3)), rosenbrock, jnp.array([-1.2, 1.0]), 1500)
    assert rosenbrock(theta) < 0.05 < 24.2 and int(state.skipped_steps) == 0


def test_extra_arguments_it_does_not_use_are_ignored_and_chains_work():
    grad_fn = jax.grad(parabola)
    tx = optax.chain(optax.clip_by_global_norm(10.0), ro.runge_kutta(0.1))
    params = jnp.array([1.0, 1.0])
    state = tx.init(params)
    updates, state = tx.update(grad_fn(params), state, params, grad_fn=grad_fn, value=3.0, batch=None)
    assert float(parabola(params + updates)) < float(parabola(params))
    with pytest.raises(ValueError, match="grad_fn="):
        ro.runge_kutta(0.1).update(grad_fn(params), ro.runge_kutta(0.1).init(params), params)


BAD = [
    dict(momentum=1.0),
    dict(momentum=True),
    dict(nesterov=True),
    dict(lr_policy="dall"),
    dict(lr_policy="error_control"),
    dict(lr_policy="error_control", tableau="dormand_prince", atol=0.0, rtol=0.0),
    dict(lr_policy="dal", tableau="euler"),
    dict(preconditioner="adam"),
    dict(preconditioner="rmsprop", precond_beta2=1.0),
    dict(preconditioner="adagrad", precond_delta=-1.0),
    dict(max_retries=1.5),
    dict(dal_estimator="exact"),
    dict(igr=float("inf")),
]


@pytest.mark.parametrize("options", BAD, ids=[str(o) for o in BAD])
def test_wrong_options_raise_the_same_errors_as_the_torch_binding(options):
    tableau = options.pop("tableau", "rk4")
    with pytest.raises((TypeError, ValueError)) as torch_error:
        rkopt.RungeKutta([torch.zeros(2, requires_grad=True)], 0.1, tableau, **options)
    with pytest.raises(type(torch_error.value)) as optax_error:
        ro.runge_kutta(0.1, tableau, **options)
    assert str(optax_error.value) == str(torch_error.value)


def test_wrong_learning_rate_unknown_keys_and_presets_are_refused():
    with pytest.raises(ValueError, match="lr must be"):
        ro.runge_kutta(-1.0)
    with pytest.raises(TypeError, match="Did you mean 'momentum'"):
        ro.runge_kutta(0.1, momentun=0.9)
    with pytest.raises(TypeError, match="foreach"):
        ro.runge_kutta(0.1, foreach=True)
    with pytest.raises(ValueError, match="unknown preset 'rk5'"):
        ro.preset("rk5", 0.1)
    with pytest.raises(ValueError, match="needs stages"):
        ro.preset("rkc1", 0.1)


def test_schedule_inject_hyperparams_and_readable_counters(x64):
    grad_fn = jax.grad(parabola)
    schedule = optax.exponential_decay(0.2, transition_steps=1, decay_rate=0.5)
    tx = optax.inject_hyperparams(ro.runge_kutta)(learning_rate=schedule, tableau="heun", momentum=0.5)
    params = jnp.array([1.0, 1.0])
    state = tx.init(params)
    step = jax.jit(lambda p, s: tx.update(grad_fn(p), s, p, grad_fn=grad_fn))
    for _ in range(3):
        updates, state = step(params, state)
        params = optax.apply_updates(params, updates)
    inner = state.inner_state
    assert float(inner.h) == pytest.approx(0.05, rel=1e-6)  # optax's schedules are float32
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(0.05, rel=1e-6)
    assert (int(inner.steps), int(inner.grad_evals), int(inner.rejected_steps)) == (3, 6, 0)


def test_float32_stays_float32_and_the_state_is_a_checkpointable_pytree(tmp_path):
    params = {"w": jnp.ones((3, 2), jnp.float32), "b": jnp.zeros(2, jnp.float32)}

    def loss(p):
        return jnp.sum(jnp.tanh(p["w"]) ** 2) + jnp.sum((p["b"] - 1.0) ** 2)

    grad_fn = jax.grad(loss)
    tx = ro.preset("rk4-full", 0.1)
    state = tx.init(params)
    step = jax.jit(lambda p, s: tx.update(grad_fn(p), s, p, grad_fn=grad_fn))
    updates, state = step(params, state)
    assert all(u.dtype == jnp.float32 for u in jax.tree_util.tree_leaves(updates))
    assert all(m.dtype == jnp.float32 for m in jax.tree_util.tree_leaves((state.momentum, state.precond)))
    leaves, treedef = jax.tree_util.tree_flatten(state)
    np.savez(tmp_path / "state.npz", *[np.asarray(leaf) for leaf in leaves])
    with np.load(tmp_path / "state.npz") as saved:
        restored = jax.tree_util.tree_unflatten(
            treedef, [jnp.asarray(saved[f"arr_{i}"]) for i in range(len(leaves))]
        )
    params = optax.apply_updates(params, updates)
    a, state_a = step(params, state)
    b, state_b = step(params, restored)
    same = jax.tree_util.tree_map(
        lambda x, y: np.array_equal(x, y, equal_nan=True), (a, state_a), (b, state_b)
    )
    assert jax.tree_util.tree_all(same)
    assert int(state_b.steps) == 2 and int(state_b.grad_evals) == 2 * 4 + 1  # the first step's DAL probe


def test_pmap_with_a_mean_over_devices_matches_the_single_device_step():
    devices = jax.local_device_count()
    grad_fn = jax.grad(parabola)
    tx = ro.preset("dopri5-adaptive", 0.5)
    params = jnp.array([1.0, -2.0])

    def step(p, s):
        pmean_grad = lambda q: jax.lax.pmean(grad_fn(q), "devices")  # noqa: E731
        return tx.update(pmean_grad(p), s, p, grad_fn=pmean_grad)

    replicated = jax.tree_util.tree_map(lambda x: jnp.stack([x] * devices), (params, tx.init(params)))
    updates, state = jax.pmap(step, axis_name="devices")(*replicated)
    single, single_state = jax.jit(lambda p, s: tx.update(grad_fn(p), s, p, grad_fn=grad_fn))(
        params, tx.init(params)
    )
    assert updates.shape == (devices, 2)
    np.testing.assert_allclose(updates[0], single, rtol=1e-6)
    assert int(state.grad_evals[0]) == int(single_state.grad_evals)


def test_error_control_rejects_and_counts_under_jit(x64):
    _, state = train(ro.preset("dopri5-adaptive", 5.0), rosenbrock, jnp.array([-1.2, 1.0]), 20)
    assert int(state.rejected_steps) > 0 and int(state.steps) == 20
    assert float(state.h) <= 5.0 and float(state.ec_error) <= 1.0


def test_nonfinite_steps_keep_theta_and_are_skipped_or_raised():
    def loss(theta):  # a NaN gradient beyond 2
        return jnp.sum(theta**2) * jnp.where(theta[0] > 2.0, jnp.nan, 1.0)

    nan_theta = jnp.array([3.0])
    same, state = train(ro.runge_kutta(0.1, on_nonfinite="skip"), loss, nan_theta, 2)
    assert float(same[0]) == 3.0 and int(state.skipped_steps) == 2 and int(state.steps) == 0
    with pytest.raises(Exception, match="non-finite"):
        train(ro.runge_kutta(0.1), loss, nan_theta, 1)


def test_a_failing_policy_raises_under_jit():
    tx = ro.preset("dopri5-adaptive", 3.0, max_retries=1, on_max_retries="raise", atol=1e-12, rtol=1e-12)
    with pytest.raises(Exception, match="rejected the step 2 times"):
        train(tx, parabola, jnp.array([1.0, 1.0]), 1)
    tx = ro.preset("dopri5-adaptive", 3.0, max_retries=1, atol=1e-12, rtol=1e-12)  # accepts the last
    _, state = train(tx, parabola, jnp.array([1.0, 1.0]), 1)
    assert (int(state.steps), int(state.rejected_steps), int(state.grad_evals)) == (1, 1, 13)


def test_importing_rkopt_does_not_import_jax():
    code = "import sys, rkopt; assert 'jax' not in sys.modules and 'optax' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_two_devices_pmap_over_the_batch_and_sharded_parameters_match_one_device():
    script = Path(__file__).with_name("multidevice_check.py")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
