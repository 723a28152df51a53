"""Loss scaling (``torch.amp.GradScaler``) for closure-mode steps: each evaluation unscales its own.

``scaler.step(optimizer, closure)`` cannot take a Runge–Kutta step: GradScaler unscales the
gradients once per step, before ``optimizer.step``, while a step evaluates them s times inside it.
:class:`ScaledStep` takes its place::

    scaled = rkopt.ScaledStep(optimizer, scaler)

    def closure():
        optimizer.zero_grad()
        with torch.autocast("cuda", dtype=torch.float16):
            loss = loss_fn(model(x), y)
        scaled.backward(loss)        # scaler.scale(loss).backward()
        scaled.unscale_()            # only to clip: the gradients are then g = ∇(S·L) / S
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        return loss

    scaled.step(closure)             # the loss at θ_n, or None when the step was skipped
    scaler.update()                  # once per step, as after scaler.step(optimizer)

Every evaluation's gradients are divided by the step's scale S once (after the closure, unless
``unscale_`` did it): exactly, S being a power of two. An evaluation whose loss is finite but whose
unscaled gradients are not overflowed: the step ends there, θ_n is restored, nothing of the
optimizer's state changes (a step commits only when accepted), ``counters.skipped_steps`` counts
the step and ``grad_evals`` its evaluations, and ``step`` returns None, as GradScaler skips
``optimizer.step``. ``scaler.update()`` then lowers S once (``backoff_factor``); ``growth_interval``
steps in a row without overflow raise it (``growth_factor``). A non-finite loss is no overflow: the
step fails or is skipped as ``on_nonfinite`` says. Stage-wise mode needs none of this:
``scaler.step(optimizer)`` after each backward works as for any optimizer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.amp.grad_scaler import GradScaler, OptState

from rkopt.torch.engine import is_finite
from rkopt.torch.runge_kutta import RungeKutta
from rkopt.torch.stagewise import unwrap_runge_kutta


class _Overflow(Exception):
    """An evaluation's scaled gradients overflowed: the step is abandoned."""


class ScaledStep:
    """Runge–Kutta steps of ``optimizer`` (closure mode) with the loss scaled by ``scaler``.

    ``optimizer`` may be a wrapper of the rkopt optimizer (accelerate's ``AcceleratedOptimizer``:
    ``ScaledStep(optimizer, accelerator.scaler)``, then ``accelerator.scaler.update()`` after each
    step); the steps are the wrapped optimizer's.
    """

    def __init__(self, optimizer: RungeKutta | Any, scaler: GradScaler) -> None:
        inner = unwrap_runge_kutta(optimizer, "ScaledStep")
        if inner.stagewise:
            raise TypeError(
                "ScaledStep takes closure-mode steps; in stage-wise mode call scaler.scale(loss).backward(), "
                "scaler.step(optimizer), scaler.update() after each backward instead"
            )
        if scaler is None:
            raise TypeError(
                "ScaledStep needs a torch.amp.GradScaler (accelerate: accelerator.scaler exists with "
                "mixed_precision='fp16'); without loss scaling call optimizer.step(closure)"
            )
        self.optimizer, self.scaler = inner, scaler
        self._inverse: float | None = None  # 1/S while a step runs
        self._backward_calls = 0  # of the evaluation in progress
        self._unscaled = False  # whether the evaluation in progress has unscaled its gradients
        self._overflowed = False  # whether its unscaled gradients hold an inf or NaN
        self._found_inf = False  # whether any evaluation's did, this step (for scaler.update)

    def backward(self, loss: Tensor) -> None:
        """``scaler.scale(loss).backward()`` inside the closure (several calls accumulate)."""
        if self._inverse is None:
            raise RuntimeError("ScaledStep.backward belongs in the closure passed to ScaledStep.step")
        if self._unscaled:
            raise RuntimeError(
                "ScaledStep.backward after unscale_() in the same evaluation would add scaled gradients "
                "to unscaled ones: call unscale_() after the evaluation's last backward"
            )
        self.scaler.scale(loss).backward()
        self._backward_calls += 1

    def unscale_(self) -> None:
        """Divide this evaluation's gradients by S now (to clip them); at most once per evaluation."""
        if self._backward_calls == 0 or self._unscaled:
            raise RuntimeError(
                "ScaledStep.unscale_() unscales the gradients of ScaledStep.backward, once per evaluation "
                "(inside the closure, after its last backward)"
            )
        self._unscaled = True
        self._overflowed = _unscale(self.optimizer.param_groups, self._inverse)
        self._found_inf |= self._overflowed

    def step(self, closure: Callable[[], Any]) -> Any:
        """One Runge–Kutta step, each closure call unscaling its gradients; the loss at θ_n, or None
        when an evaluation overflowed and the step was skipped."""
        if self._stage() is OptState.STEPPED:
            raise RuntimeError("ScaledStep.step was called twice without scaler.update() in between")
        self._inverse, self._found_inf = 1.0 / self.scaler.get_scale(), False
        try:
            return self.optimizer.step(lambda: self._evaluate(closure))
        except _Overflow:
            counters = self.optimizer.counters
            counters.grad_evals += 1  # the evaluation that overflowed (step() counts the returned)
            counters.skipped_steps += 1
            return None
        finally:
            self._record(self._found_inf)
            self._inverse = None

    def _evaluate(self, closure: Callable[[], Any]) -> Any:
        self._backward_calls, self._unscaled, self._overflowed = 0, False, False
        loss = closure()
        if self._stage() is not OptState.READY:
            raise RuntimeError(
                "the closure called scaler.unscale_(optimizer), which unscales once per step: inside "
                "ScaledStep.step call scaled.unscale_() instead (once per evaluation)"
            )
        if self._backward_calls == 0:
            raise RuntimeError(
                "a closure passed to ScaledStep.step must backpropagate with scaled.backward(loss): "
                "ScaledStep divides by S only gradients it scaled (after loss.backward() the division "
                "would be wrong, after scaler.scale(loss).backward() it cannot be sure)"
            )
        if not self._unscaled:
            self.unscale_()
        if self._overflowed and is_finite(loss):
            raise _Overflow
        return loss

    def _stage(self) -> OptState:
        """Where the scaler's iteration is for this optimizer (READY until a step is recorded)."""
        state = self.scaler._per_optimizer_states.get(id(self.optimizer))
        return OptState.READY if state is None else state["stage"]

    def _record(self, overflowed: bool) -> None:
        """Tell ``scaler.update()`` whether this step overflowed, as ``scaler.step`` would."""
        state = self.scaler._per_optimizer_states[id(self.optimizer)]
        state["found_inf_per_device"] = {torch.device("cpu"): torch.tensor(float(overflowed))}
        state["stage"] = OptState.STEPPED


def _unscale(groups: list[dict[str, Any]], inverse: float) -> bool:
    """g ← g / S for every gradient (one fused pass per device and dtype); whether any is inf or NaN.

    It writes through ``.data``, which leaves the gradients' version counters alone: the unscaling
    completes the evaluation's gradient, and the step's gradient witness
    (:mod:`rkopt.torch.provenance`) must still see a closure that accumulates onto old gradients.
    """
    by_kind: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for group in groups:
        for p in group["params"]:
            if p.grad is not None and not p.grad.is_sparse:  # sparse: refused by the step
                grad = torch.view_as_real(p.grad.data) if p.grad.is_complex() else p.grad.data
                by_kind.setdefault((grad.device, grad.dtype), []).append(grad)
    overflowed = False
    for (device, _), grads in by_kind.items():
        found_inf = torch.zeros((), dtype=torch.float32, device=device)
        scale = torch.full((), inverse, dtype=torch.float32, device=device)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, scale)
        overflowed |= bool(found_inf)
    return overflowed
