"""Shared fixtures of the benchmark-harness tests: an offline environment and tiny settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic import tiny_sweep

from rkopt.bench.config import Environment

TINY_MLP = ["hidden=[16]"]
"""``--workload-arg`` for a tiny MLP, so that the end-to-end tests take seconds."""


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private, initially empty dataset cache (tests never download)."""
    return tmp_path_factory.mktemp("rkopt-data")


@pytest.fixture(scope="session")
def environment(data_dir: Path) -> Environment:
    return Environment(data_dir=str(data_dir), download=False)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    """Point the default cache at the private one and forbid downloads from torchvision."""
    monkeypatch.setenv("RKOPT_DATA", str(data_dir))

    def no_download(*args: object, **kwargs: object) -> None:
        raise OSError("tests never download (network disabled by the test suite)")

    for module in ("mnist", "cifar"):
        monkeypatch.setattr(f"torchvision.datasets.{module}.download_and_extract_archive", no_download)


@pytest.fixture(scope="session")
def pooled_sweep(tmp_path_factory: pytest.TempPathFactory, environment: Environment) -> Path:
    """:func:`tiny_sweep` run once by the local pool (2 worker processes): the reference records that
    the in-process and the Ray executors are compared with."""
    from rkopt.bench.sweep import run_sweep

    results = tmp_path_factory.mktemp("pooled-sweep")
    summary = run_sweep(tiny_sweep(), results, environment, workers=2, progress=False)
    assert (summary.completed, summary.failed) == (2, [])
    return results
