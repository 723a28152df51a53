"""Faults end the same way in both bindings: rejected attempts at non-finite points, a non-finite
gradient at θ_n, a non-finite candidate (``on_nonfinite="skip"``), with the same counters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from optax_support import jitted_step

import rkopt
import rkopt.optax as ro


def masked_parabola(theta, where):
    """½(θ_0² + 10 θ_1²), NaN outside the disc of radius 3 (so is its gradient)."""
    outside = theta[0] ** 2 + theta[1] ** 2 > 9.0
    return 0.5 * (theta[0] ** 2 + 10.0 * theta[1] ** 2) * where(outside, float("nan"), 1.0)


CASES = {
    "error control rejects non-finite attempts": (
        dict(tableau="dormand_prince", lr_policy="error_control"),
        5.0,
        [1.5, 1.0],
    ),
    "dal probes then steps": (dict(lr_policy="dal"), 1.0, [2.9, 0.1]),
    "non-finite gradient at θ_n": (dict(lr_policy="dal"), 0.1, [4.0, 0.0]),
    "non-finite candidate": (dict(), 0.5, [1.0, 1.0]),
}


@pytest.mark.parametrize("case", CASES)
def test_faults_take_the_same_course_in_both_bindings(case, x64):
    options, lr, start = CASES[case]
    theta = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    optimizer = rkopt.RungeKutta([theta], lr, on_nonfinite="skip", **options)

    def closure():
        optimizer.zero_grad()
        loss = masked_parabola(theta, lambda c, a, b: torch.where(c, torch.tensor(a), torch.tensor(b)))
        loss.backward()
        return loss

    tx = ro.runge_kutta(lr, on_nonfinite="skip", **options)
    grad_fn = jax.grad(lambda t: masked_parabola(t, jnp.where))
    step = jitted_step(tx, grad_fn)
    params = jnp.asarray(start, jnp.float64)
    state = tx.init(params)
    for _ in range(4):
        optimizer.step(closure)
        params, state = step(params, state)
        np.testing.assert_allclose(np.asarray(params), theta.detach().numpy(), rtol=1e-9, atol=1e-300)
    counters = optimizer.counters
    ours = (int(state.steps), int(state.grad_evals), int(state.rejected_steps), int(state.skipped_steps))
    assert ours == (counters.steps, counters.grad_evals, counters.rejected_steps, counters.skipped_steps)
    assert counters.rejected_steps + counters.skipped_steps > 0 or case == "dal probes then steps"
