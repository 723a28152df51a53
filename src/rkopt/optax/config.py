"""The options of :func:`rkopt.optax.runge_kutta`: the torch binding's table without ``foreach``.

Assembled like :func:`rkopt.torch.group_options` from the shared declarations: the engine's
(:data:`rkopt.core.options.ENGINE_OPTIONS`), the ``lr_policy`` key and every registered policy's
options, ``preconditioner`` and every registered JAX preconditioner's options; so names, defaults,
checks and error messages are the same objects as torch's.
"""

from __future__ import annotations

import difflib
from typing import Any

from rkopt.core.options import ENGINE_OPTIONS, OptionTable, check_engine_group, check_engine_groups
from rkopt.core.plan import Method, butcher_tableau
from rkopt.core.policies import POLICIES, POLICY_OPTION, get_policy
from rkopt.optax.preconditioners import PRECONDITIONER_OPTION, PRECONDITIONERS, get_preconditioner


def options() -> OptionTable:
    """Every option of :func:`rkopt.optax.runge_kutta` (``lr`` is its ``learning_rate``)."""
    return OptionTable(
        [
            *ENGINE_OPTIONS,
            PRECONDITIONER_OPTION,
            POLICY_OPTION,
            *(option for policy in POLICIES.values() for option in policy.options),
            *(option for p in PRECONDITIONERS.values() for option in p.options),
        ]
    )


def configure(learning_rate: Any, method: Method, given: dict[str, Any]) -> dict[str, Any]:
    """The group (every option's value) after the same checks as ``rkopt.RungeKutta``'s; a
    schedule or an array learning rate is checked when it is read, not here."""
    table = options()
    unknown = sorted(set(given) - set(table) - {"lr"})
    if unknown:
        hints = {key: difflib.get_close_matches(key, table, n=1, cutoff=0.6) for key in unknown}
        hint = "".join(f" Did you mean {h[0]!r} for {k!r}?" for k, h in hints.items() if h)
        raise TypeError(
            f"runge_kutta got unknown keyword argument(s) {unknown}.{hint} Valid: {sorted(table)}"
        )
    group = {**table.defaults(), **given, "lr": learning_rate}
    static_lr = isinstance(learning_rate, (int, float))
    table.validate({k: v for k, v in group.items() if static_lr or k != "lr"})
    check_engine_group(group)
    check_engine_groups([group])
    get_policy(group["lr_policy"])().validate(group, butcher_tableau(method))
    preconditioner = get_preconditioner(group["preconditioner"])
    if preconditioner is not None:
        preconditioner.validate(group)
    return group
