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
from contextlib import contextmanager
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


def _default_mode() -> int:
    """The permissions ``open`` would give a new file (0o666 less the umask), not tempfile's 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_file(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """A new file that replaces ``path`` once written without error, so that readers see the old file or
    the whole new one. It is written in ``path``'s directory and renamed over ``path``: a symlink at
    ``path`` is replaced, never written through."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(mode, dir=path.parent, prefix=f".{path.name}.", delete=False) as file:
        try:
            yield file
            file.flush()
            os.fsync(file.fileno())
            os.chmod(file.name, _default_mode())
        except BaseException:
            os.unlink(file.name)
            raise
    os.replace(file.name, path)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` (:func:`atomic_file`)."""
    with atomic_file(path) as file:
        json.dump(clean_floats(data), file, indent=2, sort_keys=True)
        file.write("\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (:func:`atomic_file`)."""
    with atomic_file(path) as file:
        file.write(text)


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


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=Path(rkopt.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _git_commit() -> str | None:
    """HEAD of the checkout rkopt runs from, with ``+dirty`` when its tracked files have changes
    (the run then used code that no commit holds)."""
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return None
    changes = _git("status", "--porcelain", "--untracked-files=no")
    return commit + ("+dirty" if changes else "")


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


class CorruptRunError(ValueError):
    """A finished run whose record files cannot be read back whole: its ``path`` and the ``reason``,
    which names the file."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def _json_object(run_dir: Path, text: str, where: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as err:
        raise CorruptRunError(run_dir, f"{where}: invalid JSON ({err})") from err
    if not isinstance(data, dict):
        raise CorruptRunError(run_dir, f"{where}: expected a JSON object, found {type(data).__name__}")
    return data


def _read_text(run_dir: Path, name: str) -> str:
    try:
        return (run_dir / name).read_text()
    except FileNotFoundError as err:
        raise CorruptRunError(run_dir, f"{name}: missing") from err
    except (OSError, UnicodeDecodeError) as err:
        raise CorruptRunError(run_dir, f"{name}: unreadable ({err})") from err


REQUIRED_KEYS = {
    MANIFEST: ("config", "metric", "higher_is_better", "environment", "machine"),
    RESULT: ("status", "stop_reason", "final", "train_seconds"),
}
"""The keys without which a finished run's record cannot be used (by a resumed sweep or a report)."""


def load_run(run_dir: Path) -> RunRecord:
    """The finished run in ``run_dir``; :class:`CorruptRunError` if its records are damaged."""
    run_dir = Path(run_dir)
    manifest = _json_object(run_dir, _read_text(run_dir, MANIFEST), MANIFEST)
    result = _json_object(run_dir, _read_text(run_dir, RESULT), RESULT)
    metrics = [
        _json_object(run_dir, line, f"{METRICS} line {number}")
        for number, line in enumerate(_read_text(run_dir, METRICS).splitlines(), 1)
        if line.strip()
    ]
    for name, data in ((MANIFEST, manifest), (RESULT, result)):
        missing = [key for key in REQUIRED_KEYS[name] if key not in data]
        if missing:
            raise CorruptRunError(run_dir, f"{name}: no {', '.join(missing)}")
    try:
        RunConfig.from_dict(manifest["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise CorruptRunError(run_dir, f"{MANIFEST}: unreadable config ({err!r})") from err
    return RunRecord(path=run_dir, manifest=manifest, metrics=metrics, result=result)


def finished_run_dirs(results_dir: Path) -> Iterator[Path]:
    """Every finished run under ``results_dir`` (or ``results_dir`` itself if it is one), sorted."""
    results_dir = Path(results_dir)
    if is_finished(results_dir):
        yield results_dir
        return
    yield from sorted(p.parent for p in results_dir.rglob(RESULT))


def load_results(results_dir: Path) -> list[RunRecord]:
    """All finished runs under ``results_dir``; :class:`CorruptRunError` if one is damaged."""
    return [load_run(path) for path in finished_run_dirs(results_dir)]


@dataclass(frozen=True)
class SkippedRun:
    """A finished run that could not be read back, and why."""

    path: Path
    reason: str


def read_results(results_dir: Path) -> tuple[list[RunRecord], list[SkippedRun]]:
    """The finished runs under ``results_dir`` that can be read, and those skipped because damaged."""
    records, skipped = [], []
    for path in finished_run_dirs(results_dir):
        try:
            records.append(load_run(path))
        except CorruptRunError as err:
            skipped.append(SkippedRun(err.path, err.reason))
    return records, skipped
