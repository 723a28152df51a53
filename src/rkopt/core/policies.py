"""Step-size policies (the ``lr_policy`` group key): how each param group picks its step h.

A policy is framework-neutral: it sees values, never a binding's tensors. The engine asks it

1. :meth:`~StepSizePolicy.needs` — once per plan: what it reads from a step (:class:`PolicyNeeds`);
2. :meth:`~StepSizePolicy.probe` — after stage 1: whether to measure the field's change along d_1
   (one more evaluation), answered by a :class:`ProbeResult`;
3. :meth:`~StepSizePolicy.initial_steps` — the h of each of its groups;
4. :meth:`~StepSizePolicy.judge` — after each attempt, given an :class:`Attempt`: accept, retry
   with new steps on the same batch, or fail (a :class:`Verdict`); retries are the policy's to bound;
5. :meth:`~StepSizePolicy.commit` — once the step is accepted: record its observables in the group.

A policy handles all groups that use it at once (one evaluation serves every group), as lists in
group order. Shipped: ``"fixed"`` (h = lr), ``"dal"`` (METHOD §2.2) and ``"error_control"``
(METHOD §2.4). Add one with :func:`register_policy`.

Values and decisions are the binding's. A policy computes with its numeric namespace
:attr:`StepSizePolicy.xp` (:mod:`rkopt.core.control`): :data:`~rkopt.core.control.MATH` for the
torch binding, whose values are Python floats and whose engine branches in Python on each
:class:`Verdict`; an array namespace for the JAX binding, which sets ``policy.xp`` and traces the
same methods under ``jax.jit``, so h, the norms, the errors, the attempt index, a verdict's flags
and a probe's ``when`` may be traced arrays there and an observable not yet measured is NaN rather
than None. A policy that branches in Python on values works with the torch binding only; written
with ``xp.where``/``xp.logical_*`` (as the shipped ones are) it serves both. Options, needs and
the groups a probe covers are static (Python values) in both.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from rkopt.core.control import MATH, PIController, dal_step_size
from rkopt.core.options import Option, choice, integer, real
from rkopt.core.tableau import ButcherTableau

Group = MutableMapping[str, Any]
"""A param group's options and observables (the policy reads its keys and writes its observables)."""

Norm = tuple[int, int | None]
"""(i, j): Σ (d_i - d_j)² over a group's parameters; (i, None): Σ d_i²."""


@dataclass(frozen=True)
class PolicyNeeds:
    """What a policy reads from a step of one group.

    The plan derives from these which stage directions to keep and for how long.

    Attributes:
        error_estimate: the scaled embedded error of each attempt (:meth:`StepSizePolicy.tolerances`).
        norms: the sums of squares of stage directions (and their differences) of each attempt.
        evaluate_candidate: the loss at θ_{n+1} of each attempt (one more evaluation).
        probes: the policy may request a probe (:meth:`StepSizePolicy.probe`).
        retries: the policy may answer :meth:`Verdict.retry` (a retry reuses stage 1).
    """

    error_estimate: bool = False
    norms: tuple[Norm, ...] = ()
    evaluate_candidate: bool = False
    probes: bool = False
    retries: bool = False


@dataclass(frozen=True)
class ProbeRequest:
    """Evaluate at θ_n - eps d̂ on the groups ``groups`` (indices into the policy's groups), with
    d̂ = d_1 / ‖d_1‖ normalised over those groups together.

    ``when``: whether the probe is made. With Python values a policy returns None instead of a
    request it does not want (the torch engine probes on every request); under ``jax.jit`` it may
    be a traced flag, the probe then being made only where it holds (and its result otherwise 0).
    """

    groups: tuple[int, ...]
    eps: float
    when: Any = True


@dataclass(frozen=True)
class ProbeResult:
    """‖d_1‖² and ‖d(θ_n - eps d̂) - d_1‖², summed over the probed groups (no evaluation is made,
    and both are 0, when ‖d_1‖ = 0)."""

    eps: float
    direction_sq: float
    difference_sq: float


@dataclass(frozen=True)
class Attempt:
    """What one attempt of a step measured, per group of the policy (lists in group order).

    Attributes:
        index: 0 for the step's first attempt, k for its k-th retry.
        h: the step of each group.
        norms: per group, the requested :data:`Norm` sums of squares.
        scaled_error: per group, ‖e / (atol + rtol·max(|θ_n|, |θ_{n+1}|))‖_rms (None if not needed).
        finite: every evaluation of the attempt (after the one at θ_n) was finite.
        loss: the loss at θ_n (None where unknown, as in a stage-wise step given no loss).
        candidate_loss: the loss at θ_{n+1} (when requested).
        tableau: the method.
    """

    index: int
    h: tuple[float, ...]
    norms: tuple[Mapping[Norm, float], ...]
    scaled_error: tuple[float | None, ...]
    finite: bool
    loss: float | None
    candidate_loss: float | None
    tableau: ButcherTableau


@dataclass(frozen=True)
class Verdict:
    """A policy's decision on an attempt: ``accept``; ``retry`` with new steps ``h``; ``fail``
    (the step raises ``StepRejectedError(message)`` with θ_n restored; under ``jax.jit`` the JAX
    binding keeps θ_n and raises from a host callback).

    Attributes:
        accepted: the attempt is taken (a bool, or a traced flag under ``jax.jit``).
        h: the steps of the next attempt (read where neither accepted nor failed).
        failed: the step fails (takes precedence over ``accepted``).
        message: the error's message when it fails.
    """

    accepted: Any = True
    h: tuple[Any, ...] = ()
    failed: Any = False
    message: str = ""

    @property
    def action(self) -> Literal["accept", "retry", "fail"]:
        """The decision, for Python flags (the torch engine branches on it)."""
        if self.failed:
            return "fail"
        return "accept" if self.accepted else "retry"

    @classmethod
    def accept(cls) -> Verdict:
        return cls(True)

    @classmethod
    def retry(cls, h: Sequence[Any]) -> Verdict:
        return cls(False, tuple(h))

    @classmethod
    def fail(cls, message: str) -> Verdict:
        return cls(False, failed=True, message=message)

    @classmethod
    def decide(cls, accepted: Any, h: Sequence[Any], failed: Any = False, message: str = "") -> Verdict:
        """A decision whose flags may be traced: accept where ``accepted``, fail where ``failed``,
        else retry with ``h``."""
        return cls(accepted, tuple(h), failed, message)


class StepSizePolicy:
    """Fixed step, h = lr: the base class of every policy.

    Class attributes:
        name: the ``lr_policy`` value (set by :func:`register_policy`).
        options: the param-group keys it reads, with defaults and checks.
        xp: the numeric namespace its arithmetic uses (:mod:`rkopt.core.control`; a binding may
            set it on an instance).
    """

    name: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()
    xp: Any = MATH

    def validate(self, group: Mapping[str, Any], tableau: ButcherTableau) -> None:
        """Raise ``ValueError`` naming the key if ``group`` cannot use this policy with ``tableau``
        (each key's own check has already passed)."""

    def needs(self, group: Mapping[str, Any], tableau: ButcherTableau) -> PolicyNeeds:
        return PolicyNeeds()

    def tolerances(self, group: Mapping[str, Any]) -> tuple[float, float]:
        """(atol, rtol) of the scaled error, when :attr:`PolicyNeeds.error_estimate`."""
        raise NotImplementedError

    def probe(self, groups: Sequence[Group]) -> ProbeRequest | None:
        return None

    def initial_steps(self, groups: Sequence[Group], probe: ProbeResult | None) -> list[float]:
        return [group["lr"] for group in groups]

    def judge(self, groups: Sequence[Group], attempt: Attempt) -> Verdict:
        return Verdict.accept()

    def commit(self, groups: Sequence[Group], attempt: Attempt) -> None:
        """Record what the accepted attempt measured (observables live in the group dict)."""


class DriftAdjusted(StepSizePolicy):
    """DAL-p: h = c / (1 + (c/2) ρ^p) with c = lr.

    ρ = ‖J_f d‖ / ‖d‖, d the step's (preconditioned) descent direction, measured jointly over the
    parameters of the groups that share an estimator. ``dal_estimator="finite_difference"`` probes
    ρ = ‖d(θ_n - ε d/‖d‖) - d(θ_n)‖ / ε each step (one extra evaluation, counted); ``"free"``
    reuses ρ = ‖d_2 - d_1‖ / ‖θ_2 - θ_n‖ measured on the previous step's first two stages (θ_2 its
    second stage point, so no extra evaluation; kept in ``dal_rho_next``) and falls back to the
    probe when no previous estimate exists (the first step). ``dal_rho`` holds the ρ that set ``h``.
    """

    options = (
        Option("dal_power", 1.0, real(0.0, low_open=True), doc="p"),
        Option("dal_estimator", "free", choice("free", "finite_difference"), doc="how ρ is measured"),
        Option("dal_fd_eps", 1e-3, real(0.0, low_open=True), doc="ε of the finite-difference probe"),
    )

    def __init__(self) -> None:
        self._rho: list[float] = []

    def validate(self, group, tableau) -> None:
        if group["dal_estimator"] == "free" and (tableau.stages < 2 or tableau.a[1][0] == 0.0):
            raise ValueError(
                f"dal_estimator='free' reads the curvature from stages 1 and 2 and needs a21 != 0; "
                f"tableau {tableau.name!r} has none: use dal_estimator='finite_difference'"
            )

    def needs(self, group, tableau) -> PolicyNeeds:
        norms = ((1, 0), (0, None)) if group["dal_estimator"] == "free" else ()
        return PolicyNeeds(norms=norms, probes=True)

    def _probing(self, group: Mapping[str, Any]) -> Any:
        """Whether the group probes this step (a flag, traced where ``dal_rho_next`` is)."""
        if group["dal_estimator"] == "finite_difference":
            return True
        return self.xp.logical_not(self.xp.known(group.get("dal_rho_next")))

    def probe(self, groups) -> ProbeRequest | None:
        flags = [self._probing(group) for group in groups]
        probing = tuple(i for i, flag in enumerate(flags) if flag is not False)
        if not probing:
            return None
        eps = min(groups[i]["dal_fd_eps"] for i in probing)
        return ProbeRequest(probing, eps, when=self.xp.any([flags[i] for i in probing]))

    def initial_steps(self, groups, probe) -> list[float]:
        xp, probed = self.xp, None
        if probe is not None:
            rho = xp.sqrt(probe.difference_sq) / probe.eps
            rho = xp.where(xp.isfinite(rho), rho, xp.inf)  # NaN: a null step
            probed = xp.where(probe.direction_sq != 0.0, rho, 0.0)
        self._rho = [xp.where(self._probing(group), probed, group.get("dal_rho_next")) for group in groups]
        return [
            dal_step_size(group["lr"], rho, group["dal_power"], xp)
            for group, rho in zip(groups, self._rho, strict=True)
        ]

    def commit(self, groups, attempt) -> None:
        xp = self.xp
        difference_sq = displacement_sq = 0.0
        for group, h, norms in zip(groups, attempt.h, attempt.norms, strict=True):
            if group["dal_estimator"] == "free":
                step = h * attempt.tableau.a[1][0]
                difference_sq += norms[(1, 0)]
                displacement_sq += step * step * norms[(0, None)]
        positive = displacement_sq > 0.0
        free = xp.sqrt(difference_sq / xp.where(positive, displacement_sq, 1.0))
        for group, rho in zip(groups, self._rho, strict=True):
            group["dal_rho"] = rho
            if group["dal_estimator"] == "free":  # a step with h = 0 measured nothing: keep the estimate
                group["dal_rho_next"] = xp.where(positive, free, group.get("dal_rho_next"))


class ErrorControl(StepSizePolicy):
    """Embedded-pair error control: accept iff ‖e / (atol + rtol·max(|θ_n|, |θ_{n+1}|))‖_rms <= 1.

    Rejected steps restore θ_n and retry on the same minibatch with h shrunk by the PI controller
    (groups within tolerance keep their h); after ``max_retries`` rejections the last (smallest)
    attempt is accepted (``on_max_retries="accept"``) or ``StepRejectedError`` is raised
    (``"raise"``). A non-finite evaluation or error estimate counts as a rejection.
    """

    options = (
        Option("atol", 1e-5, real(0.0), doc="absolute tolerance"),
        Option("rtol", 1e-2, real(0.0), doc="relative tolerance"),
        Option("max_retries", 10, integer(0), doc="retries on the same batch before on_max_retries"),
        Option("on_max_retries", "accept", choice("accept", "raise"), doc="take the last attempt, or raise"),
        Option("safety", 0.9, real(0.0, 1.0, low_open=True), doc="PI controller safety factor"),
        Option("min_factor", 0.2, real(0.0, 1.0, low_open=True), doc="smallest h_{n+1}/h_n"),
        Option("max_factor", 10.0, real(1.0), doc="largest h_{n+1}/h_n"),
    )

    def validate(self, group, tableau) -> None:
        if not tableau.is_embedded:
            raise ValueError(
                f"lr_policy='error_control' needs an embedded pair; tableau {tableau.name!r} has "
                "none: use e.g. 'dormand_prince', 'bogacki_shampine', 'tsitouras' or 'heun_euler'"
            )
        if group["atol"] == 0.0 and group["rtol"] == 0.0:
            raise ValueError("atol and rtol are both 0: the error tolerance must be positive")

    @staticmethod
    def controller(group: Mapping[str, Any], tableau: ButcherTableau) -> PIController:
        return PIController(
            error_order=tableau.error_order,
            safety=group["safety"],
            min_factor=group["min_factor"],
            max_factor=group["max_factor"],
        )

    def needs(self, group, tableau) -> PolicyNeeds:
        return PolicyNeeds(error_estimate=True, retries=True)

    def tolerances(self, group) -> tuple[float, float]:
        return group["atol"], group["rtol"]

    def initial_steps(self, groups, probe) -> list[float]:
        xp, steps = self.xp, []
        for group in groups:
            lr, proposed = group["lr"], group.get("ec_h_next")
            if proposed is not None:
                lr = xp.where(xp.known(proposed), xp.minimum(lr, proposed), lr)
            steps.append(lr)
        return steps

    def errors(self, attempt: Attempt) -> list[Any]:
        """The attempt's scaled errors, inf where an evaluation was not finite."""
        return [self.xp.where(attempt.finite, e, self.xp.inf) for e in attempt.scaled_error]

    def judge(self, groups, attempt) -> Verdict:
        xp, errors = self.xp, self.errors(attempt)
        within = xp.all([error <= 1.0 for error in errors])
        max_retries = min(group["max_retries"] for group in groups)
        exhausted = attempt.index >= max_retries  # no retry left
        raises = any(group["on_max_retries"] == "raise" for group in groups)
        message = ""
        if raises:
            message = (
                f"error control rejected the step {attempt.index + 1} times (max_retries="
                f"{max_retries}); θ_n was restored. Raise max_retries, loosen atol/rtol, "
                "lower lr, or set on_max_retries='accept'"
            )
        failed = xp.logical_and(xp.logical_not(within), xp.logical_and(exhausted, raises))
        return Verdict.decide(
            xp.logical_or(within, xp.logical_and(exhausted, not raises)),  # else the last, smallest
            [
                h * xp.minimum(1.0, self.controller(group, attempt.tableau).factor(error, None, xp))
                for group, h, error in zip(groups, attempt.h, errors, strict=True)
            ],
            failed,
            message,
        )

    def commit(self, groups, attempt) -> None:
        xp = self.xp
        for group, h, error in zip(groups, attempt.h, self.errors(attempt), strict=True):
            controller = self.controller(group, attempt.tableau)
            moved = h != 0.0  # a step with h = 0 (lr = 0: warm-up, decay to 0) measured nothing
            proposal = h * controller.factor(error, group.get("ec_error"), xp)
            group["ec_h_next"] = xp.where(moved, proposal, group.get("ec_h_next"))
            group["ec_error"] = xp.where(moved, error, group.get("ec_error"))


MAX_ATTEMPTS = 1000
"""A policy that has not accepted or failed after this many attempts of a step is a bug (a binding
stops the step there)."""

POLICIES: dict[str, type[StepSizePolicy]] = {}
"""The registered ``lr_policy`` values and their classes."""


def register_policy(name: str, policy: type[StepSizePolicy]) -> type[StepSizePolicy]:
    """Make ``lr_policy=name`` select ``policy`` (a :class:`StepSizePolicy` subclass; its
    ``options`` become param-group keys). Re-registering a name replaces it."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_policy: name must be a non-empty string, got {name!r}")
    if not (isinstance(policy, type) and issubclass(policy, StepSizePolicy)):
        raise TypeError(f"register_policy: {policy!r} is not a subclass of rkopt.StepSizePolicy")
    taken = {o.name for cls in POLICIES.values() if cls is not POLICIES.get(name) for o in cls.options}
    clash = sorted(taken & {o.name for o in policy.options})
    if clash:
        raise ValueError(f"register_policy({name!r}): option(s) {clash} belong to another policy")
    policy.name = name
    POLICIES[name] = policy
    return policy


def get_policy(name: Any) -> type[StepSizePolicy]:
    if not isinstance(name, str) or name not in POLICIES:
        raise ValueError(
            f"unknown lr_policy {name!r}; valid: {sorted(POLICIES)} "
            "(register your own with rkopt.register_policy)"
        )
    return POLICIES[name]


def _check_policy(key: str, value: Any) -> None:
    get_policy(value)


POLICY_OPTION = Option("lr_policy", "fixed", _check_policy, shapes_plan=True, doc="how h is chosen")

register_policy("fixed", StepSizePolicy)
register_policy("dal", DriftAdjusted)
register_policy("error_control", ErrorControl)

__all__ = [
    "MAX_ATTEMPTS",
    "POLICIES",
    "POLICY_OPTION",
    "Attempt",
    "DriftAdjusted",
    "ErrorControl",
    "PolicyNeeds",
    "ProbeRequest",
    "ProbeResult",
    "StepSizePolicy",
    "Verdict",
    "get_policy",
    "register_policy",
]
