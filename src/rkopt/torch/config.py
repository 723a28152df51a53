"""The torch binding's param-group options: one table, one validation.

The table is assembled from the engine's options (:data:`rkopt.core.options.ENGINE_OPTIONS`), the
binding's own (``foreach``, ``preconditioner``), the step-size policy key and every registered
policy's and preconditioner's options, so a plug-in registered at any time brings its keys along.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

from torch import Tensor

from rkopt.core.options import (
    ENGINE_OPTIONS,
    Option,
    OptionTable,
    check_engine_group,
    flag,
)
from rkopt.core.policies import POLICIES, POLICY_OPTION, get_policy
from rkopt.core.spectral import OBSERVABLES as SPECTRAL_OBSERVABLES
from rkopt.core.tableau import ButcherTableau
from rkopt.torch.preconditioners import PRECONDITIONER_OPTION, PRECONDITIONERS, get_preconditioner

FOREACH_OPTION = Option(
    "foreach",
    None,
    flag(optional=True),
    shapes_plan=True,
    doc="torch._foreach_* kernels (None: on iff every parameter is on CUDA)",
)

OBSERVABLES = frozenset({"h", "dal_rho", "dal_rho_next", "ec_error", "ec_h_next", *SPECTRAL_OBSERVABLES})
"""Keys the optimizer and the policies write into a group (the step taken and what it measured)."""


_cache: dict[tuple, OptionTable] = {}


def group_options() -> OptionTable:
    """Every param-group key of :class:`rkopt.RungeKutta`, with its default, check and plan flag
    (rebuilt when a policy or preconditioner is registered)."""
    registered = (*map(id, POLICIES.values()), None, *map(id, PRECONDITIONERS.values()))
    table = _cache.get(registered)
    if table is None:
        _cache.clear()
        table = _cache[registered] = _build_table()
    return table


def _build_table() -> OptionTable:
    return OptionTable(
        [
            *ENGINE_OPTIONS,
            FOREACH_OPTION,
            PRECONDITIONER_OPTION,
            POLICY_OPTION,
            *(option for policy in POLICIES.values() for option in policy.options),
            *(option for preconditioner in PRECONDITIONERS.values() for option in preconditioner.options),
        ]
    )


def lr_value(lr: Any) -> Any:
    """lr as the engine computes with it: a Tensor lr's value as a Python float (h is a float)."""
    return float(lr) if isinstance(lr, Tensor) else lr


class GroupView(MutableMapping[str, Any]):
    """A param group as the engine and the step-size policies read it: ``lr`` as a Python float.

    A Tensor lr stays a Tensor in the group itself, as in ``torch.optim`` (schedulers update it in
    place, so a compiled training step need not recompile); every other key, and every write, is
    the group's.
    """

    __slots__ = ("group",)

    def __init__(self, group: dict[str, Any]) -> None:
        self.group = group

    def __getitem__(self, key: str) -> Any:
        value = self.group[key]
        return lr_value(value) if key == "lr" else value

    def __setitem__(self, key: str, value: Any) -> None:
        self.group[key] = value

    def __delitem__(self, key: str) -> None:
        del self.group[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.group)

    def __len__(self) -> int:
        return len(self.group)


def check_tensor_lr(group: Mapping[str, Any]) -> None:
    """A Tensor lr must be one real floating-point element that does not require grad, on the CPU
    or on the device of the group's parameters (its value is checked as any lr's)."""
    lr = group.get("lr")
    if not isinstance(lr, Tensor):
        return
    if lr.numel() != 1 or not lr.is_floating_point():
        raise ValueError(
            "a Tensor lr must hold one real floating-point number (e.g. torch.tensor(0.1)), got a "
            f"tensor of shape {tuple(lr.shape)} and dtype {lr.dtype}"
        )
    if lr.requires_grad:
        raise ValueError("a Tensor lr must not require grad: rkopt does not differentiate through a step")
    devices = {p.device for p in group["params"]}
    if lr.device.type != "cpu" and lr.device not in devices:
        raise ValueError(
            f"a Tensor lr must be on the CPU or on its parameters' device {sorted(map(str, devices))}, "
            f"got {lr.device}"
        )


def validate_group(group: dict[str, Any], tableau: ButcherTableau, table: OptionTable) -> None:
    """Check one param group completely (its keys, their combinations, its parameters)."""
    check_tensor_lr(group)
    view = GroupView(group)
    table.validate({key: value for key, value in view.items() if key not in OBSERVABLES and key != "params"})
    check_engine_group(view)
    get_policy(view["lr_policy"])().validate(view, tableau)
    preconditioner = get_preconditioner(view["preconditioner"])
    if preconditioner is not None:
        preconditioner.validate(view)
    for p in group["params"]:
        if not (p.is_floating_point() or p.is_complex()):
            raise ValueError(
                f"rkopt.RungeKutta optimizes floating-point or complex parameters, got {p.dtype}"
            )
    if len(set(group["params"])) != len(group["params"]):
        raise ValueError(
            "a param group lists a parameter more than once: rkopt would add its update to it once per "
            "listing (torch.optim only warns); list each parameter once"
        )


def options_doc(table: OptionTable) -> str:
    """The table as the docstring's option list."""
    lines = []
    for name, option in table.items():
        if name == "lr":
            continue
        lines.append(f"    {name} (default {option.default!r}): {option.doc}")
    return "\n".join(lines)
