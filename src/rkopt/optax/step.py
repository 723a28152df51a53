"""One Runge–Kutta step in JAX: the shared :class:`~rkopt.core.plan.StepPlan` unrolled at trace time.

:class:`StepRun` executes the plan of the one group (every leaf of the parameters): stage 1 from
the user's gradients, the policy's probe (``lax.cond``), its initial h, the attempts at stages
2..s (a ``lax.while_loop`` when the policy retries, bounded like the torch engine), the finite check
and the commit. Stage points, the candidate, the update kind and the error terms are the plan's;
the policy is the shared one, computing with :data:`~rkopt.optax.numeric.JAX_MATH`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from rkopt.core.plan import GroupPlan, StagePoint
from rkopt.core.policies import MAX_ATTEMPTS, Attempt, PolicyNeeds, ProbeResult, StepSizePolicy, Verdict
from rkopt.optax.preconditioners import Preconditioner

Leaves = list[Any]
Evaluate = Callable[[Leaves], Leaves]


def accumulation_dtype() -> Any:
    return jnp.result_type(float)  # float64 with jax_enable_x64, else float32


def scaled(x: Any, alpha: Any) -> Any:
    """α x in x's dtype (a traced α of another precision does not promote x)."""
    return x * (alpha if isinstance(alpha, (int, float)) else jnp.asarray(alpha).astype(x.dtype))


def combine(base: Leaves | None, terms: Sequence[tuple[Leaves, Any]]) -> Leaves:
    """base + Σ α x, one term at a time in order (as the torch binding's Combination); a static
    α = 0 is skipped."""
    out = base
    for x, alpha in terms:
        if isinstance(alpha, (int, float)) and alpha == 0.0:
            continue
        out = (
            [scaled(xi, alpha) for xi in x]
            if out is None
            else [o + scaled(xi, alpha) for o, xi in zip(out, x, strict=True)]
        )
    if out is None:
        raise ValueError("a combination of no terms with base 0 has no value")
    return out


def sum_squares(x: Leaves) -> Any:
    dtype = accumulation_dtype()
    return sum((jnp.sum(jnp.square(xi.astype(dtype))) for xi in x), jnp.zeros((), dtype))


def all_finite(x: Leaves) -> Any:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(xi)) for xi in x])) if x else jnp.asarray(True)


class StepRun:
    """The step of one group under ``plan`` (built once per trace)."""

    def __init__(
        self,
        group: dict[str, Any],
        plan: GroupPlan,
        policy: StepSizePolicy,
        need: PolicyNeeds,
        preconditioner: Preconditioner | None,
        evaluate: Evaluate,
    ) -> None:
        self.group, self.plan, self.policy, self.need = group, plan, policy, need
        self.preconditioner, self.evaluate = preconditioner, evaluate
        self.sign = -1.0 if group["maximize"] else 1.0
        decoupled = group["decoupled_weight_decay"]
        self.coupled_decay = 0.0 if decoupled else group["weight_decay"]
        self.decoupled_decay = group["weight_decay"] if decoupled else 0.0
        self.momentum, self.nesterov = group["momentum"], group["nesterov"]
        self.scale: Leaves | None = None  # P_n

    # -- the field -------------------------------------------------------------------------

    def field(self, point: Leaves, gradient: Leaves) -> tuple[Leaves, Any, Any]:
        """(d = P_n q at ``point``, evaluations made beyond ``gradient``'s, whether they were finite)."""
        extra, finite = jnp.int32(0), jnp.asarray(True)
        if self.plan.step.igr:
            q, extra, finite = self.igr(point, gradient)
        elif self.sign < 0:
            q = [-g for g in gradient]
        else:
            q = gradient
        if self.coupled_decay:
            q = [qi + scaled(p, self.coupled_decay) for qi, p in zip(q, point, strict=True)]
        if self.scale is not None:
            q = [qi * s for qi, s in zip(q, self.scale, strict=True)]
        return q, extra, finite

    def igr(self, point: Leaves, gradient: Leaves) -> tuple[Leaves, Any, Any]:
        """q = σ g + H w, w = (λ_IGR lr/2) g, H w by a finite difference (one more evaluation,
        made only where ‖w‖ is positive and finite), as :mod:`rkopt.torch.igr`."""
        weight = self.group["igr"] * self.group["lr"] / 2.0
        w_norm = jnp.sqrt(weight * weight * sum_squares(gradient))
        eps = self.group["igr_eps"]

        def probe(_):
            displaced = [p + scaled(g, eps * weight / w_norm) for p, g in zip(point, gradient, strict=True)]
            probed = self.evaluate(displaced)
            q = [
                scaled(gp - g, w_norm / eps) + scaled(g, self.sign)
                for gp, g in zip(probed, gradient, strict=True)
            ]
            return q, jnp.int32(1), all_finite(probed)

        def plain(_):
            return [scaled(g, self.sign) for g in gradient], jnp.int32(0), jnp.asarray(True)

        return lax.cond((w_norm != 0.0) & jnp.isfinite(w_norm), probe, plain, None)

    def first_stage(self, theta0: Leaves, gradient: Leaves, statistics: Sequence[Leaves], steps: Any):
        """(d_1 at θ_n, evaluations beyond the gradient's, finite, the proposed statistics); P_n
        (and the statistics after the step) is proposed from its q."""
        self.scale = None
        self.largest = min(float(jnp.finfo(x.dtype).max) for x in theta0)
        q, extra, finite = self.field(theta0, gradient)
        if self.preconditioner is None:
            return q, extra, finite, []
        proposed, self.scale = self.preconditioner.propose(self.group, steps, q, statistics)
        return [qi * s for qi, s in zip(q, self.scale, strict=True)], extra, finite, proposed

    # -- the probe -------------------------------------------------------------------------

    def probe(self, theta0: Leaves, d1: Leaves, eps: float, when: Any) -> tuple[ProbeResult, Any, Any]:
        """(the result, evaluations, finite) of one evaluation at θ_n - ε d̂ where ``when``."""
        direction_sq = sum_squares(d1)

        def measure(_):
            norm = jnp.sqrt(direction_sq)
            point = [t + scaled(d, -eps / norm) for t, d in zip(theta0, d1, strict=True)]
            gradient = self.evaluate(point)
            d, extra, finite = self.field(point, gradient)
            difference = sum_squares([a - b for a, b in zip(d, d1, strict=True)])
            return difference, 1 + extra, finite & all_finite(gradient)

        def skip(_):
            return jnp.zeros((), direction_sq.dtype), jnp.int32(0), jnp.asarray(True)

        made = jnp.logical_and(when, (direction_sq != 0.0) & jnp.isfinite(direction_sq))
        difference, evaluations, finite = lax.cond(made, measure, skip, None)
        finite = finite & jnp.logical_or(
            jnp.logical_not(when), jnp.isfinite(direction_sq) & jnp.isfinite(difference)
        )
        return ProbeResult(eps, direction_sq, difference), evaluations, finite

    # -- an attempt ------------------------------------------------------------------------

    def point(self, point: StagePoint, h: Any, theta0: Leaves, d: list, before: tuple, extra=()) -> Leaves:
        """A stage point: θ_n - h Σ a_j d_j, or the recurrence theta·θ_n + previous·Y_{i-1} +
        before·Y_{i-2} - h Σ a_j d_j (``before`` = (Y_{i-1}, Y_{i-2})), plus ``extra``."""
        directions = [(d[j], -h * a) for j, a in point.directions]
        if not point.recurrent:
            return combine(theta0, [*directions, *extra])
        previous, older = before
        terms = [(theta0, point.theta), (previous, point.previous)]
        if point.before:
            terms.append((older, point.before))
        return combine(None, [*terms, *directions, *extra])

    def attempt(self, h: Any, theta0: Leaves, d1: Leaves, momentum: Leaves | None) -> dict[str, Any]:
        """Stages 2..s at step h; returns the candidate, the norms, the error, the new momentum,
        the evaluations made and whether they were finite."""
        plan, step = self.plan, self.plan.step
        d: list[Any] = [d1] + [None] * (step.stages - 1)
        evaluations, finite = jnp.int32(0), jnp.asarray(True)
        norms: dict = {}  # by Norm; returned as a list in the needs' order (a pytree of arrays)
        points = [theta0, theta0]  # (Y_{i-1}, Y_{i-2})
        self.measure(norms, d, 0)
        for stage in range(1, step.stages):
            y = self.point(step.points[stage], h, theta0, d, tuple(points))
            points = [y, points[0]]
            gradient = self.evaluate(y)
            d[stage], extra, ok = self.field(y, gradient)
            evaluations = evaluations + 1 + extra
            finite = finite & ok & all_finite(gradient)
            self.measure(norms, d, stage)
        decay = [(theta0, -h * self.decoupled_decay)] if self.decoupled_decay else []
        new_momentum = momentum
        if plan.update == "sum":
            total = combine(None, [(d[i], b) for i, b in plan.update_terms])
            new_momentum = [s + scaled(m, self.momentum) for s, m in zip(total, momentum, strict=True)]
            if self.nesterov:
                terms = [(new_momentum, -h * (1.0 + self.momentum)), (momentum, h * self.momentum)]
            else:
                terms = [(new_momentum, -h)]
            candidate = combine(theta0, [*terms, *decay])
        elif plan.candidate_is_last_point:
            candidate = combine(points[0], decay)
        elif step.candidate is not None:
            candidate = self.point(step.candidate, h, theta0, d, tuple(points), decay)
        else:
            base = combine(theta0, [(d[i], -h * b) for i, b in plan.update_terms])
            candidate = combine(base, [(d[step.last], -h * plan.last_weight), *decay])
        error = None
        if plan.error_terms:
            atol, rtol = self.policy.tolerances(self.group)
            e = combine(None, [(d[i], h * w) for i, w in plan.error_terms])
            error = self.scaled_error(e, theta0, candidate, atol, rtol)
        out = {"candidate": candidate, "evaluations": evaluations, "finite": finite}
        out["norms"] = [norms[key] for key in self.need.norms]
        out["momentum"], out["error"] = new_momentum, error
        return out

    def measure(self, norms: dict, d: list, stage: int) -> None:
        for i, j in self.need.norms:
            if max(i, j if j is not None else 0) == stage:
                x = d[i] if j is None else [a - b for a, b in zip(d[i], d[j], strict=True)]
                norms[(i, j)] = sum_squares(x)

    @staticmethod
    def scaled_error(e: Leaves, old: Leaves, new: Leaves, atol: float, rtol: float) -> Any:
        dtype = accumulation_dtype()
        total = sum(
            (
                jnp.sum(jnp.square((ei / (jnp.maximum(jnp.abs(a), jnp.abs(b)) * rtol + atol)).astype(dtype)))
                for ei, a, b in zip(e, old, new, strict=True)
            ),
            jnp.zeros((), dtype),
        )
        count = max(sum(x.size for x in e), 1)
        return jnp.sqrt(total / count)

    def report(self, index: Any, h: Any, out: Mapping[str, Any], finite: Any) -> Attempt:
        return Attempt(
            index=index,
            h=(h,),
            norms=(dict(zip(self.need.norms, out["norms"], strict=True)),),
            scaled_error=(out["error"],),
            finite=finite,
            loss=None,
            candidate_loss=None,
            tableau=self.plan.step.tableau,
        )

    # -- the attempts ----------------------------------------------------------------------

    def representable(self, h: Any) -> Any:
        """h times the plan's coefficients is finite in the parameters' dtype (as the torch engine
        checks before an attempt)."""
        return jnp.isfinite(h) & (jnp.abs(h) * self.plan.step.coefficient_bound <= self.largest)

    def attempts(self, h0: Any, theta0, d1, momentum, settled_finite, d1_finite, go) -> dict[str, Any]:
        """The policy's attempts at stages 2..s (none where ``go`` is False: the step already
        failed). Returns the last attempt's outputs with its ``h``, its :class:`Attempt`,
        ``failed`` (the policy failed the step, or False where it cannot), ``stopped`` (the step
        fails as non-finite: a non-finite attempt with a non-finite d_1, or an h too large),
        ``attempts``, ``rejections`` and the attempts' ``evaluations``, as the torch engine."""
        dtype = accumulation_dtype()
        h0 = jnp.asarray(h0, dtype)

        def run(index, h):
            out = self.attempt(h, theta0, d1, momentum)
            attempt = self.report(index, h, out, settled_finite & out["finite"])
            return out, attempt, self.policy.judge([self.group], attempt)

        if not self.need.retries:
            out, attempt, verdict = run(0, h0)
            if verdict.accepted is not True and verdict.failed is False:
                raise RuntimeError(
                    f"lr_policy {self.policy.name!r} asked for a retry without declaring "
                    "PolicyNeeds(retries=True) (a retry needs stage 1 kept)"
                )
            failed = False if verdict.failed is False else self.flags(verdict)[1] & attempt.finite
            result = {"h": h0, "attempt": attempt, "failed": failed, "stopped": jnp.asarray(False)}
            result.update(attempts=jnp.int32(1), rejections=jnp.asarray(failed, jnp.int32))
            return {**out, **result}

        def body(carry):
            index, h, _, _, _, _, _, evaluations, rejections = carry
            out, attempt, verdict = run(index, h)
            broken = ~attempt.finite & ~d1_finite  # not judged: no smaller step helps
            accepted, failed = self.flags(verdict)
            accepted, failed = accepted & ~broken, failed & ~broken
            self.can_fail |= verdict.failed is not False  # (traced once)
            retry = ~(accepted | failed | broken)
            next_h = jnp.where(retry, jnp.asarray(verdict.h[0], dtype), h) if verdict.h else h
            stopped = broken | (retry & ~self.representable(next_h))
            rejections = rejections + (retry | failed)
            return (
                index + 1,
                next_h,
                h,
                out,
                accepted | stopped,
                failed,
                stopped,
                evaluations + out["evaluations"],
                rejections,
            )

        def cond(carry):
            index, _, _, _, decided, failed, _, _, _ = carry
            return go & ((index == 0) | (~(decided | failed) & (index < MAX_ATTEMPTS)))

        shapes = jax.eval_shape(lambda h: self.attempt(h, theta0, d1, momentum), h0)
        blank = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        false, zero = jnp.asarray(False), jnp.int32(0)
        self.can_fail = False
        start = (zero, h0, h0, blank, false, false, false, zero, zero)
        count, _, h, out, _, failed, stopped, evaluations, rejections = lax.while_loop(cond, body, start)
        attempt = self.report(count - 1, h, out, settled_finite & out["finite"])
        result = {
            "h": h,
            "attempt": attempt,
            "failed": failed if self.can_fail else False,
            "stopped": stopped,
        }
        result.update(attempts=count, rejections=rejections)
        return {**out, **result, "evaluations": evaluations}

    @staticmethod
    def flags(verdict: Verdict) -> tuple[Any, Any]:
        failed = jnp.asarray(verdict.failed, bool)
        return jnp.asarray(verdict.accepted, bool) & ~failed, failed
