"""Results on disk: one directory per run, written so that an interruption never loses finished work.

    RESULTS_DIR/runs/<run_id>/manifest.json    full config, seed, environment, versions, machine
    RESULTS_DIR/runs/<run_id>/metrics.jsonl    one JSON object per measurement
    RESULTS_DIR/runs/<run_id>/result.json      written last: its presence marks the run finished

While a run trains, its measurements go to ``metrics.jsonl.partial`` (flushed line by line, so it can
be watched); on completion the file is renamed and ``result.json`` is written atomically (temporary
file + ``os.replace``). A run directory without ``result.json`` is an interrupted run: resuming a
sweep deletes it and trains that run again; finished runs are never touched.

A run executed elsewhere (a Ray worker, without a shared filesystem) sends its three files back and
the driver writes them with :func:`publish_run`: the same files, the same order, ``result.json`` last.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import torch

import rkopt
from rkopt.bench.config import RunConfig

MANIFEST = "manifest.json"
METRICS = "metrics.jsonl"
RESULT = "result.json"
PARTIAL = METRICS + ".partial"
RUN_FILES = (MANIFEST, METRICS, RESULT)


def clean_floats(value: Any) -> Any:
    """``value`` with non-finite floats replaced by None (JSON has no NaN or infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: clean_floats(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_floats(v) for v in value]
    return value


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as file:
        json.dump(clean_floats(data), file, indent=2, sort_keys=True)
        file.write("\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(file.name, path)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(file.name, path)


def publish_run(run_dir: Path, files: Mapping[str, str]) -> bool:
    """Write a run's record files (:data:`RUN_FILES` → text) into ``run_dir``, ``result.json`` last.

    An interrupted attempt there is cleared first; a finished run is never touched (returns False).
    """
    run_dir = Path(run_dir)
    if is_finished(run_dir):
        return False
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    for name in RUN_FILES:
        write_text_atomic(run_dir / name, files[name])
    return True


def run_directory(results_dir: Path, config: RunConfig) -> Path:
    return Path(results_dir) / "runs" / config.run_id


def is_finished(run_dir: Path) -> bool:
    return (run_dir / RESULT).is_file()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(rkopt.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment_info() -> dict[str, Any]:
    """Versions and machine, for the manifest."""
    import numpy

    return {
        "versions": {
            "rkopt": rkopt.__version__,
            "torch": torch.__version__,
            "numpy": numpy.__version__,
            "python": platform.python_version(),
            "git_commit": _git_commit(),
        },
        "machine": {
            "hostname": platform.node(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "command": sys.argv,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


class RunWriter:
    """Writes one run's directory: :meth:`start`, :meth:`log` per measurement, :meth:`finish`."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._file: IO[str] | None = None

    def start(self, manifest: Mapping[str, Any]) -> None:
        """Clear an interrupted attempt, write the manifest and open the measurement log."""
        if self.run_dir.exists():
            shutil.rmtree(self.run_dir)
        self.run_dir.mkdir(parents=True)
        write_json_atomic(self.run_dir / MANIFEST, manifest)
        self._file = open(self.run_dir / PARTIAL, "w")  # noqa: SIM115 - closed by finish/close

    def log(self, record: Mapping[str, Any]) -> None:
        assert self._file is not None, "RunWriter.start() first"
        self._file.write(json.dumps(clean_floats(record), sort_keys=True) + "\n")
        self._file.flush()

    def finish(self, result: Mapping[str, Any]) -> None:
        """Publish the measurements, then mark the run finished with ``result.json``."""
        self.close()
        os.replace(self.run_dir / PARTIAL, self.run_dir / METRICS)
        write_json_atomic(self.run_dir / RESULT, result)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class RunRecord:
    """A finished run read back from disk."""

    path: Path
    manifest: dict[str, Any]
    metrics: list[dict[str, Any]]
    result: dict[str, Any]

    @property
    def config(self) -> RunConfig:
        return RunConfig.from_dict(self.manifest["config"])

    @property
    def diverged(self) -> bool:
        return self.result["status"] == "diverged"

    @property
    def metric(self) -> str:
        return self.manifest["metric"]

    @property
    def higher_is_better(self) -> bool:
        return self.manifest["higher_is_better"]

    @property
    def target(self) -> float | None:
        return self.manifest.get("target")

    @property
    def measurements(self) -> list[dict[str, Any]]:
        """The evaluated measurements (the divergence record, which has no metrics, left out)."""
        return [m for m in self.metrics if f"test_{self.metric}" in m]


def load_run(run_dir: Path) -> RunRecord:
    run_dir = Path(run_dir)
    with open(run_dir / METRICS) as file:
        metrics = [json.loads(line) for line in file if line.strip()]
    return RunRecord(
        path=run_dir,
        manifest=json.loads((run_dir / MANIFEST).read_text()),
        metrics=metrics,
        result=json.loads((run_dir / RESULT).read_text()),
    )


def finished_run_dirs(results_dir: Path) -> Iterator[Path]:
    """Every finished run under ``results_dir`` (or ``results_dir`` itself if it is one), sorted."""
    results_dir = Path(results_dir)
    if is_finished(results_dir):
        yield results_dir
        return
    yield from sorted(p.parent for p in results_dir.rglob(RESULT) if (p.parent / MANIFEST).is_file())


def load_results(results_dir: Path) -> list[RunRecord]:
    """All finished runs under ``results_dir``."""
    return [load_run(path) for path in finished_run_dirs(results_dir)]
