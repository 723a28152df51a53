"""The explicit implicit-gradient regulariser (IGR, Barrett & Dherin 2021) as part of the field.

With R = Σ_groups λ_IGR (lr/4) ‖∇L‖², the integrated field is q = σ g + ∇R, where
∇R = H w with w = (λ_IGR lr/2) g per group. The Hessian-vector product is a finite difference,

    H w ≈ ‖w‖ (g(θ + ε w/‖w‖) - g(θ)) / ε,

one more evaluation at the displaced point (all groups together, since one evaluation serves them
all). lr is the group's lr (the cap under an adaptive policy), so R does not depend on the h chosen.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from typing import Any

from torch import Tensor

from rkopt.torch._ops import Tensors
from rkopt.torch.group_run import GroupRun

Evaluation = Generator[str, Any, Any]
"""A computation that yields each time it needs the model evaluated at the current parameters and
receives that evaluation's loss."""


def igr_fields(
    runs: Sequence[GroupRun],
    targets: Sequence[GroupRun],
    raw: list[list[Tensor]],
    stage: int | None,
    losses: Any,
) -> Evaluation:
    """q = σ g + ∇R for every run, written into the direction buffer of each target run (other
    runs' buffers are untouched); returns the per-run outputs (None for non-targets). The loss of
    the extra evaluation is appended to ``losses`` (a :class:`rkopt.torch.engine.Losses`)."""
    saved, weights = [], []
    for run, gradient in zip(runs, raw, strict=True):
        buffer = run.buffer("igr_grad")
        run.ops.copy_(buffer, gradient)
        saved.append(buffer)
        weights.append(run.group["igr"] * run.lr / 2.0)
    w_norm = math.sqrt(
        sum(
            w * w * float(run.ops.sum_squares(g))
            for run, g, w in zip(runs, saved, weights, strict=True)
            if w > 0
        )
    )
    outputs: list[Tensors | None] = [run.destination(stage) if run in targets else None for run in runs]
    if w_norm == 0.0 or not math.isfinite(w_norm):
        for run, out, g in zip(runs, outputs, saved, strict=True):
            if out is not None:
                run.ops.scale_into(out, g, run.field.sign)
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
        losses.append((yield "igr"))
        probed = [run.gradients() for run in runs]
    finally:
        for (run, _, _), point in zip(movers, points, strict=True):
            run.ops.copy_(run.params, point)
    for run, out, g, g_probe in zip(runs, outputs, saved, probed, strict=True):
        if out is None:
            continue
        run.ops.axpy_into(out, g_probe, g, -1.0)
        run.ops.scale_(out, w_norm / eps)
        run.ops.axpy_(out, g, run.field.sign)
    return outputs
