"""Where a stage's gradient comes from: each evaluation must produce its own.

A Runge–Kutta step integrates the gradient of every evaluation. A closure that never calls
``backward()``, or that calls it without zeroing the gradients first (gradient accumulation across
stages, as Lightning's ``accumulate_grad_batches`` does), hands the step gradients it did not ask
for. :class:`GradientWitness` notices both from one parameter's gradient: an evaluation that left it
the same tensor with the same version did not touch it; one that bumped the version exactly once
and left it nonzero accumulated onto it (zeroing in place and a backward bump it twice, a zeroing
with ``set_to_none=True`` replaces it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor

from rkopt.core.errors import StaleGradientError


class GradientWitness:
    """Watches one parameter's gradient across an evaluation."""

    __slots__ = ("grad", "param", "version")

    def __init__(self) -> None:
        self.param: Tensor | None = None
        self.grad: Tensor | None = None
        self.version = 0

    def mark(self, groups: Iterable[Mapping[str, Any]]) -> None:
        """Remember the gradient before the next evaluation."""
        self.param = self.grad = None
        for group in groups:
            for p in group["params"]:
                if p.grad is not None and not p.grad.is_sparse:
                    self.param, self.grad, self.version = p, p.grad, p.grad._version
                    return

    def check(self, evaluation: str) -> None:
        """Raise ``StaleGradientError`` if the evaluation just made did not produce the gradient."""
        if self.param is None or self.param.grad is not self.grad:
            return  # a fresh gradient (or none: the parameter took no part)
        bumps = self.grad._version - self.version
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
                "or before each stage-wise optimizer.step()). Gradient accumulation across "
                "micro-batches cannot happen between the stages of a step: accumulate inside one "
                "evaluation (several backward() calls after one zero_grad()), or use a larger batch"
            )
