"""Stage-wise mode: one evaluation per ``step()`` call, for loops that never pass a closure.

    optimizer = rkopt.RK4(model.parameters(), lr=0.1, stagewise=True)
    for x, y in rkopt.repeat_batches(loader, optimizer):   # each batch until its step completes
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()                                   # one stage (or retry, or probe)

Each call takes the gradients present as the current evaluation's and moves the parameters to the
next point the step needs (a stage point, a probe, a retry), completing the step after its last
evaluation; :attr:`RungeKutta.step_complete` tells which. The step runs the same program as
``step(closure)``, so parameters, counters and state match closure mode. h is fixed at the step's
first call. The random number generators captured when :func:`repeat_batches` hands out a batch
are restored before each later evaluation, so dropout draws the same masks in every stage; after
the step they are as after one forward and backward. A trainer's step counter and LR scheduler
advance once per call, i.e. ``evaluations`` times per Runge–Kutta step.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch

from rkopt.torch._ops import TensorListOps
from rkopt.torch.engine import StepProgram
from rkopt.torch.provenance import GradientWitness
from rkopt.torch.rng import RNGSnapshot

Item = TypeVar("Item")


class StagewiseStep:
    """A stage-wise step in progress: its program, suspended until the next evaluation arrives.

    Args:
        start: builds the step's program (called at the first evaluation, after its backward).
        gradients: the gradients now present (checked when an evaluation comes without a loss).
        batch_rng: the random number generators captured before the first forward (None: none).
        groups: the param groups (to check that each evaluation brings fresh gradients).
    """

    def __init__(
        self,
        start: Callable[[], StepProgram],
        gradients: Callable[[], list[torch.Tensor]],
        batch_rng: RNGSnapshot | None,
        groups: Callable[[], list[dict[str, Any]]],
    ) -> None:
        self.start, self.gradients, self.batch_rng, self.groups = start, gradients, batch_rng, groups
        self.witness = GradientWitness()
        self.calls = 0
        self.program: StepProgram | None = None
        self.generator = None
        self.after_first: RNGSnapshot | None = None
        self.rng_between: torch.Tensor | None = None  # to notice random draws between stages

    def advance(self, loss: Any) -> str | None:
        """Feed one evaluation (the gradients now in ``p.grad``, its loss if known); returns the
        step's outcome once it is complete, None while it waits for more. On an error θ_n is
        restored before it propagates."""
        if self.rng_between is not None and not torch.equal(torch.get_rng_state(), self.rng_between):
            warnings.warn(
                "random numbers were drawn between the evaluations of a stage-wise Runge–Kutta step, "
                "so dropout or other noise differs between its stages: iterate with "
                "rkopt.repeat_batches(loader, optimizer), or call optimizer.capture_rng_state() before "
                "each step's first forward pass",
                RuntimeWarning,
                stacklevel=4,
            )
        if self.calls:
            try:
                self.witness.check(f"evaluation {self.calls + 1} of the stage-wise step")
            except BaseException:
                self.abort()
                raise
        if loss is None and not self._gradients_finite():
            loss = math.nan  # the stage's gradient is not finite: the step fails as non-finite
        self.calls += 1
        try:
            if self.generator is None:
                self.after_first = RNGSnapshot.capture()
                self.program = self.start()
                self.generator = self.program.run(loss)
                next(self.generator)
            else:
                self.generator.send(loss)
        except StopIteration as stop:
            self.finish()
            return stop.value
        except BaseException:
            self.abort()
            raise
        if self.batch_rng is not None:
            self.batch_rng.restore()
        else:
            self.rng_between = torch.get_rng_state()
        self.witness.mark(self.groups())
        return None

    def abort(self) -> None:
        """Restore θ_n and end the step unfinished."""
        if self.generator is not None:
            self.generator.close()  # runs its cleanups (probe and IGR points)
        if self.program is not None:
            self.program.restore()
        self.finish()

    def finish(self) -> None:
        """Leave the generators as after the step's first evaluation (as in closure mode)."""
        if self.after_first is not None:
            self.after_first.restore()

    def _gradients_finite(self) -> bool:
        by_device: dict[torch.device, list[torch.Tensor]] = {}
        for grad in self.gradients():
            by_device.setdefault(grad.device, []).append(grad)
        return all(TensorListOps.all_finite(tensors) for tensors in by_device.values())


def unwrap_runge_kutta(optimizer: Any, caller: str) -> Any:
    """``optimizer`` or the rkopt optimizer it wraps (``.optimizer`` chains, as accelerate's
    ``AcceleratedOptimizer``); a TypeError naming ``caller`` when there is none."""
    inner = optimizer
    while not hasattr(inner, "step_complete") and hasattr(inner, "optimizer"):
        inner = inner.optimizer
    if not hasattr(inner, "step_complete"):
        raise TypeError(f"{caller} needs an rkopt optimizer (or a wrapper of one), got {type(optimizer)!r}")
    return inner


def repeat_batches(iterable: Iterable[Item], optimizer: Any) -> Iterator[Item]:
    """Yield each item of ``iterable`` again until the step that started on it completes.

    Error-control retries, DAL probes and IGR evaluations thus get the step's batch too. Before
    handing out a new item it captures the random number generators (after any draws of the data
    loading), so every evaluation of the step sees the same dropout masks. If the loop stops in the
    middle of a step (``break``, or an exception in its body), the step is abandoned with θ_n
    restored, with a warning. With a closure-mode optimizer every step completes at once and this is
    the plain iteration.
    """
    inner = unwrap_runge_kutta(optimizer, "repeat_batches")
    for item in iterable:
        if inner.stagewise:
            inner.capture_rng_state()
        try:
            yield item
            while not inner.step_complete:
                inner.restore_rng_state()  # also after a call that did not reach step()
                yield item
        except GeneratorExit:  # the loop stopped mid-step (break, or an error in its body)
            if not inner.step_complete:
                inner.abort_step()
                warnings.warn(
                    "the loop left rkopt.repeat_batches in the middle of a Runge–Kutta step: the step "
                    "was abandoned and θ_n restored",
                    RuntimeWarning,
                    stacklevel=2,
                )
            raise
