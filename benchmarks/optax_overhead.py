"""Benchmark: the optax binding's step overhead beside the torch binding's, measured in one run.

Step overhead = wall time of one step minus the time of its gradient evaluations.

- torch: ``step(closure)`` minus the time inside the closure, which only sets ``p.grad`` to fixed
  tensors (as in ``step_overhead.py``).
- optax: a jitted ``update(grads, state, params, grad_fn=grad_fn)`` (block_until_ready) minus the
  time of its E gradient evaluations, timed as E chained evaluations in one jitted call (E = the
  step's ``grad_evals``). ``grad_fn`` is a cheap but real gradient, g = c ⊙ θ (one read and one
  write of the parameters), so XLA cannot drop the stage points; the grads are float32.

The ratio optax / torch is per configuration on the same parameter set (same sizes, same tensor
count, float32, CPU). Run: ``python benchmarks/optax_overhead.py`` (``--quick``: a few seconds).
"""

from __future__ import annotations

import argparse
import time
from functools import reduce

from _common import (
    Section,
    Summary,
    add_common_arguments,
    log,
    main_for,
    markdown_table,
    parameter_set,
    repeat,
    resolve_device,
)
from step_overhead import LR, parse_sets, rk_overhead

CONFIGS = ("euler", "rk4", "dopri5-adaptive", "rk4-full")
DEFAULT_SETS = "1e6x10,1e7x50"
QUICK_SETS = "2e5x20"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--sets", help=f"parameter sets ELEMENTSxTENSORS (default {DEFAULT_SETS})")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="presets to time")
    parser.add_argument("--budget", type=float, help="seconds of timed steps per measurement (default 2)")
    return parser


def seconds(call, budget: float) -> Summary:
    """Seconds per ``call()`` (which blocks until its result is ready), after two warm-up calls."""

    def measure() -> float:
        start = time.perf_counter()
        call()
        return time.perf_counter() - start

    return repeat(measure, warmup=2, min_repeats=5 if budget >= 1.0 else 3, max_repeats=25, budget_s=budget)


def optax_overhead(name: str, params, budget: float, **options) -> tuple[Summary, int, Summary]:
    """(the overhead of a jitted update, its gradient evaluations, the update's time)."""
    import jax
    import jax.numpy as jnp

    import rkopt.optax

    scales = [jnp.full(p.shape, 1e-3 / 0.02, p.dtype) for p in params]

    def grad_fn(theta):
        return [c * t for c, t in zip(scales, theta, strict=True)]

    tx = rkopt.optax.preset(name, LR, **options)
    update = jax.jit(lambda p, s: tx.update(grad_fn(p), s, p, grad_fn=grad_fn))
    state = tx.init(params)
    _, after = jax.block_until_ready(update(params, state))
    evaluations = int(after.grad_evals)
    chained = jax.jit(lambda p: reduce(lambda x, _: grad_fn(x), range(evaluations), p))
    step = seconds(lambda: jax.block_until_ready(update(params, state)), budget)
    grads = seconds(lambda: jax.block_until_ready(chained(params)), budget)
    return Summary.of([max(step.median - grads.median, 0.0)]), evaluations, step


def run(args: argparse.Namespace) -> Section:
    import jax
    import jax.numpy as jnp

    device = resolve_device(args.device)
    sets = parse_sets(args.sets or (QUICK_SETS if args.quick else DEFAULT_SETS))
    budget = args.budget if args.budget is not None else (0.2 if args.quick else 2.0)
    rows = []
    for numel, count in sets:
        log(f"[optax_overhead] {numel:.0e} elements in {count} tensors")
        parameters = parameter_set(numel, count, device, args.seed)
        params = [jnp.asarray(p.detach().cpu().numpy()) for p in parameters.params]
        for name in args.configs.split(","):
            log(f"  {name}")
            torch_overhead = rk_overhead(name, parameters, device, budget)
            overhead, evaluations, step = optax_overhead(name, params, budget)
            skipping, _, _ = optax_overhead(name, params, budget, on_nonfinite="skip")
            rows.append(
                (
                    f"{numel:.0e}",
                    count,
                    name,
                    evaluations,
                    torch_overhead.scaled(1e3).format(2),
                    f"{1e3 * step.median:.2f}",
                    f"{1e3 * overhead.median:.2f}",
                    f"{overhead.median / torch_overhead.median:.2f}",
                    f"{1e3 * skipping.median:.2f}",
                    f"{skipping.median / torch_overhead.median:.2f}",
                )
            )
    section = Section("Optax binding: step overhead beside torch")
    section.blocks += [
        f"jax {jax.__version__}, CPU, float32, lr = {LR}. torch overhead: median [interquartile range] of "
        "`step(closure)` minus the closure's time; optax: median jitted update minus the median of "
        "its gradient evaluations chained in one jitted call. ×torch = optax overhead / torch overhead. "
        '`on_nonfinite="raise"` (the default of both) costs the optax step a host callback under jit '
        '(about 1 ms on the CPU); the skip columns use `on_nonfinite="skip"`.',
        markdown_table(
            [
                "elements",
                "tensors",
                "config",
                "evals",
                "torch overhead ms",
                "optax step ms",
                "optax overhead ms",
                "×torch",
                "optax overhead ms, skip",
                "×torch, skip",
            ],
            rows,
        ),
    ]
    return section


if __name__ == "__main__":
    main_for(build_parser, run)
