"""What ``load_state_dict`` accepts: everything is checked before anything changes.

A state_dict must come from an rkopt optimizer of the same solver (tableau or Chebyshev method)
and the same per-group policy and preconditioner; its counters, group values and per-parameter
state are validated as the constructor would validate them. Keys that LR schedulers and frameworks
add to groups (``initial_lr``, ...) stay accepted. The state_dict hooks see the whole dict:
post-hooks of ``state_dict()`` get it with ``counters`` and ``rkopt``, and pre-hooks of
``load_state_dict()`` get (and may change) it before it is checked.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import fields
from numbers import Integral
from typing import Any

from torch import Tensor
from torch.optim import Optimizer

from rkopt.core.chebyshev import ChebyshevMethod
from rkopt.core.errors import Counters
from rkopt.core.plan import Method, butcher_tableau
from rkopt.core.spectral import SPECTRAL_VECTOR, AutoChebyshev
from rkopt.torch.config import group_options, validate_group
from rkopt.torch.preconditioners import get_preconditioner
from rkopt.torch.update_rules import update_rule

MUST_MATCH = ("lr_policy", "preconditioner")
"""Group keys a checkpoint cannot change: they decide what the state means."""


def method_name(method: Method) -> str:
    """A solver's identity in a checkpoint."""
    if isinstance(method, ChebyshevMethod):
        return f"rkc{method.order}(stages={method.stages}, damping={method.damping!r})"
    return method.name  # a tableau's, or an AutoChebyshev's "rkcN(stages=auto, damping=ε)"


def _refuse(message: str) -> None:
    raise ValueError(f"load_state_dict: {message}; nothing was loaded")


def check_counters(counters: Any) -> Counters:
    names = [f.name for f in fields(Counters)]
    if counters is None:
        _refuse(
            "the state_dict has no 'counters', so it was not saved by rkopt.RungeKutta (it may be "
            "torch.optim.Adam's, say); an rkopt optimizer can only resume its own checkpoints"
        )
    if not isinstance(counters, Mapping) or set(counters) != set(names):
        _refuse(f"'counters' must be a dict with the keys {names}, got {counters!r}")
    for name in names:
        value = counters[name]
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
            _refuse(f"counters[{name!r}] must be an int >= 0, got {value!r}")
    return Counters(**{name: int(counters[name]) for name in names})


def check_state_dict(method: Method, groups: Sequence[dict[str, Any]], state_dict: Any) -> Counters:
    """Validate ``state_dict`` against an optimizer with ``method`` and param ``groups``; returns
    its counters. Raises ``ValueError``/``TypeError`` saying what does not fit."""
    if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict):
        raise TypeError("load_state_dict expects the dict optimizer.state_dict() returned")
    counters = check_counters(state_dict.get("counters"))
    saved_method = (state_dict.get("rkopt") or {}).get("method")
    if saved_method is not None and saved_method != method_name(method):
        _refuse(f"it was saved by a {saved_method} optimizer, this one is {method_name(method)}")
    saved_groups = state_dict["param_groups"]
    if len(saved_groups) != len(groups):
        _refuse(f"it has {len(saved_groups)} param groups, this optimizer {len(groups)}")
    tableau, table = butcher_tableau(method), group_options()
    saved_state = state_dict["state"]
    for index, (saved, current) in enumerate(zip(saved_groups, groups, strict=True)):
        if len(saved["params"]) != len(current["params"]):
            _refuse(
                f"group {index} has {len(saved['params'])} parameters, this optimizer's "
                f"{len(current['params'])}"
            )
        for key in MUST_MATCH:
            if saved.get(key, current[key]) != current[key]:
                _refuse(
                    f"group {index} was saved with {key}={saved[key]!r}, this optimizer has "
                    f"{key}={current[key]!r}: construct it with the saved settings"
                )
        candidate = {**current, **{k: v for k, v in saved.items() if k != "params"}}
        try:
            validate_group(candidate, tableau, table)
        except (TypeError, ValueError) as error:
            raise type(error)(f"load_state_dict: group {index}: {error}; nothing was loaded") from None
        allowed = set(update_rule(candidate).state_keys)
        preconditioner = get_preconditioner(candidate["preconditioner"])
        if preconditioner is not None:
            allowed |= {*preconditioner.statistics, "precond_steps"}
        if isinstance(method, AutoChebyshev):
            allowed.add(SPECTRAL_VECTOR)
        for key, param in zip(saved["params"], current["params"], strict=True):
            _check_entry(saved_state.get(key, {}), param, allowed, key)
    return counters


def _check_entry(entry: Any, param: Tensor, allowed: set[str], key: Any) -> None:
    if not isinstance(entry, Mapping):
        _refuse(f"the state of parameter {key} is not a dict")
    unknown = sorted(set(entry) - allowed)
    if unknown:
        _refuse(
            f"the state of parameter {key} holds {unknown}, which this optimizer does not keep "
            f"(it keeps {sorted(allowed) or 'nothing'}): the state_dict comes from another optimizer "
            "or configuration"
        )
    for name, value in entry.items():
        if name == "precond_steps":
            if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
                _refuse(f"state[{key}]['precond_steps'] must be an int >= 0, got {value!r}")
        elif not isinstance(value, Tensor) or value.shape != _state_shape(param):
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            _refuse(
                f"state[{key}][{name!r}] must be a tensor of shape {tuple(_state_shape(param))}, got {shape}"
            )


def _state_shape(param: Tensor):
    """The shape of a parameter's state tensors (a complex parameter keeps them as real pairs)."""
    return (*param.shape, 2) if param.is_complex() else param.shape


# -- the hooks: they see the whole dict, counters included ---------------------------------------

HookTable = dict[int, Callable[..., Any]]


@contextmanager
def hooks_withheld(optimizer: Optimizer, *tables: str) -> Iterator[list[HookTable]]:
    """Run torch's ``state_dict``/``load_state_dict`` without the named hook tables, yielding them:
    rkopt runs those hooks itself, on the dict with its own keys (``counters``, ``rkopt``)."""
    held = [getattr(optimizer, name) for name in tables]
    for name in tables:
        setattr(optimizer, name, OrderedDict())
    try:
        yield held
    finally:
        for name, table in zip(tables, held, strict=True):
            setattr(optimizer, name, table)


def run_dict_hooks(hooks: HookTable, optimizer: Optimizer, state_dict: Any) -> Any:
    """``state_dict`` through ``hooks(optimizer, state_dict)`` in order, each returning a
    replacement or None (torch's state_dict post-hooks and load_state_dict pre-hooks)."""
    for hook in list(hooks.values()):
        result = hook(optimizer, state_dict)
        if result is not None:
            state_dict = result
    return state_dict
