"""Keep a model's buffers (BatchNorm running statistics) updated once per optimizer step.

A Runge–Kutta step calls the closure once per stage, and each forward pass in training mode
updates BatchNorm's running mean and variance. Only the first call, at θ_n, should count, as for
any other optimizer: wrap the forward pass in :func:`frozen_buffers` for the other calls.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def frozen_buffers(module: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Restore every buffer of ``module`` (running statistics, counters) on exit.

    Usage in a closure::

        with rkopt.frozen_buffers(model, enabled=not rkopt.is_first_evaluation(optimizer)):
            loss = loss_fn(model(x), y)
        loss.backward()

    The restore writes through ``.data``, so autograd's version counters do not change and the
    backward pass may come after the block.
    """
    if not enabled:
        yield
        return
    saved = [(buffer, buffer.detach().clone()) for buffer in module.buffers()]
    try:
        yield
    finally:
        for buffer, value in saved:
            buffer.data.copy_(value)


def is_first_evaluation(optimizer: torch.optim.Optimizer) -> bool:
    """True unless ``optimizer`` is an rkopt optimizer inside a step, past its first closure call.

    Wrappers that hide the optimizer's attributes (accelerate's ``AcceleratedOptimizer``, DeepSpeed)
    are looked through via their ``.optimizer``, as :func:`rkopt.repeat_batches` does.
    """
    while not hasattr(optimizer, "evaluation_index") and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    index = getattr(optimizer, "evaluation_index", None)
    return index is None or index == 0
