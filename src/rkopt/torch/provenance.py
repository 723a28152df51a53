"""Where a stage's gradient comes from: each evaluation must produce its own.

A Runge–Kutta step integrates the gradient of every evaluation. A closure that never calls
``backward()``, or that calls it without zeroing the gradients first (gradient accumulation across
stages, as Lightning's ``accumulate_grad_batches`` does), hands the step gradients it did not ask
for. :class:`GradientWitness` notices both from one parameter's gradient: an evaluation that left it
the same tensor with the same version did not touch it; one that bumped the version exactly once
and left it nonzero accumulated onto it (zeroing in place and a backward bump it twice, a zeroing
with ``set_to_none=True`` replaces it). Before a step's first evaluation the gradients present come
from outside the step (the previous step, or a ``backward()`` of the caller's: gradient
accumulation over micro-batches); there only accumulating onto them when they are nonzero is
refused, since a closure that leaves them alone (a step on gradients computed beforehand, as
``torch.optim`` allows) is the caller's business and later evaluations are checked. A stage-wise
step's first evaluation is checked the same way against the gradients the previous step ended with.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor

from rkopt.core.errors import StaleGradientError

ACCUMULATION_ADVICE = (
    "Gradient accumulation across micro-batches cannot happen before or between the stages of a step: "
    "accumulate inside one evaluation (several backward() calls after one zero_grad()), or use a "
    "larger batch"
)


class GradientWitness:
    """Watches one parameter's gradient across an evaluation."""

    __slots__ = ("before_step", "grad", "held", "param", "version")

    def __init__(self) -> None:
        self.param: Tensor | None = None
        self.grad: Tensor | None = None
        self.version = 0
        self.before_step = False
        self.held = False  # before the step: whether the gradient present was nonzero

    def mark(self, groups: Iterable[Mapping[str, Any]], before_step: bool = False) -> None:
        """Remember the gradient before the next evaluation (``before_step``: the step's first)."""
        self.param = self.grad = None
        self.before_step = before_step
        for group in groups:
            for p in group["params"]:
                if p.grad is not None and not p.grad.is_sparse:
                    self.param, self.grad, self.version = p, p.grad, p.grad._version
                    self.held = before_step and bool(p.grad.any())
                    return

    def check(self, evaluation: str) -> None:
        """Raise ``StaleGradientError`` if the evaluation just made did not produce the gradient."""
        if self.param is None or self.param.grad is not self.grad:
            return  # a fresh gradient (or none: the parameter took no part)
        bumps = self.grad._version - self.version
        if self.before_step:
            if bumps == 1 and self.held:
                raise StaleGradientError(
                    f"{evaluation} accumulated its backward() onto gradients that were present before "
                    "optimizer.step() (of a backward() outside the closure, or of the previous step): "
                    "the step would integrate gradients it did not evaluate. Zero the gradients before "
                    "each backward() (in the closure, or before each stage-wise optimizer.step()). "
                    f"{ACCUMULATION_ADVICE}"
                )
            return
        if bumps == 0:
            raise StaleGradientError(
                f"{evaluation} did not recompute the gradients (no backward() reached them since the "
                "previous evaluation): every Runge–Kutta stage needs its own gradient. Call "
                "optimizer.zero_grad() and loss.backward() in the closure (stage-wise: before each "
                "optimizer.step())"
            )
        if bumps == 1 and bool(self.grad.any()):
            raise StaleGradientError(
                f"{evaluation} accumulated its backward() onto the previous evaluation's gradients "
                "instead of replacing them: zero the gradients before each backward (in the closure, "
                f"or before each stage-wise optimizer.step()). {ACCUMULATION_ADVICE}"
            )
