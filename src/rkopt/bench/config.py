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
from rkopt.bench.optimizers import canonical_optimizer, check_optimizer, default_lr
from rkopt.bench.workloads import get_workload

DEFAULT_WORKLOAD = "mlp-mnist5k"
DEFAULT_OPTIMIZER = "rk4"
DEFAULT_MAX_GRAD_EVALS = 2000
DEFAULT_SWEEP_LR_FACTORS = (1 / 3, 1.0, 3.0)
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

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["workload_options"] = dict(self.workload_options)
        data["optimizer_options"] = dict(self.optimizer_options)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        return cls(**{**data, "budget": Budget(**data["budget"])})

    @property
    def run_id(self) -> str:
        """A readable, unique directory name: the main settings plus a hash of the whole config."""
        digest = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
        return (
            f"{self.workload}_{self.optimizer}_bs{self.batch_size}_lr{self.lr:.4g}_seed{self.seed}_{digest}"
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


@dataclass(frozen=True)
class SweepConfig:
    """A grid of runs: workloads × optimizers × their learning rates × batch sizes × seeds."""

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

    def runs(self) -> list[RunConfig]:
        return [
            RunConfig(
                workload=workload,
                optimizer=optimizer,
                lr=lr,
                batch_size=batch_size,
                seed=seed,
                budget=self.budget,
                eval_every=self.eval_every,
                target=self.target,
                workload_options=dict(self.workload_options.get(workload, {})),
                optimizer_options=dict(self.optimizer_options.get(optimizer, {})),
            )
            for workload in self.workloads
            for optimizer in self.optimizers
            for lr in self.lrs[optimizer]
            for batch_size in self.batch_sizes
            for seed in self.seeds
        ]

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
        )


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
