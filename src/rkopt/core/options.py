"""Param-group options as validated data: each key once, with its default, its check and whether it
shapes a step's plan.

One rule for every key: a bool is not a number; ``inf`` and NaN are refused wherever a finite
value is needed; a flag is a real ``bool``; a value of the wrong type raises ``TypeError`` and one
out of range ``ValueError``, both naming the key. The step engine, the step-size policies and the
preconditioners declare their keys with :class:`Option`; a binding assembles them into one
:class:`OptionTable`.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

Check = Callable[[str, Any], None]
"""``check(key, value)`` raises ``TypeError``/``ValueError`` naming ``key`` if ``value`` is invalid."""


def real(
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> Check:
    """A finite real number in the interval [low, high] (ends opened by ``low_open``/``high_open``)."""
    if high == math.inf:
        interval = f"a finite number {'>' if low_open else '>='} {low:g}"
    else:
        interval = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def check(key: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, Real):
            raise TypeError(
                f"{key} must be a real number ({interval}), got {value!r} ({type(value).__name__})"
            )
        v = float(value)
        inside = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
        if not math.isfinite(v) or not inside:
            raise ValueError(f"{key} must be {interval}, got {value!r}")

    return check


def integer(low: int = 0) -> Check:
    """An ``int`` (not a bool) >= ``low``."""

    def check(key: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, Integral):
            raise TypeError(f"{key} must be an int >= {low}, got {value!r} ({type(value).__name__})")
        if value < low:
            raise ValueError(f"{key} must be an int >= {low}, got {value!r}")

    return check


def flag(*, optional: bool = False) -> Check:
    """``True`` or ``False`` (or ``None`` when ``optional``: decided by the binding)."""

    def check(key: str, value: Any) -> None:
        if not (isinstance(value, bool) or (optional and value is None)):
            allowed = "True, False or None" if optional else "True or False"
            raise TypeError(f"{key} must be {allowed}, got {value!r} ({type(value).__name__})")

    return check


def choice(*values: Any) -> Check:
    """One of ``values``."""

    def check(key: str, value: Any) -> None:
        if not any(value is v or (type(value) is type(v) and value == v) for v in values):
            raise ValueError(f"{key} must be one of {', '.join(map(repr, values))}; got {value!r}")

    return check


@dataclass(frozen=True)
class Option:
    """A param-group key.

    Attributes:
        name: the key.
        default: its value when neither the constructor nor the param group sets it.
        check: validates a value (see :data:`Check`).
        shapes_plan: whether the value decides the step's structure (buffers, update rule, field),
            so a change between steps rebuilds the group's plan; other keys are read every step.
        doc: one line for the documentation.
    """

    name: str
    default: Any
    check: Check
    shapes_plan: bool = False
    doc: str = ""

    def validate(self, value: Any) -> None:
        self.check(self.name, value)


FOREIGN_KEYS = frozenset(
    {
        "params",
        "param_names",
        "initial_lr",
        "max_lr",
        "min_lr",
        "base_lr",
        "base_momentum",
        "max_momentum",
        "lr_scale",
        "weight_decay_scale",
        "name",
    }
)
"""Keys that torch, LR schedulers and frameworks (timm, Lightning) put into param groups."""


class OptionTable(Mapping[str, Option]):
    """The options of one optimizer, by name; refuses two owners of one key."""

    def __init__(self, options: Iterable[Option]) -> None:
        self._options: dict[str, Option] = {}
        for option in options:
            if option.name in self._options:
                raise ValueError(f"option {option.name!r} is declared twice")
            self._options[option.name] = option
        self.plan_keys: tuple[str, ...] = tuple(name for name, o in self._options.items() if o.shapes_plan)
        """The keys whose values shape a group's plan."""

    def __getitem__(self, name: str) -> Option:
        return self._options[name]

    def __iter__(self):
        return iter(self._options)

    def __len__(self) -> int:
        return len(self._options)

    def defaults(self) -> dict[str, Any]:
        return {name: option.default for name, option in self._options.items()}

    def validate(self, group: Mapping[str, Any]) -> None:
        """Check every known key of ``group``, and refuse a key that looks like a misspelt option."""
        for name, value in group.items():
            if name in self._options:
                self._options[name].validate(value)
            else:
                self.refuse_misspelling(name)

    def refuse_misspelling(self, key: str) -> None:
        """Raise ``ValueError`` with "did you mean ...?" if ``key`` is a near miss of an option.

        Other unknown keys pass, as in ``torch.optim``: schedulers and frameworks add their own.
        """
        if key in FOREIGN_KEYS or not isinstance(key, str):
            return
        close = difflib.get_close_matches(key, self._options, n=1, cutoff=0.85)
        if close:
            raise ValueError(f"unknown param-group key {key!r}; did you mean {close[0]!r}?")


ENGINE_OPTIONS: tuple[Option, ...] = (
    Option("lr", None, real(0.0), doc="the step h (fixed policy) or its cap (adaptive policies)"),
    Option(
        "weight_decay",
        0.0,
        real(0.0),
        shapes_plan=True,
        doc="λ: coupled, the field is -(∇L + λθ); decoupled, θ_{n+1} -= hλθ_n",
    ),
    Option("decoupled_weight_decay", False, flag(), shapes_plan=True, doc="apply λ once per step"),
    Option("maximize", False, flag(), shapes_plan=True, doc="ascend L"),
    Option("momentum", 0.0, real(0.0, 1.0, high_open=True), shapes_plan=True, doc="β on the RK direction"),
    Option("nesterov", False, flag(), shapes_plan=True, doc="step along Σ b_i d_i + β m"),
    Option("igr", 0.0, real(0.0), doc="λ_IGR: integrate the flow of L + λ_IGR (lr/4) ‖∇L‖²"),
    Option("igr_eps", 1e-3, real(0.0, low_open=True), doc="finite-difference step of the IGR term"),
)
"""The options of the step engine itself (the policies, preconditioners and bindings add theirs)."""


def check_engine_group(group: Mapping[str, Any]) -> None:
    """The engine's rules that involve more than one key of a group."""
    if group["nesterov"] and group["momentum"] == 0.0:
        raise ValueError("nesterov=True needs momentum > 0")


def check_engine_groups(groups: Iterable[Mapping[str, Any]]) -> None:
    """The engine's rules across groups: one closure call evaluates every group."""
    groups = list(groups)
    if any(g["igr"] > 0 for g in groups) and len({g["maximize"] for g in groups}) > 1:
        raise ValueError("igr > 0 needs the same `maximize` in every param group")
