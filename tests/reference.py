"""An independent float64 reference of the rkopt optimizer, on the flattened parameter vector.

Written from the mathematics (METHOD.md §1–2 and the optimizer's documented semantics), not from
the code of :mod:`rkopt.torch`: plain NumPy on one vector θ, with each param group a set of
indices into θ. Only the Butcher coefficients (c, A, b, b̂) are read from the tableau object.

One step n, for every group k (σ = -1 if maximize else +1, λ = weight_decay):

    q(θ)   = σ g(θ) + ∇R(θ) + λ θ            (λ θ only for coupled decay; ∇R only with IGR)
    P_n    = frozen diagonal preconditioner, from q_1 = q(θ_n)
    d_i    = P_n q(θ_n - h Σ_{j<i} a_ij d_j)
    S      = Σ b_i d_i
    θ_{n+1} = θ_n - h S                        (momentum: m ← β m + S, θ_n - h m; Nesterov:
                                               θ_n - h (S + β m)); decoupled decay: - h λ θ_n
    e      = h Σ (b_i - b̂_i) d_i              (error control)

with IGR ∇R = H w, w_k = (igr_k lr_k / 2) g_k (R = Σ_k igr_k (lr_k/4) ‖g_k‖²), formed either by the
forward difference ‖w‖ (g(θ + ε w/‖w‖) - g(θ)) / ε (one extra gradient call) or by the exact
Hessian.

The class also supports a few deliberate *mutations* (plausible implementation mistakes) so that
tests can check that the comparison is sensitive enough to catch them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

GradFn = Callable[[np.ndarray], tuple[float, np.ndarray]]
HessFn = Callable[[np.ndarray], np.ndarray]

# Group keys and their defaults, as the spec states them.
SPEC_DEFAULTS: dict[str, Any] = {
    "weight_decay": 0.0,
    "decoupled_weight_decay": False,
    "maximize": False,
    "preconditioner": None,
    "precond_delta": 1.0,
    "precond_beta2": 0.999,
    "precond_eps": 1e-8,
    "momentum": 0.0,
    "nesterov": False,
    "lr_policy": "fixed",
    "dal_power": 1.0,
    "dal_estimator": "free",
    "dal_fd_eps": 1e-3,
    "atol": 1e-5,
    "rtol": 1e-2,
    "max_retries": 10,
    "on_max_retries": "accept",
    "safety": 0.9,
    "min_factor": 0.2,
    "max_factor": 10.0,
    "igr": 0.0,
    "igr_eps": 1e-3,
}

MUTATIONS = frozenset(
    {
        "precond_every_stage",  # recompute P from each stage's q instead of freezing P_n
        "rmsprop_no_bias_correction",  # v_n instead of v_n / (1 - β2^n)
        "momentum_dampening",  # m ← β m + (1-β) S
        "nesterov_as_heavy_ball",  # ignore nesterov
        "decoupled_as_coupled",  # ignore decoupled_weight_decay
        "dal_free_current_step",  # use the current step's stage-1/2 ρ (impossible without lag)
        "dal_fd_forward",  # probe at θ_n + ε d̂_1 instead of θ_n - ε d̂_1
        "ec_no_pi_term",  # pure I controller (drop err_prev^β)
        "ec_relative_to_new_only",  # scale by atol + rtol |θ_{n+1}|
        "igr_uses_h",  # IGR weight λ_I h/2 instead of λ_I lr/2
        "shared_h",  # one h (the first group's) for every group
        "dal_free_pool_attempts",  # free ρ pooled over all error-control attempts, not the accepted one
    }
)


class StepRejected(RuntimeError):
    """Raised by the reference when error control gives up and on_max_retries == 'raise'."""


@dataclass
class Tableau:
    """The coefficients of an explicit RK method (taken from an rkopt ButcherTableau)."""

    a: list[list[float]]
    b: list[float]
    b_hat: list[float] | None
    error_order: int | None

    @classmethod
    def from_rkopt(cls, t: Any) -> Tableau:
        a = [list(map(float, row)) for row in t.a]
        b = list(map(float, t.b))
        b_hat = None if t.b_hat is None else list(map(float, t.b_hat))
        q = min(t.order, t.embedded_order) if t.b_hat is not None else None
        return cls(a, b, b_hat, q)

    @property
    def stages(self) -> int:
        return len(self.b)


@dataclass
class Group:
    index: np.ndarray  # positions of this group's parameters in θ
    opts: dict[str, Any]
    # running state
    G: np.ndarray | None = None  # adagrad sum of squares
    v: np.ndarray | None = None  # rmsprop second moment
    n_precond: int = 0  # steps the preconditioner statistics have seen
    m: np.ndarray | None = None  # momentum buffer
    dal_rho_next: float | None = None  # free estimate measured on the previous step
    ec_err_prev: float | None = None
    ec_h_next: float | None = None  # uncapped h·factor from the controller

    def __getitem__(self, key: str) -> Any:
        return self.opts[key]


@dataclass
class StepRecord:
    """What one reference step did (per group lists are in group order)."""

    theta: np.ndarray
    loss: float
    h: list[float]
    dal_rho_used: list[float | None]
    dal_rho_next: list[float | None]
    ec_error: list[float | None]
    ec_h_next: list[float | None]  # min(lr, h·factor): the h the next step will use (before lr changes)
    ec_h_next_uncapped: list[float | None]
    attempts: int
    calls: int
    extra: dict[str, Any] = field(default_factory=dict)


def pi_factor(err: float, err_prev: float | None, q: int, safety: float, fmin: float, fmax: float) -> float:
    """h_{n+1}/h_n = clip(safety · err^(-0.7/(q+1)) · err_prev^(0.4/(q+1)), fmin, fmax).

    err = 0 gives fmax; the err_prev term is left out when there is no (positive) previous error or
    the step was force-accepted (err > 1), and then a step never grows.
    """
    if not err >= 0.0:
        return fmin
    if err == 0.0:
        return fmax
    alpha, beta = 0.7 / (q + 1), 0.4 / (q + 1)
    f = safety * err ** (-alpha)
    if err <= 1.0 and err_prev is not None and err_prev > 0.0:
        f *= err_prev**beta
    if err > 1.0:
        f = min(f, 1.0)
    return min(fmax, max(fmin, f))


def reject_factor(err: float, q: int, safety: float, fmin: float) -> float:
    """After a rejected attempt: h ← h · clip(safety · err^(-0.7/(q+1)), fmin, 1)."""
    if not err >= 0.0 or math.isinf(err):
        return fmin
    if err == 0.0:
        return 1.0
    return min(1.0, max(fmin, safety * err ** (-0.7 / (q + 1))))


class ReferenceRK:
    """The reference optimizer.

    Args:
        grad_fn: θ ↦ (L(θ), ∇L(θ)) on the flat float64 vector (one call = one closure call).
        theta0: the initial flat parameter vector.
        groups: per group, (indices into θ, options dict using the optimizer's group keys; missing
            keys take the spec defaults; keys the reference does not know are ignored).
        tableau: an rkopt ButcherTableau (only its coefficients are read) or a :class:`Tableau`.
        hess_fn: θ ↦ ∇²L(θ); with ``igr_mode="exact"`` the IGR term is H w exactly.
        igr_mode: ``"fd"`` (the forward difference) or ``"exact"``.
        mutations: names from :data:`MUTATIONS` (deliberate deviations, for sensitivity tests).
    """

    def __init__(
        self,
        grad_fn: GradFn,
        theta0: np.ndarray,
        groups: Sequence[tuple[Sequence[int] | np.ndarray, dict[str, Any]]],
        tableau: Any,
        hess_fn: HessFn | None = None,
        igr_mode: str = "fd",
        mutations: Sequence[str] = (),
    ) -> None:
        self.grad_fn = grad_fn
        self.hess_fn = hess_fn
        self.igr_mode = igr_mode
        if igr_mode not in ("fd", "exact"):
            raise ValueError(igr_mode)
        if igr_mode == "exact" and hess_fn is None:
            raise ValueError("igr_mode='exact' needs hess_fn")
        unknown = set(mutations) - MUTATIONS
        if unknown:
            raise ValueError(f"unknown mutations {sorted(unknown)}")
        self.mutations = frozenset(mutations)
        self.theta = np.array(theta0, dtype=np.float64, copy=True)
        self.t = tableau if isinstance(tableau, Tableau) else Tableau.from_rkopt(tableau)
        self.groups: list[Group] = []
        for index, opts in groups:
            full = {**SPEC_DEFAULTS, **{k: v for k, v in opts.items() if k in SPEC_DEFAULTS or k == "lr"}}
            if "lr" not in full:
                raise ValueError("every group needs an lr")
            self.groups.append(Group(np.asarray(index, dtype=np.int64), full))
        covered = np.concatenate([g.index for g in self.groups]) if self.groups else np.array([])
        if len(np.unique(covered)) != len(covered):
            raise ValueError("groups overlap")
        self.steps = 0
        self.grad_evals = 0
        self.rejected_steps = 0
        self.history: list[StepRecord] = []

    # -- the vector field ----------------------------------------------------------------

    def _grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        self.grad_evals += 1
        loss, g = self.grad_fn(theta.copy())
        return float(loss), np.asarray(g, dtype=np.float64)

    def _igr_lr(self, grp: Group, h: float | None) -> float:
        if "igr_uses_h" in self.mutations and h is not None:
            return h
        return grp["lr"]

    def field(self, theta: np.ndarray, hs: Sequence[float] | None = None) -> tuple[float, np.ndarray]:
        """q(θ) = σ g + ∇R + λ_coupled θ on the whole vector (one or two gradient calls)."""
        loss, g = self._grad(theta)
        q = np.zeros_like(theta)
        if any(grp["igr"] > 0 for grp in self.groups):
            w = np.zeros_like(theta)
            for k, grp in enumerate(self.groups):
                lr_k = self._igr_lr(grp, None if hs is None else hs[k])
                w[grp.index] = grp["igr"] * lr_k / 2.0 * g[grp.index]
            if self.igr_mode == "exact":
                q += self.hess_fn(theta.copy()) @ w
            else:
                w_norm = float(np.linalg.norm(w))
                if w_norm > 0.0 and math.isfinite(w_norm):
                    eps = min(grp["igr_eps"] for grp in self.groups if grp["igr"] > 0 and grp["lr"] > 0)
                    _, g_probe = self._grad(theta + eps * w / w_norm)
                    q += w_norm * (g_probe - g) / eps
        for grp in self.groups:
            i = grp.index
            sigma = -1.0 if grp["maximize"] else 1.0
            q[i] += sigma * g[i]
            if not grp["decoupled_weight_decay"] or "decoupled_as_coupled" in self.mutations:
                q[i] += grp["weight_decay"] * theta[i]
        return loss, q

    def _precondition_proposal(self, grp: Group, q1: np.ndarray) -> tuple[np.ndarray | None, Any]:
        """(P_n on the group, proposed statistics) from the stage-1 field gradient."""
        kind = grp["preconditioner"]
        if kind is None:
            return None, None
        if kind == "adagrad":
            G_prev = grp.G if grp.G is not None else np.zeros_like(q1)
            G = G_prev + q1 * q1
            return 1.0 / np.sqrt(grp["precond_delta"] + G), G
        if kind == "rmsprop":
            beta2, eps = grp["precond_beta2"], grp["precond_eps"]
            v_prev = grp.v if grp.v is not None else np.zeros_like(q1)
            v = beta2 * v_prev + (1.0 - beta2) * q1 * q1
            n = grp.n_precond + 1
            v_hat = v if "rmsprop_no_bias_correction" in self.mutations else v / (1.0 - beta2**n)
            return 1.0 / (np.sqrt(v_hat) + eps), v
        raise ValueError(f"reference: unknown preconditioner {kind!r}")

    def _apply_P(self, P: list[np.ndarray | None], q: np.ndarray) -> np.ndarray:
        d = q.copy()
        for grp, Pk in zip(self.groups, P, strict=True):
            if Pk is not None:
                d[grp.index] = Pk * q[grp.index]
        return d

    def _direction(self, theta: np.ndarray, P: list, hs: Sequence[float]) -> tuple[float, np.ndarray]:
        loss, q = self.field(theta, hs)
        if "precond_every_stage" in self.mutations:
            P = [self._precondition_proposal(grp, q[grp.index])[0] for grp in self.groups]
        return loss, self._apply_P(P, q)

    # -- one step ------------------------------------------------------------------------

    def step(self) -> StepRecord:
        t, groups = self.t, self.groups
        theta_n = self.theta.copy()
        calls0 = self.grad_evals

        # stage 1 and the frozen preconditioner
        loss, q1 = self.field(theta_n, [grp["lr"] for grp in groups])
        proposals = [self._precondition_proposal(grp, q1[grp.index]) for grp in groups]
        P = [p for p, _ in proposals]
        d1 = self._apply_P(P, q1)

        # step sizes
        hs = [0.0] * len(groups)
        rho_used: list[float | None] = [None] * len(groups)
        dal = [k for k, grp in enumerate(groups) if grp["lr_policy"] == "dal"]
        probing = [
            k
            for k in dal
            if groups[k]["dal_estimator"] == "finite_difference" or groups[k].dal_rho_next is None
        ]
        rho_probe = self._probe(theta_n, d1, P, probing) if probing else None
        for k, grp in enumerate(groups):
            lr = grp["lr"]
            if grp["lr_policy"] == "fixed":
                hs[k] = lr
            elif grp["lr_policy"] == "dal":
                rho = rho_probe if k in probing else grp.dal_rho_next
                if "dal_free_current_step" in self.mutations and k not in probing:
                    rho = None  # filled in below, after stage 2 at h = lr
                rho_used[k] = rho
                hs[k] = lr if rho is None else self._dal_h(lr, rho, grp["dal_power"])
            elif grp["lr_policy"] == "error_control":
                hs[k] = lr if grp.ec_h_next is None else min(lr, grp.ec_h_next)
            else:
                raise ValueError(grp["lr_policy"])
        if "shared_h" in self.mutations:
            hs = [hs[0]] * len(groups)

        if "dal_free_current_step" in self.mutations:
            free_now = [k for k in dal if k not in probing]
            if free_now:
                theta2 = theta_n.copy()
                for k in free_now:
                    i = groups[k].index
                    theta2[i] -= hs[k] * t.a[1][0] * d1[i]
                _, d2 = self._direction(theta2, P, hs)
                rho = self._free_rho(d1, d2, hs, free_now)
                for k in free_now:
                    rho_used[k] = rho
                    hs[k] = self._dal_h(groups[k]["lr"], rho, groups[k]["dal_power"])

        # attempts (error control may retry on the same batch, reusing stage 1)
        ec = [k for k, grp in enumerate(groups) if grp["lr_policy"] == "error_control"]
        max_retries = min((groups[k]["max_retries"] for k in ec), default=0)
        attempts = 0
        free_dal = any(groups[k]["dal_estimator"] == "free" for k in dal)
        used = self._used_stages(bool(ec), free_dal)
        attempt_dirs2: list[np.ndarray] = []
        while True:
            attempts += 1
            dirs = [d1]
            for i in range(1, t.stages):
                if not used[i]:  # its direction would enter nothing: no call (its weights are 0)
                    dirs.append(np.zeros_like(d1))
                    continue
                point = theta_n.copy()
                for k, grp in enumerate(groups):
                    idx = grp.index
                    for j, a_ij in enumerate(t.a[i]):
                        if a_ij != 0.0:
                            point[idx] -= hs[k] * a_ij * dirs[j][idx]
                _, di = self._direction(point, P, hs)
                dirs.append(di)
            attempt_dirs2.append(dirs[1] if t.stages > 1 else d1)
            S = sum(b_i * d_i for b_i, d_i in zip(t.b, dirs, strict=True))
            theta_new = theta_n.copy()
            m_new: list[np.ndarray | None] = [None] * len(groups)
            errs: list[float | None] = [None] * len(groups)
            for k, grp in enumerate(groups):
                idx, h = grp.index, hs[k]
                beta = grp["momentum"]
                if beta > 0.0:
                    m_old = grp.m if grp.m is not None else np.zeros(len(idx))
                    if "momentum_dampening" in self.mutations:
                        m = beta * m_old + (1.0 - beta) * S[idx]
                    else:
                        m = beta * m_old + S[idx]
                    m_new[k] = m
                    if grp["nesterov"] and "nesterov_as_heavy_ball" not in self.mutations:
                        theta_new[idx] = theta_n[idx] - h * (S[idx] + beta * m)
                    else:
                        theta_new[idx] = theta_n[idx] - h * m
                else:
                    theta_new[idx] = theta_n[idx] - h * S[idx]
                if grp["decoupled_weight_decay"] and "decoupled_as_coupled" not in self.mutations:
                    theta_new[idx] -= h * grp["weight_decay"] * theta_n[idx]
                if grp["lr_policy"] == "error_control":
                    e = h * sum(
                        (b_i - bh_i) * d_i[idx] for b_i, bh_i, d_i in zip(t.b, t.b_hat, dirs, strict=True)
                    )
                    if "ec_relative_to_new_only" in self.mutations:
                        scale = grp["atol"] + grp["rtol"] * np.abs(theta_new[idx])
                    else:
                        scale = grp["atol"] + grp["rtol"] * np.maximum(
                            np.abs(theta_n[idx]), np.abs(theta_new[idx])
                        )
                    errs[k] = float(np.sqrt(np.mean((e / scale) ** 2))) if len(idx) else 0.0
            if all(errs[k] <= 1.0 for k in ec):
                break
            if attempts > max_retries:  # no retry left
                if any(groups[k]["on_max_retries"] == "raise" for k in ec):
                    self.rejected_steps += 1
                    self.theta = theta_n
                    raise StepRejected(f"rejected {attempts} times")
                break  # accepted by force: this attempt is kept, not rejected
            self.rejected_steps += 1
            for k in ec:
                grp = groups[k]
                hs[k] *= reject_factor(errs[k], t.error_order, grp["safety"], grp["min_factor"])

        # commit
        rho_next: list[float | None] = [None] * len(groups)
        free = [k for k in dal if groups[k]["dal_estimator"] == "free"]
        if free:
            rho_free = self._free_rho(d1, dirs[1], hs, free)
            if "dal_free_pool_attempts" in self.mutations:
                parts = [self._free_rho_parts(d1, d2, hs, free) for d2 in attempt_dirs2]
                num, den = sum(p[0] for p in parts), sum(p[1] for p in parts)
                rho_free = math.sqrt(num / den) if den > 0.0 else 0.0
            for k in free:
                groups[k].dal_rho_next = rho_free
                rho_next[k] = rho_free
        ec_h_next: list[float | None] = [None] * len(groups)
        ec_h_next_uncapped: list[float | None] = [None] * len(groups)
        for k, grp in enumerate(groups):
            _, stats = proposals[k]
            if grp["preconditioner"] == "adagrad":
                grp.G = stats
            elif grp["preconditioner"] == "rmsprop":
                grp.v = stats
            if grp["preconditioner"] is not None:
                grp.n_precond += 1
            if grp["momentum"] > 0.0:
                grp.m = m_new[k]
            if grp["lr_policy"] == "error_control":
                prev = None if "ec_no_pi_term" in self.mutations else grp.ec_err_prev
                f = pi_factor(
                    errs[k], prev, t.error_order, grp["safety"], grp["min_factor"], grp["max_factor"]
                )
                grp.ec_h_next = hs[k] * f
                grp.ec_err_prev = errs[k]
                ec_h_next_uncapped[k] = grp.ec_h_next
                ec_h_next[k] = min(grp["lr"], grp.ec_h_next)
        self.theta = theta_new
        self.steps += 1
        record = StepRecord(
            theta=theta_new.copy(),
            loss=loss,
            h=list(hs),
            dal_rho_used=rho_used,
            dal_rho_next=rho_next,
            ec_error=errs,
            ec_h_next=ec_h_next,
            ec_h_next_uncapped=ec_h_next_uncapped,
            attempts=attempts,
            calls=self.grad_evals - calls0,
        )
        self.history.append(record)
        return record

    def run(self, steps: int) -> list[StepRecord]:
        return [self.step() for _ in range(steps)]

    def _used_stages(self, error_control: bool, free_dal: bool) -> list[bool]:
        """Stage i is evaluated iff its direction enters θ_{n+1} (b_i != 0), the error estimate
        (b_i != b̂_i, under error control), the free DAL estimate (stage 2), or a used later stage."""
        t = self.t
        used = [False] * t.stages
        for i in reversed(range(t.stages)):
            used[i] = (
                i == 0
                or t.b[i] != 0.0
                or (error_control and t.b[i] != t.b_hat[i])
                or (free_dal and i == 1)
                or any(used[j] and t.a[j][i] != 0.0 for j in range(i + 1, t.stages))
            )
        return used

    # -- DAL pieces ------------------------------------------------------------------------

    @staticmethod
    def _dal_h(lr: float, rho: float, p: float) -> float:
        if math.isinf(rho):
            return 0.0
        return lr / (1.0 + 0.5 * lr * rho**p)

    def _probe(self, theta_n: np.ndarray, d1: np.ndarray, P: list, probing: list[int]) -> float:
        """ρ = ‖d(θ_n - ε d̂_1) - d_1‖ / ε over the probing groups, d̂_1 = d_1/‖d_1‖ (one call)."""
        idx = np.concatenate([self.groups[k].index for k in probing])
        eps = min(self.groups[k]["dal_fd_eps"] for k in probing)
        norm = float(np.linalg.norm(d1[idx]))
        if norm == 0.0:
            return 0.0
        sign = 1.0 if "dal_fd_forward" in self.mutations else -1.0
        point = theta_n.copy()
        point[idx] += sign * eps * d1[idx] / norm
        _, d_probe = self._direction(point, P, [grp["lr"] for grp in self.groups])
        rho = float(np.linalg.norm(d_probe[idx] - d1[idx])) / eps
        return rho if math.isfinite(rho) else math.inf

    def _free_rho(self, d1: np.ndarray, d2: np.ndarray, hs: Sequence[float], members: list[int]) -> float:
        """ρ = ‖d_2 - d_1‖ / ‖h a21 d_1‖ over the members (each with its own h)."""
        num, den = self._free_rho_parts(d1, d2, hs, members)
        return math.sqrt(num / den) if den > 0.0 else 0.0

    def _free_rho_parts(
        self, d1: np.ndarray, d2: np.ndarray, hs: Sequence[float], members: list[int]
    ) -> tuple[float, float]:
        num, den = 0.0, 0.0
        a21 = self.t.a[1][0]
        for k in members:
            idx = self.groups[k].index
            num += float(np.sum((d2[idx] - d1[idx]) ** 2))
            den += (hs[k] * a21) ** 2 * float(np.sum(d1[idx] ** 2))
        return num, den
