"""The ``rkopt`` command: ``train``, ``sweep``, ``report`` and ``list``.

    rkopt train --workload mlp-digits --optimizer rk4 --lr 0.1 --max-grad-evals 400 --out runs/demo
    rkopt sweep --config configs/main.toml
    rkopt sweep --config configs/study.toml --executor ray --address auto
    rkopt report runs/demo
    rkopt list

Settings come from flags or from a TOML file (``--config``; the keys are the flag names with ``_``,
plus ``[[study]]`` tables for per-workload settings); flags override the file. See
:mod:`rkopt.bench.config` and ``docs/harness.md``.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import rkopt
from rkopt.bench.analysis import RELATIVE_TOLERANCE, ROBUSTNESS_TOLERANCE
from rkopt.bench.backends import BACKENDS
from rkopt.bench.config import (
    DEFAULT_LR_EXTEND_MAX,
    DEFAULT_MAX_GRAD_EVALS,
    DEFAULT_OPTIMIZER,
    DEFAULT_SWEEP_LR_FACTORS,
    DEFAULT_WORKLOAD,
    EXECUTORS,
    STAGE_BATCHES,
    Environment,
    SweepConfig,
    check_device_available,
    directory_setting,
    load_toml,
    parse_bool,
    parse_executor,
    sweep_configs,
)
from rkopt.bench.data import DatasetUnavailableError, default_data_dir
from rkopt.bench.errors import ConfigError
from rkopt.bench.optimizers import optimizer_catalog
from rkopt.bench.records import CorruptRunError, SkippedRun, is_finished, run_directory
from rkopt.bench.report import REPORT_DIR, write_report
from rkopt.bench.runner import execute_run
from rkopt.bench.sweep import all_runs, import_ray, run_sweep
from rkopt.bench.workloads import WORKLOADS

EXPERIMENT_EPILOG = """\
examples:
  rkopt train --workload mlp-digits --optimizer rk4 --lr 0.1 --batch-size 32 --max-grad-evals 400 \\
      --out runs/demo
  rkopt sweep --workload mlp-mnist5k --optimizer rk4 adam --lr rk4=0.03:0.3:3 adam=1e-4:1e-2:3 \\
      --batch-size 32 512 --seed 0 1 --max-grad-evals 2000 --workers 2 --out runs/sweep
  rkopt sweep --workload mlp-digits --optimizer rk4 adam --backend torch jax --seed 0 1 --out runs/backends
  rkopt sweep --config configs/main.toml
  rkopt sweep --config configs/study.toml --executor ray --address auto
Learning rates: a number, a list 'a,b,c' or a log-spaced grid 'LOW:HIGH:COUNT'; prefix 'OPTIMIZER='
to give one optimizer its own grid. Budgets: the first limit reached ends a run. A TOML config may
hold [[study]] tables: one sweep per entry (per-workload budgets, batch sizes, lr grids)."""

_NOT_SETTINGS = {"command", "handler", "parser", "config", "help"}
_TOML_ONLY = {"sweep": {"study"}}
"""Config-file keys without a flag, per command."""


def _add_experiment_arguments(parser: argparse.ArgumentParser, sweep: bool) -> None:
    """The flags shared by ``train`` and ``sweep`` (``sweep`` takes lists where ``train`` takes one)."""

    many = {"nargs": "+"} if sweep else {}
    what = parser.add_argument_group("what to run")
    what.add_argument(
        "--config", metavar="FILE.toml", help="read settings from a TOML file; flags override it"
    )
    what.add_argument(
        "--workload",
        metavar="NAME",
        **many,
        help=f"workload(s) (`rkopt list workloads`; default: {DEFAULT_WORKLOAD})",
    )
    what.add_argument(
        "--workload-arg",
        metavar="[WORKLOAD:]KEY=VALUE",
        nargs="+",
        action="extend",
        help="workload option, e.g. hidden=[128,128] (default: the workload's defaults)",
    )
    what.add_argument(
        "--optimizer",
        metavar="NAME",
        **many,
        help="optimizer(s): baseline, rkopt preset or tableau (`rkopt list optimizers`; "
        f"default: {DEFAULT_OPTIMIZER})",
    )
    what.add_argument(
        "--lr",
        metavar="[OPTIMIZER=]SPEC",
        **many,
        help="learning rate"
        + ("s" if sweep else "")
        + " (the cap of h for adaptive variants; default: per optimizer, 1e-3 for adam(w), 0.1 for sgd and "
        "rkopt" + (", times 1/3, 1, 3 in a sweep)" if sweep else ")"),
    )
    what.add_argument(
        "--opt-arg",
        metavar="[OPTIMIZER:]KEY=VALUE",
        nargs="+",
        action="extend",
        help="optimizer keyword argument, e.g. adam:weight_decay=0.01 or momentum=0.5 (default: none)",
    )
    what.add_argument("--batch-size", metavar="N", type=int, **many, help="minibatch size(s) (default: 32)")
    what.add_argument(
        "--seed", metavar="N", type=int, **many, help="seed(s) of init and data order (default: 0)"
    )
    what.add_argument(
        "--stage-batches",
        metavar="|".join(STAGE_BATCHES),
        **many,
        help="Runge–Kutta stages of a step on the step's batch (same) or each on the next batch of the "
        "loader (fresh, as in the DAL reference code); baselines ignore it"
        + ("; give both for the ablation side by side" if sweep else "")
        + " (default: same)",
    )
    what.add_argument(
        "--backend",
        metavar="|".join(BACKENDS),
        **many,
        help="framework that trains: torch, or jax (the optax binding; MLP workloads; pip install "
        "'rkopt[jax]')" + ("; give both to compare them side by side" if sweep else "") + " (default: torch)",
    )
    budget = parser.add_argument_group("budget (the first limit reached ends a run)")
    budget.add_argument(
        "--max-grad-evals",
        metavar="N",
        type=int,
        help=f"gradient evaluations per run, the same for every optimizer (default: {DEFAULT_MAX_GRAD_EVALS} "
        "when no budget is given)",
    )
    budget.add_argument(
        "--max-seconds", metavar="S", type=float, help="training seconds per run (default: none)"
    )
    budget.add_argument("--steps", metavar="N", type=int, help="optimizer steps per run (default: none)")
    budget.add_argument(
        "--eval-every",
        metavar="N",
        type=int,
        help="measure every N gradient evaluations (default: ~20 measurements, a multiple of 12)",
    )
    budget.add_argument(
        "--target",
        metavar="X",
        type=float,
        help="target test metric for time-to-target (default: the dataset's, e.g. 0.9 accuracy on mnist5k)",
    )
    how = parser.add_argument_group("where and how")
    how.add_argument("--out", metavar="DIR", help="results directory (default: runs)")
    how.add_argument(
        "--data-dir", metavar="DIR", help=f"dataset cache (default: $RKOPT_DATA or {default_data_dir()})"
    )
    how.add_argument(
        "--offline", action="store_true", help="never download datasets (default: download if needed)"
    )
    how.add_argument("--device", metavar="DEV", help="torch device (default: cpu)")
    how.add_argument("--threads", metavar="N", type=int, help="torch threads per run (default: 1)")
    how.add_argument("--quiet", action="store_true", help="no progress bars or messages (default: off)")
    if sweep:
        how.add_argument(
            "--workers", metavar="N", type=int, help="parallel worker processes / local Ray CPUs (default: 1)"
        )
        how.add_argument(
            "--executor",
            metavar="|".join(EXECUTORS),
            help="where runs execute: local worker processes, or Ray tasks (pip install 'rkopt[ray]'; "
            "docs/cluster.md) (default: local)",
        )
        how.add_argument(
            "--address",
            metavar="ADDR",
            help="Ray cluster to connect to: auto, ray://HOST:10001, ... (default: a local Ray instance)",
        )
        how.add_argument(
            "--runtime-env",
            metavar="JSON",
            help='Ray runtime environment of the workers (JSON), e.g. \'{"pip": ["rkopt[bench]"]}\' '
            "(default: none)",
        )
        how.add_argument("--dry-run", action="store_true", help="list the runs and whether they are finished")
        how.add_argument("--no-report", action="store_true", help="do not write the report at the end")
        select = parser.add_argument_group("learning-rate selection")
        select.add_argument(
            "--lr-extend",
            action=argparse.BooleanOptionalAction,
            help="extend each lr grid past an edge-selected lr (same log spacing), point by point, until the "
            "selected lr is interior or the new point diverges (default: off)",
        )
        select.add_argument(
            "--lr-extend-max",
            metavar="N",
            type=int,
            help=f"at most N points past each end of a grid (default: {DEFAULT_LR_EXTEND_MAX})",
        )
        _add_robustness_argument(select)


def _add_robustness_argument(parser: Any) -> None:
    parser.add_argument(
        "--robustness-tolerance",
        metavar="X",
        type=float,
        help="lr-robustness range: the lrs whose validation score is within X of the best "
        f"(default: {ROBUSTNESS_TOLERANCE['accuracy']:g} absolute for accuracy, {RELATIVE_TOLERANCE:g} "
        "relative for perplexity)",
    )


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags on the command line."""
    return {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS}


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """TOML settings (``--config``) overridden by the flags given on the command line; the switches
    (flags without a value, such as ``--offline``) as booleans."""
    settings = load_toml(args.config) if getattr(args, "config", None) else {}
    known = {action.dest for action in args.parser._actions} - _NOT_SETTINGS
    known |= _TOML_ONLY.get(args.command, set())
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(
            f"--config {args.config}: unknown key(s) {', '.join(unknown)}; "
            f"valid keys: {', '.join(sorted(known))}"
        )
    settings.update(_flags(args))
    for action in args.parser._actions:
        if action.nargs == 0 and action.dest in settings:
            settings[action.dest] = parse_bool(settings[action.dest], action.option_strings[0])
    return settings


def _out(settings: dict[str, Any]) -> Path:
    """The results directory, ``--out`` (default ``runs``)."""
    return directory_setting(settings.get("out", "runs"), "--out")


def _warn_skipped(command: str, skipped: Sequence[SkippedRun]) -> None:
    for run in skipped:
        print(f"rkopt {command}: warning: skipped run {run.path}: {run.reason}", file=sys.stderr)


def _robustness(settings: dict[str, Any]) -> float | None:
    value = settings.get("robustness_tolerance")
    if value is None:
        return None
    try:
        number = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number >= 0):
        raise ConfigError(f"--robustness-tolerance {value!r}: expected a number >= 0")
    return number


def _say(settings: dict[str, Any], message: str) -> None:
    if not settings.get("quiet"):
        print(message)


def _train(args: argparse.Namespace) -> int:

    settings = _settings(args)
    config = SweepConfig.from_settings(settings)
    runs = config.runs()
    if len(runs) != 1:
        raise ConfigError(
            f"rkopt train runs one configuration, these settings give {len(runs)} (workloads × optimizers × "
            "lrs × batch sizes × seeds); use `rkopt sweep` for grids"
        )
    out = _out(settings)
    environment = Environment.from_settings(settings)
    check_device_available(environment.device, [runs[0].backend])
    outcome = execute_run(runs[0], out, environment, progress=not settings.get("quiet"))
    final = outcome.final
    scores = ", ".join(f"{k} {v:.4g}" for k, v in sorted(final.items()) if k.startswith(("val_", "test_")))
    state = "already finished, not rerun" if outcome.skipped else f"{outcome.status} ({outcome.stop_reason})"
    _say(
        settings,
        f"{runs[0].run_id}: {state}; {final['step']} steps, {final['grad_evals']} grad evals, "
        f"{final['time']:.3g} s training; {scores}\nresults: {out / 'runs' / runs[0].run_id}",
    )
    return 0


def _workers(settings: dict[str, Any]) -> int:
    value = settings.get("workers", 1)
    if isinstance(value, bool) or not str(value).strip().isdigit() or int(value) < 1:
        raise ConfigError(f"--workers {value!r}: expected an integer >= 1")
    return int(value)


def _sweep(args: argparse.Namespace) -> int:

    settings = _settings(args)
    configs = sweep_configs(settings, lr_factors=DEFAULT_SWEEP_LR_FACTORS, overrides=_flags(args))
    executor, address, runtime_env = parse_executor(settings)
    if executor == "ray":
        import_ray()  # a clear error now, before anything is written, if Ray is not installed
    robustness = _robustness(settings)
    workers = _workers(settings)
    out = _out(settings)
    environment = Environment.from_settings(settings)
    runs = all_runs(configs)
    if executor == "local":
        check_device_available(environment.device, {run.backend for run in runs})
    if settings.get("dry_run"):
        for run in runs:
            print(f"{'finished' if is_finished(run_directory(out, run)) else 'pending '} {run.run_id}")
        if any(config.lr_extend for config in configs):
            print("(lr-extend: more runs may be added past edge-selected learning rates)")
        return 0
    quiet = bool(settings.get("quiet"))
    where = (
        f"Ray at {address}"
        if executor == "ray" and address
        else "a local Ray instance"
        if executor == "ray"
        else f"{workers} worker(s)"
    )
    _say(settings, f"sweep: {len(runs)} runs in {len(configs)} sweep(s), {where}, results in {out}")
    summary = run_sweep(
        configs,
        out,
        environment,
        workers=0 if executor == "ray" and "workers" not in settings else workers,  # 0: all CPUs
        progress=not quiet,
        executor=executor,
        address=address,
        runtime_env=runtime_env,
    )
    extended = f", {summary.extension_runs} of them added by lr-extend" if summary.extension_runs else ""
    _say(
        settings,
        f"sweep: {summary.completed} completed, {summary.diverged} diverged, {len(summary.failed)} failed, "
        f"{summary.already_finished} already finished (of {summary.total}{extended})",
    )
    for run_id, error in summary.failed:
        print(
            f"run {run_id} failed (it will be retried when the sweep is run again):\n{error}", file=sys.stderr
        )
    if not settings.get("no_report"):
        report = write_report(out, robustness=robustness)
        _warn_skipped("sweep", report.skipped_runs)
        _say(settings, f"report: {report.markdown}")
    return 1 if summary.failed else 0


def _report(args: argparse.Namespace) -> int:

    robustness = _robustness(vars(args))
    results = Path(args.results_dir)
    out = Path(args.out) if args.out else results / REPORT_DIR
    if args.out or results.is_dir():
        directory_setting(out, "--out")
    report = write_report(results, out, robustness)
    _warn_skipped("report", report.skipped_runs)
    if not args.quiet:
        print(report.markdown.read_text())
        print(f"report: {report.markdown}\nsummary: {report.summary}")
        print("figures: " + ", ".join(str(p) for p in report.figures))
    return 0


def _list(args: argparse.Namespace) -> int:

    sections = {
        "workloads": [
            f"{w.name:18s} {w.description}; metric {w.metric}; options: "
            + (", ".join(f"{k}={v!r}" for k, v in w.defaults.items()) or "none")
            for w in WORKLOADS.values()
        ],
        "optimizers": [f"{name:18s} {text}" for name, text in optimizer_catalog().items()],
        "tableaux": [
            f"{t.name:18s} {t.stages} stages, order {t.order}"
            + (f", embedded order {t.embedded_order} (error control)" if t.b_hat is not None else "")
            for t in rkopt.TABLEAUX.values()
        ]
        + [f"aliases: {', '.join(f'{a}={n}' for a, n in rkopt.ALIASES.items())}"],
    }
    for name in [args.what] if args.what else sections:
        print(f"{name}:")
        print("\n".join(f"  {line}" for line in sections[name]))
    return 0


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors start ``rkopt COMMAND: error:`` like the others (usage after)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n{self.format_usage()}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rkopt",
        description="Runge–Kutta optimizers against Adam & co: train, sweep, report.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, handler, sweep, text in (
        ("train", _train, False, "train one configuration and record it"),
        ("sweep", _sweep, True, "run a grid (lr × seeds × optimizers × batch sizes), then write the report"),
    ):
        sub = commands.add_parser(
            name,
            help=text,
            description=text,
            epilog=EXPERIMENT_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            argument_default=argparse.SUPPRESS,
        )
        _add_experiment_arguments(sub, sweep)
        sub.set_defaults(handler=handler, parser=sub)
    report = commands.add_parser("report", help="write tables and figures for a results directory")
    report.add_argument("results_dir", metavar="RESULTS_DIR", help="a sweep's or train's --out, or one run")
    report.add_argument("--out", metavar="DIR", help="where to write (default: RESULTS_DIR/report)")
    report.add_argument("--quiet", action="store_true", help="do not print the report (default: off)")
    _add_robustness_argument(report)
    report.set_defaults(handler=_report)
    listing = commands.add_parser("list", help="list workloads, optimizers and tableaux")
    listing.add_argument(
        "what", nargs="?", choices=("workloads", "optimizers", "tableaux"), help="(default: all)"
    )
    listing.set_defaults(handler=_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ConfigError, DatasetUnavailableError) as err:
        print(f"rkopt {args.command}: error: {err}", file=sys.stderr)
        return 2
    except CorruptRunError as err:
        print(
            f"rkopt {args.command}: error: damaged finished run {err}; delete its directory to run it again",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(
            "rkopt: interrupted; finished runs are kept, run the same command again to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
