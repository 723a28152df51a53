"""Explicit Runge–Kutta methods on the gradient flow, as a ``torch.optim.Optimizer``.

One step integrates dθ/dt = -P_n q(θ), q = ∇L + coupled weight decay (+ the IGR term), over time h:

    d_i = P_n q(θ_n - h Σ_{j<i} a_ij d_j),   i = 1..s       (one evaluation each, same minibatch)
    θ_{n+1} = θ_n - h Σ_i b_i d_i                           (momentum: m ← β m + Σ b_i d_i, θ ← θ_n - h m)

This module holds the optimizer's configuration, state and its two drivers: ``step(closure)``
evaluates every stage of a step in one call; with ``stagewise=True`` each ``step()`` call takes the
gradients present as one stage's (:mod:`rkopt.torch.stagewise`). Both run the same
:class:`~rkopt.torch.engine.StepProgram`. See METHOD.md §1–2 for the mathematics.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from numbers import Real
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from rkopt.core.errors import Counters, StepInProgressError
from rkopt.core.options import check_engine_groups, choice, flag
from rkopt.core.plan import Method, butcher_tableau, get_method
from rkopt.torch.checkpoint import check_state_dict, hooks_withheld, method_name, run_dict_hooks
from rkopt.torch.config import group_options, options_doc, validate_group
from rkopt.torch.engine import StepProgram
from rkopt.torch.planning import Planner
from rkopt.torch.provenance import GradientWitness
from rkopt.torch.rng import RNGSnapshot
from rkopt.torch.stagewise import StagewiseStep
from rkopt.torch.wrappers import refuse_skipped_micro_batches, refuse_zero_redundancy

Closure = Callable[[], Any]

_OWN = {"tableau": "rk4", "on_nonfinite": "raise", "keep_workspace": True, "stagewise": False}
"""The optimizer's own settings (not param-group keys) and their defaults."""


class RungeKutta(Optimizer):
    r"""An explicit Runge–Kutta solver of the gradient flow dθ/dt = -P ∇L(θ), one step per call.

    Args:
        params: parameters or param groups, as for any ``torch.optim`` optimizer.
        lr: the step h (``lr_policy="fixed"``) or its cap (``"dal"``, ``"error_control"``); a float
            or a one-element Tensor, which stays a Tensor in ``param_groups`` (as in ``torch.optim``;
            schedulers update it in place). Required: unlike ``torch.optim.SGD`` (default 1e-3) there
            is no default, since the stable h depends on the loss's curvature (RK4: h·λ_max <= 2.78).
        tableau: a ``ButcherTableau`` or a name from ``rkopt.TABLEAUX`` (default ``"rk4"``), or a
            Runge–Kutta–Chebyshev method ``rkopt.ChebyshevMethod(order, stages, damping)``; shared
            by all groups, since one evaluation serves every group.
        stagewise: ``False`` (default): ``step(closure)`` calls the closure once per stage.
            ``True``: ``step()`` is called after each backward, without a closure; each call takes
            the gradients present as the current stage's and moves the parameters to the next
            stage point, and :attr:`step_complete` tells when a step is done (feed the same batch
            until then: :func:`rkopt.repeat_batches`).
        on_nonfinite: ``"raise"`` (default) restores θ_n and raises ``NonFiniteStepError`` when an
            evaluation's loss (or, stage-wise without a loss, its gradient), the direction of a
            stage with b_i = 0, or the update is not finite; ``"skip"`` restores θ_n and counts the
            step in ``counters.skipped_steps``.
        keep_workspace: keep the step's work buffers between steps (faster on the CPU, where fresh
            allocations page-fault); :meth:`free_workspace` releases them.
        **options: param-group keys (defaults for every group), listed below.

    ``step(closure)`` requires a closure that zeroes the gradients, evaluates the loss on ONE
    minibatch, calls ``backward()`` and returns the loss; it is called once per stage with the
    random number generators reset, so every stage sees the same batch and the same dropout
    noise. ``step`` returns the loss of the first call (at θ_n). During a step,
    :attr:`evaluation_index` is the 0-based index of the evaluation in progress.

    Param-group keys:
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor,
        tableau: str | Method = "rk4",
        *,
        stagewise: bool = False,
        on_nonfinite: str = "raise",
        keep_workspace: bool = True,
        **options: Any,
    ) -> None:
        refuse_zero_redundancy()
        if lr is None:
            raise TypeError(
                "RungeKutta needs lr, the step h of the integrator (under an adaptive lr_policy, the cap "
                "on h); it has no default because a stable h depends on the loss's curvature (RK4 needs "
                "h·λ_max <= 2.78): pass e.g. lr=0.1"
            )
        self.tableau = get_method(tableau)
        choice("raise", "skip")("on_nonfinite", on_nonfinite)
        flag()("keep_workspace", keep_workspace)
        flag()("stagewise", stagewise)
        self.on_nonfinite, self.keep_workspace, self.stagewise = on_nonfinite, keep_workspace, stagewise
        table = group_options()
        unknown = sorted(set(options) - set(table))
        if unknown:
            hints = [difflib.get_close_matches(key, table, n=1, cutoff=0.6) for key in unknown]
            hint = "".join(
                f" Did you mean {h[0]!r} for {k!r}?" for k, h in zip(unknown, hints, strict=True) if h
            )
            raise TypeError(
                f"RungeKutta got unknown keyword argument(s) {unknown}.{hint} Valid group keys: "
                f"{sorted(table)}"
            )
        self.counters = Counters()
        self._init_transient()
        super().__init__(params, {**table.defaults(), **options, "lr": lr})

    def _init_transient(self) -> None:
        """The attributes that are rebuilt, not saved: workspace, kept plans, policy objects."""
        self.evaluation_index: int | None = None
        self._workspace: dict[Tensor, dict[str, Tensor]] = {}
        self._planner = Planner(self._workspace)
        self._stagewise_step: StagewiseStep | None = None
        self._since_last_step = GradientWitness()  # stage-wise: the gradients a step left behind
        self._in_step = False
        self._batch_rng: RNGSnapshot | None = None

    # -- configuration ---------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            validate_group(group, butcher_tableau(self.tableau), group_options())
            check_engine_groups(self.param_groups)
        except Exception:
            self.param_groups.pop()
            raise
        group.setdefault("h", None)

    def __getstate__(self) -> dict[str, Any]:
        self._require_between_steps("copying or pickling the optimizer")
        own = {name: getattr(self, name) for name in _OWN}
        return {**super().__getstate__(), **own, "counters": self.counters}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickling (all keys) and ``load_state_dict`` (only state and param groups)."""
        state = dict(state)
        for name, default in {**_OWN, "counters": None}.items():
            if name in state or not hasattr(self, name):
                setattr(self, name, state.pop(name, default))
        self.tableau = get_method(self.tableau)
        self.counters = self.counters or Counters()
        self._init_transient()
        super().__setstate__(state)
        defaults = {key: value for key, value in group_options().defaults().items() if key != "lr"}
        for group in self.param_groups:
            for key, value in defaults.items():
                group.setdefault(key, value)
            group.setdefault("h", None)

    def free_workspace(self) -> None:
        """Release the work buffers kept between steps (they are re-allocated when needed)."""
        self._require_between_steps("free_workspace()")
        self._workspace.clear()
        self._planner.runs.clear()  # they hold the buffers

    def state_dict(self) -> dict[str, Any]:
        """torch's state_dict plus ``counters`` and ``rkopt`` (the method), which the post-hooks see."""
        self._require_between_steps("state_dict()")
        with hooks_withheld(self, "_optimizer_state_dict_post_hooks") as (post_hooks,):
            state = super().state_dict()  # runs the pre-hooks
        state["counters"] = asdict(self.counters)
        state["rkopt"] = {"method": method_name(self.tableau)}
        return run_dict_hooks(post_hooks, self, state)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Check ``state_dict`` (after the pre-hooks, which get it whole) and load it; the post-hooks
        run once everything, counters included, is loaded."""
        self._require_between_steps("load_state_dict()")
        tables = ("_optimizer_load_state_dict_pre_hooks", "_optimizer_load_state_dict_post_hooks")
        with hooks_withheld(self, *tables) as (pre_hooks, post_hooks):
            state_dict = dict(state_dict) if isinstance(state_dict, Mapping) else state_dict
            state_dict = run_dict_hooks(pre_hooks, self, state_dict)
            counters = check_state_dict(self.tableau, self.param_groups, state_dict)
            super().load_state_dict({k: v for k, v in state_dict.items() if k not in ("counters", "rkopt")})
            self.counters = counters
            self.free_workspace()
        for hook in list(post_hooks.values()):
            hook(self)

    # -- stage-wise mode -------------------------------------------------------------------

    @property
    def step_complete(self) -> bool:
        """True between steps; False while a stage-wise step waits for its next evaluation."""
        return self._stagewise_step is None

    def capture_rng_state(self) -> None:
        """Capture the random number generators before the forward pass of a step's first stage:
        every later evaluation of the step starts from this state, so dropout draws the same masks
        in every stage (:func:`rkopt.repeat_batches` calls this for each new batch)."""
        self._require_between_steps("capture_rng_state()")
        self._batch_rng = RNGSnapshot.capture()

    def restore_rng_state(self) -> None:
        """Restore the generators captured for the step in progress, so that an evaluation repeated
        without a ``step()`` call in between (a GradScaler skip) draws the stage's numbers again."""
        step = self._stagewise_step
        if step is not None and step.batch_rng is not None:
            step.batch_rng.restore()

    @torch.no_grad()
    def abort_step(self) -> None:
        """Abandon a stage-wise step in progress: θ_n is restored and nothing else changes except
        the counters of the evaluations spent. A no-op between steps."""
        step = self._stagewise_step
        if step is not None:
            step.abort()
            self._end_stagewise(step)

    def _require_between_steps(self, what: str) -> None:
        inflight = getattr(self, "_stagewise_step", None)
        if inflight is not None:
            raise StepInProgressError(
                f"{what} needs the optimizer between steps, but a stage-wise Runge–Kutta step is in "
                f"progress ({inflight.calls} of its evaluations made; the parameters are at a stage "
                "point, not θ_n). Call it when optimizer.step_complete is True (rkopt.repeat_batches "
                "yields a new batch then), or call optimizer.abort_step() first"
            )

    # -- the step --------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Closure | None = None, *, loss: Any = None) -> Any:  # type: ignore[override]
        """Take one Runge–Kutta step (``stagewise=True``: one stage of it).

        Closure mode returns the closure's loss at θ_n. Stage-wise mode evaluates ``closure`` once
        if given (as any ``torch.optim`` optimizer does) and returns its loss, else ``loss``.
        """
        if self._in_step:
            raise RuntimeError(
                "optimizer.step() was called while a step of the same optimizer is running (from "
                "inside its closure); the closure must only zero the gradients, compute the loss, call "
                "backward() and return the loss"
            )
        refuse_skipped_micro_batches(self)
        self._in_step = True
        try:
            return self._step(closure, loss)
        finally:
            self._in_step = False

    def _step(self, closure: Closure | None, loss: Any) -> Any:
        if self.stagewise:
            if closure is not None:
                try:
                    with torch.enable_grad():
                        loss = closure()
                except BaseException:
                    self.abort_step()  # the parameters must not stay at a stage point
                    raise
            self._stage(loss)
            return loss
        if closure is None or not callable(closure):
            raise RuntimeError(
                "rkopt.RungeKutta.step needs a closure: each Runge–Kutta stage re-evaluates the "
                "gradient on the same minibatch, so call step(closure) with a function that zeroes "
                "the gradients, computes the loss on the batch, calls backward() and returns the "
                "loss (as for torch.optim.LBFGS). In PyTorch Lightning use automatic optimization, "
                "which passes one. For loops that call step() after each backward (Hugging Face "
                "Trainer, GradScaler), create the optimizer with stagewise=True"
            )
        return self._closure_step(closure)

    def _stage(self, loss: Any) -> None:
        step = self._stagewise_step
        if step is None:
            self._since_last_step.check("evaluation 1 of the stage-wise step")
            step = self._stagewise_step = StagewiseStep(
                self._program, self._gradients, self._batch_rng, lambda: self.param_groups
            )
        try:
            outcome = step.advance(loss)
        except BaseException:
            self._end_stagewise(step)
            raise
        if outcome is None:
            self.evaluation_index = step.calls
            return
        self._end_stagewise(step)
        self._count(outcome)

    def _end_stagewise(self, step: StagewiseStep) -> None:
        self._finish(step.program, step.calls)
        self._stagewise_step = None
        self._batch_rng = None
        # the next step's first backward must not accumulate onto the gradients this one ended with
        self._since_last_step.mark(self.param_groups, before_step=True)

    def _gradients(self) -> list[Tensor]:
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        return [torch.view_as_real(g) if g.is_complex() else g for g in grads]

    def _closure_step(self, closure: Closure) -> Any:
        snapshot = RNGSnapshot.capture()
        after_first: RNGSnapshot | None = None
        calls = 0

        witness = GradientWitness()

        def evaluate() -> Any:
            nonlocal after_first, calls
            if calls:
                snapshot.restore()
            witness.mark(self.param_groups, before_step=not calls)
            self.evaluation_index = calls
            with torch.enable_grad():
                loss = closure()
            calls += 1
            if calls == 1:
                after_first = RNGSnapshot.capture()
            witness.check(f"closure call {calls} of the step")
            if loss is None:
                raise ValueError(
                    "the closure returned None; it must return the loss it computed and "
                    "backpropagated (a tensor or float)"
                )
            if not isinstance(loss, (Tensor, Real)) or isinstance(loss, bool):
                raise TypeError(
                    f"the closure returned {type(loss).__name__}; it must return the loss it computed "
                    "and backpropagated, a tensor or a float (return loss, not e.g. (loss, logits))"
                )
            return loss

        program: StepProgram | None = None
        generator = None
        try:
            first_loss = evaluate()
            program = self._program()
            generator = program.run(first_loss)
            try:
                next(generator)
                while True:
                    generator.send(evaluate())
            except StopIteration as stop:
                outcome = stop.value
        except BaseException:
            if generator is not None:
                generator.close()  # runs its cleanups (probe and IGR points)
            if program is not None:
                program.restore()
            raise
        finally:  # the work done is counted whatever the outcome
            self._finish(program, calls)
            if after_first is not None:
                after_first.restore()
        self._count(outcome)
        return first_loss

    def _finish(self, program: StepProgram | None, calls: int) -> None:
        """Count a step's work and drop its references, whatever its outcome."""
        if program is not None:
            for run in program.runs:
                run.reset()
            self.counters.rejected_steps += program.rejections
        self.counters.grad_evals += calls
        self.evaluation_index = None
        if not self.keep_workspace:
            self._workspace.clear()
            self._planner.runs.clear()

    def _count(self, outcome: str) -> None:
        if outcome == "skipped":
            self.counters.skipped_steps += 1
        else:
            self.counters.steps += 1

    def _program(self) -> StepProgram:
        """The step over every group with gradients (plans and runs kept while their keys hold)."""
        return self._planner.program(self.param_groups, self.tableau, self.state, self.on_nonfinite)


RungeKutta.__doc__ += "\n" + options_doc(group_options())
