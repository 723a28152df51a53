"""What to run: one run's configuration, a sweep's grid, and how both are read from flags or TOML.

Settings are a flat mapping whose keys are the command-line flags with ``_`` for ``-`` (``batch_size``,
``max_grad_evals``, ``opt_arg``, ...). A TOML config file uses the same keys; flags given on the
command line override it. Values may be written as on the command line (strings) or as TOML values:

    workload = "mlp-mnist5k"
    optimizer = ["rk4", "adam"]
    batch_size = [32, 512]
    seed = [0, 1]
    max_grad_evals = 2000
    [lr]                    # or lr = "0.01:1:5" (5 log-spaced points) / lr = [0.05, 0.1] for all
    rk4 = [0.05, 0.1, 0.2]
    adam = "1e-4:1e-2:3"
    [opt_arg.adam]          # or [opt_arg] for every optimizer
    weight_decay = 0.0
    [workload_arg]
    hidden = [128, 128]

A *study* runs several such sweeps at once, one per workload with its own budget, batch sizes and lr
grids: each ``[[study]]`` table holds the keys of :data:`STUDY_KEYS`, which override the top-level
keys (tables such as ``[lr]`` are merged key by key); flags given on the command line override both,
and ``--workload`` selects entries. See :func:`sweep_configs` and ``docs/harness.md``.

    optimizer = ["sgd", "adam", "rk4"]
    [lr]
    adam = "1e-4:1e-2:5"
    [[study]]
    workload = "mlp-digits"
    batch_size = [16, 256]
    max_grad_evals = 2000
    [[study]]
    workload = "charlm"
    batch_size = [16, 128]
    max_grad_evals = 4000
    [study.lr]
    rk4 = "0.1:1:3"
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rkopt.bench.data import DataSource, default_data_dir
from rkopt.bench.errors import ConfigError
from rkopt.bench.optimizers import BASELINES, canonical_optimizer, check_optimizer, default_lr
from rkopt.bench.workloads import get_workload

DEFAULT_WORKLOAD = "mlp-mnist5k"
DEFAULT_OPTIMIZER = "rk4"
DEFAULT_MAX_GRAD_EVALS = 2000
DEFAULT_SWEEP_LR_FACTORS = (1 / 3, 1.0, 3.0)
STAGE_BATCHES = ("same", "fresh")
"""``--stage-batches``: every closure call of a Runge–Kutta step on the step's batch (``same``) or each
call after the first on the next batch of the loader (``fresh``). Baselines always use ``same``."""
DEFAULT_LR_EXTEND_MAX = 6
"""``--lr-extend-max``: at most this many points are added past each end of an lr grid."""
EXECUTORS = ("local", "ray")
MEASUREMENTS_PER_RUN = 20
STAGE_MULTIPLE = 12
"""Default evaluation intervals are multiples of 12 = lcm(1, 2, 3, 4, 6) gradient evaluations, so that
methods of 1, 2, 3, 4 and 6 stages per step are all measured at exactly the same budgets."""


# -- parsing of values -------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """A flag value as JSON (``0.1``, ``[64, 64]``, ``true``), else a Python literal, else the string."""
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError):
            continue
    return text


def parse_assignments(
    items: Iterable[str] | Mapping[str, Any], flag: str
) -> dict[str | None, dict[str, Any]]:
    """``[NAME:]KEY=VALUE`` items (or a TOML table) → {NAME or None (for all): {KEY: value}}."""
    if isinstance(items, Mapping):
        common = {k: v for k, v in items.items() if not isinstance(v, Mapping)}
        named = {k: dict(v) for k, v in items.items() if isinstance(v, Mapping)}
        return {None: common, **named} if common else named
    parsed: dict[str | None, dict[str, Any]] = {}
    for item in items:
        target, sep, value = item.partition("=")
        if not sep or not target:
            raise ConfigError(
                f"{flag} {item!r}: expected [NAME:]KEY=VALUE, e.g. {flag} adam:weight_decay=0.01"
            )
        name, _, key = target.rpartition(":")
        parsed.setdefault(name or None, {})[key.strip()] = parse_value(value.strip())
    return parsed


def log_grid(low: float, high: float, count: int) -> tuple[float, ...]:
    """``count`` log-spaced values from ``low`` to ``high``, rounded to 3 significant digits."""
    return tuple(float(f"{v:.3g}") for v in np.geomspace(low, high, count))


def parse_lr_grid(spec: Any, flag: str = "--lr") -> tuple[float, ...]:
    """A learning-rate grid: a number, a list, ``"LOW:HIGH:COUNT"`` (log-spaced) or ``"a,b,c"``."""
    try:
        if isinstance(spec, str) and spec.count(":") == 2:
            low, high, count = spec.split(":")
            values = log_grid(float(low), float(high), int(count))
        elif isinstance(spec, str):
            values = tuple(float(v) for v in spec.split(",") if v.strip())
        elif isinstance(spec, (int, float)) and not isinstance(spec, bool):
            values = (float(spec),)
        else:
            values = tuple(float(v) for v in spec)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"{flag} {spec!r}: expected a number, a list 'a,b,c' or a log grid 'LOW:HIGH:COUNT' ({err})"
        ) from err
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise ConfigError(f"{flag} {spec!r}: learning rates must be finite and > 0")
    return values


def parse_lr_settings(spec: Any) -> dict[str | None, tuple[float, ...]]:
    """``--lr`` items (``SPEC`` or ``OPTIMIZER=SPEC``) or a TOML value/table → {name or None: grid}."""
    if isinstance(spec, Mapping):
        return {(None if k in ("*", "default") else k): parse_lr_grid(v) for k, v in spec.items()}
    items = spec if isinstance(spec, list) and all(isinstance(v, str) for v in spec) else [spec]
    grids: dict[str | None, tuple[float, ...]] = {}
    for item in items:
        name, value = None, item
        if isinstance(item, str) and "=" in item:
            name, value = (part.strip() for part in item.split("=", 1))
        grids[name] = (*grids.get(name, ()), *parse_lr_grid(value))
    return grids


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _integers(values: Any, flag: str, minimum: int = 1) -> tuple[int, ...]:
    """Distinct integers >= ``minimum`` from a value or list of values (ints or digit strings)."""
    out = []
    for value in _as_list(values):
        text = str(value).strip()
        if isinstance(value, bool) or not text.isdigit() or int(text) < minimum:
            raise ConfigError(f"{flag} {value!r}: expected an integer >= {minimum}")
        out.append(int(text))
    return tuple(dict.fromkeys(out))


def _optional_number(settings: Mapping[str, Any], key: str, kind: type) -> Any:
    value = settings.get(key)
    if value is None:
        return None
    try:
        number = kind(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not number > 0:
        raise ConfigError(f"--{key.replace('_', '-')} {value!r}: expected a {kind.__name__} > 0")
    return number


def parse_bool(value: Any, flag: str) -> bool:
    """A TOML/flag boolean: ``true``/``false`` (also as strings, any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConfigError(f"{flag} {value!r}: expected true or false")


def parse_stage_batches(value: Any) -> tuple[str, ...]:
    """``--stage-batches`` values: one or both of ``same`` and ``fresh``."""
    values = tuple(dict.fromkeys(str(v).strip() for v in _as_list(value)))
    bad = [v for v in values if v not in STAGE_BATCHES]
    if bad or not values:
        raise ConfigError(
            f"--stage-batches {(bad or [''])[0]!r}: expected {' or '.join(STAGE_BATCHES)} (or both, for the "
            "ablation side by side)"
        )
    return values


def parse_executor(settings: Mapping[str, Any]) -> tuple[str, str | None, dict[str, Any] | None]:
    """(executor, Ray address, Ray runtime environment) from ``executor``/``address``/``runtime_env``."""
    executor = str(settings.get("executor", "local")).strip()
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor {executor!r}: expected one of {', '.join(EXECUTORS)}")
    address = settings.get("address")
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise ConfigError(f"--address {address!r}: expected a Ray address such as auto or ray://HOST:10001")
    runtime_env = settings.get("runtime_env")
    if isinstance(runtime_env, str):
        try:
            runtime_env = json.loads(runtime_env)
        except ValueError as err:
            raise ConfigError(f"--runtime-env {runtime_env!r}: expected a JSON object ({err})") from err
    if runtime_env is not None and not isinstance(runtime_env, Mapping):
        raise ConfigError(f"--runtime-env {runtime_env!r}: expected a JSON object / TOML table")
    if executor != "ray" and (address is not None or runtime_env is not None):
        flag = "--address" if address is not None else "--runtime-env"
        raise ConfigError(f"{flag} is only used with --executor ray")
    return executor, address, dict(runtime_env) if runtime_env is not None else None


# -- configurations ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """When a run stops: the first of its limits reached (training seconds exclude evaluation)."""

    max_grad_evals: int | None = None
    max_seconds: float | None = None
    steps: int | None = None

    def __post_init__(self) -> None:
        if self.max_grad_evals is None and self.max_seconds is None and self.steps is None:
            raise ConfigError("give a budget: --max-grad-evals N, --max-seconds S or --steps N")

    def stop_reason(self, grad_evals: int, seconds: float, steps: int) -> str | None:
        """The name of the limit reached, or None to go on."""
        if self.max_grad_evals is not None and grad_evals >= self.max_grad_evals:
            return "max_grad_evals"
        if self.max_seconds is not None and seconds >= self.max_seconds:
            return "max_seconds"
        if self.steps is not None and steps >= self.steps:
            return "steps"
        return None

    def default_eval_every(self) -> int:
        """About :data:`MEASUREMENTS_PER_RUN` measurements, at a multiple of :data:`STAGE_MULTIPLE`."""
        if self.max_grad_evals is not None:
            span = self.max_grad_evals
        elif self.steps is not None:
            span = 4 * self.steps
        else:
            span = 10 * STAGE_MULTIPLE * MEASUREMENTS_PER_RUN
        per = span / MEASUREMENTS_PER_RUN
        return (
            STAGE_MULTIPLE * max(1, math.ceil(per / STAGE_MULTIPLE))
            if per >= STAGE_MULTIPLE
            else max(1, int(per))
        )


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run (and nothing about where or how it executes)."""

    workload: str
    optimizer: str
    lr: float
    batch_size: int
    seed: int
    budget: Budget
    eval_every: int
    target: float | None = None
    workload_options: Mapping[str, Any] = field(default_factory=dict)
    optimizer_options: Mapping[str, Any] = field(default_factory=dict)
    stage_batches: str = "same"

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-able data; ``stage_batches`` only when not the default ``same``, so that
        the run ids of results recorded before the option existed stay valid."""
        data = asdict(self)
        data["workload_options"] = dict(self.workload_options)
        data["optimizer_options"] = dict(self.optimizer_options)
        if self.stage_batches == "same":
            del data["stage_batches"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        return cls(**{**data, "budget": Budget(**data["budget"])})

    @property
    def run_id(self) -> str:
        """A readable, unique directory name: the main settings plus a hash of the whole config."""
        digest = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
        fresh = "_fresh" if self.stage_batches == "fresh" else ""
        return (
            f"{self.workload}_{self.optimizer}{fresh}_bs{self.batch_size}_lr{self.lr:.4g}_seed{self.seed}"
            f"_{digest}"
        )


@dataclass(frozen=True)
class Environment:
    """Where and how runs execute; not part of a run's identity."""

    data_dir: str = field(default_factory=lambda: str(default_data_dir()))
    download: bool = True
    device: str = "cpu"
    threads: int = 1

    @property
    def source(self) -> DataSource:
        return DataSource(Path(self.data_dir), self.download)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Environment:
        return cls(
            data_dir=str(settings.get("data_dir") or default_data_dir()),
            download=not settings.get("offline", False),
            device=str(settings.get("device", "cpu")),
            threads=_integers(settings.get("threads", 1), "--threads")[0],
        )


def _per_name(
    table: Mapping[str | None, Any], names: Sequence[str], flag: str, canonical: Any = str
) -> dict[str, Any]:
    """Resolve a {name or None: value} table onto ``names``; a name not in ``names`` is an error."""
    resolved = {canonical(k) if k is not None else None: v for k, v in table.items()}
    stray = [k for k in resolved if k is not None and k not in names]
    if stray:
        raise ConfigError(
            f"{flag} names {', '.join(stray)}, which is not among the selected: {', '.join(names)}"
        )
    return resolved


@dataclass(frozen=True, order=True)
class Cell:
    """One variant of a sweep, whose learning rate is selected: workload × optimizer × batch size ×
    stage batches. Its runs are its learning rates × the sweep's seeds."""

    workload: str
    optimizer: str
    batch_size: int
    stage_batches: str = "same"


def stage_batches_for(optimizer: str, stage_batches: str) -> str:
    """``fresh`` only means something for Runge–Kutta optimizers; a baseline always runs ``same``."""
    return "same" if optimizer in BASELINES else stage_batches


@dataclass(frozen=True)
class SweepConfig:
    """A grid of runs: workloads × optimizers × their learning rates × batch sizes × stage batches × seeds.

    With ``lr_extend`` the sweep adds learning rates past an edge-selected one (see
    :func:`rkopt.bench.sweep.extension_runs`); :meth:`runs` is the initial grid only.
    """

    workloads: tuple[str, ...]
    optimizers: tuple[str, ...]
    lrs: Mapping[str, tuple[float, ...]]
    batch_sizes: tuple[int, ...]
    seeds: tuple[int, ...]
    budget: Budget
    eval_every: int
    target: float | None = None
    workload_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    optimizer_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    stage_batches: tuple[str, ...] = ("same",)
    lr_extend: bool = False
    lr_extend_max: int = DEFAULT_LR_EXTEND_MAX

    def cells(self) -> list[Cell]:
        """The variants, each once (a baseline is not repeated for ``fresh``)."""
        cells = [
            Cell(workload, optimizer, batch_size, stage_batches_for(optimizer, stage))
            for workload in self.workloads
            for optimizer in self.optimizers
            for batch_size in self.batch_sizes
            for stage in self.stage_batches
        ]
        return list(dict.fromkeys(cells))

    def run_config(self, cell: Cell, lr: float, seed: int) -> RunConfig:
        return RunConfig(
            workload=cell.workload,
            optimizer=cell.optimizer,
            lr=lr,
            batch_size=cell.batch_size,
            seed=seed,
            budget=self.budget,
            eval_every=self.eval_every,
            target=self.target,
            workload_options=dict(self.workload_options.get(cell.workload, {})),
            optimizer_options=dict(self.optimizer_options.get(cell.optimizer, {})),
            stage_batches=cell.stage_batches,
        )

    def cell_runs(self, cell: Cell, lrs: Iterable[float]) -> list[RunConfig]:
        """The runs of ``cell`` at the learning rates ``lrs``: every seed of each."""
        return [self.run_config(cell, lr, seed) for lr in lrs for seed in self.seeds]

    def runs(self) -> list[RunConfig]:
        """The initial grid: every cell at its optimizer's learning rates."""
        return [run for cell in self.cells() for run in self.cell_runs(cell, self.lrs[cell.optimizer])]

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], lr_factors: Sequence[float] = (1.0,)) -> SweepConfig:
        """Build and validate a sweep from flag/TOML settings. Optimizers without a given ``lr`` get
        their default lr times ``lr_factors``."""
        workloads = tuple(dict.fromkeys(_as_list(settings.get("workload", DEFAULT_WORKLOAD))))
        for workload in workloads:
            get_workload(workload)
        optimizers = tuple(
            dict.fromkeys(
                canonical_optimizer(n) for n in _as_list(settings.get("optimizer", DEFAULT_OPTIMIZER))
            )
        )
        lr_table = _per_name(
            parse_lr_settings(settings["lr"]) if "lr" in settings else {},
            optimizers,
            "--lr",
            canonical_optimizer,
        )
        lrs = {
            name: lr_table.get(name) or lr_table.get(None) or tuple(default_lr(name) * f for f in lr_factors)
            for name in optimizers
        }
        opt_table = _per_name(
            parse_assignments(settings.get("opt_arg", []), "--opt-arg"),
            optimizers,
            "--opt-arg",
            canonical_optimizer,
        )
        optimizer_options = {
            name: {**opt_table.get(None, {}), **opt_table.get(name, {})} for name in optimizers
        }
        for name in optimizers:
            check_optimizer(name, lrs[name][0], optimizer_options[name])
        workload_table = _per_name(
            parse_assignments(settings.get("workload_arg", []), "--workload-arg"), workloads, "--workload-arg"
        )
        workload_options = {
            name: {**workload_table.get(None, {}), **workload_table.get(name, {})} for name in workloads
        }
        for name in workloads:
            get_workload(name).options(workload_options[name])
        limits = {
            "max_grad_evals": _optional_number(settings, "max_grad_evals", int),
            "max_seconds": _optional_number(settings, "max_seconds", float),
            "steps": _optional_number(settings, "steps", int),
        }
        if all(v is None for v in limits.values()):
            limits["max_grad_evals"] = DEFAULT_MAX_GRAD_EVALS
        budget = Budget(**limits)
        eval_every = _optional_number(settings, "eval_every", int) or budget.default_eval_every()
        target = _optional_number(settings, "target", float)
        return cls(
            workloads=workloads,
            optimizers=optimizers,
            lrs=lrs,
            batch_sizes=_integers(settings.get("batch_size", 32), "--batch-size"),
            seeds=_integers(settings.get("seed", 0), "--seed", minimum=0),
            budget=budget,
            eval_every=eval_every,
            target=target,
            workload_options=workload_options,
            optimizer_options=optimizer_options,
            stage_batches=parse_stage_batches(settings.get("stage_batches", "same")),
            lr_extend=parse_bool(settings.get("lr_extend", False), "--lr-extend"),
            lr_extend_max=_integers(
                settings.get("lr_extend_max", DEFAULT_LR_EXTEND_MAX), "--lr-extend-max", minimum=1
            )[0],
        )


STUDY_KEYS = (
    "workload",
    "workload_arg",
    "optimizer",
    "lr",
    "opt_arg",
    "batch_size",
    "seed",
    "max_grad_evals",
    "max_seconds",
    "steps",
    "eval_every",
    "target",
    "stage_batches",
    "lr_extend",
    "lr_extend_max",
)
"""The keys a ``[[study]]`` entry may set (the rest, such as ``out`` or ``workers``, are top-level)."""
_MERGED_TABLES = ("lr", "opt_arg", "workload_arg")


def _merge_entry(base: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in entry.items():
        if key in _MERGED_TABLES and isinstance(value, Mapping) and isinstance(base.get(key), Mapping):
            merged[key] = {**base[key], **value}
        else:
            merged[key] = value
    return merged


def sweep_configs(
    settings: Mapping[str, Any],
    lr_factors: Sequence[float] = (1.0,),
    overrides: Mapping[str, Any] | None = None,
) -> list[SweepConfig]:
    """The sweeps of ``settings``: one, or one per ``[[study]]`` entry (entry keys override top-level
    keys, ``overrides`` — the command-line flags — override both; ``--workload`` selects entries)."""
    overrides = dict(overrides or {})
    entries = settings.get("study")
    base = {k: v for k, v in settings.items() if k != "study"}
    if entries is None:
        return [SweepConfig.from_settings({**base, **overrides}, lr_factors)]
    if not isinstance(entries, list) or not entries or not all(isinstance(e, Mapping) for e in entries):
        raise ConfigError("study: expected one or more [[study]] tables (TOML array of tables)")
    selected = overrides.pop("workload", None)
    configs = []
    for number, entry in enumerate(entries, 1):
        unknown = sorted(set(entry) - set(STUDY_KEYS))
        if unknown:
            raise ConfigError(
                f"[[study]] entry {number}: unknown key(s) {', '.join(unknown)}; valid keys in an entry: "
                f"{', '.join(STUDY_KEYS)}"
            )
        merged = _merge_entry(base, entry)
        if selected is not None and not set(_as_list(merged.get("workload", DEFAULT_WORKLOAD))) & set(
            _as_list(selected)
        ):
            continue
        if selected is not None:
            merged["workload"] = [w for w in _as_list(merged.get("workload")) if w in _as_list(selected)]
        configs.append(SweepConfig.from_settings({**merged, **overrides}, lr_factors))
    if not configs:
        raise ConfigError(
            f"--workload {' '.join(_as_list(selected))}: no [[study]] entry has that workload; the study has "
            + ", ".join(str(e.get("workload", DEFAULT_WORKLOAD)) for e in entries)
        )
    return configs


def load_toml(path: str | Path) -> dict[str, Any]:
    """The settings in a TOML config file (tomllib on Python >= 3.11, tomli before)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        import tomli as tomllib
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except FileNotFoundError as err:
        raise ConfigError(f"--config {path}: no such file") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"--config {path}: invalid TOML: {err}") from err
