"""``rkopt.optax.runge_kutta``: the Runge–Kutta step as an ``optax.GradientTransformationExtraArgs``.

``update(grads, state, params, *, grad_fn)`` takes ``grads`` as stage 1's gradient (at θ_n, on the
batch) and calls ``grad_fn(params)`` (the gradient on the same batch) at every other point the step
needs: stage points, a DAL probe, an error-control retry, an IGR finite difference. The returned
updates are θ_{n+1} - θ_n. Everything runs under ``jax.jit``; the state is a pytree of arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rkopt.core.chebyshev import ChebyshevMethod
from rkopt.core.errors import NonFiniteStepError, StepRejectedError
from rkopt.core.options import choice
from rkopt.core.plan import Method, StepPlan, butcher_tableau, get_method
from rkopt.core.policies import get_policy
from rkopt.core.presets import CHEBYSHEV_PRESETS, PRESETS
from rkopt.core.spectral import AutoChebyshev, AutoStages
from rkopt.optax.config import configure
from rkopt.optax.numeric import JAX_MATH
from rkopt.optax.preconditioners import get_preconditioner
from rkopt.optax.step import StepRun, accumulation_dtype, all_finite

OBSERVABLES = ("h", "dal_rho", "dal_rho_next", "ec_error", "ec_h_next")
"""The group observables the state keeps (NaN until measured), as the torch binding's group keys."""


class RungeKuttaState(NamedTuple):
    """The transformation's state: counters, the observables and the per-leaf statistics.

    ``count`` counts update calls (what a learning-rate schedule reads); ``steps``,
    ``grad_evals``, ``rejected_steps`` and ``skipped_steps`` are ``rkopt.Counters``; ``h`` is the
    step last taken; ``precond`` holds one tree per preconditioner statistic, ``momentum`` m (or
    None).
    """

    count: jax.Array
    steps: jax.Array
    grad_evals: jax.Array
    rejected_steps: jax.Array
    skipped_steps: jax.Array
    h: jax.Array
    dal_rho: jax.Array
    dal_rho_next: jax.Array
    ec_error: jax.Array
    ec_h_next: jax.Array
    precond_steps: jax.Array
    precond: tuple[Any, ...]
    momentum: Any


def _raise_where(flag: Any, error: type[Exception], message: str, count: Any) -> None:
    """Raise ``error(message)`` where ``flag`` holds at run time: a host callback (the way to raise
    under jit), in a ``lax.cond`` branch so that a step that does not fail pays nothing for it."""

    def callback(count):
        raise error(message.format(count=int(count)))

    jax.lax.cond(flag, lambda c: jax.debug.callback(callback, c), lambda c: None, count)


def _unbound(kwargs: dict[str, Any], name: str) -> dict[str, Any]:
    """``optax.inject_hyperparams`` binds the signature, so ``**kwargs`` arrive as ``name={...}``."""
    if isinstance(kwargs.get(name), dict):
        return {**kwargs.pop(name), **kwargs}
    return kwargs


def runge_kutta(
    learning_rate: float | Callable[[Any], Any],
    tableau: str | Method = "rk4",
    *,
    on_nonfinite: str = "raise",
    **options: Any,
) -> optax.GradientTransformationExtraArgs:
    """An explicit Runge–Kutta solver of the gradient flow as an optax transformation.

    Args:
        learning_rate: h (``lr_policy="fixed"``) or its cap; a float or an optax schedule.
        tableau: a name from ``rkopt.TABLEAUX``, a ``ButcherTableau`` or a ``ChebyshevMethod``.
        on_nonfinite: ``"raise"``: a non-finite gradient or update raises ``NonFiniteStepError``
            (under jit from a host callback, as a runtime error) and keeps θ_n; ``"skip"`` keeps θ_n
            and counts the step in ``skipped_steps``.
        **options: the options of ``rkopt.RungeKutta`` (same names, defaults and checks;
            ``rkopt.optax.options()`` lists them), except the torch-only ``foreach``.
    """
    options = _unbound(options, "options")
    method = get_method(tableau)
    if isinstance(method, AutoChebyshev):
        raise ValueError(
            "tableau: rkopt.optax cannot choose the stage count per step (a jitted update has a fixed "
            "shape); pass rkopt.ChebyshevMethod(order, stages) with a fixed s"
        )
    choice("raise", "skip")("on_nonfinite", on_nonfinite)
    group0 = configure(learning_rate, method, options)
    tableau_ = butcher_tableau(method)
    need = get_policy(group0["lr_policy"])().needs(group0, tableau_)
    plan = StepPlan.for_needs(method, [need], igr=group0["igr"] > 0)
    if plan.evaluate_candidate:
        raise ValueError(
            f"lr_policy {group0['lr_policy']!r} needs the loss at θ_{{n+1}}; the optax binding "
            "evaluates gradients only"
        )
    preconditioner = get_preconditioner(group0["preconditioner"])
    statistics = preconditioner.statistics if preconditioner is not None else ()
    identity = preconditioner is None and not group0["maximize"] and not plan.igr
    group_plan = plan.group(
        sums_directions=group0["momentum"] > 0.0,
        error_estimate=need.error_estimate,
        identity_field=identity and (group0["weight_decay"] == 0.0 or group0["decoupled_weight_decay"]),
        statistics=statistics,
        probes=need.probes,
    )

    def init(params: Any) -> RungeKuttaState:
        dtype = accumulation_dtype()
        zeros = lambda: jax.tree_util.tree_map(jnp.zeros_like, params)  # noqa: E731
        nan = jnp.full((), jnp.nan, dtype)
        counter = jnp.zeros((), jnp.int32)
        return RungeKuttaState(
            *(counter,) * 5,
            *(nan,) * len(OBSERVABLES),
            precond_steps=counter,
            precond=tuple(zeros() for _ in statistics),
            momentum=zeros() if group0["momentum"] > 0.0 else None,
        )

    def update(grads, state: RungeKuttaState, params=None, *, grad_fn=None, **extra_args):
        del extra_args  # the arguments of other transformations in a chain
        if params is None or grad_fn is None:
            raise ValueError("rkopt.optax.runge_kutta: update needs params and grad_fn=")
        leaves, treedef = jax.tree_util.tree_flatten(params)
        gradient = treedef.flatten_up_to(grads)
        group = dict(group0)
        group["lr"] = learning_rate(state.count) if callable(learning_rate) else learning_rate
        group.update({key: getattr(state, key) for key in OBSERVABLES})
        policy = get_policy(group["lr_policy"])()
        policy.xp = JAX_MATH

        def evaluate(point):
            return treedef.flatten_up_to(grad_fn(jax.tree_util.tree_unflatten(treedef, point)))

        run = StepRun(group, group_plan, policy, need, preconditioner, evaluate)
        first_finite = all_finite(gradient)
        stats = [treedef.flatten_up_to(s) for s in state.precond]
        d1, evaluations, settled, proposed = run.first_stage(leaves, gradient, stats, state.precond_steps + 1)
        evaluations = evaluations + 1
        request, result = policy.probe([group]), None
        if request is not None:
            if not need.probes:
                raise RuntimeError(
                    f"lr_policy {policy.name!r} probed without declaring PolicyNeeds(probes=True)"
                )
            result, made, ok = run.probe(leaves, d1, request.eps, request.when)
            evaluations, settled = evaluations + made, settled & ok
        (h0,) = policy.initial_steps([group], result)
        momentum = treedef.flatten_up_to(state.momentum) if state.momentum is not None else None
        go = first_finite & settled & run.representable(jnp.asarray(h0, accumulation_dtype()))
        out = run.attempts(h0, leaves, d1, momentum, settled, all_finite(d1), go)
        failed = out["failed"]
        finite = go & ~out["stopped"] & out["finite"] & all_finite(out["candidate"])
        ok = finite if failed is False else finite & ~failed
        policy.commit([group], out["attempt"])
        group["h"] = out["h"]
        keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(ok, n, o), new, old)  # noqa: E731
        if on_nonfinite == "raise":
            message = (
                "a non-finite gradient or update occurred during the Runge–Kutta step {count}; θ_n is kept"
            )
            _raise_where(~finite, NonFiniteStepError, message, state.count)
        if failed is not False:  # the policy can fail the step
            message = "lr_policy rejected the step {count} times; θ_n is kept"
            _raise_where(failed & finite, StepRejectedError, message, out["attempts"])
        # as the torch engine counts: θ_n's evaluation only when its gradient is not finite, no
        # attempt when a probe failed or h is too large
        evaluations = jnp.where(first_finite, evaluations + jnp.where(go, out["evaluations"], 0), 1)
        dtype = accumulation_dtype()
        observed = {key: keep(jnp.asarray(group[key], dtype), getattr(state, key)) for key in OBSERVABLES}
        candidate = keep(out["candidate"], leaves)
        updates = [c - p for c, p in zip(candidate, leaves, strict=True)]
        new_state = RungeKuttaState(
            count=state.count + 1,
            steps=state.steps + ok,
            grad_evals=state.grad_evals + evaluations,
            rejected_steps=state.rejected_steps + jnp.where(go, out["rejections"], 0),
            skipped_steps=state.skipped_steps + ~ok,
            **observed,
            precond_steps=state.precond_steps + ok,
            precond=tuple(
                jax.tree_util.tree_unflatten(treedef, keep(new, old))
                for new, old in zip(proposed, stats, strict=True)
            ),
            momentum=None
            if momentum is None
            else jax.tree_util.tree_unflatten(treedef, keep(out["momentum"], momentum)),
        )
        return jax.tree_util.tree_unflatten(treedef, updates), new_state

    return optax.GradientTransformationExtraArgs(init, update)


def preset(
    name: str,
    learning_rate: float | Callable[[Any], Any],
    *,
    stages: int | None = None,
    damping: float | None = None,
    **overrides: Any,
) -> optax.GradientTransformationExtraArgs:
    """:func:`runge_kutta` configured as ``rkopt.preset(name, ...)`` (:data:`rkopt.PRESETS`, the
    Runge–Kutta–Chebyshev ``rkc1``/``rkc2`` with ``stages``); ``overrides`` replace its settings."""
    overrides = _unbound(overrides, "overrides")
    order = CHEBYSHEV_PRESETS.get(name)
    if order is None and name not in PRESETS:
        raise ValueError(
            f"unknown preset {name!r}; valid presets: {', '.join([*PRESETS, *CHEBYSHEV_PRESETS])}"
        )
    if order is None and (stages, damping) != (None, None):
        raise TypeError(f"stages and damping configure the rkc presets, not {name!r}")
    if order is None:
        return runge_kutta(learning_rate, **{**PRESETS[name], **overrides})
    if stages is None or isinstance(stages, AutoStages):
        raise ValueError(
            f"preset {name!r} in rkopt.optax needs stages=s, the number of evaluations per step: the "
            "automatic stage count of the torch binding changes the shape of the step, which a jitted "
            "update cannot do"
        )
    return runge_kutta(learning_rate, tableau=ChebyshevMethod(order, stages, damping), **overrides)
