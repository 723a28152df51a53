"""The Butcher tableau of an explicit Runge–Kutta method, as validated data.

One step of the method on dθ/dt = f(θ) with step h:

    k_i = f(θ_n + h Σ_{j<i} a_ij k_j),   i = 1..s
    θ_{n+1} = θ_n + h Σ_i b_i k_i,       e_{n+1} = h Σ_i (b_i - b̂_i) k_i  (embedded pairs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from numbers import Real

from rkopt.core.rooted_trees import order_condition_residuals

Coefficient = Real | Fraction | str
"""A coefficient: a number, or a string such as ``"1/6"`` read exactly as a fraction."""

_TOLERANCE = 1e-12

MAX_ORDER = 10
"""The highest claimed order whose conditions are verified (1205 rooted trees, ~0.1 s)."""


def _number(value: Coefficient, where: str) -> float:
    try:
        number = float(Fraction(value)) if isinstance(value, str) else float(value)
    except (TypeError, ValueError, ZeroDivisionError) as error:
        raise ValueError(f"ButcherTableau: {where} = {value!r} is not a number") from error
    if not math.isfinite(number):
        raise ValueError(f"ButcherTableau: {where} = {value!r} is not finite")
    return number


def _vector(values: Sequence[Coefficient], where: str) -> tuple[float, ...]:
    return tuple(_number(v, f"{where}[{i}]") for i, v in enumerate(values))


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit (embedded) Runge–Kutta method, checked on construction.

    Args:
        name: short identifier, e.g. ``"rk4"``.
        c: nodes c_1..c_s (c_1 = 0 for an explicit method).
        a: the strictly lower-triangular rows of A: row i holds a_i1..a_i,i-1 (so row 1 is
            empty). Full square rows are accepted if every entry on or above the diagonal is 0.
        b: weights of the solution of order ``order``.
        order: the claimed order p, verified against all order conditions up to p.
        b_hat: weights of the embedded solution, for pairs with an error estimate.
        embedded_order: the order of ``b_hat``, verified likewise.
        reference: where the coefficients come from.

    Raises ``ValueError`` naming the offending entry if the method is not explicit, a row sum
    differs from its node, a weight vector does not sum to 1, or an order condition fails.
    """

    name: str
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int
    b_hat: tuple[float, ...] | None = None
    embedded_order: int | None = None
    reference: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("ButcherTableau: name must be a non-empty string")
        c = _vector(self.c, "c")
        stages = len(c)
        if stages == 0:
            raise ValueError("ButcherTableau: c is empty; a method needs at least one stage")
        if len(self.a) != stages:
            raise ValueError(
                f"ButcherTableau {self.name!r}: a has {len(self.a)} rows but c has {stages} "
                "entries; give one row per stage (row i holds a_i1..a_i,i-1)"
            )
        rows = []
        for i, row in enumerate(self.a):
            values = _vector(row, f"a[{i}]")
            if len(values) not in (i, stages):
                raise ValueError(
                    f"ButcherTableau {self.name!r}: row a[{i}] has {len(values)} entries; "
                    f"an explicit row {i} holds {i} entries (or {stages} with zeros from column {i})"
                )
            if any(v != 0.0 for v in values[i:]):
                raise ValueError(
                    f"ButcherTableau {self.name!r}: a[{i}][{i}:] = {values[i:]} is not zero, so "
                    "the method is implicit; rkopt solves only explicit methods"
                )
            rows.append(values[:i])
            if abs(sum(values[:i]) - c[i]) > _TOLERANCE * max(1.0, abs(c[i])):
                raise ValueError(
                    f"ButcherTableau {self.name!r}: row sum of a[{i}] is {sum(values[:i])!r} but "
                    f"c[{i}] = {c[i]!r}; the nodes must equal the row sums of A"
                )
        object.__setattr__(self, "c", c)
        object.__setattr__(self, "a", tuple(rows))
        object.__setattr__(self, "b", self._weights(self.b, "b"))
        if (self.b_hat is None) != (self.embedded_order is None):
            raise ValueError(
                f"ButcherTableau {self.name!r}: give b_hat and embedded_order together, or neither"
            )
        if self.b_hat is not None:
            object.__setattr__(self, "b_hat", self._weights(self.b_hat, "b_hat"))
        self._check_order(self.b, self.order, "b", "order")
        if self.b_hat is not None:
            self._check_order(self.b_hat, self.embedded_order, "b_hat", "embedded_order")
        pair = f" with an embedded order-{self.embedded_order} estimate" if self.b_hat else ""
        summary = f"{self.name}: explicit {stages}-stage Runge–Kutta method of order {self.order}{pair}."
        object.__setattr__(self, "__doc__", f"{summary}\n\n{self.reference}".strip())

    def _weights(self, values: Sequence[Coefficient], label: str) -> tuple[float, ...]:
        weights = _vector(values, label)
        if len(weights) != len(self.c):
            raise ValueError(
                f"ButcherTableau {self.name!r}: {label} has {len(weights)} entries but the method "
                f"has {len(self.c)} stages"
            )
        if abs(sum(weights) - 1.0) > _TOLERANCE:
            raise ValueError(
                f"ButcherTableau {self.name!r}: {label} sums to {sum(weights)!r}; the weights of a "
                "consistent method sum to 1"
            )
        return weights

    def _check_order(self, weights: tuple[float, ...], order: object, label: str, what: str) -> None:
        if not isinstance(order, int) or isinstance(order, bool) or order < 1:
            raise ValueError(f"ButcherTableau {self.name!r}: {what} must be an int >= 1, got {order!r}")
        if order > MAX_ORDER:
            raise ValueError(
                f"ButcherTableau {self.name!r}: {what}={order} is above {MAX_ORDER}, the highest order "
                "whose conditions are verified (their rooted trees grow about 3x per order: 1205 up to "
                "order 10, 7813 up to 12, about 20 million up to 20); claim at most order "
                f"{MAX_ORDER}"
            )
        failed = [
            (tree, r) for tree, r in order_condition_residuals(self.a, weights, order) if abs(r) > 1e-10
        ]
        if failed:
            tree, residual = failed[0]
            raise ValueError(
                f"ButcherTableau {self.name!r}: {label} fails {len(failed)} order condition(s) "
                f"up to {what}={order}, e.g. tree {tree} with residual {residual:.3g}; "
                f"lower {what} or fix the coefficients"
            )

    # -- derived facts -------------------------------------------------------------------

    @property
    def stages(self) -> int:
        """s, the number of stages (vector-field evaluations per step)."""
        return len(self.c)

    @property
    def is_embedded(self) -> bool:
        """Whether the tableau carries an embedded error estimate."""
        return self.b_hat is not None

    @property
    def error_weights(self) -> tuple[float, ...]:
        """b - b̂: the weights of the local error estimate e = h Σ (b_i - b̂_i) k_i."""
        if self.b_hat is None:
            raise ValueError(f"tableau {self.name!r} has no embedded pair (b_hat)")
        return tuple(bi - bh for bi, bh in zip(self.b, self.b_hat, strict=True))

    @property
    def fsal(self) -> bool:
        """First-same-as-last: the last stage is evaluated at θ_{n+1}.

        rkopt never reuses that evaluation in the next step, whose minibatch differs.
        """
        last = self.a[-1]
        return (
            self.stages > 1
            and self.b[-1] == 0.0
            and all(x == y for x, y in zip(last, self.b[:-1], strict=True))
        )

    @property
    def error_order(self) -> int:
        """min(order, embedded_order): the order q of the error estimate's leading term h^(q+1)."""
        if self.embedded_order is None:
            raise ValueError(f"tableau {self.name!r} has no embedded pair (b_hat)")
        return min(self.order, self.embedded_order)

    def order_residuals(self, order: int | None = None, embedded: bool = False) -> list[float]:
        """Φ(t) - 1/γ(t) for every rooted tree up to ``order`` (default: the claimed order)."""
        weights = self.b_hat if embedded else self.b
        if weights is None:
            raise ValueError(f"tableau {self.name!r} has no embedded pair (b_hat)")
        claimed = self.embedded_order if embedded else self.order
        return [r for _, r in order_condition_residuals(self.a, weights, order or claimed)]

    def stability_polynomial(self) -> tuple[float, ...]:
        """Coefficients r_0..r_s of R(z) = 1 + Σ_k z^k b·A^(k-1)·1, with θ_{n+1} = R(hλ) θ_n on y' = λy."""
        coefficients = [1.0]
        power = [1.0] * self.stages  # A^(k-1) · 1
        for _ in range(self.stages):
            coefficients.append(sum(bi * pi for bi, pi in zip(self.b, power, strict=True)))
            power = [sum(row[j] * power[j] for j in range(i)) for i, row in enumerate(self.a)]
        return tuple(coefficients)

    def stages_needed(self, error_estimate: bool = False) -> int:
        """How many leading stages a step must evaluate.

        A trailing stage whose direction enters neither θ_{n+1} (b_i = 0) nor the error estimate
        (when ``error_estimate``) nor a later stage is skipped: fixed-step Dormand–Prince, for
        instance, needs 6 of its 7 stages, the 7th serving only its FSAL error estimate.
        """
        weights = self.error_weights if error_estimate else (0.0,) * self.stages
        needed = self.stages
        while needed > 1 and self.b[needed - 1] == 0.0 and weights[needed - 1] == 0.0:
            needed -= 1  # later stages are already gone, so nothing else reads this one
        return needed

    def last_uses(self, stages: int | None = None) -> tuple[int, ...]:
        """For each stage j, the last stage i whose point needs k_j (a_ij != 0), or j if none.

        ``stages`` limits the step to its leading stages (see :meth:`stages_needed`).
        """
        stages = self.stages if stages is None else stages
        return tuple(
            max((i for i in range(j + 1, stages) if self.a[i][j] != 0.0), default=j) for j in range(stages)
        )

    def lifetimes(
        self, keep_until: Mapping[int, int] | None = None, stages: int | None = None
    ) -> tuple[int, ...]:
        """For each stage j, the last stage that reads k_j: ``last_uses()[j]``, extended by
        ``keep_until`` (e.g. ``{0: s}`` keeps k_1 for the whole step)."""
        needed = list(self.last_uses(stages))
        for stage, until in (keep_until or {}).items():
            needed[stage] = max(needed[stage], until)
        return tuple(needed)

    def storage_plan(
        self, keep_until: Mapping[int, int] | None = None, stages: int | None = None
    ) -> tuple[tuple[int | None, ...], int]:
        """Assign stage directions that outlive the next stage to reusable buffer slots.

        Stage j's direction k_j is needed until stage ``lifetimes(keep_until)[j]``; if that is j + 1
        it is read straight from the gradient and needs no slot. Returns (slot per stage or None, slot
        count): the greedy interval colouring, which uses the least possible number of slots.
        """
        return interval_slots(self.lifetimes(keep_until, stages))


def interval_slots(needed: Sequence[int]) -> tuple[tuple[int | None, ...], int]:
    """Slots for stage directions, direction j needed until stage ``needed[j]`` (none if that is at
    most j + 1: it is read before the next evaluation). Returns (slot per stage or None, slot count):
    the greedy interval colouring, which uses the least possible number of slots."""
    slots: list[int | None] = [None] * len(needed)
    free_at: list[int] = []  # slot -> stage after which it is free again
    for j in range(len(needed)):
        if needed[j] <= j + 1:
            continue
        for slot, until in enumerate(free_at):
            if until <= j:
                slots[j], free_at[slot] = slot, needed[j]
                break
        else:
            slots[j] = len(free_at)
            free_at.append(needed[j])
    return tuple(slots), len(free_at)
