"""Optimizer wrappers that would make a Runge–Kutta step silently wrong, refused where they call in.

A wrapper that shards the parameters or skips ``step()`` on some micro-batches changes what a
step integrates without the optimizer being told. Both refusals read the calling frames (the
wrappers are not imported: neither library is a dependency of rkopt).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any


def _callers(depth: int, limit: int) -> Iterator[Any]:
    """The ``self`` of each of the ``limit`` frames above the one ``depth`` levels up."""
    frame = sys._getframe(depth + 1)
    for _ in range(limit):
        if frame is None:
            return
        yield frame.f_locals.get("self")
        frame = frame.f_back


def refuse_zero_redundancy() -> None:
    """ZeroRedundancyOptimizer gives each rank an optimizer over its shard only, so each rank would
    move only its shard to the stage points and every stage would see a mixed point: refuse it
    (called by the optimizer's constructor)."""
    for owner in _callers(2, 6):
        if type(owner).__name__ == "ZeroRedundancyOptimizer":
            raise TypeError(
                "rkopt optimizers cannot run inside torch.distributed.optim.ZeroRedundancyOptimizer: "
                "each rank would move only its own parameter shard to the Runge–Kutta stage points, so "
                "every stage would evaluate the gradient at a point no method defines. Shard with FSDP2 "
                "(torch.distributed.fsdp.fully_shard), which rkopt supports, or use DDP"
            )


def refuse_skipped_micro_batches(optimizer: Any) -> None:
    """accelerate's ``AcceleratedOptimizer`` under ``Accelerator(gradient_accumulation_steps=k)``,
    k > 1, calls ``step()`` only on every k-th micro-batch (and skips ``zero_grad()`` in between):
    a step would then evaluate only the micro-batch it is called on, with its loss divided by k
    (closure mode), or stages would mix the gradients of different micro-batches and points
    (stage-wise mode). Refuse it, with what to do instead (called by ``step()``)."""
    for owner in _callers(2, 8):
        if getattr(owner, "optimizer", None) is not optimizer:
            continue
        state = getattr(owner, "gradient_state", None)
        steps = getattr(state, "num_steps", 1)
        if type(owner).__module__.startswith("accelerate") and steps > 1:
            raise RuntimeError(
                f"rkopt cannot take steps through accelerate's gradient accumulation "
                f"(gradient_accumulation_steps={steps}): AcceleratedOptimizer.step() runs only on every "
                f"{steps}-th micro-batch, so a Runge–Kutta step would never evaluate the others (closure "
                "mode) or its stages would mix different micro-batches and points (stage-wise mode). "
                "Create the Accelerator with gradient_accumulation_steps=1 and accumulate inside each "
                "evaluation (in the closure: zero the gradients once, backward() over every micro-batch, "
                "return the mean loss), or train with rkopt.integrations.transformers.RungeKuttaTrainer, "
                "which repeats all micro-batches of a step for every stage"
            )
