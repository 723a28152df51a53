"""Shared fixtures of the optax binding's tests: skipped without jax/optax; float64 on demand."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

if "jax" not in sys.modules:  # tiny programs: XLA's backend optimizations cost more than they save
    os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
pytest.importorskip("jax")
pytest.importorskip("optax")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the torch-side `support`


@pytest.fixture
def x64():
    """jax_enable_x64 for one test, restored afterwards."""
    import jax

    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)
