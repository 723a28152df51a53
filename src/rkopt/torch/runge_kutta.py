"""Explicit Runge–Kutta methods on the gradient flow, as a ``torch.optim.Optimizer``.

One step integrates dθ/dt = -P_n q(θ), q = ∇L + coupled weight decay (+ the IGR term), over time h:

    d_i = P_n q(θ_n - h Σ_{j<i} a_ij d_j),   i = 1..s       (one closure call each, same minibatch)
    θ_{n+1} = θ_n - h Σ_i b_i d_i                           (momentum: m ← β m + Σ b_i d_i, θ ← θ_n - h m)

See METHOD.md §1–2 for the mathematics and the README for the options.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from rkopt.core.tableau import ButcherTableau
from rkopt.core.tableaux import get_tableau
from rkopt.torch._ops import TensorListOps, Tensors, list_ops
from rkopt.torch.preconditioners import get_preconditioner, preconditioner_hyperparameters
from rkopt.torch.rng import RNGSnapshot
from rkopt.torch.step_size import POLICIES, StepSizePolicy, policy_hyperparameters

Closure = Callable[[], Any]


class NonFiniteStepError(FloatingPointError):
    """A stage produced a non-finite loss or update; the parameters were restored to θ_n."""


class StepRejectedError(RuntimeError):
    """Error control rejected a step ``max_retries`` times (with ``on_max_retries="raise"``)."""


@dataclass
class Counters:
    """Work done by the optimizer, saved in ``state_dict`` under ``"counters"``.

    Attributes:
        steps: accepted steps (parameter updates).
        grad_evals: closure calls, i.e. gradient evaluations, probes included, of every step:
            also of steps that were skipped or raised, since that work was spent.
        rejected_steps: attempts rejected by error control (each retried on the same batch).
        skipped_steps: steps dropped because of a non-finite value (``on_nonfinite="skip"``).
    """

    steps: int = 0
    grad_evals: int = 0
    rejected_steps: int = 0
    skipped_steps: int = 0


class _Accumulator:
    """buffer ← base + Σ α_i x_i, built term by term (``base=None`` stands for 0)."""

    def __init__(self, ops: TensorListOps, buffer: Tensors, base: Tensors | None) -> None:
        self.ops, self.buffer, self.base, self.started = ops, buffer, base, False

    def add(self, x: Tensors, alpha: float) -> None:
        if alpha == 0.0:
            return
        if self.started:
            self.ops.axpy_(self.buffer, x, alpha)
        elif self.base is None:
            self.ops.scale_into(self.buffer, x, alpha)
        else:
            self.ops.axpy_into(self.buffer, self.base, x, alpha)
        self.started = True

    @property
    def value(self) -> Tensors | None:
        return self.buffer if self.started else self.base


def _combine_into(
    ops: TensorListOps, dst: Tensors, base: Tensors, terms: Sequence[tuple[Tensors, float]], dst_is_base: bool
) -> None:
    """dst ← base + Σ α_j x_j, in place when dst already holds base."""
    terms = [(x, alpha) for x, alpha in terms if alpha != 0.0]
    if dst_is_base:
        for x, alpha in terms:
            ops.axpy_(dst, x, alpha)
        return
    if not terms:
        ops.copy_(dst, base)
        return
    (first, alpha), rest = terms[0], terms[1:]
    ops.axpy_into(dst, base, first, alpha)
    for x, alpha in rest:
        ops.axpy_(dst, x, alpha)


_PLAN_KEYS = (
    "foreach",
    "preconditioner",
    "lr_policy",
    "maximize",
    "weight_decay",
    "decoupled_weight_decay",
    "momentum",
)
"""The group keys that shape a :class:`GroupRun`'s plan (the others are read at every step)."""


class GroupRun:
    """The work of one param group in a step: buffers, stage directions, the candidate.

    The plan (ops flavour, field, slots, buffers, nonzero tableau terms) depends only on ``key``:
    the optimizer keeps a run between steps while its key is unchanged and calls :meth:`reset`,
    so that a step spends no time rebuilding it.
    """

    def __init__(
        self, optimizer: RungeKutta, group: dict[str, Any], params: list[Tensor], key: tuple
    ) -> None:
        self.optimizer = optimizer
        self.group = group
        self.params = params
        self.key = key
        self.tableau = optimizer.tableau
        self.states: list[dict[str, Any]] = []  # bound by init_state at every step
        self.ops = list_ops(optimizer._use_foreach(group, params))
        self.policy = optimizer._policies[group["lr_policy"]]
        self.preconditioner = get_preconditioner(group["preconditioner"])
        self.sign = -1.0 if group["maximize"] else 1.0
        self.coupled_decay = 0.0 if group["decoupled_weight_decay"] else group["weight_decay"]
        self.decoupled_decay = group["weight_decay"] if group["decoupled_weight_decay"] else 0.0
        self.momentum = group["momentum"]
        self.identity_field = (
            self.preconditioner is None and self.coupled_decay == 0.0 and self.sign > 0 and not optimizer._igr
        )
        self.last = optimizer._stages - 1
        # FSAL with its last stage evaluated: that stage's point θ_n - h Σ a_sj d_j is θ_{n+1}
        self.candidate_is_last_point = (
            self.tableau.fsal and self.last == self.tableau.stages - 1 and self.momentum == 0.0
        )
        keep_until = optimizer._keep_until
        self.slots, _ = self.tableau.storage_plan(keep_until, self.last + 1)
        # once stage i's point is written, the directions no later work reads are let go: a direction
        # that aliases a gradient must not keep it alive after the closure replaces p.grad
        lifetimes = self.tableau.lifetimes(keep_until, self.last + 1)
        self.released_at = [
            tuple(j for j in range(i) if max(lifetimes[j], j + 1) == i) for i in range(self.last + 1)
        ]
        # stage i's point θ_n - h Σ_j a_ij d_j: the (j, a_ij) with a_ij != 0
        self.stage_terms = [tuple((j, a) for j, a in enumerate(row) if a != 0.0) for row in self.tableau.a]
        self.error_weights = self.tableau.error_weights if self.policy.name == "error_control" else None
        self._buffers: dict[str, list[Tensor]] = {}
        self.theta0 = self.buffer("theta0")
        self.reset()

    def reset(self) -> None:
        """Drop the step's references (directions alias gradients): between steps a run holds
        only its plan and workspace buffers."""
        self.directions: list[Tensors | None] = [None] * (self.last + 1)
        self.h = 0.0
        self.at_theta0 = True
        self.scale: Tensors | None = None
        self.proposed: list[Tensors] = []
        self.update: _Accumulator | None = None
        self.error: _Accumulator | None = None

    # -- buffers ---------------------------------------------------------------------------

    def buffer(self, role: str) -> list[Tensor]:
        """A parameter-sized work buffer per parameter (kept in the workspace between steps)."""
        if role not in self._buffers:
            workspace = self.optimizer._workspace
            out = []
            for p in self.params:
                slot = workspace.setdefault(p, {})
                if role not in slot:
                    slot[role] = torch.empty_like(p, memory_format=torch.preserve_format)
                out.append(slot[role])
            self._buffers[role] = out
        return self._buffers[role]

    def init_state(self) -> None:
        """Bind the parameters' state dicts (a user may have replaced them since the last step) and
        create what the group's equations keep: momentum, preconditioner statistics."""
        if self.preconditioner is None and self.momentum == 0.0:
            return  # plain Runge–Kutta keeps no state
        self.states = [self.optimizer.state[p] for p in self.params]
        statistics = self.preconditioner.statistics if self.preconditioner else ()
        for p, state in zip(self.params, self.states, strict=True):
            for key in statistics:
                if key not in state:
                    state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if self.preconditioner is not None:
                state.setdefault("precond_steps", 0)
            if self.momentum > 0.0 and "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    # -- the vector field ------------------------------------------------------------------

    def gradients(self) -> list[Tensor]:
        grads = []
        for p in self.params:
            grad = p.grad
            if grad is None:  # present at stage 1 but not here: a zero gradient
                grad = torch.zeros_like(p)
            elif grad.is_sparse:
                raise RuntimeError("rkopt.RungeKutta does not support sparse gradients")
            grads.append(grad)
        return grads

    def destination(self, stage: int | None) -> Tensors | None:
        """Where the direction of ``stage`` is written (None: it may alias the gradients)."""
        if stage is not None and self.slots[stage] is not None:
            return self.buffer(f"slot{self.slots[stage]}")
        return None if self.identity_field else self.buffer("scratch")

    def record_direction(
        self, stage: int | None, gradient: Tensors, signed_in_place: bool = False
    ) -> Tensors:
        """d = P_n (σ g + λ θ), written into this stage's buffer (or aliasing g when P = 1, λ = 0).

        ``signed_in_place``: ``gradient`` is that buffer and already holds σ g (+ the IGR term).
        ``stage=0`` also proposes P_n from this gradient; ``stage=None`` is a probe (no slot).
        """
        dest = self.destination(stage)
        ops, params = self.ops, self.params
        dest_holds_q = True
        if dest is None:
            direction = gradient
        else:
            if signed_in_place or self.sign < 0:
                if not signed_in_place:
                    ops.neg_into(dest, gradient)
                if self.coupled_decay:
                    ops.axpy_(dest, params, self.coupled_decay)
            elif self.coupled_decay:
                ops.axpy_into(dest, gradient, params, self.coupled_decay)
            elif self.preconditioner is None:
                ops.copy_(dest, gradient)
            else:  # P_n g is written below in one pass, without copying g into dest first
                dest_holds_q = False
            if self.preconditioner is not None:
                q = dest if dest_holds_q else gradient
                if stage == 0:
                    self._propose_preconditioner(q)
                ops.mul_into(dest, q, self.scale)
            direction = dest
        if stage is not None:
            self.directions[stage] = direction
        return direction

    def _propose_preconditioner(self, gradient: Tensors) -> None:
        names = self.preconditioner.statistics
        self.scale = self.buffer("precond_scale")
        self.proposed = [self.buffer(f"precond_{name}") for name in names]
        self.preconditioner.propose(
            self.ops,
            self.group,
            [state["precond_steps"] + 1 for state in self.states],
            gradient,
            [[state[name] for state in self.states] for name in names],
            self.proposed,
            self.scale,
        )

    # -- moving through the stages ---------------------------------------------------------

    def save_theta0(self) -> None:
        self.ops.copy_(self.theta0, self.params)

    def restore_theta0(self) -> None:
        if not self.at_theta0:
            self.ops.copy_(self.params, self.theta0)
            self.at_theta0 = True

    def move_to_stage(self, stage: int) -> None:
        """θ ← θ_n - h Σ_j a_ij d_j for stage i = ``stage``; then drop the directions read for the
        last time (so the next closure call frees the gradients they alias)."""
        terms = [(self.directions[j], -self.h * a) for j, a in self.stage_terms[stage]]
        if terms or not self.at_theta0:
            _combine_into(self.ops, self.params, self.theta0, terms, self.at_theta0)
            self.at_theta0 = False
        for j in self.released_at[stage]:
            self.directions[j] = None

    def start_attempt(self) -> None:
        """Open the accumulators of one attempt at step h and add stage 1 to them."""
        ops = self.ops
        tableau = self.tableau
        if self.momentum > 0.0:
            self.update = _Accumulator(ops, self.buffer("accumulator"), None)  # S = Σ b_i d_i
        elif not self.candidate_is_last_point and any(b != 0.0 for b in tableau.b[: self.last]):
            self.update = _Accumulator(ops, self.buffer("accumulator"), self.theta0)  # θ_n - h Σ b_i d_i
        else:
            self.update = None
        self.error = None
        if self.policy.name == "error_control":
            self.error = _Accumulator(ops, self.buffer("error"), None)
        self.accumulate(0)

    def accumulate(self, stage: int) -> None:
        """Add stage ``stage``'s direction to the update and the error estimate."""
        direction = self.directions[stage]
        last = stage == self.last
        if self.momentum > 0.0:
            self.update.add(direction, self.tableau.b[stage])
        elif self.update is not None and not last:
            self.update.add(direction, -self.h * self.tableau.b[stage])
        if self.error is not None:
            self.error.add(direction, self.h * self.error_weights[stage])

    def write_candidate(self) -> None:
        """θ ← the step's result (the parameters then hold θ_{n+1}, still revocable)."""
        h, last = self.h, self.last
        decay = [(self.theta0, -h * self.decoupled_decay)]
        if self.momentum > 0.0:
            beta, momentum_new = self.momentum, self.update.buffer
            old = [state["momentum_buffer"] for state in self.states]
            self.ops.axpy_(momentum_new, old, beta)  # m_{n+1} = β m_n + Σ b_i d_i
            if self.group["nesterov"]:  # θ_n - h (g* + β m_{n+1}) = θ_n - h((1+β) m_{n+1} - β m_n)
                terms = [(momentum_new, -h * (1.0 + beta)), (old, h * beta)]
            else:
                terms = [(momentum_new, -h)]
            _combine_into(self.ops, self.params, self.theta0, terms + decay, self.at_theta0)
        elif self.candidate_is_last_point:
            _combine_into(self.ops, self.params, self.params, decay, dst_is_base=True)
        else:
            base = self.update.value if self.update is not None else self.theta0
            terms = [(self.directions[last], -h * self.tableau.b[last]), *decay]
            _combine_into(self.ops, self.params, base, terms, self.at_theta0 and base is self.theta0)
        self.at_theta0 = False

    # -- verdicts --------------------------------------------------------------------------

    def scaled_error(self) -> float:
        """‖e / (atol + rtol·max(|θ_n|, |θ_{n+1}|))‖_rms over the group's parameters."""
        count = sum(p.numel() for p in self.params)
        total = self.ops.sum_scaled_error_squares(
            self.error.value, self.theta0, self.params, self.group["atol"], self.group["rtol"]
        )
        return math.sqrt(float(total) / max(count, 1))

    def stages_finite(self) -> bool:
        return all(_is_finite(loss) for loss in self.optimizer._stage_losses[1:])

    def candidate_finite(self) -> bool:
        return self.ops.all_finite(self.params)

    def commit(self) -> None:
        """Make the accepted step's state changes: momentum, preconditioner statistics."""
        if self.momentum > 0.0:
            self.ops.copy_([s["momentum_buffer"] for s in self.states], self.update.buffer)
        if self.preconditioner is not None:
            for name, proposed in zip(self.preconditioner.statistics, self.proposed, strict=True):
                self.ops.copy_([s[name] for s in self.states], proposed)
            for state in self.states:
                state["precond_steps"] += 1
        self.group["h"] = self.h


def _loss_value(loss: Any) -> float:
    return loss.detach().item() if isinstance(loss, Tensor) and loss.numel() == 1 else float(loss)


def _is_finite(loss: Any) -> bool:
    if isinstance(loss, Tensor):
        if loss.numel() == 1:  # one scalar read instead of isfinite's four small kernels and all()
            return math.isfinite(loss.item())
        return bool(torch.isfinite(loss).all())
    return math.isfinite(float(loss))


_BASE_DEFAULTS: dict[str, Any] = {
    "weight_decay": 0.0,
    "decoupled_weight_decay": False,
    "maximize": False,
    "foreach": None,
    "preconditioner": None,
    "momentum": 0.0,
    "nesterov": False,
    "lr_policy": "fixed",
    "igr": 0.0,
    "igr_eps": 1e-3,
}


class RungeKutta(Optimizer):
    r"""An explicit Runge–Kutta solver of the gradient flow dθ/dt = -P ∇L(θ), one step per call.

    Args:
        params: parameters or param groups, as for any ``torch.optim`` optimizer.
        lr: the step h (``lr_policy="fixed"``) or its cap (``"dal"``, ``"error_control"``).
        tableau: a ``ButcherTableau`` or a name from ``rkopt.TABLEAUX`` (default ``"rk4"``); shared
            by all groups, since one closure call evaluates every group.
        weight_decay: λ >= 0. Coupled (default): the field is -(∇L + λθ) in every stage.
            ``decoupled_weight_decay=True``: θ_{n+1} -= h λ θ_n once per step (AdamW style).
        maximize: ascend L instead.
        foreach: use ``torch._foreach_*`` kernels; default: on iff every parameter is on CUDA.
        preconditioner: None, ``"adagrad"`` (the paper's; key ``precond_delta``=1) or
            ``"rmsprop"`` (keys ``precond_beta2``=0.999, ``precond_eps``=1e-8) or a registered name.
        momentum: β >= 0 on the RK direction: m ← β m + Σ b_i d_i, θ ← θ_n - h m; ``nesterov``
            steps along g* + β m instead. β = 0 is plain RK.
        lr_policy: ``"fixed"``, ``"dal"`` (keys ``dal_power``=1, ``dal_estimator``="free",
            ``dal_fd_eps``=1e-3) or ``"error_control"`` (keys ``atol``, ``rtol``, ``max_retries``,
            ``on_max_retries``, ``safety``, ``min_factor``, ``max_factor``).
        igr: λ_IGR >= 0. Integrate the flow of L + λ_IGR (lr/4) ‖∇L‖² (Barrett & Dherin 2021),
            whose gradient ∇L + λ_IGR (lr/2) H∇L is formed by a finite difference of step
            ``igr_eps``: one extra closure call per stage. lr is the group's lr (the cap under an
            adaptive policy), so the integrated loss does not depend on the chosen h.
        on_nonfinite: ``"raise"`` (default) restores θ_n and raises ``NonFiniteStepError`` when a
            stage's loss or the update is not finite; ``"skip"`` restores θ_n, counts the step in
            ``counters.skipped_steps`` and returns the loss.
        keep_workspace: keep the step's work buffers between steps (faster on the CPU, where fresh
            allocations page-fault); :meth:`free_workspace` releases them.
        **hyperparameters: further group keys of the policies and preconditioners above (or of a
            registered preconditioner).

    ``step(closure)`` requires a closure that zeroes the gradients, evaluates the loss on ONE
    minibatch, calls ``backward()`` and returns the loss; it is called once per stage with the
    random number generators reset, so every stage sees the same batch and the same dropout
    noise. ``step`` returns the loss of the first call (at θ_n). During a step,
    :attr:`evaluation_index` is the 0-based index of the closure call in progress.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        tableau: str | ButcherTableau = "rk4",
        *,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
        preconditioner: str | None = None,
        momentum: float = 0.0,
        nesterov: bool = False,
        lr_policy: str = "fixed",
        igr: float = 0.0,
        igr_eps: float = 1e-3,
        on_nonfinite: str = "raise",
        keep_workspace: bool = True,
        **hyperparameters: Any,
    ) -> None:
        self.tableau = get_tableau(tableau)
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")
        self.on_nonfinite = on_nonfinite
        self.keep_workspace = bool(keep_workspace)
        extra = {**policy_hyperparameters(), **preconditioner_hyperparameters()}
        unknown = sorted(set(hyperparameters) - set(extra))
        if unknown:
            raise TypeError(
                f"RungeKutta got unknown keyword argument(s) {unknown}; valid group keys: "
                f"{sorted(['lr', *_BASE_DEFAULTS, *extra])}"
            )
        defaults = {
            "lr": lr,
            **_BASE_DEFAULTS,
            **extra,
            **hyperparameters,
            "weight_decay": weight_decay,
            "decoupled_weight_decay": decoupled_weight_decay,
            "maximize": maximize,
            "foreach": foreach,
            "preconditioner": preconditioner,
            "momentum": momentum,
            "nesterov": nesterov,
            "lr_policy": lr_policy,
            "igr": igr,
            "igr_eps": igr_eps,
        }
        self.counters = Counters()
        self._init_transient()
        super().__init__(params, defaults)

    def _init_transient(self) -> None:
        """The attributes that are rebuilt, not saved: workspace, cached plans, policy objects."""
        self.evaluation_index: int | None = None
        self._workspace: dict[Tensor, dict[str, Tensor]] = {}
        self._runs: dict[int, GroupRun] = {}  # param group index -> its plan, reused while valid
        self._policies: dict[str, StepSizePolicy] = {name: cls() for name, cls in POLICIES.items()}
        self._stage_losses: list[Any] = []
        self._rejections = 0
        # set by each step: closure calls per attempt, IGR on, the directions every group keeps
        self._stages, self._igr, self._keep_until = 0, False, {}

    # -- configuration ---------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._validate_group(group)
        except Exception:
            self.param_groups.pop()
            raise
        group.setdefault("h", None)

    def _validate_group(self, group: dict[str, Any]) -> None:
        lr = group["lr"]
        if isinstance(lr, Tensor):
            if lr.numel() != 1:
                raise ValueError("lr must be a number (or a one-element tensor)")
            group["lr"] = lr = float(lr)
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
            raise ValueError(f"lr must be a finite number >= 0, got {lr!r}")
        for key in ("weight_decay", "momentum", "igr"):
            value = group[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < math.inf:
                raise ValueError(f"{key} must be a finite number >= 0, got {value!r}")
        if group["momentum"] >= 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {group['momentum']!r}")
        if group["nesterov"] and group["momentum"] == 0.0:
            raise ValueError("nesterov=True needs momentum > 0")
        if not group["igr_eps"] > 0:
            raise ValueError(f"igr_eps must be > 0, got {group['igr_eps']!r}")
        if group["lr_policy"] not in POLICIES:
            raise ValueError(f"unknown lr_policy {group['lr_policy']!r}; valid: {sorted(POLICIES)}")
        self._policies[group["lr_policy"]].validate(group, self.tableau)
        preconditioner = get_preconditioner(group["preconditioner"])
        if preconditioner is not None:
            preconditioner.validate(group)
        for p in group["params"]:
            if not (p.is_floating_point()):
                raise ValueError(f"rkopt.RungeKutta optimizes floating-point parameters, got {p.dtype}")
        igr_groups = [g for g in self.param_groups if g["igr"] > 0]
        if igr_groups and len({g["maximize"] for g in self.param_groups}) > 1:
            raise ValueError("igr > 0 needs the same `maximize` in every param group")

    def __getstate__(self) -> dict[str, Any]:
        return {
            **super().__getstate__(),
            "tableau": self.tableau,
            "on_nonfinite": self.on_nonfinite,
            "keep_workspace": self.keep_workspace,
            "counters": self.counters,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickling (all keys) and ``load_state_dict`` (only state and param groups)."""
        state = dict(state)
        own = {"tableau": "rk4", "on_nonfinite": "raise", "keep_workspace": True, "counters": None}
        for name, default in own.items():
            if name in state or not hasattr(self, name):
                setattr(self, name, state.pop(name, default))
        self.tableau = get_tableau(self.tableau)
        self.counters = self.counters or Counters()
        self._init_transient()
        super().__setstate__(state)
        extra = {**_BASE_DEFAULTS, **policy_hyperparameters(), **preconditioner_hyperparameters()}
        for group in self.param_groups:
            for key, value in extra.items():
                group.setdefault(key, value)
            group.setdefault("h", None)

    @property
    def _igr_active(self) -> bool:
        return any(group["igr"] > 0 for group in self.param_groups)

    @staticmethod
    def _use_foreach(group: dict[str, Any], params: list[Tensor]) -> bool:
        if group["foreach"] is not None:
            return bool(group["foreach"])
        return bool(params) and all(p.is_cuda for p in params)

    def free_workspace(self) -> None:
        """Release the work buffers kept between steps (they are re-allocated when needed)."""
        self._workspace.clear()
        self._runs.clear()  # their plans hold the buffers

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["counters"] = asdict(self.counters)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        counters = state_dict.pop("counters", None)
        super().load_state_dict(state_dict)
        self.counters = Counters(**counters) if counters is not None else Counters()
        self.free_workspace()

    # -- the step --------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Any:  # type: ignore[override]
        """Take one Runge–Kutta step; returns the closure's loss at θ_n."""
        if closure is None or not callable(closure):
            raise RuntimeError(
                "rkopt.RungeKutta.step needs a closure: each Runge–Kutta stage re-evaluates the "
                "gradient on the same minibatch, so call step(closure) with a function that zeroes "
                "the gradients, computes the loss on the batch, calls backward() and returns the "
                "loss (as for torch.optim.LBFGS). In PyTorch Lightning use automatic optimization, "
                "which passes one."
            )
        snapshot = RNGSnapshot.capture()
        after_first: RNGSnapshot | None = None
        calls = 0

        def evaluate() -> Any:
            nonlocal after_first, calls
            if calls:
                snapshot.restore()
            self.evaluation_index = calls
            with torch.enable_grad():
                loss = closure()
            calls += 1
            if calls == 1:
                after_first = RNGSnapshot.capture()
            if loss is None:
                raise ValueError(
                    "the closure returned None; it must return the loss it computed and "
                    "backpropagated (a tensor or float)"
                )
            return loss

        runs: list[GroupRun] = []
        self._rejections = 0
        try:
            first_loss = evaluate()
            runs = self._start_runs()
            outcome = self._integrate(runs, evaluate, first_loss)
        except BaseException:
            for run in runs:
                run.restore_theta0()
            raise
        finally:  # the work done is counted whatever the outcome
            for run in runs:
                run.reset()
            self._stage_losses = []
            self.counters.grad_evals += calls
            self.counters.rejected_steps += self._rejections
            self.evaluation_index = None
            if after_first is not None:
                after_first.restore()
            if not self.keep_workspace:
                self.free_workspace()
        if outcome == "skipped":
            self.counters.skipped_steps += 1
        else:
            self.counters.steps += 1
        return first_loss

    def _nonfinite(self, runs: Sequence[GroupRun]) -> str:
        for run in runs:
            run.restore_theta0()
        if self.on_nonfinite == "skip":
            return "skipped"
        raise NonFiniteStepError(
            "a non-finite loss or update occurred during the Runge–Kutta step (losses of its "
            f"closure calls: {[_loss_value(loss) for loss in self._stage_losses]}); the parameters were "
            "restored to θ_n. Lower lr, use an adaptive lr_policy, or pass on_nonfinite='skip'"
        )

    def _start_runs(self) -> list[GroupRun]:
        """A run per group with gradients: the cached one if its plan still fits, else a new one."""
        runs = []
        policies = {group["lr_policy"] for group in self.param_groups}
        self._stages = self.tableau.stages_needed(error_estimate="error_control" in policies)
        self._igr = self._igr_active
        # a policy's extra closure calls (a retry, a probe) evaluate every group: every group keeps
        # the directions any policy in use needs past them (a gradient may be overwritten in place)
        self._keep_until = {}
        for name in policies:
            for stage, until in self._policies[name].keep_until(self.tableau).items():
                self._keep_until[stage] = max(self._keep_until.get(stage, 0), until)
        shared = (id(self.tableau), self._stages, self._igr, *sorted(self._keep_until.items()))
        for index, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            key = (id(group), *map(id, params), *shared, *(group[k] for k in _PLAN_KEYS))
            run = self._runs.get(index)
            if run is None or run.key != key:  # a run holds its params, so their ids are unique
                run = self._runs[index] = GroupRun(self, group, params, key)
            run.init_state()
            runs.append(run)
        return runs

    def _policy_groups(self, runs: Sequence[GroupRun]) -> list[tuple[StepSizePolicy, list[GroupRun]]]:
        by_policy: dict[str, list[GroupRun]] = {}
        for run in runs:
            by_policy.setdefault(run.policy.name, []).append(run)
        return [(self._policies[name], members) for name, members in by_policy.items()]

    def _evaluate_directions(
        self,
        runs: Sequence[GroupRun],
        targets: Sequence[GroupRun],
        stage: int | None,
        evaluate: Callable[[], Any],
        loss: Any = None,
    ) -> list[Tensors]:
        """Call the closure at the current point (unless ``loss`` is given, from a call already
        made) and return each target's direction d = P_n q there (``stage=None``: a probe)."""
        self._stage_losses.append(evaluate() if loss is None else loss)
        raw = [run.gradients() for run in runs]
        igr = self._igr
        gradients = self._igr_gradients(runs, targets, raw, stage, evaluate) if igr else raw
        return [
            run.record_direction(stage, gradient, signed_in_place=igr)
            for run, gradient in zip(runs, gradients, strict=True)
            if run in targets
        ]

    def _igr_gradients(
        self,
        runs: Sequence[GroupRun],
        targets: Sequence[GroupRun],
        raw: list[list[Tensor]],
        stage: int | None,
        evaluate: Callable[[], Any],
    ) -> list[Tensors]:
        """q = σ g + ∇R with R = Σ_groups λ_IGR (lr/4) ‖∇L‖², ∇R = H w, w = (λ_IGR lr/2) g.

        H w ≈ ‖w‖ (g(θ + ε w/‖w‖) - g(θ)) / ε: one more closure call at the displaced point.
        q is written into the direction buffer of each target (other runs' buffers are untouched).
        """
        saved, weights = [], []
        for run, gradient in zip(runs, raw, strict=True):
            buffer = run.buffer("igr_grad")
            run.ops.copy_(buffer, gradient)
            saved.append(buffer)
            weights.append(run.group["igr"] * run.group["lr"] / 2.0)
        w_norm = math.sqrt(
            sum(
                w * w * float(run.ops.sum_squares(g))
                for run, g, w in zip(runs, saved, weights, strict=True)
                if w > 0
            )
        )
        outputs = [run.destination(stage) if run in targets else None for run in runs]
        if w_norm == 0.0 or not math.isfinite(w_norm):
            for run, out, g in zip(runs, outputs, saved, strict=True):
                if out is not None:
                    run.ops.scale_into(out, g, run.sign)
            return outputs
        movers = [(run, g, w) for run, g, w in zip(runs, saved, weights, strict=True) if w > 0]
        eps = min(run.group["igr_eps"] for run, _, _ in movers)
        points = []
        for run, g, w in movers:
            point = run.buffer("igr_point")
            run.ops.copy_(point, run.params)
            run.ops.axpy_(run.params, g, eps * w / w_norm)
            points.append(point)
        try:
            self._stage_losses.append(evaluate())
            probed = [run.gradients() for run in runs]
        finally:
            for (run, _, _), point in zip(movers, points, strict=True):
                run.ops.copy_(run.params, point)
        for run, out, g, g_probe in zip(runs, outputs, saved, probed, strict=True):
            if out is None:
                continue
            run.ops.axpy_into(out, g_probe, g, -1.0)
            run.ops.scale_(out, w_norm / eps)
            run.ops.axpy_(out, g, run.sign)
        return outputs

    def _probe_curvature(
        self, probing: Sequence[GroupRun], runs: Sequence[GroupRun], evaluate: Callable[[], Any]
    ) -> float:
        """ρ = ‖d(θ_n - ε d̂) - d(θ_n)‖ / ε over the probing groups, d̂ = d_1 / ‖d_1‖: one closure call."""
        eps = min(run.group["dal_fd_eps"] for run in probing)
        norm = math.sqrt(sum(float(run.ops.sum_squares(run.directions[0])) for run in probing))
        if norm == 0.0:
            return 0.0
        for run in probing:
            run.ops.axpy_(run.params, run.directions[0], -eps / norm)
            run.at_theta0 = False
        try:
            probes = self._evaluate_directions(runs, probing, None, evaluate)
        finally:
            for run in probing:
                run.restore_theta0()
        difference = sum(
            float(run.ops.sum_squared_difference(d, run.directions[0]))
            for run, d in zip(probing, probes, strict=True)
        )
        rho = math.sqrt(difference) / eps
        return rho if math.isfinite(rho) else math.inf  # NaN: a null step; the NaN loss is caught later

    def _integrate(self, runs: list[GroupRun], evaluate: Callable[[], Any], first_loss: Any) -> str:
        """Stage 1, step-size choice, stages 2..s with retries, checks, commit.

        Returns the outcome: "accepted" or "skipped".
        """
        self._stage_losses = [first_loss] if not runs else []
        if not runs:
            return "accepted" if _is_finite(first_loss) else self._nonfinite(runs)
        policies = self._policy_groups(runs)
        for run in runs:
            run.save_theta0()
        self._evaluate_directions(runs, runs, 0, evaluate, loss=first_loss)
        for policy, members in policies:
            policy.choose(members, lambda probing: self._probe_curvature(probing, runs, evaluate))
        self._attempt(runs, policies, evaluate)
        finite = all(_is_finite(loss) for loss in self._stage_losses) and all(
            run.candidate_finite() for run in runs
        )
        if not finite:
            return self._nonfinite(runs)
        for run in runs:
            run.commit()
        for policy, members in policies:
            policy.commit(members)
        return "accepted"

    def _attempt(
        self,
        runs: list[GroupRun],
        policies: list[tuple[StepSizePolicy, list[GroupRun]]],
        evaluate: Callable[[], Any],
    ) -> None:
        """Stages 2..s from the stored stage 1, repeated until the policies accept (counting the
        rejections in ``self._rejections``). The parameters then hold the candidate θ_{n+1}."""
        error_control = [run for run in runs if run.policy.name == "error_control"]
        max_retries = min((run.group["max_retries"] for run in error_control), default=0)
        settled = len(self._stage_losses)
        while True:
            del self._stage_losses[settled:]
            for run in runs:
                run.restore_theta0()
                run.start_attempt()
            for policy, members in policies:
                policy.observe(members, 0)
            for stage in range(1, self._stages):
                for run in runs:
                    run.move_to_stage(stage)
                self._evaluate_directions(runs, runs, stage, evaluate)
                for run in runs:
                    run.accumulate(stage)
                for policy, members in policies:
                    policy.observe(members, stage)
            for run in runs:
                run.write_candidate()
            verdicts = [policy.judge(members) for policy, members in policies]
            if all(verdicts):
                return
            if not _is_finite(self._stage_losses[0]):
                return  # no smaller step helps when θ_n itself is bad: the step fails as non-finite
            if self._rejections >= max_retries:  # no retry left
                if any(run.group["on_max_retries"] == "raise" for run in error_control):
                    self._rejections += 1
                    raise StepRejectedError(
                        f"error control rejected the step {self._rejections} times (max_retries="
                        f"{max_retries}); θ_n was restored. Raise max_retries, loosen atol/rtol, "
                        "lower lr, or set on_max_retries='accept'"
                    )
                return  # accept the last, smallest attempt
            self._rejections += 1
            for (policy, members), verdict in zip(policies, verdicts, strict=True):
                if not verdict:
                    policy.shrink(members)
