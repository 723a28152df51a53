"""Helpers shared by the benchmarks: optimizer configurations, synthetic parameter sets, the
gradient-feeding closure, timing statistics, tables, the machine description and the report format.

Each benchmark script exposes ``build_parser()`` and ``run(args) -> Section`` and prints its section
when run alone; ``run_all.py`` collects the sections into ``RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

import rkopt
from rkopt.core.plan import GroupPlan
from rkopt.torch.planning import describe

# -- optimizer configurations -------------------------------------------------------------

EMBEDDED_PAIRS = ("heun_euler", "bogacki_shampine", "fehlberg", "cash_karp", "dormand_prince", "tsitouras")
"""The shipped embedded pairs; ``<name>-adaptive`` runs one under error control."""

EXTRA_CONFIGS: dict[str, dict[str, Any]] = {
    "dopri5": {"tableau": "dormand_prince"},
    **{
        f"{name}-adaptive": {"tableau": name, "lr_policy": "error_control"}
        for name in EMBEDDED_PAIRS
        if name != "dormand_prince"  # that one is the preset ``dopri5-adaptive``
    },
}
"""Configurations besides ``rkopt.PRESETS``: fixed-step Dormand–Prince and the other pairs adaptive."""


def config_kwargs(name: str) -> dict[str, Any]:
    """The ``RungeKutta`` keyword arguments of a preset or of an entry of :data:`EXTRA_CONFIGS`."""
    if name in rkopt.PRESETS:
        return dict(rkopt.PRESETS[name])
    if name in EXTRA_CONFIGS:
        return dict(EXTRA_CONFIGS[name])
    raise SystemExit(f"unknown configuration {name!r}; valid: {', '.join([*rkopt.PRESETS, *EXTRA_CONFIGS])}")


def make_optimizer(name: str, params: Sequence[Tensor], lr: float, **overrides: Any) -> rkopt.RungeKutta:
    return rkopt.RungeKutta(params, lr, **{**config_kwargs(name), **overrides})


Transfers = tuple[str, int, int]
"""(what, reads, writes), counted in parameter-sized tensors."""


@dataclass(frozen=True)
class StepStructure:
    """What one step of a configuration computes, read off the optimizer's own step plan
    (``rkopt.torch.planning.describe``: the tableau's nonzero structure, the policy's needs).

    Only the options of the presets are modelled (tableau, momentum without Nesterov, a diagonal
    preconditioner, the fixed / free-DAL / error-control policies); others raise ``ValueError``.
    """

    name: str
    plan: GroupPlan
    policy: str

    @classmethod
    def of(cls, name: str) -> StepStructure:
        kwargs = config_kwargs(name)
        unsupported = {"weight_decay", "nesterov", "igr", "maximize", "dal_estimator"} & {
            key for key, value in kwargs.items() if value and value != "free"
        }
        if unsupported:
            raise ValueError(f"{name}: options {sorted(unsupported)} are not modelled")
        return cls(name, describe(**kwargs), kwargs.get("lr_policy", "fixed"))

    @property
    def tableau(self) -> rkopt.ButcherTableau:
        return self.plan.step.tableau

    @property
    def stages(self) -> int:
        """Stages a step evaluates (a trailing stage that feeds nothing is skipped)."""
        return self.plan.step.stages

    @property
    def slots(self) -> tuple[int | None, ...]:
        return self.plan.step.slots

    @property
    def momentum(self) -> bool:
        return self.plan.update == "sum"

    @property
    def statistics(self) -> int:
        """Parameter-sized statistics of the preconditioner, 0 without one."""
        return sum(role.startswith("precond_") and role != "precond_scale" for role in self.plan.buffers)

    @property
    def final_is_stage_point(self) -> bool:
        """FSAL with every stage evaluated: θ_{n+1} is the last stage point, written already."""
        return self.plan.candidate_is_last_point

    @property
    def weights(self) -> list[int]:
        """The evaluated stages with b_i != 0."""
        return [i for i in range(self.stages) if self.tableau.b[i] != 0.0]

    def required_buffers(self) -> dict[str, int]:
        """Parameter-sized work buffers the plan uses during a step (the gradients aside)."""
        roles = self.plan.buffers
        return {
            "θ_n": int("theta0" in roles),
            "accumulator": int("accumulator" in roles),
            "slots": self.plan.step.slot_count,
            "error": int("error" in roles),
            "P_n": int("precond_scale" in roles),
            "proposed statistics": self.statistics,
            "direction": int("scratch" in roles),
        }

    @property
    def floor_transfers(self) -> int:
        """B: the parameter-sized reads plus writes of :meth:`floor_traffic`."""
        return sum(reads + writes for _, reads, writes in self.floor_traffic())

    def floor_traffic(self) -> list[Transfers]:
        """The minimal parameter-sized reads and writes of one step, as unfused BLAS-1 operations.

        Model: every elementwise operation reads each of its operands once and writes its result
        once (no fusion across operations, no cache reuse); each linear combination
        x ← y + Σ_j α_j z_j costs one axpy (2 reads, 1 write) per nonzero coefficient; a reduction
        reads its operands once. θ_n is saved (a step is revocable); the gradient of a stage is read
        in place, except that a direction needed after the next closure call is copied into a slot
        (the closure overwrites the gradient); statistics are committed by swapping buffers (free).
        """
        s, a, b = self.stages, self.tableau.a, self.tableau.b
        terms: list[Transfers] = [("save θ_n", 1, 1)]
        if self.statistics:
            terms += [
                ("preconditioner statistics from g_1", 2 * self.statistics, self.statistics),
                ("P_n from the statistics", 1, 1),
                ("d_i = P_n ⊙ g_i", 2 * s, s),
            ]
        else:
            kept = sum(slot is not None for slot in self.slots[:s])
            terms.append(("copy d_i into slots", kept, kept))
        nonzero = sum(1 for i in range(1, s) for coefficient in a[i] if coefficient != 0.0)
        terms.append(("stage points θ_n − h Σ_j a_ij d_j", 2 * nonzero, nonzero))
        weights = self.weights
        if self.momentum:
            terms += [
                ("S = Σ b_i d_i", 2 * len(weights) - 1, len(weights)),
                ("m ← β m + S", 2, 1),
                ("θ_{n+1} = θ_n − h m", 2, 1),
            ]
        elif not self.final_is_stage_point:
            inner = [i for i in weights if i < s - 1]
            if inner:
                terms.append(("U = θ_n − h Σ_{i<s} b_i d_i", 2 * len(inner), len(inner)))
            terms.append(("θ_{n+1} = U − h b_s d_s", 2 if b[s - 1] != 0.0 else 1, 1))
        if self.policy == "dal":
            terms.append(("DAL ρ: ‖d_2 − d_1‖², ‖d_1‖²", 3, 0))
        if self.policy == "error_control":
            count = sum(1 for i in range(s) if self.tableau.error_weights[i] != 0.0)
            terms += [("e = h Σ (b_i − b̂_i) d_i", 2 * count - 1, count), ("scaled error norm", 3, 0)]
        return terms


# -- parameter sets and the closure -------------------------------------------------------


def tensor_sizes(total: int, count: int) -> list[int]:
    """``count`` tensor sizes adding up to ``total``, split like a network's parameters.

    Half the tensors (rounded up) are weight matrices holding nearly all elements; the other half
    are bias-like vectors of about sqrt(total / matrices) elements each.
    """
    vectors = count // 2
    matrices = count - vectors
    width = max(1, round((total / matrices) ** 0.5)) if vectors else 0
    remaining = total - vectors * width
    if remaining < matrices:
        raise ValueError(f"{total} elements cannot be split over {count} tensors")
    sizes = [remaining // matrices] * matrices
    sizes[0] += remaining - sum(sizes)
    return sizes + [width] * vectors


@dataclass
class ParameterSet:
    """Leaf parameters and one fixed gradient tensor per parameter."""

    params: list[Tensor]
    grads: list[Tensor]

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)

    @property
    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.params)


def parameter_set(total: int, count: int, device: torch.device, seed: int = 0) -> ParameterSet:
    """float32 parameters (values ~0.02) and gradients (~1e-3) of ``total`` elements in ``count`` tensors."""
    generator = torch.Generator(device=device).manual_seed(seed)
    sizes = tensor_sizes(total, count)

    def draw(n: int, scale: float) -> Tensor:
        return torch.randn(n, generator=generator, device=device).mul_(scale)

    params = [draw(n, 0.02).requires_grad_() for n in sizes]
    grads = [draw(n, 1e-3) for n in sizes]
    return ParameterSet(params, grads)


class GradientFeeder:
    """A closure that sets ``p.grad = g`` (fixed tensors), returns a constant loss and times itself.

    ``seconds`` accumulates the wall time spent inside the calls, so that the optimizer's own time
    is the step time minus ``seconds``. Successive calls alternate between ``g`` and a view of it (the
    same values, no copy), so each call hands the optimizer a new gradient tensor, as a backward
    with ``zero_grad(set_to_none=True)`` does (rkopt refuses a gradient that no evaluation renewed).
    """

    def __init__(self, parameters: ParameterSet) -> None:
        grads = [(g, g.view_as(g)) for g in parameters.grads]
        self.pairs = list(zip(parameters.params, grads, strict=True))
        self.loss = torch.ones((), device=parameters.params[0].device)
        self.seconds = 0.0
        self.calls = 0

    def __call__(self) -> Tensor:
        start = time.perf_counter()
        self._closure_body()
        self.seconds += time.perf_counter() - start
        return self.loss

    def _closure_body(self) -> None:
        parity = self.calls % 2
        self.calls += 1
        for p, g in self.pairs:
            p.grad = g[parity]


CLOSURE_FRAME = "_closure_body"
"""The profiler tells a closure's work apart by a Python frame of this name."""


# -- profiling: where time and memory go --------------------------------------------------


@dataclass(frozen=True)
class ProfiledEvent:
    """A top-level aten op or an allocation (named ``[memory]``; ``nbytes`` < 0: a free) seen during
    a profiled call.

    ``where`` names the innermost rkopt functions the event happened in (``caller › callee``);
    ``in_closure`` is True for events inside the benchmark's closure.
    """

    name: str
    start_ns: int
    duration_ns: int
    nbytes: int
    ptr: int
    where: str
    in_closure: bool


def _location(frames: Sequence[str]) -> str:
    """The two innermost rkopt Python functions of a call stack, and its outermost aten op."""
    names = [frame.rsplit(": ", 1)[-1] for frame in frames if "rkopt/" in frame and ".py(" in frame]
    where = " › ".join(names[-2:]) if names else "(outside rkopt)"
    ops = [frame for frame in frames if frame.startswith("aten::")]
    return f"{where} ({ops[0]})" if ops else where


def profile_events(call: Callable[[], Any], *, memory: bool) -> list[ProfiledEvent]:
    """Run ``call`` under ``torch.profiler`` (with Python stacks) and list its top-level ops and,
    with ``memory``, every allocation and free of the c10 allocators, kernel-internal temporaries
    included, in time order."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities, profile_memory=memory, with_stack=True) as prof:
        call()
    tags = torch._C._profiler._EventType
    events: list[ProfiledEvent] = []
    stack = [(node, ()) for node in reversed(prof.profiler.kineto_results.experimental_event_tree())]
    while stack:
        node, frames = stack.pop()
        allocation = node.tag == tags.Allocation
        top_level_op = (
            node.tag == tags.TorchOp
            and node.name.startswith("aten::")
            and not any(frame.startswith("aten::") for frame in frames)
        )
        if allocation or top_level_op:
            fields = node.extra_fields
            events.append(
                ProfiledEvent(
                    node.name,
                    node.start_time_ns,
                    0 if allocation else node.duration_time_ns,
                    fields.alloc_size if allocation else 0,
                    fields.ptr if allocation else 0,
                    _location(frames),
                    any(frame.endswith(CLOSURE_FRAME) for frame in frames),
                )
            )
        if node.tag in (tags.PyCall, tags.TorchOp):
            frames = (*frames, node.name)
        stack.extend((child, frames) for child in reversed(node.children))
    return sorted(events, key=lambda e: e.start_ns)


@dataclass
class OpBreakdown:
    """Top-level torch ops of profiled steps (closure excluded), grouped by the rkopt function that
    issued them, beside the unprofiled step overhead (the profiler inflates small ops)."""

    groups: list[tuple[str, str, int, float]]  # (rkopt function, op, calls, seconds), largest first
    unprofiled: float

    @classmethod
    def of(cls, events: Iterable[ProfiledEvent], unprofiled: float, steps: int = 1) -> OpBreakdown:
        """Group the ops of ``steps`` profiled steps; times and call counts are per step."""
        totals: dict[tuple[str, str], list[float]] = {}
        for event in events:
            if event.duration_ns and not event.in_closure:
                entry = totals.setdefault((event.where, event.name), [0.0, 0])
                entry[0] += event.duration_ns * 1e-9 / steps
                entry[1] += 1 / steps
        groups = [(where, op, round(calls), seconds) for (where, op), (seconds, calls) in totals.items()]
        return cls(sorted(groups, key=lambda group: -group[3]), unprofiled)

    @property
    def op_seconds(self) -> float:
        return sum(group[3] for group in self.groups)

    def leaders(self, count: int = 3) -> str:
        """The largest groups with their share of the op time, for a target's explanation."""
        total = self.op_seconds
        return ", ".join(f"{where} ({op}) {100 * s / total:.0f}%" for where, op, _, s in self.groups[:count])

    def markdown(self, top: int = 8) -> str:
        total = self.op_seconds
        rows = [
            (where, op, calls, f"{1e3 * seconds:.2f}", f"{100 * seconds / total:.0f}%")
            for where, op, calls, seconds in self.groups[:top]
        ]
        rest = total - sum(group[3] for group in self.groups[:top])
        rows += [
            ("other ops", "", "", f"{1e3 * rest:.2f}", f"{100 * rest / total:.0f}%"),
            ("all top-level torch ops (profiled)", "", "", f"{1e3 * total:.2f}", "100%"),
            ("step overhead (unprofiled median)", "", "", f"{1e3 * self.unprofiled:.2f}", ""),
        ]
        return markdown_table(["rkopt function", "top-level op", "calls", "ms", "share of op time"], rows)


# -- devices and timing -------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here")
    return device


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def foreach_paths(choice: str, device: torch.device) -> list[bool]:
    """The ``foreach`` settings to measure: ``default`` is both on the CPU, foreach alone on CUDA."""
    if choice == "default":
        return [True] if device.type == "cuda" else [False, True]
    return {"both": [False, True], "foreach": [True], "per-tensor": [False]}[choice]


def path_name(foreach: bool) -> str:
    return "foreach" if foreach else "per-tensor"


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class Summary:
    """Median and spread of repeated measurements."""

    median: float
    q1: float
    q3: float
    low: float
    high: float
    count: int

    @classmethod
    def of(cls, samples: Iterable[float]) -> Summary:
        values = sorted(samples)
        if not values:
            raise ValueError("no samples")
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
        return cls(statistics.median(values), q1, q3, values[0], values[-1], len(values))

    def scaled(self, factor: float) -> Summary:
        return Summary(
            *(v * factor for v in (self.median, self.q1, self.q3, self.low, self.high)), self.count
        )

    def format(self, digits: int = 1) -> str:
        """``median [q1–q3]``."""
        return f"{self.median:.{digits}f} [{self.q1:.{digits}f}–{self.q3:.{digits}f}]"


def repeat(
    measure: Callable[[], float], *, warmup: int, min_repeats: int, max_repeats: int, budget_s: float
) -> Summary:
    """Call ``measure`` ``warmup`` times, then at least ``min_repeats`` and at most ``max_repeats`` times,
    stopping once ``budget_s`` seconds of wall time were spent on the measured calls."""
    for _ in range(warmup):
        measure()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < max_repeats and (
        len(samples) < min_repeats or time.perf_counter() - start < budget_s
    ):
        samples.append(measure())
    return Summary.of(samples)


def copy_bandwidth(device: torch.device, numel: int = 1 << 26, repeats: int = 9) -> Summary:
    """Bytes per second of ``dst.copy_(src)`` on one large float32 tensor (read + write counted)."""
    src = torch.ones(numel, device=device)
    dst = torch.empty_like(src)

    def measure() -> float:
        synchronize(device)
        start = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        return 2 * src.numel() * src.element_size() / (time.perf_counter() - start)

    return repeat(measure, warmup=2, min_repeats=repeats, max_repeats=repeats, budget_s=0.0)


def log(message: str) -> None:
    """Progress, on stderr (the tables go to stdout)."""
    print(message, file=sys.stderr, flush=True)


# -- machine and report -------------------------------------------------------------------


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min) on {os.cpu_count()} logical CPUs"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_lines(device: torch.device) -> list[str]:
    lines = [
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical CPUs ({platform.machine()}, {platform.system()})",
        f"- torch {torch.__version__}, {torch.get_num_threads()} intra-op threads; "
        f"Python {platform.python_version()}",
        f"- device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
    ]
    return lines


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Target:
    """One target of the issue and whether this run met it."""

    name: str
    met: bool
    detail: str


@dataclass
class Section:
    """A benchmark's part of the report: markdown blocks and the targets it checked."""

    title: str
    blocks: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)

    def markdown(self) -> str:
        parts = [f"## {self.title}", *self.blocks]
        if self.targets:
            parts.append(targets_table(self.targets))
        return "\n\n".join(parts) + "\n"


def targets_table(targets: Sequence[Target]) -> str:
    return markdown_table(
        ["target", "verdict", "measured"],
        [(t.name, "met" if t.met else "**not met**", t.detail) for t in targets],
    )


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, few repeats (seconds)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads (default 1: on a shared machine, OpenMP barriers of parallel ops stall "
        "for whole scheduler time slices; 0 keeps torch's default)",
    )


def apply_threads(args: argparse.Namespace) -> None:
    if args.threads > 0:
        torch.set_num_threads(args.threads)


def main_for(build_parser: Callable[[], argparse.ArgumentParser], run: Callable[[Any], Section]) -> None:
    """Entry point of a single benchmark script: parse, run, print the section."""
    args = build_parser().parse_args()
    apply_threads(args)
    print(f"{now()}; load average at start {load_average()}\n")
    print(run(args).markdown())
    print(f"load average at end {load_average()}")
