"""rkopt.RungeKutta against the independent float64 reference in tests/reference.py.

Each test trains the same tiny full-batch tanh MLP (32 parameters, float64, fixed data) with the
optimizer and with the reference and compares, after every step, the flat parameter vector (1e-10),
the step size h the group used, the DAL/error-control observables and finally the counters.
Sensitivity tests check that plausible mistakes (mutations of the reference) would be caught.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import rkopt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference import ReferenceRK, StepRejected, Tableau

DTYPE = torch.float64
RTOL = 1e-10
ATOL = 1e-10
STEPS = 10

# -- the problem: a 2-layer tanh MLP on fixed data -------------------------------------------

N_IN, N_HIDDEN, N_OUT, N_SAMPLES = 3, 5, 2, 16
SHAPES = [(N_HIDDEN, N_IN), (N_HIDDEN,), (N_OUT, N_HIDDEN), (N_OUT,)]
SIZES = [math.prod(s) for s in SHAPES]
OFFSETS = np.cumsum([0, *SIZES])
N_PARAMS = int(OFFSETS[-1])

_gen = torch.Generator().manual_seed(1234)
X = torch.randn(N_SAMPLES, N_IN, generator=_gen, dtype=DTYPE)
Y = torch.sin(2.0 * X[:, :N_OUT]) + 0.1 * torch.randn(N_SAMPLES, N_OUT, generator=_gen, dtype=DTYPE)
THETA0 = [0.7 * torch.randn(*s, generator=_gen, dtype=DTYPE) for s in SHAPES]


def mlp_loss(params: Sequence[torch.Tensor]) -> torch.Tensor:
    w1, b1, w2, b2 = params
    out = torch.tanh(X @ w1.T + b1) @ w2.T + b2
    return 0.5 * ((out - Y) ** 2).sum(dim=1).mean()


def unflatten(theta: torch.Tensor) -> list[torch.Tensor]:
    return [theta[OFFSETS[i] : OFFSETS[i + 1]].reshape(s) for i, s in enumerate(SHAPES)]


def flat0() -> np.ndarray:
    return torch.cat([p.reshape(-1) for p in THETA0]).numpy().copy()


def make_grad_fn(sign: float = 1.0) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
    def grad_fn(theta: np.ndarray) -> tuple[float, np.ndarray]:
        t = torch.tensor(theta, dtype=DTYPE, requires_grad=True)
        loss = sign * mlp_loss(unflatten(t))
        (g,) = torch.autograd.grad(loss, t)
        return float(loss.detach()), g.numpy().copy()

    return grad_fn


def make_hess_fn(sign: float = 1.0) -> Callable[[np.ndarray], np.ndarray]:
    def hess_fn(theta: np.ndarray) -> np.ndarray:
        t = torch.tensor(theta, dtype=DTYPE)
        return torch.autograd.functional.hessian(lambda v: sign * mlp_loss(unflatten(v)), t).numpy()

    return hess_fn


def param_index(i: int) -> np.ndarray:
    return np.arange(OFFSETS[i], OFFSETS[i + 1])


# -- the harness -----------------------------------------------------------------------------

ALL = (0, 1, 2, 3)


class Pair:
    """An rkopt optimizer and the reference, started from the same θ_0 on the same problem."""

    def __init__(
        self,
        tableau: str,
        groups: Sequence[tuple[Sequence[int], dict[str, Any]]],
        *,
        sign: float = 1.0,
        make_optimizer: Callable[[list[dict[str, Any]]], torch.optim.Optimizer] | None = None,
        igr_mode: str = "fd",
        mutations: Sequence[str] = (),
    ) -> None:
        self.params = [torch.nn.Parameter(p.clone()) for p in THETA0]
        self.sign = sign
        if make_optimizer is None:

            def make_optimizer(param_groups):
                return rkopt.RungeKutta(param_groups, lr=param_groups[0]["lr"], tableau=tableau)

        self.new_optimizer = lambda: make_optimizer(
            [{"params": [self.params[i] for i in idx], **opts} for idx, opts in groups]
        )
        self.opt = self.new_optimizer()
        # the reference gets each group's effective options as the optimizer stored them, except
        # keys the reference fills from the spec's defaults itself: pass only what the test set
        ref_groups = [(np.concatenate([param_index(i) for i in idx]), dict(opts)) for idx, opts in groups]
        self.ref = ReferenceRK(
            make_grad_fn(sign),
            flat0(),
            ref_groups,
            rkopt.get_tableau(tableau),
            hess_fn=make_hess_fn(sign) if igr_mode == "exact" else None,
            igr_mode=igr_mode,
            mutations=mutations,
        )

    set_to_none = True  # False: gradients are zeroed in place, so every call overwrites the same tensors

    def closure(self) -> torch.Tensor:
        self.opt.zero_grad(set_to_none=self.set_to_none)
        loss = self.sign * mlp_loss(self.params)
        loss.backward()
        return loss

    def theta(self) -> np.ndarray:
        return torch.cat([p.detach().reshape(-1) for p in self.params]).numpy().copy()

    def step(self):
        loss = self.opt.step(self.closure)
        rec = self.ref.step()
        return float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss), rec


def assert_close(actual, expected, what: str, rtol: float = RTOL, atol: float = ATOL) -> None:
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def compare_run(
    pair: Pair,
    steps: int = STEPS,
    check_rho: bool = True,
    before_step: Callable[[int], None] | None = None,
    ec_rtol: float = RTOL,
) -> list:
    """Step both, comparing θ, h, loss and the policy observables after every step."""
    records = []
    for n in range(steps):
        if before_step is not None:
            before_step(n)
        loss, rec = pair.step()
        records.append(rec)
        assert_close(pair.theta(), rec.theta, f"theta after step {n + 1}")
        assert_close(loss, rec.loss, f"loss at step {n + 1}")
        for k, group in enumerate(pair.opt.param_groups):
            assert_close(group["h"], rec.h[k], f"h of group {k} at step {n + 1}")
            if group["lr_policy"] == "error_control":
                assert_close(
                    group["ec_error"], rec.ec_error[k], f"ec_error of group {k} at step {n + 1}", rtol=ec_rtol
                )
                assert_close(
                    min(group["lr"], group["ec_h_next"]),
                    rec.ec_h_next[k],
                    f"next h of group {k}, step {n + 1}",
                    rtol=ec_rtol,
                )
            if group["lr_policy"] == "dal" and check_rho:
                # dal_rho is the ρ that set this step's h; a free group also keeps the estimate
                # measured on this step's stages 1 and 2, for the next step, in dal_rho_next
                assert_close(group["dal_rho"], rec.dal_rho_used[k], f"dal_rho of group {k} at step {n + 1}")
                if group["dal_estimator"] == "free":
                    assert_close(
                        group["dal_rho_next"],
                        rec.dal_rho_next[k],
                        f"dal_rho_next of group {k} at step {n + 1}",
                    )
    c = pair.opt.counters
    assert (c.steps, c.grad_evals, c.rejected_steps) == (
        pair.ref.steps,
        pair.ref.grad_evals,
        pair.ref.rejected_steps,
    ), "counters (steps, grad_evals, rejected_steps)"
    assert c.skipped_steps == 0
    return records


def max_deviation(pair: Pair, steps: int = STEPS) -> float:
    """Largest |θ_opt - θ_ref| over the run (no assertions): for the sensitivity tests."""
    worst = 0.0
    for _ in range(steps):
        _, rec = pair.step()
        worst = max(worst, float(np.max(np.abs(pair.theta() - rec.theta))))
    return worst


FOREACH = [pytest.param(False, id="loop"), pytest.param(True, id="foreach")]


# -- 0. the problem and the reference themselves ----------------------------------------------


def test_problem_gradient_matches_finite_differences():
    grad_fn = make_grad_fn()
    theta = flat0()
    _, g = grad_fn(theta)
    assert N_PARAMS == 32
    rng = np.random.default_rng(0)
    for _ in range(3):
        v = rng.standard_normal(N_PARAMS)
        eps = 1e-6
        fd = (grad_fn(theta + eps * v)[0] - grad_fn(theta - eps * v)[0]) / (2 * eps)
        assert abs(fd - g @ v) < 1e-7 * max(1.0, abs(fd))


def test_reference_rk4_on_linear_flow_matches_taylor_polynomial():
    """On L = ½ θᵀAθ one RK4 step is θ ← R(-hA) θ with R(z) = 1 + z + z²/2 + z³/6 + z⁴/24."""
    rng = np.random.default_rng(1)
    M = rng.standard_normal((6, 6))
    A = M @ M.T / 6 + np.eye(6)
    theta0 = rng.standard_normal(6)
    h = 0.3
    ref = ReferenceRK(
        lambda th: (0.5 * th @ A @ th, A @ th), theta0, [(range(6), {"lr": h})], rkopt.get_tableau("rk4")
    )
    Z = -h * A
    R = np.eye(6) + Z + Z @ Z / 2 + Z @ Z @ Z / 6 + Z @ Z @ Z @ Z / 24
    expected = theta0
    for _ in range(3):
        expected = R @ expected
        ref.step()
    np.testing.assert_allclose(ref.theta, expected, rtol=1e-13, atol=1e-13)
    assert ref.grad_evals == 12


def test_reference_tableau_coefficients_rk4():
    t = Tableau.from_rkopt(rkopt.get_tableau("rk4"))
    assert t.a == [[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]]
    assert t.b == [1 / 6, 1 / 3, 1 / 3, 1 / 6]


# -- 1. every tableau, plain ------------------------------------------------------------------


@pytest.mark.parametrize("foreach", FOREACH)
@pytest.mark.parametrize("tableau", list(rkopt.TABLEAUX))
def test_every_tableau_plain(tableau, foreach):
    pair = Pair(tableau, [(ALL, {"lr": 0.4, "foreach": foreach})])
    records = compare_run(pair)
    used = sum(pair.ref._used_stages(error_control=False, free_dal=False))
    assert pair.opt.counters.grad_evals == STEPS * used
    # the run actually trains: it is not a trivially flat trajectory
    assert records[-1].loss < 0.9 * records[0].loss


# -- 2. the ingredients -----------------------------------------------------------------------

# (id, tableau, group options, loss sign)
INGREDIENTS: list[tuple[str, str, dict[str, Any], float]] = [
    ("wd-coupled", "rk4", {"lr": 0.4, "weight_decay": 0.05}, 1.0),
    ("wd-coupled-ralston", "ralston", {"lr": 0.4, "weight_decay": 0.05}, 1.0),
    ("wd-decoupled", "rk4", {"lr": 0.4, "weight_decay": 0.05, "decoupled_weight_decay": True}, 1.0),
    (
        "wd-decoupled-bs",
        "bogacki_shampine",
        {"lr": 0.4, "weight_decay": 0.05, "decoupled_weight_decay": True},
        1.0,
    ),
    ("maximize", "rk4", {"lr": 0.4, "maximize": True}, -1.0),
    ("maximize-wd", "heun", {"lr": 0.4, "maximize": True, "weight_decay": 0.03}, -1.0),
    ("adagrad", "rk4", {"lr": 0.5, "preconditioner": "adagrad"}, 1.0),
    ("adagrad-delta", "midpoint", {"lr": 0.5, "preconditioner": "adagrad", "precond_delta": 0.3}, 1.0),
    ("adagrad-wd", "rk38", {"lr": 0.5, "preconditioner": "adagrad", "weight_decay": 0.05}, 1.0),
    ("rmsprop", "rk4", {"lr": 0.02, "preconditioner": "rmsprop"}, 1.0),
    (
        "rmsprop-keys",
        "kutta3",
        {"lr": 0.02, "preconditioner": "rmsprop", "precond_beta2": 0.9, "precond_eps": 1e-3},
        1.0,
    ),
    ("momentum", "rk4", {"lr": 0.2, "momentum": 0.9}, 1.0),
    ("momentum-ssprk3", "ssprk3", {"lr": 0.2, "momentum": 0.5}, 1.0),
    ("nesterov", "rk4", {"lr": 0.2, "momentum": 0.9, "nesterov": True}, 1.0),
    (
        "nesterov-decoupled",
        "heun3",
        {"lr": 0.2, "momentum": 0.8, "nesterov": True, "weight_decay": 0.05, "decoupled_weight_decay": True},
        1.0,
    ),
    ("dal-free", "rk4", {"lr": 2.0, "lr_policy": "dal"}, 1.0),
    ("dal-free-p2", "midpoint", {"lr": 2.0, "lr_policy": "dal", "dal_power": 2.0}, 1.0),
    ("dal-free-tsit", "tsitouras", {"lr": 2.0, "lr_policy": "dal"}, 1.0),
    ("dal-fd", "rk4", {"lr": 2.0, "lr_policy": "dal", "dal_estimator": "finite_difference"}, 1.0),
    (
        "dal-fd-euler",
        "euler",
        {"lr": 2.0, "lr_policy": "dal", "dal_estimator": "finite_difference", "dal_fd_eps": 1e-2},
        1.0,
    ),
    (
        "dal-free-adagrad-max",
        "rk4",
        {"lr": 3.0, "lr_policy": "dal", "preconditioner": "adagrad", "maximize": True},
        -1.0,
    ),
    ("ec-dopri", "dormand_prince", {"lr": 1.0, "lr_policy": "error_control"}, 1.0),
    ("ec-bs", "bogacki_shampine", {"lr": 1.0, "lr_policy": "error_control", "atol": 1e-4, "rtol": 1e-3}, 1.0),
    (
        "ec-heun-euler",
        "heun_euler",
        {"lr": 1.0, "lr_policy": "error_control", "atol": 1e-4, "rtol": 1e-3},
        1.0,
    ),
    ("ec-fehlberg-momentum", "fehlberg", {"lr": 1.0, "lr_policy": "error_control", "momentum": 0.5}, 1.0),
    (
        "ec-cashkarp-rmsprop",
        "cash_karp",
        {"lr": 0.5, "lr_policy": "error_control", "preconditioner": "rmsprop", "atol": 1e-4, "rtol": 1e-3},
        1.0,
    ),
    (
        "ec-tsit-keys",
        "tsitouras",
        {
            "lr": 2.0,
            "lr_policy": "error_control",
            "atol": 1e-7,
            "rtol": 1e-5,
            "safety": 0.8,
            "min_factor": 0.3,
            "max_factor": 3.0,
        },
        1.0,
    ),
]


@pytest.mark.parametrize("foreach", FOREACH)
@pytest.mark.parametrize(("tableau", "opts", "sign"), [pytest.param(*c[1:], id=c[0]) for c in INGREDIENTS])
def test_ingredient(tableau, opts, sign, foreach):
    pair = Pair(tableau, [(ALL, {**opts, "foreach": foreach})], sign=sign)
    records = compare_run(pair)
    if opts.get("lr_policy") == "dal":
        hs = [r.h[0] for r in records]
        assert all(0 < h < opts["lr"] for h in hs)  # DAL really shrinks h ...
        assert max(hs) - min(hs) > 1e-4 * opts["lr"]  # ... and adapts it along the run
    if opts.get("lr_policy") == "error_control":
        assert len({round(r.h[0], 12) for r in records}) > 1  # the controller moves h


EC_REJECTING = [
    ("dormand_prince", {"lr": 5.0, "atol": 1e-7, "rtol": 1e-5}),
    ("bogacki_shampine", {"lr": 5.0, "atol": 1e-6, "rtol": 1e-4}),
    ("heun_euler", {"lr": 5.0, "atol": 1e-5, "rtol": 1e-3}),
    ("cash_karp", {"lr": 5.0, "atol": 1e-6, "rtol": 1e-4, "momentum": 0.5, "preconditioner": "adagrad"}),
    (
        "bogacki_shampine",
        {"lr": 5.0, "atol": 1e-6, "rtol": 1e-4, "weight_decay": 0.1, "decoupled_weight_decay": True},
    ),
]


@pytest.mark.parametrize("foreach", FOREACH)
@pytest.mark.parametrize(
    ("tableau", "opts"),
    EC_REJECTING,
    ids=[t for t, _ in EC_REJECTING[:3]] + ["cash_karp-momentum-adagrad", "bs-decoupled"],
)
def test_error_control_with_rejections(tableau, opts, foreach):
    pair = Pair(tableau, [(ALL, {**opts, "lr_policy": "error_control", "foreach": foreach})])
    records = compare_run(pair)
    assert pair.opt.counters.rejected_steps > 0
    assert pair.opt.counters.rejected_steps == sum(r.attempts - 1 for r in records)
    assert any(r.attempts > 1 for r in records)
    assert all(r.ec_error[0] <= 1.0 for r in records)


def test_error_control_forced_accept_after_max_retries():
    """max_retries=1 with a hopeless tolerance: every step is force-accepted after 2 attempts.

    At tolerances of 1e-12 the scaled error divides rounding noise by 1e-12, so the two
    implementations' ec_error agree to ~1e-9 only: compared at 1e-6 here."""
    opts = {"lr": 5.0, "lr_policy": "error_control", "atol": 1e-12, "rtol": 1e-12, "max_retries": 1}
    pair = Pair("bogacki_shampine", [(ALL, opts)])
    records = compare_run(pair, steps=5, ec_rtol=1e-6)
    assert all(r.attempts == 2 for r in records)
    assert sum(r.ec_error[0] > 1.0 for r in records) >= 3  # force-accepted (the others passed late)
    assert pair.opt.counters.rejected_steps == 5  # an attempt accepted by force is not a rejection


def test_error_control_forced_accept_first_step_theta():
    """A forced acceptance keeps the last attempt: θ_1, h and ec_error are that attempt's."""
    opts = {"lr": 5.0, "lr_policy": "error_control", "atol": 1e-12, "rtol": 1e-12, "max_retries": 1}
    pair = Pair("bogacki_shampine", [(ALL, opts)])
    _, rec = pair.step()
    assert rec.attempts == 2 and rec.h[0] == 1.0
    assert_close(pair.theta(), rec.theta, "theta after a forced acceptance")
    assert pair.opt.param_groups[0]["h"] == 1.0
    assert pair.opt.counters.rejected_steps == 1
    assert pair.opt.param_groups[0]["ec_error"] == pytest.approx(rec.ec_error[0], rel=1e-10)


def _hopeless_raise_pair() -> Pair:
    opts = {
        "lr": 5.0,
        "lr_policy": "error_control",
        "atol": 1e-12,
        "rtol": 1e-12,
        "max_retries": 2,
        "on_max_retries": "raise",
    }
    return Pair("heun_euler", [(ALL, opts)])


def test_error_control_raise_after_max_retries_restores_theta():
    pair = _hopeless_raise_pair()
    before = pair.theta()
    with pytest.raises(rkopt.StepRejectedError):
        pair.opt.step(pair.closure)
    with pytest.raises(StepRejected):
        pair.ref.step()
    np.testing.assert_array_equal(pair.theta(), before)
    assert pair.opt.counters.steps == pair.ref.steps == 0
    assert pair.ref.rejected_steps == 3


def test_error_control_raise_counts_its_closure_calls():
    pair = _hopeless_raise_pair()
    with pytest.raises(rkopt.StepRejectedError):
        pair.opt.step(pair.closure)
    with pytest.raises(StepRejected):
        pair.ref.step()
    assert pair.ref.grad_evals == 1 + 3 * 1  # stage 1 once, stage 2 per attempt
    c = pair.opt.counters
    assert (c.grad_evals, c.rejected_steps) == (pair.ref.grad_evals, pair.ref.rejected_steps)


EC_TWO_GROUPS = [
    ((0, 1), {"lr": 5.0, "lr_policy": "error_control", "atol": 1e-6, "rtol": 1e-4}),
    ((2, 3), {"lr": 0.05, "lr_policy": "error_control", "atol": 1e-3, "rtol": 1e-2}),
]


@pytest.mark.parametrize("foreach", FOREACH)
def test_error_control_two_groups(foreach):
    """Group 0 is rejected on step 1, group 1 (small lr, loose tolerance) is not."""
    groups = [(idx, {**opts, "foreach": foreach}) for idx, opts in EC_TWO_GROUPS]
    pair = Pair("bogacki_shampine", groups)
    records = compare_run(pair)
    assert records[0].attempts > 1
    assert all(r.h[1] <= 0.05 for r in records)


def test_dal_free_group_next_to_rejecting_error_control_group():
    groups = [
        ((0, 1), {"lr": 2.0, "lr_policy": "dal"}),
        ((2, 3), {"lr": 5.0, "lr_policy": "error_control", "atol": 1e-7, "rtol": 1e-5}),
    ]
    pair = Pair("dormand_prince", groups)
    compare_run(pair)
    assert pair.opt.counters.rejected_steps > 0


def test_error_control_two_groups_h_never_exceeds_lr_cap_in_reference():
    pair = Pair("bogacki_shampine", EC_TWO_GROUPS)
    records = pair.ref.run(STEPS)
    assert records[0].attempts > 1
    assert all(r.h[k] <= EC_TWO_GROUPS[k][1]["lr"] for r in records for k in (0, 1))


@pytest.mark.parametrize("foreach", FOREACH)
def test_preset_rk4_full(foreach):
    pair = Pair(
        "rk4",
        [(ALL, {"lr": 2.0})],
        make_optimizer=lambda groups: rkopt.preset("rk4-full", groups[0]["params"], 2.0, foreach=foreach),
    )
    # the reference is told the preset's meaning from the spec, not from rkopt.PRESETS
    pair.ref.groups[0].opts.update(
        preconditioner="adagrad",
        precond_delta=1.0,
        lr_policy="dal",
        dal_power=1.0,
        dal_estimator="free",
        momentum=0.9,
    )
    records = compare_run(pair)
    assert pair.opt.counters.grad_evals == 4 * STEPS + 1  # one probe, on the first step only
    assert all(0 < r.h[0] < 2.0 for r in records)


# Multiple param groups: [w1, b1] and [w2, b2] (or [w1], [b1, w2, b2]).
MULTI: list[tuple[str, str, list[tuple[tuple[int, ...], dict[str, Any]]]]] = [
    (
        "lr-wd",
        "rk4",
        [((0, 1), {"lr": 0.4, "weight_decay": 0.05}), ((2, 3), {"lr": 0.1, "weight_decay": 0.0})],
    ),
    (
        "decoupled-vs-coupled",
        "rk38",
        [
            ((0, 1), {"lr": 0.3, "weight_decay": 0.05, "decoupled_weight_decay": True}),
            ((2, 3), {"lr": 0.2, "weight_decay": 0.02}),
        ],
    ),
    (
        "precond-mixed",
        "rk4",
        [
            ((0,), {"lr": 0.5, "preconditioner": "adagrad"}),
            ((1, 2, 3), {"lr": 0.02, "preconditioner": "rmsprop", "momentum": 0.5}),
        ],
    ),
    (
        "momentum-mixed",
        "kutta3",
        [((0, 1), {"lr": 0.2, "momentum": 0.9, "nesterov": True}), ((2, 3), {"lr": 0.3})],
    ),
    (
        "dal-free-two",
        "rk4",
        [
            ((0, 1), {"lr": 2.0, "lr_policy": "dal"}),
            ((2, 3), {"lr": 1.0, "lr_policy": "dal", "weight_decay": 0.01}),
        ],
    ),
    (
        "dal-fd-two",
        "rk4",
        [
            ((0, 1), {"lr": 2.0, "lr_policy": "dal", "dal_estimator": "finite_difference"}),
            ((2, 3), {"lr": 1.0, "lr_policy": "dal", "dal_estimator": "finite_difference"}),
        ],
    ),
    ("dal-and-fixed", "rk4", [((0, 1), {"lr": 2.0, "lr_policy": "dal"}), ((2, 3), {"lr": 0.3})]),
    (
        "dal-free-and-fd",
        "rk4",
        [
            ((0, 1), {"lr": 2.0, "lr_policy": "dal"}),
            ((2, 3), {"lr": 1.0, "lr_policy": "dal", "dal_estimator": "finite_difference"}),
        ],
    ),
    (
        "dal-fd-and-fixed",
        "rk4",
        [
            ((0, 1), {"lr": 2.0, "lr_policy": "dal", "dal_estimator": "finite_difference"}),
            ((2, 3), {"lr": 0.3}),
        ],
    ),
    (
        "dal-fd-and-ec",
        "dormand_prince",
        [
            ((0, 1), {"lr": 2.0, "lr_policy": "dal", "dal_estimator": "finite_difference"}),
            ((2, 3), {"lr": 5.0, "lr_policy": "error_control", "atol": 1e-7, "rtol": 1e-5}),
        ],
    ),
    (
        "ec-and-fixed",
        "dormand_prince",
        [
            ((0, 1), {"lr": 2.0, "lr_policy": "error_control", "atol": 1e-6, "rtol": 1e-4}),
            ((2, 3), {"lr": 0.3}),
        ],
    ),
]


@pytest.mark.parametrize("set_to_none", [True, False], ids=["fresh-grads", "in-place-grads"])
@pytest.mark.parametrize("foreach", FOREACH)
@pytest.mark.parametrize(("tableau", "groups"), [pytest.param(*c[1:], id=c[0]) for c in MULTI])
def test_multiple_param_groups(tableau, groups, foreach, set_to_none):
    """Groups with different policies share each closure call and each retry; the closure's way of
    zeroing gradients must not matter (in place, a direction aliasing p.grad is overwritten)."""
    groups = [(idx, {**opts, "foreach": foreach}) for idx, opts in groups]
    pair = Pair(tableau, groups)
    pair.set_to_none = set_to_none
    records = compare_run(pair)
    if any(opts["lr"] != groups[0][1]["lr"] for _, opts in groups):
        assert any(r.h[0] != r.h[1] for r in records)


def test_foreach_paths_agree_with_each_other():
    """Same configuration through both kernels: identical trajectories (to rounding)."""
    opts = {"lr": 1.0, "preconditioner": "adagrad", "momentum": 0.5, "lr_policy": "dal", "weight_decay": 0.01}
    thetas = []
    for foreach in (False, True):
        pair = Pair("rk4", [(ALL, {**opts, "foreach": foreach})])
        for _ in range(STEPS):
            pair.opt.step(pair.closure)
        thetas.append(pair.theta())
    np.testing.assert_allclose(thetas[0], thetas[1], rtol=1e-13, atol=1e-13)


# -- 4. implicit gradient regularization ------------------------------------------------------

IGR = [
    ("rk4", {"lr": 0.4, "igr": 1.0}),
    ("heun", {"lr": 0.4, "igr": 2.0, "weight_decay": 0.02}),
    ("rk4", {"lr": 0.5, "igr": 1.0, "preconditioner": "adagrad", "momentum": 0.5}),
    ("rk4", {"lr": 2.0, "igr": 1.0, "lr_policy": "dal", "dal_estimator": "finite_difference"}),
    ("bogacki_shampine", {"lr": 2.0, "igr": 1.0, "lr_policy": "error_control", "atol": 1e-6, "rtol": 1e-4}),
    ("bogacki_shampine", {"lr": 5.0, "igr": 1.0, "lr_policy": "error_control", "atol": 1e-6, "rtol": 1e-4}),
    ("rk4", {"lr": 2.0, "igr": 1.0, "lr_policy": "dal"}),
    ("rk4", {"lr": 0.02, "igr": 1.0, "weight_decay": 0.1, "preconditioner": "rmsprop"}),
]


@pytest.mark.parametrize("foreach", FOREACH)
@pytest.mark.parametrize(("tableau", "opts"), IGR, ids=[f"{t}-{i}" for i, (t, _) in enumerate(IGR)])
def test_igr_matches_reference_finite_difference(tableau, opts, foreach):
    pair = Pair(tableau, [(ALL, {**opts, "foreach": foreach})])
    compare_run(pair)


@pytest.mark.parametrize(
    ("tableau", "opts", "sign"),
    [
        ("rk4", {"lr": 0.4, "igr": 1.0}, 1.0),
        ("midpoint", {"lr": 0.4, "igr": 3.0, "weight_decay": 0.02}, 1.0),
        pytest.param(
            "rk4",
            {"lr": 0.4, "igr": 1.0, "maximize": True},
            -1.0,
            id="rk4-maximize",
        ),
    ],
)
def test_igr_matches_exact_hessian(tableau, opts, sign):
    """The optimizer's finite-difference H w against the exact Hessian: agreement to O(igr_eps)."""
    pair = Pair(tableau, [(ALL, {**opts, "igr_eps": 1e-4})], sign=sign, igr_mode="exact")
    plain = Pair(tableau, [(ALL, {k: v for k, v in opts.items() if k != "igr"})], sign=sign)
    worst = 0.0
    for _ in range(STEPS):
        _, rec = pair.step()
        plain.opt.step(plain.closure)
        worst = max(worst, float(np.max(np.abs(pair.theta() - rec.theta))))
    # the IGR term matters (the run differs from plain RK by far more than the tolerance) ...
    effect = float(np.max(np.abs(pair.theta() - plain.theta())))
    assert effect > 1e-2
    # ... and the finite difference tracks the exact Hessian-vector product
    assert worst < 1e-4
    assert worst < 1e-2 * effect
    assert pair.opt.counters.grad_evals == 2 * STEPS * rkopt.get_tableau(tableau).stages


@pytest.mark.parametrize("foreach", FOREACH)
def test_igr_maximize_matches_reference(foreach):
    """Maximizing -L with IGR is minimizing L with IGR: q = σ g̃ + λ_I (lr/2) H̃ g̃, g̃ = -g, H̃ = -H."""
    pair = Pair("rk4", [(ALL, {"lr": 0.4, "igr": 1.0, "maximize": True, "foreach": foreach})], sign=-1.0)
    compare_run(pair)


def test_igr_maximize_minimal_reproduction_in_reference():
    """L = θ²/2 maximized as -L with Euler, lr = 0.1, igr = 1: θ_1 = θ_0 - lr (1 + igr lr/2) θ_0."""
    ref = ReferenceRK(
        lambda th: (-0.5 * float(th @ th), -th.copy()),
        np.array([1.0]),
        [([0], {"lr": 0.1, "igr": 1.0, "maximize": True})],
        rkopt.get_tableau("euler"),
        hess_fn=lambda th: -np.eye(1),
        igr_mode="exact",
    )
    ref.step()
    assert ref.theta[0] == pytest.approx(1.0 - 0.1 * 1.05, rel=1e-14)


@pytest.mark.parametrize("igr_second", [2.0, 0.0], ids=["both", "first-only"])
def test_igr_two_groups_with_different_lr(igr_second):
    """R = Σ_k igr_k (lr_k/4) ‖∇_k L‖²: its gradient H w couples the groups (also into a group
    with igr = 0, whose parameters still follow the gradient of the regularized loss)."""
    groups = [
        ((0, 1), {"lr": 0.4, "igr": 1.0}),
        ((2, 3), {"lr": 0.2, "igr": igr_second, "weight_decay": 0.01}),
    ]
    compare_run(Pair("rk4", groups))
    exact = Pair("rk4", [(idx, {**o, "igr_eps": 1e-5}) for idx, o in groups], igr_mode="exact")
    assert max_deviation(exact) < 1e-4


# -- the group dict, learning-rate schedules, state_dict -----------------------------------------


def test_dal_free_rho_in_group_is_the_value_used():
    pair = Pair("rk4", [(ALL, {"lr": 2.0, "lr_policy": "dal"})])
    for n in range(3):
        _, rec = pair.step()
        assert_close(pair.opt.param_groups[0]["dal_rho"], rec.dal_rho_used[0], f"dal_rho at step {n + 1}")


@pytest.mark.parametrize("estimator", ["free", "finite_difference"])
def test_dal_h_is_dal_formula_of_rho(estimator):
    """h = lr / (1 + (lr/2) ρ^p) with ρ the reference's estimate, step by step."""
    pair = Pair("rk4", [(ALL, {"lr": 2.0, "lr_policy": "dal", "dal_power": 1.5, "dal_estimator": estimator})])
    for _ in range(4):
        _, rec = pair.step()
        rho = rec.dal_rho_used[0]
        assert rho > 0
        assert pair.opt.param_groups[0]["h"] == pytest.approx(2.0 / (1.0 + rho**1.5), rel=1e-10)


SCHEDULED = [
    ("fixed", "rk4", {"lr": 0.4, "momentum": 0.5}),
    ("dal-free", "rk4", {"lr": 2.0, "lr_policy": "dal"}),
    ("dal-fd", "rk4", {"lr": 2.0, "lr_policy": "dal", "dal_estimator": "finite_difference"}),
    ("ec", "dormand_prince", {"lr": 1.0, "lr_policy": "error_control"}),
    ("igr", "heun", {"lr": 0.4, "igr": 1.0}),
]


@pytest.mark.parametrize(("tableau", "opts"), [pytest.param(*c[1:], id=c[0]) for c in SCHEDULED])
def test_learning_rate_schedule(tableau, opts):
    """Changing the group's lr between steps (a schedule) acts as the spec says: h = lr, the DAL
    cap, the error-control cap min(lr, h_next) and the IGR weight all read the current lr."""
    pair = Pair(tableau, [(ALL, opts)])
    lrs = {3: 0.5, 6: 0.1}  # multiples of the initial lr, applied before these steps

    def before_step(n: int) -> None:
        if n in lrs:
            lr = opts["lr"] * lrs[n]
            pair.opt.param_groups[0]["lr"] = lr
            pair.ref.groups[0].opts["lr"] = lr

    records = compare_run(pair, before_step=before_step)
    assert all(r.h[0] <= opts["lr"] * 0.1 * (1 + 1e-12) for r in records[6:])


@pytest.mark.parametrize(
    ("tableau", "opts"),
    [
        ("rk4", {"lr": 2.0, "lr_policy": "dal", "preconditioner": "adagrad", "momentum": 0.9}),
        ("dormand_prince", {"lr": 5.0, "lr_policy": "error_control", "atol": 1e-7, "rtol": 1e-5}),
        ("rk4", {"lr": 0.02, "preconditioner": "rmsprop", "momentum": 0.5, "nesterov": True}),
    ],
    ids=["rk4-full-like", "ec-rejecting", "rmsprop-nesterov"],
)
def test_state_dict_round_trip_continues_the_trajectory(tableau, opts):
    """Save after 5 steps, load into a fresh optimizer: the next 5 steps still follow the reference."""
    pair = Pair(tableau, [(ALL, opts)])
    compare_run(pair, steps=5)
    saved = pair.opt.state_dict()
    pair.opt = pair.new_optimizer()
    pair.opt.load_state_dict(saved)
    for n in range(5):
        _, rec = pair.step()
        assert_close(pair.theta(), rec.theta, f"theta after step {n + 6}")
        assert_close(pair.opt.param_groups[0]["h"], rec.h[0], f"h at step {n + 6}")
    c = pair.opt.counters
    assert (c.steps, c.grad_evals, c.rejected_steps) == (10, pair.ref.grad_evals, pair.ref.rejected_steps)


# -- sensitivity: plausible mistakes are caught ------------------------------------------------

SENSITIVITY = [
    ("precond_every_stage", "rk4", {"lr": 0.5, "preconditioner": "adagrad"}),
    ("rmsprop_no_bias_correction", "rk4", {"lr": 0.02, "preconditioner": "rmsprop"}),
    ("momentum_dampening", "rk4", {"lr": 0.2, "momentum": 0.9}),
    ("nesterov_as_heavy_ball", "rk4", {"lr": 0.2, "momentum": 0.9, "nesterov": True}),
    ("decoupled_as_coupled", "rk4", {"lr": 0.4, "weight_decay": 0.05, "decoupled_weight_decay": True}),
    ("dal_free_current_step", "rk4", {"lr": 2.0, "lr_policy": "dal"}),
    ("dal_fd_forward", "rk4", {"lr": 2.0, "lr_policy": "dal", "dal_estimator": "finite_difference"}),
    ("ec_no_pi_term", "dormand_prince", {"lr": 1.0, "lr_policy": "error_control"}),
    (
        "ec_relative_to_new_only",
        "bogacki_shampine",
        {"lr": 1.0, "lr_policy": "error_control", "atol": 1e-4, "rtol": 1e-1},
    ),
    ("igr_uses_h", "rk4", {"lr": 2.0, "igr": 1.0, "lr_policy": "dal", "dal_estimator": "finite_difference"}),
]


@pytest.mark.parametrize(("mutation", "tableau", "opts"), SENSITIVITY, ids=[m for m, _, _ in SENSITIVITY])
def test_mutated_reference_does_not_match(mutation, tableau, opts):
    """Each mutation is a plausible implementation mistake; it must move θ far beyond the tolerance."""
    assert max_deviation(Pair(tableau, [(ALL, opts)], mutations=[mutation])) > 1e3 * ATOL


def test_mutated_shared_h_does_not_match():
    groups = [((0, 1), {"lr": 0.4}), ((2, 3), {"lr": 0.1})]
    assert max_deviation(Pair("rk4", groups, mutations=["shared_h"])) > 1e3 * ATOL


@pytest.mark.parametrize("tableau", ["rk4", "dormand_prince", "midpoint"])
def test_perturbed_tableau_does_not_match(tableau):
    """A 1e-5 change of one weight pair (b_1 += δ, b_s -= δ, still consistent) is detected."""
    pair = Pair(tableau, [(ALL, {"lr": 0.4})])
    b = pair.ref.t.b
    b[0] += 1e-5
    b[-1] -= 1e-5
    assert max_deviation(pair) > 1e3 * ATOL


@pytest.mark.parametrize(
    "change",
    [{"weight_decay": 0.0501}, {"momentum": 0.899}, {"precond_delta": 1.001}, {"lr": 0.4 * (1 + 1e-7)}],
    ids=["wd", "momentum", "delta", "lr"],
)
def test_perturbed_hyperparameter_does_not_match(change):
    opts = {"lr": 0.4, "weight_decay": 0.05, "momentum": 0.9, "preconditioner": "adagrad"}
    pair = Pair("rk4", [(ALL, opts)])
    pair.ref.groups[0].opts.update(change)
    assert max_deviation(pair) > 1e2 * ATOL


def test_compare_run_fails_on_a_wrong_optimizer(monkeypatch):
    """The harness itself fails when the optimizer is wrong: shift b through a patched tableau."""
    pair = Pair("rk4", [(ALL, {"lr": 0.4})])
    t = pair.opt.tableau
    wrong = rkopt.ButcherTableau(
        name="rk4-wrong", c=t.c, a=t.a, b=(1 / 6 + 1e-3, 1 / 3, 1 / 3, 1 / 6 - 1e-3), order=1
    )
    monkeypatch.setattr(pair.opt, "tableau", wrong)
    with pytest.raises(AssertionError, match="theta after step 1"):
        compare_run(pair, steps=2)
