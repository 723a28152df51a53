"""Benchmark 1: the optimizer's step overhead, against the memory-traffic floor and against Adam.

Step overhead = wall time of ``step(closure)`` minus the time spent inside the closure calls. The
closure only sets ``p.grad = g`` (fixed gradient tensors) and returns a constant loss, and it times
itself, so the subtraction is exact.

Memory-traffic floor = B · P / W, where P is the parameter bytes, W the bandwidth of a large tensor
copy measured in the same run (bytes read + written per second) and B the number of parameter-sized
reads and writes one step must do, derived from the tableau's nonzero structure
(``StepStructure.floor_traffic`` in ``_common.py``): every elementwise operation reads each operand
once and writes its result once, a linear combination costs one axpy (2 reads + 1 write) per
nonzero coefficient, a reduction reads its operands once. For RK4: save θ_n (2), three stage points
(3 × 3), the accumulator U = θ_n − h Σ_{i<4} b_i d_i (3 × 3) and θ_{n+1} = U − h b_4 d_4 (3): B = 23.

Run: ``python benchmarks/step_overhead.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch
from _common import (
    GradientFeeder,
    OpBreakdown,
    ParameterSet,
    Section,
    StepStructure,
    Summary,
    Target,
    add_common_arguments,
    copy_bandwidth,
    foreach_paths,
    log,
    main_for,
    make_optimizer,
    markdown_table,
    parameter_set,
    path_name,
    profile_events,
    release_memory,
    repeat,
    resolve_device,
    synchronize,
)

CONFIGS = ("euler", "rk4", "dopri5", "dopri5-adaptive", "rk4-full")
DEFAULT_SETS = "1e6x10,1e6x200,1e7x10,1e7x200,5e7x200"
QUICK_SETS = "2e5x20"
LR = 1e-4
TARGET_RATIO, TARGET_NUMEL = 1.5, 10_000_000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument(
        "--sets", help=f"parameter sets ELEMENTSxTENSORS, comma-separated (default {DEFAULT_SETS})"
    )
    parser.add_argument("--configs", default=",".join(CONFIGS), help="presets / configurations to time")
    parser.add_argument(
        "--paths",
        default="default",
        choices=["default", "both", "foreach", "per-tensor"],
        help="foreach paths",
    )
    parser.add_argument("--budget", type=float, help="seconds of timed steps per measurement (default 2)")
    return parser


def parse_sets(text: str) -> list[tuple[int, int]]:
    sets = []
    for item in text.split(","):
        numel, count = item.lower().split("x")
        sets.append((int(float(numel)), int(count)))
    return sets


def time_steps(step, device: torch.device, closure: GradientFeeder | None, budget: float) -> Summary:
    """Seconds per call of ``step`` outside the closure: two warm-up calls, then at least 5 timed ones
    (3 with a budget under a second) until ``budget`` seconds are spent."""

    def measure() -> float:
        if closure is not None:
            closure.seconds = 0.0
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        return time.perf_counter() - start - (closure.seconds if closure is not None else 0.0)

    return repeat(measure, warmup=2, min_repeats=5 if budget >= 1.0 else 3, max_repeats=25, budget_s=budget)


def rk_overhead(name: str, parameters: ParameterSet, device, budget: float, **options) -> Summary:
    optimizer = make_optimizer(name, parameters.params, LR, **options)
    closure = GradientFeeder(parameters)
    return time_steps(lambda: optimizer.step(closure), device, closure, budget)


def adam_step(parameters: ParameterSet, device, budget: float) -> Summary:
    optimizer = torch.optim.Adam(parameters.params, lr=LR, foreach=True)
    GradientFeeder(parameters)()
    return time_steps(optimizer.step, device, None, budget)


def floor_table(configs: list[str]) -> str:
    rows = []
    for name in configs:
        structure = StepStructure.of(name)
        detail = "; ".join(f"{what}: {r}R+{w}W" for what, r, w in structure.floor_traffic() if r + w)
        rows.append((name, structure.floor_transfers, detail))
    return markdown_table(["config", "B (reads + writes, × parameter size)", "terms"], rows)


def breakdown(name: str, parameters: ParameterSet, device, foreach: bool, budget: float) -> OpBreakdown:
    """Where one step's time goes, beside the unprofiled step overhead."""
    optimizer = make_optimizer(name, parameters.params, LR, foreach=foreach)
    closure = GradientFeeder(parameters)
    total = time_steps(lambda: optimizer.step(closure), device, closure, budget).median
    steps = 3

    def profiled() -> None:
        for _ in range(steps):
            optimizer.step(closure)

    return OpBreakdown.of(profile_events(profiled, memory=False), total, steps)


@dataclass
class SetResult:
    """The measurements on one parameter set."""

    numel: int
    count: int
    nbytes: int
    adam: Summary
    bandwidth: float  # bytes/s, mean of the copy bandwidth measured before and after the set
    overheads: dict[tuple[str, bool], Summary]

    def rows(self) -> list[tuple]:
        size = f"{self.numel:.0e}"
        rows = [(size, self.count, "torch Adam", "foreach", self.adam.scaled(1e3).format(2), "", "", "1.00")]
        for (name, foreach), overhead in self.overheads.items():
            floor = self.floor_seconds(name)
            rows.append(
                (
                    size,
                    self.count,
                    name,
                    path_name(foreach),
                    overhead.scaled(1e3).format(2),
                    f"{1e3 * floor:.2f}",
                    overhead.scaled(1.0 / floor).format(2),
                    f"{overhead.median / self.adam.median:.2f}",
                )
            )
        return rows

    def floor_seconds(self, name: str) -> float:
        return StepStructure.of(name).floor_transfers * self.nbytes / self.bandwidth


def measure_set(numel: int, count: int, args, device, configs, paths, budget, before: Summary) -> SetResult:
    log(f"[step_overhead] {numel:.0e} elements in {count} tensors")
    parameters = parameter_set(numel, count, device, args.seed)
    adam = adam_step(parameters, device, budget)
    release_memory()
    overheads = {}
    for name in configs:
        for foreach in paths:
            log(f"  {name} {path_name(foreach)}")
            overheads[(name, foreach)] = rk_overhead(name, parameters, device, budget, foreach=foreach)
            release_memory()
    nbytes = parameters.nbytes
    del parameters
    release_memory()
    after = copy_bandwidth(device)
    return SetResult(numel, count, nbytes, adam, (before.median + after.median) / 2, overheads), after


def run(args: argparse.Namespace) -> Section:
    device = resolve_device(args.device)
    sets = parse_sets(args.sets or (QUICK_SETS if args.quick else DEFAULT_SETS))
    configs = args.configs.split(",")
    paths = foreach_paths(args.paths, device)
    budget = args.budget if args.budget is not None else (0.2 if args.quick else 2.0)
    bandwidths = [copy_bandwidth(device)]
    results = []
    for numel, count in sets:
        result, after = measure_set(numel, count, args, device, configs, paths, budget, bandwidths[-1])
        results.append(result)
        bandwidths.append(after)
    bandwidth = Summary.of(b.median for b in bandwidths).scaled(1e-9)
    section = Section("1. Step overhead")
    section.blocks += [
        "Step overhead = time of `step(closure)` minus the time inside the closure (which only sets "
        "`p.grad` to fixed tensors), median [interquartile range] over repeats. floor = B · parameter "
        "bytes / copy bandwidth, B from the table below; ×floor = overhead / floor. ×Adam = overhead / "
        f"`torch.optim.Adam(foreach=True)` step time on the same parameters. lr = {LR}. Copy bandwidth "
        "of a 256 MiB float32 tensor, measured before and after each parameter set (each set uses the "
        f"mean of its two): median {bandwidth.format(1)} GB/s, "
        f"min {bandwidth.low:.1f}, max {bandwidth.high:.1f}.",
        floor_table(configs),
        markdown_table(
            ["elements", "tensors", "config", "path", "overhead ms", "floor ms", "×floor", "×Adam"],
            [row for result in results for row in result.rows()],
        ),
    ]
    numel, count = max((s for s in sets if s[0] <= TARGET_NUMEL), default=max(sets))
    log("[step_overhead] workspace and breakdown")
    parameters = parameter_set(numel, count, device, args.seed)
    table, slowdowns = workspace_table(parameters, device, paths, budget)
    section.blocks.append(
        "rk4 overhead with the workspace kept between steps (default) or freed after each step "
        f"(`keep_workspace=False`), {numel:.0e} elements in {count} tensors:\n\n" + table
    )
    breakdowns = {}
    for foreach in paths:
        breakdowns[foreach] = breakdown("rk4", parameters, device, foreach, budget)
        release_memory()
        section.blocks.append(
            f"Where an rk4 step's time goes ({numel:.0e} elements in {count} tensors, {path_name(foreach)}, "
            "ops per step over 3 profiled steps):\n\n" + breakdowns[foreach].markdown()
        )
    section.targets += floor_targets(results, breakdowns)
    section.targets.append(
        Target(
            "workspace kept between steps only where measurably faster (default keep_workspace=True)",
            min(slowdowns.values()) > 1.0,
            ", ".join(
                f"{path}: freeing it makes a step {ratio:.2f}× as slow" for path, ratio in slowdowns.items()
            ),
        )
    )
    return section


def floor_targets(results: list[SetResult], breakdowns: dict[bool, OpBreakdown]) -> list[Target]:
    """rk4 foreach within TARGET_RATIO× its floor at TARGET_NUMEL+ elements (per-tensor reported too);
    a miss names the largest op groups of the path's breakdown."""
    targets = []
    for foreach, profile in breakdowns.items():
        checks = [
            (r.numel, r.count, r.overheads[("rk4", foreach)].median / r.floor_seconds("rk4"))
            for r in results
            if r.numel >= TARGET_NUMEL and ("rk4", foreach) in r.overheads
        ]
        if not checks:
            continue
        worst = max(ratio for *_, ratio in checks)
        met = worst <= TARGET_RATIO
        detail = ", ".join(f"{n:.0e}/{c} tensors: {ratio:.2f}×" for n, c, ratio in checks)
        if not met:
            detail += (
                f"; worst {worst / TARGET_RATIO:.2f}× over the target; largest op time: {profile.leaders()}"
            )
        scope = "" if foreach else " (per-tensor path, for reference)"
        targets.append(
            Target(
                f"rk4 {path_name(foreach)} overhead ≤ {TARGET_RATIO}× floor at ≥ 1e7 elements{scope}",
                met,
                detail,
            )
        )
    return targets


def workspace_table(parameters: ParameterSet, device, paths, budget: float) -> tuple[str, dict[str, float]]:
    """rk4 overhead with ``keep_workspace`` True and False, and the slowdown of freeing per path."""
    rows, slowdowns = [], {}
    for foreach in paths:
        kept = rk_overhead("rk4", parameters, device, budget, foreach=foreach, keep_workspace=True)
        freed = rk_overhead("rk4", parameters, device, budget, foreach=foreach, keep_workspace=False)
        slowdowns[path_name(foreach)] = freed.median / kept.median
        rows.append(
            (
                path_name(foreach),
                kept.scaled(1e3).format(2),
                freed.scaled(1e3).format(2),
                f"{freed.median / kept.median:.2f}",
            )
        )
    return markdown_table(["path", "kept, ms", "freed, ms", "freed / kept"], rows), slowdowns


if __name__ == "__main__":
    main_for(build_parser, run)
