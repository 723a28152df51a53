"""The optax binding stands without torch: it takes the preconditioners' declarations from the core."""

from __future__ import annotations

import subprocess
import sys

import rkopt
import rkopt.optax as ro


def test_importing_and_running_rkopt_optax_does_not_import_torch():
    code = (
        "import sys, jax, jax.numpy as jnp, rkopt.optax as ro\n"
        "tx = ro.preset('rk4-precond', 0.1)\n"
        "params = jnp.ones(3)\n"
        "grad_fn = jax.grad(lambda p: (p * p).sum())\n"
        "tx.update(grad_fn(params), tx.init(params), params, grad_fn=grad_fn)\n"
        "assert 'torch' not in sys.modules, 'rkopt.optax imported torch'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


def test_both_bindings_hold_the_same_declarations_of_the_shipped_preconditioners():
    for name in ("adagrad", "rmsprop"):
        torch_side, jax_side = rkopt.torch.get_preconditioner(name), ro.get_preconditioner(name)
        assert torch_side.options is jax_side.options and torch_side.statistics is jax_side.statistics
        assert torch_side.name == jax_side.name == name
