"""The torch binding's param-group options: one table, one validation.

The table is assembled from the engine's options (:data:`rkopt.core.options.ENGINE_OPTIONS`), the
binding's own (``foreach``, ``preconditioner``), the step-size policy key and every registered
policy's and preconditioner's options, so a plug-in registered at any time brings its keys along.
"""

from __future__ import annotations

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
from rkopt.core.tableau import ButcherTableau
from rkopt.torch.preconditioners import PRECONDITIONER_OPTION, PRECONDITIONERS, get_preconditioner

FOREACH_OPTION = Option(
    "foreach",
    None,
    flag(optional=True),
    shapes_plan=True,
    doc="torch._foreach_* kernels (None: on iff every parameter is on CUDA)",
)

OBSERVABLES = frozenset({"h", "dal_rho", "dal_rho_next", "ec_error", "ec_h_next"})
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


def normalize_lr(group: dict[str, Any]) -> None:
    """A one-element tensor lr becomes a float."""
    lr = group.get("lr")
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(
                f"lr must be a number (or a one-element tensor), got a tensor of shape {tuple(lr.shape)}"
            )
        group["lr"] = float(lr)


def validate_group(group: dict[str, Any], tableau: ButcherTableau, table: OptionTable) -> None:
    """Check one param group completely (its keys, their combinations, its parameters)."""
    normalize_lr(group)
    table.validate({key: value for key, value in group.items() if key not in OBSERVABLES and key != "params"})
    check_engine_group(group)
    get_policy(group["lr_policy"])().validate(group, tableau)
    preconditioner = get_preconditioner(group["preconditioner"])
    if preconditioner is not None:
        preconditioner.validate(group)
    for p in group["params"]:
        if not (p.is_floating_point() or p.is_complex()):
            raise ValueError(
                f"rkopt.RungeKutta optimizes floating-point or complex parameters, got {p.dtype}"
            )


def options_doc(table: OptionTable) -> str:
    """The table as the docstring's option list."""
    lines = []
    for name, option in table.items():
        if name == "lr":
            continue
        lines.append(f"    {name} (default {option.default!r}): {option.doc}")
    return "\n".join(lines)
