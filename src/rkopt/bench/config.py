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
import itertools
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rkopt.bench.backends import BACKENDS, check_backend, load_jax_backend
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
MAX_SEED = 2**64 - 1
"""The largest seed ``torch.manual_seed`` takes."""


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
    if isinstance(items, str):
        items = [items]
    if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) for item in items):
        raise ConfigError(
            f"{flag} {items!r}: expected [NAME:]KEY=VALUE strings or a TOML table, e.g. "
            f"{flag} adam:weight_decay=0.01"
        )
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


def _number(value: Any) -> float:
    """``value`` as a float; booleans (``true`` in TOML) are not numbers."""
    if isinstance(value, bool):
        raise TypeError(f"{value!r} is not a number")
    return float(value)


def parse_lr_grid(spec: Any, flag: str = "--lr") -> tuple[float, ...]:
    """A learning-rate grid: a number, a list, ``"LOW:HIGH:COUNT"`` (log-spaced) or ``"a,b,c"``."""
    try:
        if isinstance(spec, str) and spec.count(":") == 2:
            parts = spec.split(":")
            low, high, count = float(parts[0]), float(parts[1]), int(parts[2])
            if not (0 < low <= high and count >= 1):
                raise ConfigError(
                    f"{flag} {spec!r}: a log grid LOW:HIGH:COUNT needs 0 < LOW <= HIGH and COUNT >= 1, "
                    "e.g. 1e-3:1e-1:5"
                )
            values = log_grid(low, high, count)
        elif isinstance(spec, str):
            values = tuple(float(v) for v in spec.split(",") if v.strip())
        elif isinstance(spec, (int, float, bool)):
            values = (_number(spec),)
        else:
            values = tuple(_number(v) for v in spec)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"{flag} {spec!r}: expected a number, a list 'a,b,c' or a log grid 'LOW:HIGH:COUNT' ({err})"
        ) from err
    if not values:
        raise ConfigError(f"{flag} {spec!r}: no learning rate given; e.g. {flag} 0.1 or {flag} 1e-3:1e-1:5")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ConfigError(f"{flag} {spec!r}: learning rates must be finite and > 0")
    return values


def parse_lr_settings(spec: Any) -> dict[str | None, tuple[float, ...]]:
    """``--lr`` items (``SPEC`` or ``OPTIMIZER=SPEC``) or a TOML value/table → {name or None: grid}."""
    if isinstance(spec, Mapping):
        return {(None if k in ("*", "default") else k): parse_lr_grid(v) for k, v in spec.items()}
    items = spec if isinstance(spec, list) and spec and all(isinstance(v, str) for v in spec) else [spec]
    grids: dict[str | None, tuple[float, ...]] = {}
    for item in items:
        name, value = None, item
        if isinstance(item, str) and "=" in item:
            name, value = (part.strip() for part in item.split("=", 1))
        grids[name] = (*grids.get(name, ()), *parse_lr_grid(value))
    return grids


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _names(value: Any, flag: str) -> tuple[str, ...]:
    """Distinct names from a name or a list of names."""
    names = _as_list(value)
    bad = [name for name in names if not isinstance(name, str) or not name.strip()]
    if bad or not names:
        raise ConfigError(f"{flag} {(bad or [value])[0]!r}: expected a name or a list of names (strings)")
    return tuple(dict.fromkeys(names))


def _flag(key: str) -> str:
    """The command-line flag of the setting ``key`` (the TOML key with ``-`` for ``_``)."""
    return "--" + key.replace("_", "-")


def _integer(value: Any, flag: str, minimum: int = 1, maximum: int | None = None) -> int:
    """An integer in [minimum, maximum] from an int or a digit string; no floats, no booleans."""
    text = str(value).strip()
    whole = isinstance(value, (int, str)) and not isinstance(value, bool) and text.isascii()
    number = int(text) if whole and text.isdecimal() else None
    if number is None or number < minimum or (maximum is not None and number > maximum):
        expected = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        raise ConfigError(f"{flag} {value!r}: expected an integer {expected}")
    return number


def _integers(values: Any, flag: str, minimum: int = 1, maximum: int | None = None) -> tuple[int, ...]:
    """Distinct integers in [minimum, maximum] from a value or list of values (ints or digit strings)."""
    return tuple(dict.fromkeys(_integer(value, flag, minimum, maximum) for value in _as_list(values)))


def _optional_integer(settings: Mapping[str, Any], key: str) -> int | None:
    """The integer >= 1 setting ``key``, or None when it is not given."""
    value = settings.get(key)
    return None if value is None else _integer(value, _flag(key))


def _optional_float(settings: Mapping[str, Any], key: str) -> float | None:
    """The finite number > 0 setting ``key``, or None when it is not given."""
    value = settings.get(key)
    if value is None:
        return None
    try:
        number = _number(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise ConfigError(f"{_flag(key)} {value!r}: expected a finite number > 0")
    return number


def parse_bool(value: Any, flag: str) -> bool:
    """A TOML/flag boolean: ``true``/``false`` (also as strings, any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConfigError(f"{flag} {value!r}: expected true or false")


def _choices(value: Any, flag: str, allowed: Sequence[str], both: str) -> tuple[str, ...]:
    """Distinct values of a two-way axis (one of ``allowed``, or both: ``both`` says what for)."""
    values = tuple(dict.fromkeys(str(v).strip() for v in _as_list(value)))
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise ConfigError(f"{flag} {(bad or [''])[0]!r}: expected {' or '.join(allowed)} (or both, {both})")
    return values


def parse_stage_batches(value: Any) -> tuple[str, ...]:
    """``--stage-batches`` values: one or both of ``same`` and ``fresh``."""
    return _choices(value, "--stage-batches", STAGE_BATCHES, "for the ablation side by side")


def parse_backends(value: Any) -> tuple[str, ...]:
    """``--backend`` values: one or both of ``torch`` and ``jax`` (:data:`~rkopt.bench.backends.BACKENDS`)."""
    return _choices(value, "--backend", BACKENDS, "to compare them side by side")


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
    backend: str = "torch"

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-able data; ``stage_batches`` and ``backend`` only when not the defaults
        ``same`` and ``torch``, so that the run ids of results recorded before the options existed stay
        valid (and a record without them reads as those defaults)."""
        data = asdict(self)
        data["workload_options"] = dict(self.workload_options)
        data["optimizer_options"] = dict(self.optimizer_options)
        if self.stage_batches == "same":
            del data["stage_batches"]
        if self.backend == "torch":
            del data["backend"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        return cls(**{**data, "budget": Budget(**data["budget"])})

    @property
    def run_id(self) -> str:
        """A readable, unique directory name: the main settings plus a hash of the whole config."""
        digest = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
        fresh = "_fresh" if self.stage_batches == "fresh" else ""
        backend = "" if self.backend == "torch" else f"_{self.backend}"
        return (
            f"{self.workload}_{self.optimizer}{fresh}{backend}_bs{self.batch_size}_lr{self.lr:.4g}"
            f"_seed{self.seed}_{digest}"
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
        data_dir = settings.get("data_dir")
        return cls(
            data_dir=str(directory_setting(data_dir, "--data-dir") if data_dir else default_data_dir()),
            download=not parse_bool(settings.get("offline", False), "--offline"),
            device=parse_device(settings.get("device", "cpu")),
            threads=_integer(settings.get("threads", 1), "--threads"),
        )


def directory_setting(value: Any, flag: str) -> Path:
    """A directory path setting (``--out``, ``--data-dir``): a path that is a directory or can become one."""
    if not isinstance(value, (str, Path)) or not str(value).strip():
        raise ConfigError(f"{flag} {value!r}: expected a directory path")
    path = Path(value)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        where = "it" if existing == path else f"{existing}"
        raise ConfigError(f"{flag} {path}: {where} is a file, not a directory; choose another {flag}")
    return path


def parse_device(value: Any) -> str:
    """A torch device name (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    try:
        if not isinstance(value, str):
            raise TypeError(f"{value!r} is not a string")
        return str(torch.device(value))
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"--device {value!r}: expected a torch device such as cpu, cuda or cuda:1") from err


def check_device_available(device: str, backends: Iterable[str] = ("torch",)) -> None:
    """Raise ConfigError if this machine cannot run ``backends``' runs on ``device`` (for runs executed
    here, not on a cluster): torch's ``is_available()`` for torch runs, a JAX device for JAX runs."""
    backends = set(backends)
    kind = torch.device(device).type
    available = getattr(getattr(torch, kind, None), "is_available", None)
    if "torch" in backends and available is not None and not available():
        raise ConfigError(f"--device {device}: torch.{kind}.is_available() is false here; use --device cpu")
    if "jax" in backends:
        load_jax_backend().jax_device(torch.device(device))


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
    stage batches × backend. Its runs are its learning rates × the sweep's seeds."""

    workload: str
    optimizer: str
    batch_size: int
    stage_batches: str = "same"
    backend: str = "torch"


def stage_batches_for(optimizer: str, stage_batches: str) -> str:
    """``fresh`` only means something for Runge–Kutta optimizers; a baseline always runs ``same``."""
    return "same" if optimizer in BASELINES else stage_batches


@dataclass(frozen=True)
class SweepConfig:
    """A grid of runs: workloads × optimizers × their learning rates × batch sizes × stage batches ×
    backends × seeds.

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
    backends: tuple[str, ...] = ("torch",)

    def cells(self) -> list[Cell]:
        """The variants, each once (a baseline is not repeated for ``fresh``)."""
        cells = [
            Cell(workload, optimizer, batch_size, stage_batches_for(optimizer, stage), backend)
            for workload in self.workloads
            for optimizer in self.optimizers
            for batch_size in self.batch_sizes
            for stage in self.stage_batches
            for backend in self.backends
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
            backend=cell.backend,
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
        workloads = _names(settings.get("workload", DEFAULT_WORKLOAD), "--workload")
        for workload in workloads:
            get_workload(workload)
        optimizers = tuple(
            dict.fromkeys(
                canonical_optimizer(name)
                for name in _names(settings.get("optimizer", DEFAULT_OPTIMIZER), "--optimizer")
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
        stage_batches = parse_stage_batches(settings.get("stage_batches", "same"))
        backends = parse_backends(settings.get("backend", "torch"))
        grid = itertools.product(backends, workloads, optimizers, stage_batches)
        for backend, workload, name, stage in grid:
            options = optimizer_options[name]
            check_backend(backend, workload, name, lrs[name][0], options, stage_batches_for(name, stage))
        limits = {
            "max_grad_evals": _optional_integer(settings, "max_grad_evals"),
            "max_seconds": _optional_float(settings, "max_seconds"),
            "steps": _optional_integer(settings, "steps"),
        }
        if all(v is None for v in limits.values()):
            limits["max_grad_evals"] = DEFAULT_MAX_GRAD_EVALS
        budget = Budget(**limits)
        eval_every = _optional_integer(settings, "eval_every") or budget.default_eval_every()
        target = _optional_float(settings, "target")
        return cls(
            workloads=workloads,
            optimizers=optimizers,
            lrs=lrs,
            batch_sizes=_integers(settings.get("batch_size", 32), "--batch-size"),
            seeds=_integers(settings.get("seed", 0), "--seed", minimum=0, maximum=MAX_SEED),
            budget=budget,
            eval_every=eval_every,
            target=target,
            workload_options=workload_options,
            optimizer_options=optimizer_options,
            stage_batches=stage_batches,
            backends=backends,
            lr_extend=parse_bool(settings.get("lr_extend", False), "--lr-extend"),
            lr_extend_max=_integer(settings.get("lr_extend_max", DEFAULT_LR_EXTEND_MAX), "--lr-extend-max"),
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
    "backend",
    "lr_extend",
    "lr_extend_max",
)
"""The keys a ``[[study]]`` entry may set (the rest, such as ``out`` or ``workers``, are top-level)."""
_MERGED_TABLES = ("lr", "opt_arg", "workload_arg")


def _merge_entry(base: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Any]:
    """The entry's settings over the top-level ones. An entry that selects its own optimizers
    inherits only their top-level ``[lr]`` and ``[opt_arg]`` keys (the others are study-wide
    defaults for other entries); its own keys must name selected optimizers."""
    merged = dict(base)
    selected = set(_as_list(entry["optimizer"])) if "optimizer" in entry else None
    for key in ("lr", "opt_arg"):
        if selected is not None and isinstance(base.get(key), Mapping):
            merged[key] = {k: v for k, v in base[key].items() if k in selected or k == "*"}
    for key, value in entry.items():
        if key in _MERGED_TABLES and isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = {**merged[key], **value}
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
    except IsADirectoryError as err:
        raise ConfigError(f"--config {path}: is a directory; expected a TOML file") from err
    except OSError as err:
        raise ConfigError(f"--config {path}: cannot be read ({err.strerror})") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"--config {path}: invalid TOML: {err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"--config {path}: not a text (UTF-8) file; expected a TOML file") from err
