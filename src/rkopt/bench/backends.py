"""Which framework trains a run: ``torch`` (the reference) or ``jax`` (the optax binding, on the MLPs).

Both backends train the same workload from the same initial weights on the same batches under the
same budget, and are measured by the same code (:mod:`rkopt.bench.runner`). The torch backend is
:class:`rkopt.bench.runner.TorchLearner`; the JAX backend, :mod:`rkopt.bench.jax_backend`, is
imported only when a run selects it: ``import rkopt.bench`` never imports jax.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from rkopt.bench.errors import ConfigError

BACKENDS = ("torch", "jax")
"""``--backend``: the frameworks a run may train in (``torch`` is the default)."""
SINGLE_THREADED_XLA = "--xla_cpu_multi_thread_eigen=false"
"""Set in ``XLA_FLAGS`` before jax starts (unless the variable already sets it): XLA's CPU kernels on
one thread, as a torch run's ``--threads 1``, so the two backends' seconds compare like for like."""


def load_jax_backend() -> ModuleType:
    """:mod:`rkopt.bench.jax_backend` (importing jax and optax); a ConfigError when they are missing."""
    missing = [name for name in ("jax", "optax") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"--backend jax needs {' and '.join(missing)}, which is not installed: install rkopt[jax] "
            '(pip install "rkopt[jax]", or pip install "jax[cpu]" optax)'
        )
    flags = os.environ.get("XLA_FLAGS", "")
    if "jax" not in sys.modules and "xla_cpu_multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {SINGLE_THREADED_XLA}".strip()
    from rkopt.bench import jax_backend

    return jax_backend


def check_backend(
    backend: str, workload: str, optimizer: str, lr: float, options: Mapping[str, Any], stage_batches: str
) -> None:
    """Raise ConfigError now, before any run starts, if ``backend`` cannot run this combination (the
    torch backend runs every one that :func:`rkopt.bench.optimizers.check_optimizer` accepts)."""
    if backend == "jax":
        load_jax_backend().check_run(workload, optimizer, lr, options, stage_batches)
