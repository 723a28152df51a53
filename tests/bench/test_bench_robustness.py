"""The harness on bad input and faults: a locked results directory, workers that end with their sweep,
damaged records, symlinks in the report directory, a corrupt dataset cache, and bad flags and TOML."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from synthetic import record, write

from rkopt.bench.data import DataSource, _cached_arrays, load_mnist5k
from rkopt.bench.records import METRICS, RESULT
from rkopt.bench.report import SKIPPED_RUNS_FILE
from rkopt.bench.sweep import LOCK_FILE, exclusive_results_dir
from rkopt.cli import main

TINY = ["--workload", "mlp-digits", "--optimizer", "sgd", "--workload-arg", "hidden=[4]", "--quiet"]
TINY += ["--max-grad-evals", "12"]
HOLD_LOCK = """\
import sys, time
from pathlib import Path
from rkopt.bench.sweep import exclusive_results_dir
with exclusive_results_dir(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.2)


# -- 1. one sweep at a time per results directory -------------------------------------------------


def test_a_second_sweep_into_a_locked_out_fails_at_once_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = (out / LOCK_FILE).read_text()
        started = time.monotonic()
        assert main(["sweep", *TINY, "--out", str(out)]) == 2
        assert time.monotonic() - started < 30  # no waiting for the lock
        err = capsys.readouterr().err
        assert err == (
            f"rkopt sweep: error: {out} is in use by another sweep (pid {holder.pid}); wait for it or "
            "choose another --out\n"
        )
        assert [p.name for p in out.iterdir()] == [LOCK_FILE]  # no sweep.json, no runs, no report
        assert (out / LOCK_FILE).read_text() == before == f"{holder.pid}\n"
    finally:
        holder.kill()
        holder.wait()
    with exclusive_results_dir(out):  # the holder crashed: the system released its lock
        assert (out / LOCK_FILE).read_text() == f"{os.getpid()}\n"


def test_a_finished_sweep_releases_its_lock(tmp_path):
    out = tmp_path / "out"
    assert main(["sweep", *TINY, "--out", str(out), "--no-report"]) == 0
    assert len(list((out / "runs").iterdir())) == 3  # sgd at its default lr × 1/3, 1, 3
    with exclusive_results_dir(out):
        pass


def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path, capsys):
    out, target = tmp_path / "out", tmp_path / "precious.txt"
    out.mkdir()
    target.write_text("precious")
    (out / LOCK_FILE).symlink_to(target)
    assert main(["sweep", *TINY, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rkopt sweep: error: --out {out}: cannot open the lock file {out / LOCK_FILE}")
    assert target.read_text() == "precious" and not (out / "sweep.json").exists()


# -- 2. worker processes end with their sweep -------------------------------------------------------


def _process_state(pid: int) -> str | None:
    """The state letter of process ``pid`` (R, S, Z, ...), None if there is none."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    return _process_state(pid) not in (None, "Z")  # a zombie has ended, its parent not yet told


def _commands(pids: set[int]) -> dict[int, str]:
    """The command lines of the living processes among ``pids``."""
    commands = {}
    for pid in filter(_alive, pids):
        with contextlib.suppress(OSError):
            commands[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    return commands


def _children(pid: int) -> set[int]:
    """The processes whose parent is ``pid``."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid:
            children.add(int(stat.parent.name))
    return children


def _start_slow_sweep(out: Path) -> tuple[subprocess.Popen[str], set[int]]:
    """A 2-worker sweep of two endless runs, once both run; returns it and its child processes."""
    args = ["--workload", "mlp-digits", "--workload-arg", "hidden=[4]", "--optimizer", "sgd"]
    args += ["--lr", "0.01,0.02", "--max-grad-evals", "1000000000", "--eval-every", "100000000"]
    sweep = subprocess.Popen(
        [sys.executable, "-m", "rkopt.cli", "sweep", *args, "--workers", "2", "--out", str(out), "--quiet"],
        stderr=subprocess.PIPE,
        text=True,
        # as from a terminal: a test run in the background inherits SIGINT ignored, and so would it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    _wait_for(lambda: len(list(out.glob(f"runs/*/{METRICS}.partial"))) == 2, 180, "both runs to start")
    workers = _children(sweep.pid)
    assert len(workers) >= 2
    return sweep, workers


@linux_only
def test_killing_a_sweep_ends_its_worker_processes(tmp_path):
    sweep, workers = _start_slow_sweep(tmp_path / "out")
    try:
        sweep.kill()  # SIGKILL: the sweep cannot clean up
        sweep.wait()
        _wait_for(lambda: not any(_alive(pid) for pid in workers), 10, f"workers {_commands(workers)} to end")
    finally:
        for pid in filter(_alive, workers):
            os.kill(pid, signal.SIGKILL)


@linux_only
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signalled_sweep_terminates_its_workers_and_exits(tmp_path, signum):
    sweep, workers = _start_slow_sweep(tmp_path / "out")
    try:
        sweep.send_signal(signum)
        _, err = sweep.communicate(timeout=60)  # not after the endless runs
        assert sweep.returncode == 130
        assert "rkopt: interrupted; finished runs are kept" in err and "Traceback" not in err
        _wait_for(lambda: not any(_alive(pid) for pid in workers), 10, f"workers {_commands(workers)} to end")
    finally:
        sweep.kill()
        for pid in filter(_alive, workers):
            os.kill(pid, signal.SIGKILL)


@linux_only
def test_a_worker_notices_its_parent_died_without_the_kernel_signal(tmp_path):
    """The portable fallback of the kernel's parent-death signal: a thread polling the parent pid."""
    watched = "import sys; from rkopt.bench.sweep import _watch_parent; _watch_parent(int(sys.argv[1]))"
    parent = (
        "import os, subprocess, sys\n"
        f"child = subprocess.Popen([sys.executable, '-c', {watched!r}, str(os.getpid())])\n"
        "print(child.pid, flush=True)\n"
        "sys.stdin.readline()\n"
    )
    middle = subprocess.Popen(
        [sys.executable, "-c", parent], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    child = int(middle.stdout.readline())
    try:
        time.sleep(1)
        assert _alive(child)  # it watches a living parent
        middle.kill()
        middle.wait()
        _wait_for(lambda: not _alive(child), 60, "the orphan to end")
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


# -- 3. damaged records are skipped and named ---------------------------------------------------------


def _results(results_dir: Path) -> list[Path]:
    """Five finished synthetic runs (rk4 and adam at two lrs each, sgd at one): their directories."""
    runs = [
        record("rk4", 0.1, val=0.8),
        record("rk4", 0.3, val=0.85),
        record("adam", 1e-3, val=0.9),
        record("adam", 1e-2, val=0.7),
        record("sgd", 0.1, val=0.6),
    ]
    return [write(results_dir, run).path for run in runs]


def _truncate_last_line(path: Path) -> None:
    text = path.read_text()
    path.write_text(text[: len(text) - 15])


DAMAGE = {
    "metrics.jsonl truncated": (
        lambda run: _truncate_last_line(run / METRICS),
        "metrics.jsonl line 2: invalid",
    ),
    "empty manifest": (lambda run: (run / "manifest.json").write_text(""), "manifest.json: invalid JSON"),
    "result.json not JSON": (
        lambda run: (run / RESULT).write_text("{'status': "),
        "result.json: invalid JSON",
    ),
    "manifest a list": (
        lambda run: (run / "manifest.json").write_text("[]"),
        "manifest.json: expected a JSON",
    ),
    "manifest missing": (lambda run: (run / "manifest.json").unlink(), "manifest.json: missing"),
    "config damaged": (
        lambda run: (run / "manifest.json").write_text(
            json.dumps({**json.loads((run / "manifest.json").read_text()), "config": {"lr": 1}})
        ),
        "manifest.json: unreadable config",
    ),
}


def test_report_skips_damaged_runs_names_them_and_reports_the_rest(tmp_path, capsys):
    results = tmp_path / "results"
    runs = _results(results)
    good, damaged = runs[0], runs[1:4]  # rk4 0.3 and both adam runs
    damage = ["metrics.jsonl truncated", "empty manifest", "result.json not JSON"]
    for run, name in zip(damaged, damage):
        DAMAGE[name][0](run)
    assert main(["report", str(results), "--quiet"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3
    for run, name in zip(damaged, damage):
        assert any(
            line.startswith(f"rkopt report: warning: skipped run {run}: {DAMAGE[name][1]}") for line in err
        )

    skipped = json.loads((results / "report" / SKIPPED_RUNS_FILE).read_text())
    assert sorted(entry["path"] for entry in skipped) == sorted(str(run) for run in damaged)
    for entry in skipped:
        name = damage[damaged.index(Path(entry["path"]))]
        assert entry["reason"].startswith(DAMAGE[name][1])
    markdown = (results / "report" / "report.md").read_text()
    section = markdown.split("## Skipped runs", 1)[1].split("\n## ", 1)[0]
    assert all(f"- `{run}`: " in section for run in damaged) and str(good) not in section
    assert "2 finished runs in" in markdown  # good and the sgd run
    summary = json.loads((results / "report" / "summary.json").read_text())
    assert sorted(entry["optimizer"] for entry in summary) == ["rk4", "sgd"]


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_every_kind_of_damage_is_named(tmp_path, capsys, damage):
    results = tmp_path / "results"
    bad = _results(results)[1]
    DAMAGE[damage][0](bad)
    assert main(["report", str(results), "--quiet"]) == 0
    (entry,) = json.loads((results / "report" / SKIPPED_RUNS_FILE).read_text())
    assert entry["path"] == str(bad) and entry["reason"].startswith(DAMAGE[damage][1])
    assert capsys.readouterr().err.startswith(
        f"rkopt report: warning: skipped run {bad}: {DAMAGE[damage][1]}"
    )


def test_a_report_of_only_damaged_runs_is_an_error_naming_them(tmp_path, capsys):
    run = write(tmp_path, record("rk4", 0.1)).path
    (run / "manifest.json").write_text("")
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"rkopt report: error: rkopt report {tmp_path}: no finished runs there that can be read"
    )
    assert f"1 damaged: {run}: manifest.json: invalid JSON" in err


def test_rerunning_a_damaged_finished_run_is_an_error_naming_it(tmp_path, capsys):
    args = ["train", *TINY, "--lr", "0.1", "--out", str(tmp_path)]
    assert main(args) == 0
    (run,) = (tmp_path / "runs").iterdir()
    _truncate_last_line(run / RESULT)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rkopt train: error: damaged finished run {run}: result.json: invalid JSON")
    assert "delete its directory" in err and "Traceback" not in err


def test_a_clean_report_lists_no_skipped_runs(tmp_path):
    _results(tmp_path)
    assert main(["report", str(tmp_path), "--quiet"]) == 0
    assert json.loads((tmp_path / "report" / SKIPPED_RUNS_FILE).read_text()) == []
    assert "## Skipped runs" not in (tmp_path / "report" / "report.md").read_text()


# -- 4. symlinks in the report directory ------------------------------------------------------------


def test_report_replaces_planted_symlinks_and_never_writes_through_them(tmp_path):
    results, outside = tmp_path / "results", tmp_path / "outside"
    _results(results)
    (results / "report").mkdir()
    outside.mkdir()
    names = ["report.md", "summary.json", "readme_table.md", SKIPPED_RUNS_FILE, "metric_vs_grad_evals.png"]
    for name in names:
        (outside / name).write_text(f"precious {name}")
        (results / "report" / name).symlink_to(outside / name)
    assert main(["report", str(results), "--quiet"]) == 0
    for name in names:
        assert (outside / name).read_text() == f"precious {name}"
        written = results / "report" / name
        assert not written.is_symlink() and written.is_file()
    assert (results / "report" / "report.md").read_text().startswith("# rkopt benchmark report")
    assert (results / "report" / "metric_vs_grad_evals.png").read_bytes()[:4] == b"\x89PNG"


# -- 5. a corrupt dataset cache is rebuilt ----------------------------------------------------------


def _flip_a_byte_in_the_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _drop_an_array(path: Path) -> None:
    with np.load(path) as stored:
        arrays = dict(stored)
    del arrays["y"]
    with open(path, "wb") as file:
        np.savez(file, **arrays)


CACHE_DAMAGE = {
    "garbage": lambda path: path.write_bytes(b"this is not an npz file" * 100),
    "empty": lambda path: path.write_bytes(b""),
    "truncated": lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
    "flipped byte (CRC-32)": _flip_a_byte_in_the_middle,
    "an array missing": _drop_an_array,
}


def _toy_arrays() -> dict[str, np.ndarray]:
    return {"x": np.arange(4000, dtype=np.float32).reshape(1000, 4), "y": np.arange(1000) % 10}


@pytest.mark.parametrize("damage", list(CACHE_DAMAGE))
def test_a_corrupt_dataset_cache_is_deleted_rebuilt_and_named(tmp_path, damage):
    source, builds = DataSource(tmp_path, download=False), []

    def build() -> dict[str, np.ndarray]:
        builds.append(1)
        return _toy_arrays()

    _cached_arrays(source, "toy", ("x", "y"), build)
    cache = tmp_path / "toy.npz"
    CACHE_DAMAGE[damage](cache)
    with pytest.warns(UserWarning, match=f"dataset cache {cache} is corrupt .*; deleting it and rebuilding"):
        arrays = _cached_arrays(source, "toy", ("x", "y"), build)
    assert len(builds) == 2 and all(np.array_equal(arrays[k], v) for k, v in _toy_arrays().items())
    with zipfile.ZipFile(cache) as rebuilt:
        assert rebuilt.testzip() is None and sorted(rebuilt.namelist()) == ["x.npy", "y.npy"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _cached_arrays(source, "toy", ("x", "y"), build)  # read back: no warning, no build
    assert len(builds) == 2


def test_a_garbage_mnist5k_cache_is_rebuilt(tmp_path):
    source, cache = DataSource(tmp_path, download=False), tmp_path / "mnist5k.npz"
    cache.write_bytes(b"garbage" * 1000)
    with pytest.warns(UserWarning, match=f"dataset cache {cache} is corrupt"):
        data = load_mnist5k(source)
    assert (len(data.train), len(data.validation), len(data.test)) == (3500, 500, 1000)
    assert load_mnist5k(source).fingerprint() == data.fingerprint()


# -- 6 and 7. bad flags and TOML: a clear error naming the key, never a traceback ----------------------

BAD_INPUT = [
    # (name, arguments, TOML config or None, text the error must contain)
    (
        "config missing",
        ["train", "--config", "{tmp}/missing.toml"],
        None,
        "--config {tmp}/missing.toml: no such",
    ),
    ("config a directory", ["train", "--config", "{tmp}"], None, "--config {tmp}: is a directory"),
    ("config TOML syntax", ["sweep"], "lr = [", "invalid TOML"),
    ("config binary", ["sweep"], b"\xff\xfe\x00\x81", "not a text (UTF-8) file"),
    ("config unknown key", ["sweep"], "colour = 1", "unknown key(s) colour"),
    ("lr count 0", ["train", "--lr", "0.1:1:0"], None, "--lr '0.1:1:0': a log grid LOW:HIGH:COUNT needs"),
    ("lr word", ["train", "--lr", "abc"], None, "--lr 'abc': expected a number"),
    ("lr high < low", ["sweep", "--lr", "1:0.1:3"], None, "--lr '1:0.1:3': a log grid LOW:HIGH:COUNT needs"),
    ("lr negative", ["train", "--lr", "-0.1"], None, "--lr '-0.1': learning rates must be finite and > 0"),
    ("lr empty list", ["sweep"], "lr = []", "--lr []: no learning rate given"),
    ("lr table bool", ["sweep"], "[lr]\nrk4 = true", "--lr True: expected a number"),
    ("lr table word", ["sweep"], '[lr]\nrk4 = "abc"', "--lr 'abc'"),
    ("lr table unselected", ["sweep"], "[lr]\nadam = 0.1", "--lr names adam"),
    ("opt-arg without =", ["train", "--opt-arg", "momentum"], None, "--opt-arg 'momentum': expected"),
    ("opt_arg numbers", ["sweep"], "opt_arg = [1]", "--opt-arg [1]: expected [NAME:]KEY=VALUE"),
    ("workload_arg number", ["sweep"], "workload_arg = 5", "--workload-arg 5: expected"),
    ("workload unknown", ["train", "--workload", "nope"], None, "--workload: unknown workload 'nope'"),
    ("workload empty list", ["sweep"], "workload = []", "--workload []: expected a name"),
    ("optimizer number", ["train"], "optimizer = 5", "--optimizer 5: expected a name"),
    ("out a file", ["train", "--out", "{tmp}/file"], None, "--out {tmp}/file: it is a file, not a directory"),
    (
        "out under a file",
        ["sweep", "--out", "{tmp}/file/x"],
        None,
        "--out {tmp}/file/x: {tmp}/file is a file",
    ),
    ("out a number", ["train"], "out = 5", "--out 5: expected a directory path"),
    ("data-dir a file", ["train", "--data-dir", "{tmp}/file"], None, "--data-dir {tmp}/file: it is a file"),
    ("report of nothing", ["report", "{tmp}/nothing"], None, "rkopt report {tmp}/nothing: no finished runs"),
    ("report of an empty dir", ["report", "{tmp}/empty"], None, "rkopt report {tmp}/empty: no finished runs"),
    ("report out a file", ["report", "{tmp}/empty", "--out", "{tmp}/file"], None, "--out {tmp}/file: it is"),
    (
        "max-seconds inf",
        ["train", "--max-seconds", "inf"],
        None,
        "--max-seconds inf: expected a finite number",
    ),
    (
        "max-seconds nan",
        ["train", "--max-seconds", "nan"],
        None,
        "--max-seconds nan: expected a finite number",
    ),
    ("max-seconds negative", ["train", "--max-seconds", "-1"], None, "--max-seconds -1.0: expected a finite"),
    ("max_seconds TOML inf", ["sweep"], "max_seconds = inf", "--max-seconds inf: expected a finite number"),
    ("workers -2", ["sweep", "--workers", "-2"], None, "--workers -2: expected an integer >= 1"),
    ("workers 0", ["sweep", "--workers", "0"], None, "--workers 0: expected an integer >= 1"),
    (
        "hidden 0",
        ["train", "--workload-arg", "hidden=[0]"],
        None,
        "--workload-arg hidden=[0]: expected a list of",
    ),
    (
        "hidden negative",
        ["train", "--workload-arg", "hidden=[-3]"],
        None,
        "--workload-arg hidden=[-3]: expected",
    ),
    (
        "hidden bool",
        ["train", "--workload-arg", "hidden=[true]"],
        None,
        "--workload-arg hidden=[True]: expected",
    ),
    (
        "hidden float",
        ["train", "--workload-arg", "hidden=[1.5]"],
        None,
        "--workload-arg hidden=[1.5]: expected",
    ),
    (
        "width 0",
        ["train", "--workload", "cnn-bn", "--workload-arg", "width=0"],
        None,
        "width=0: expected an int",
    ),
    ("dropout 2", ["train", "--workload", "charlm", "--workload-arg", "dropout=2.0"], None, "dropout=2.0"),
    (
        "heads not dividing width",
        ["train", "--workload", "charlm", "--workload-arg", "heads=3"],
        None,
        "heads=3",
    ),
    (
        "max_grad_evals float",
        ["train"],
        "max_grad_evals = 1.5",
        "--max-grad-evals 1.5: expected an integer >= 1",
    ),
    ("max_grad_evals bool", ["train"], "max_grad_evals = true", "--max-grad-evals True: expected an integer"),
    ("eval_every float", ["sweep"], "eval_every = 2.5", "--eval-every 2.5: expected an integer >= 1"),
    ("steps bool", ["sweep"], "steps = true", "--steps True: expected an integer >= 1"),
    ("batch_size float", ["sweep"], "batch_size = [16, 1.5]", "--batch-size 1.5: expected an integer >= 1"),
    (
        "seed too large",
        ["sweep", "--seed", str(2**64)],
        None,
        f"--seed {2**64!r}: expected an integer from 0",
    ),
    ("threads 0", ["train"], "threads = 0", "--threads 0: expected an integer >= 1"),
    ("offline a word", ["train"], 'offline = "no"', "--offline 'no': expected true or false"),
    ("dry_run a word", ["sweep"], 'dry_run = "no"', "--dry-run 'no': expected true or false"),
    ("target inf", ["sweep"], "target = inf", "--target inf: expected a finite number > 0"),
    ("robustness bool", ["sweep"], "robustness_tolerance = true", "--robustness-tolerance True: expected"),
    ("device unknown", ["train"], 'device = "bogus"', "--device 'bogus': expected a torch device"),
    ("batch-size a word", ["train", "--batch-size", "abc"], None, "argument --batch-size: invalid int value"),
    ("list unknown", ["list", "nope"], None, "argument what: invalid choice: 'nope'"),
]


@pytest.mark.parametrize(
    ("args", "toml", "message"), [case[1:] for case in BAD_INPUT], ids=[c[0] for c in BAD_INPUT]
)
def test_bad_input_is_a_clear_error_without_traceback(tmp_path, capsys, monkeypatch, args, toml, message):
    monkeypatch.chdir(tmp_path)  # the default --out, runs, is here
    (tmp_path / "file").write_text("a regular file")
    (tmp_path / "empty").mkdir()
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    command = args[0]
    if toml is not None:
        config = tmp_path / "config.toml"
        config.write_bytes(toml if isinstance(toml, bytes) else toml.encode())
        args += ["--config", str(config)]
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"rkopt {command}: error: "), err
    assert message.replace("{tmp}", str(tmp_path)) in err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_atomic_files_get_the_permissions_of_a_plain_open(tmp_path):
    from rkopt.bench.records import write_text_atomic

    previous = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "report.md", "text")
        (tmp_path / "plain.md").write_text("text")
    finally:
        os.umask(previous)
    mode = (tmp_path / "report.md").stat().st_mode & 0o777
    assert mode == (tmp_path / "plain.md").stat().st_mode & 0o777 == 0o644
