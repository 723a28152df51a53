"""Benchmark 2: the memory the optimizer holds during a step and between steps, in parameter sizes.

Between steps: the bytes of the work buffers kept in ``optimizer._workspace`` and of the tensors in
``optimizer.state`` (and which ``state_dict`` entries are parameter-sized). During a step: those plus
the peak of the bytes the step allocates and has not yet freed, from every allocation and free the
c10 allocator reports to ``torch.profiler`` (``profile_memory=True``): kernel-internal temporaries
count too (a ``TorchDispatchMode`` would miss those, e.g. the float64 copy a ``sum(dtype=float64)``
makes), and allocations inside the closure are left out. On CUDA the caching allocator's peak is
shown beside it. The gradients are the closure's, not counted. Steps are measured in steady state
(after two warm-up steps).

The gradients the optimizer keeps alive are measured apart: with a closure that gives every call
fresh gradient tensors (as backward does after ``zero_grad(set_to_none=True)``), the bytes of
gradients of earlier calls (not the last one, which is ``p.grad``) still alive when a call starts.

The required count per configuration comes from the tableau's nonzero structure
(``StepStructure.required_buffers``): θ_n; the accumulator unless θ_{n+1} is the last stage point
(FSAL with every stage evaluated); one slot per overlapping interval of stage directions that
outlive the next closure call (``ButcherTableau.storage_plan``); the error estimate under error
control; with a preconditioner P_n, the proposed statistics and a buffer for the preconditioned
direction of stages that have no slot.

Run: ``python benchmarks/peak_memory.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import weakref
from collections import Counter
from dataclasses import dataclass

import torch
from _common import (
    EMBEDDED_PAIRS,
    GradientFeeder,
    ParameterSet,
    Section,
    StepStructure,
    Target,
    add_common_arguments,
    log,
    main_for,
    make_optimizer,
    markdown_table,
    parameter_set,
    profile_events,
    release_memory,
    resolve_device,
)
from torch import Tensor

import rkopt

LR = 1e-4
SLACK = 64 * 1024
"""Bytes allowed beyond 2 P for allocations that do not grow with P (RNG state snapshot, 0-dim results)."""
DEFAULT_SET, QUICK_SET = (2_000_000, 20), (100_000, 10)
ROLE_KINDS = {
    "theta0": "θ_n",
    "accumulator": "accumulator",
    "slot": "slots",
    "error": "error",
    "precond_scale": "P_n",
    "scratch": "direction",
}
"""The kind of ``StepStructure.required_buffers`` each workspace role is (``slot<k>``: slots)."""


def role_kind(role: str) -> str:
    for key in (role, role.rstrip("0123456789")):
        if key in ROLE_KINDS:
            return ROLE_KINDS[key]
    return "proposed statistics" if role.startswith("precond_") else role


CONFIGS: list[tuple[str, str, dict]] = [
    *((name, name, {}) for name in rkopt.PRESETS),
    ("rk4, keep_workspace=False", "rk4", {"keep_workspace": False}),
    ("dopri5", "dopri5", {}),
    *(
        (f"{pair}-adaptive", f"{pair}-adaptive", {})
        for pair in EMBEDDED_PAIRS
        if pair != "dormand_prince"  # the preset dopri5-adaptive
    ),
]
"""(label, configuration, RungeKutta overrides)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--elements", type=float, help=f"parameter elements (default {DEFAULT_SET[0]:.0e})")
    parser.add_argument("--tensors", type=int, help=f"tensor count (default {DEFAULT_SET[1]})")
    parser.add_argument(
        "--foreach", action="store_true", help="measure the foreach path (default: per-tensor)"
    )
    return parser


@dataclass
class Footprint:
    """One configuration's memory, in bytes."""

    label: str
    structure: StepStructure
    roles: list[str]  # workspace roles held between steps
    workspace: int
    state: int
    state_keys: list[str]  # parameter-sized entries of optimizer.state
    state_dict_keys: list[str]  # parameter-sized entries of state_dict()["state"]
    transient_peak: int
    largest_transient: str
    cuda_peak: int | None
    stale_gradients: int  # bytes of earlier calls' gradients alive when a closure call starts (max)

    def excess(self) -> dict[str, int]:
        """Kinds of buffer the workspace holds more of than the structure requires, and how many more."""
        held = Counter(role_kind(role) for role in self.roles)
        required = self.structure.required_buffers()
        return {kind: n - required.get(kind, 0) for kind, n in held.items() if n > required.get(kind, 0)}

    @property
    def held(self) -> int:
        return self.workspace + self.state

    @property
    def during(self) -> int:
        return self.held + self.transient_peak


def parameter_sized_keys(states, params) -> list[str]:
    """Keys whose tensors have the parameter's shape, over per-parameter state dicts."""
    keys = set()
    for p, state in zip(params, states, strict=True):
        keys |= {k for k, v in state.items() if isinstance(v, torch.Tensor) and v.shape == p.shape}
    return sorted(keys)


def transient_peak(events) -> tuple[int, str]:
    """Peak live bytes allocated by the step outside the closure, and the largest live one then."""
    live, peak, owned, at_peak = 0, 0, {}, {}
    for event in events:
        if event.name != "[memory]" or event.in_closure:
            continue
        if event.nbytes > 0:
            owned[event.ptr] = (event.nbytes, event.where)
            live += event.nbytes
            if live > peak:
                peak, at_peak = live, dict(owned)
        elif event.ptr in owned:
            live -= owned.pop(event.ptr)[0]
    largest = max(at_peak.values(), default=(0, "–"))
    return peak, f"{largest[1]}: {largest[0]:,} B" if largest[0] else "–"


class FreshGradients:
    """A closure whose every call makes new gradient tensors (as backward after
    ``zero_grad(set_to_none=True)``); ``stale`` is the most bytes of gradients from calls before the
    last one that were still alive when a call started, i.e. held by the optimizer."""

    def __init__(self, parameters: ParameterSet) -> None:
        self.pairs = list(zip(parameters.params, parameters.grads, strict=True))
        self.calls: list[list[weakref.ref]] = []
        self.stale = 0

    def __call__(self) -> Tensor:
        alive = [ref() for refs in self.calls[:-1] for ref in refs]
        self.stale = max(self.stale, sum(t.nbytes for t in alive if t is not None))
        del alive
        for p, g in self.pairs:
            p.grad = None
            p.grad = g.clone()
        self.calls.append([weakref.ref(p.grad) for p, _ in self.pairs])
        return torch.ones((), device=self.pairs[0][0].device)


def stale_gradients(name: str, options: dict, parameters: ParameterSet, foreach: bool) -> int:
    optimizer = make_optimizer(name, parameters.params, LR, foreach=foreach, **options)
    closure = FreshGradients(parameters)
    for _ in range(3):
        optimizer.step(closure)
    for p in parameters.params:
        p.grad = None
    return closure.stale


def measure(
    label: str, name: str, options: dict, parameters: ParameterSet, device, foreach: bool
) -> Footprint:
    optimizer = make_optimizer(name, parameters.params, LR, foreach=foreach, **options)
    closure = GradientFeeder(parameters)
    for _ in range(2):
        optimizer.step(closure)
    state = [optimizer.state[p] for p in parameters.params]
    held_state = sum(v.nbytes for s in state for v in s.values() if isinstance(v, torch.Tensor))
    workspace = optimizer._workspace
    roles = sorted({role for buffers in workspace.values() for role in buffers})
    held_workspace = sum(t.nbytes for buffers in workspace.values() for t in buffers.values())
    cuda_peak = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        optimizer.step(closure)
        torch.cuda.synchronize(device)
        cuda_peak = torch.cuda.max_memory_allocated(device) - base
    peak, largest = transient_peak(profile_events(lambda: optimizer.step(closure), memory=True))
    saved = optimizer.state_dict()["state"]
    return Footprint(
        label,
        StepStructure.of(name),
        roles,
        held_workspace,
        held_state,
        parameter_sized_keys(state, parameters.params),
        parameter_sized_keys([saved[i] for i in range(len(parameters.params))], parameters.params),
        peak,
        largest,
        cuda_peak,
        stale_gradients(name, options, parameters, foreach),
    )


def run(args: argparse.Namespace) -> Section:
    device = resolve_device(args.device)
    numel, count = QUICK_SET if args.quick else DEFAULT_SET
    numel, count = int(args.elements or numel), args.tensors or count
    foreach = args.foreach or device.type == "cuda"
    parameters = parameter_set(numel, count, device, args.seed)
    size = parameters.nbytes
    footprints = []
    for label, name, options in CONFIGS:
        log(f"[peak_memory] {label}")
        footprints.append(measure(label, name, options, parameters, device, foreach))
        release_memory()

    def times(n: int) -> str:
        return f"{n / size:.2f}"

    rows = []
    for f in footprints:
        required = f.structure.required_buffers()
        row = [
            f.label,
            f.structure.stages,
            f"{len(f.roles)}: {', '.join(f.roles)}",
            times(f.workspace),
            f"{times(f.state)} ({', '.join(f.state_keys) or '–'})",
            ", ".join(f.state_dict_keys) or "–",
            times(f.during),
            f"{times(f.transient_peak)} ({f.largest_transient})",
            f"{sum(required.values())}: " + ", ".join(f"{k} {v}" for k, v in required.items() if v),
            times(f.stale_gradients),
        ]
        if f.cuda_peak is not None:
            row.append(times(f.cuda_peak))
        rows.append(row)
    headers = [
        "config",
        "stages",
        "workspace roles kept",
        "workspace ×P",
        "state ×P (parameter-sized keys)",
        "state_dict parameter-sized keys",
        "during a step ×P",
        "step's transient peak ×P (largest live then)",
        "buffers the structure requires",
        "earlier calls' gradients held ×P",
    ]
    if device.type == "cuda":
        headers.append("CUDA allocator peak above start ×P")
    section = Section("2. Peak memory")
    section.blocks += [
        f"{numel:.0e} float32 elements in {count} tensors (P = {size:,} bytes), "
        f"{'foreach' if foreach else 'per-tensor'} path, steady state. ×P: bytes / P. During a step = "
        "workspace + state + the step's transient peak; the gradients (the closure's) are not counted.",
        markdown_table(headers, rows),
    ]
    section.targets += memory_targets({f.label: f for f in footprints}, size)
    return section


def memory_targets(footprints: dict[str, Footprint], size: int) -> list[Target]:
    rk4 = footprints["rk4"]
    during = rk4.during / size
    within = rk4.during <= 2 * size + SLACK
    targets = [
        Target(
            "vanilla rk4 puts no parameter-sized tensor into state / state_dict",
            not rk4.state_keys and not rk4.state_dict_keys,
            f"state: {rk4.state_keys or 'none'}, state_dict: {rk4.state_dict_keys or 'none'}",
        ),
        Target(
            "vanilla rk4 holds ≤ 2 parameter-sized buffers during a step (plus the gradients; "
            f"{SLACK // 1024} KiB slack for fixed-size allocations)",
            within,
            f"{during:.3f} P (workspace {rk4.workspace / size:.2f} P + transient peak "
            f"{rk4.transient_peak / size:.3f} P, largest {rk4.largest_transient})"
            + ("" if within else f"; {during - 2.0:.3f} P over"),
        ),
    ]
    needs = {"rk4-precond": 1, "rk4-momentum": 1, "rk4-full": 2, "rk4-dal": 0, "euler": 0}
    extra = {label: len(footprints[label].state_keys) for label in needs if label in footprints}
    targets.append(
        Target(
            "presets keep only the state their equations need (momentum 1, AdaGrad 1, both 2)",
            all(extra[label] == needs[label] for label in extra),
            ", ".join(f"{label}: {extra[label]} (needs {needs[label]})" for label in extra),
        )
    )
    holding = {label: f.stale_gradients / size for label, f in footprints.items() if f.stale_gradients}
    targets.append(
        Target(
            "no configuration keeps a gradient of an earlier closure call alive (fresh gradients per call)",
            not holding,
            ", ".join(f"{label}: {p:.2f} P" for label, p in holding.items()) or "0 bytes in every config",
        )
    )
    pairs = [f for f in footprints.values() if f.structure.tableau.is_embedded]
    excess = {f.label: f.excess() for f in pairs}
    targets.append(
        Target(
            "embedded pairs: no more buffers than their nonzero structure requires",
            not any(excess.values()),
            ", ".join(
                f"{f.label}: {len(f.roles)} vs {sum(f.structure.required_buffers().values())}"
                + "".join(f" (+{n} {kind})" for kind, n in excess[f.label].items())
                + (" — FSAL: θ_{n+1} is the last stage point" if "accumulator" in excess[f.label] else "")
                for f in pairs
            ),
        )
    )
    return targets


if __name__ == "__main__":
    main_for(build_parser, run)
