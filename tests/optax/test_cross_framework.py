"""The optax and the torch binding give the same trajectory: same plan, tableaux and policies."""

from __future__ import annotations

import pytest
from optax_support import both_bindings

import rkopt
from rkopt.core.options import integer, real

CASES = {
    **{f"preset {name}": dict(preset=name) for name in rkopt.PRESETS},
    "preset dopri5-adaptive": dict(preset="dopri5-adaptive", lr=5.0),  # lr 5 makes it reject
    "heun": dict(tableau="heun"),
    "dormand_prince fixed": dict(tableau="dormand_prince"),
    "bogacki_shampine adaptive": dict(tableau="bogacki_shampine", lr_policy="error_control", lr=20.0),
    "chebyshev rkc2, 5 stages": dict(tableau=rkopt.ChebyshevMethod(2, 5)),
    "dal finite difference, rmsprop, nesterov": dict(
        lr_policy="dal",
        dal_estimator="finite_difference",
        preconditioner="rmsprop",
        momentum=0.5,
        nesterov=True,
    ),
    "igr, decoupled decay, maximize": dict(
        tableau="midpoint", igr=0.5, weight_decay=0.1, decoupled_weight_decay=True, maximize=True, lr=0.05
    ),
    "coupled decay, error control at max_retries": dict(
        tableau="heun_euler",
        weight_decay=0.01,
        lr_policy="error_control",
        on_max_retries="accept",
        max_retries=2,
        lr=50.0,
        atol=1e-8,
        rtol=1e-6,
    ),
}


REJECTING = {
    "preset dopri5-adaptive",
    "bogacki_shampine adaptive",
    "coupled decay, error control at max_retries",
}


@pytest.mark.parametrize("case", CASES)
def test_same_trajectory_counters_and_h_as_torch(case, x64):
    options = dict(CASES[case])
    lr = options.pop("lr", 0.5)
    worst, counters, state, group = both_bindings(3, lr, **options)
    assert worst < 1e-9, worst
    ours = (int(state.steps), int(state.grad_evals), int(state.rejected_steps), int(state.skipped_steps))
    assert ours == (counters.steps, counters.grad_evals, counters.rejected_steps, counters.skipped_steps)
    assert float(state.h) == pytest.approx(group["h"], rel=1e-12)
    if case in REJECTING:
        assert counters.rejected_steps > 0
    for key in ("dal_rho", "dal_rho_next", "ec_error", "ec_h_next"):
        if group.get(key) is not None:
            assert float(getattr(state, key)) == pytest.approx(group[key], rel=1e-9, abs=1e-300)


class Trust(rkopt.StepSizePolicy):
    """A user policy through the public API, written with ``self.xp`` so that it also runs under
    jit: accept iff ‖d_2 - d_1‖ <= trust_ratio·‖d_1‖, else retry with h/2 (at most trust_retries)."""

    options = (
        rkopt.Option("trust_ratio", 0.05, real(0.0, low_open=True), doc="largest ‖d_2 - d_1‖ / ‖d_1‖"),
        rkopt.Option("trust_retries", 6, integer(0), doc="retries before accepting"),
    )

    def needs(self, group, tableau):
        return rkopt.PolicyNeeds(norms=((0, None), (1, 0)), retries=True)

    def judge(self, groups, attempt):
        xp = self.xp
        within = xp.all(
            [
                norms[(1, 0)] <= group["trust_ratio"] ** 2 * norms[(0, None)]
                for group, norms in zip(groups, attempt.norms)
            ]
        )
        exhausted = attempt.index >= min(group["trust_retries"] for group in groups)
        return rkopt.Verdict.decide(xp.logical_or(within, exhausted), [h / 2.0 for h in attempt.h])

    def commit(self, groups, attempt):
        for group, h in zip(groups, attempt.h):
            group["h"] = h


rkopt.register_policy("trust_test", Trust)


def test_a_user_policy_written_with_xp_gives_the_same_trajectory_under_jit(x64):
    worst, counters, state, group = both_bindings(3, 4.0, lr_policy="trust_test", trust_ratio=0.2)
    assert worst < 1e-9 and counters.rejected_steps > 0
    assert int(state.rejected_steps) == counters.rejected_steps and float(state.h) == group["h"]
