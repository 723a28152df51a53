"""A step-size policy defined through the public API only: Armijo backtracking on the step's batch.

It shows the policy protocol end to end: options declared as data, needs (the loss at the
candidate, ‖d_1‖², retries), a verdict per attempt that retries with a smaller h on the same
batch, its own bound on retries, and an observable written at commit. The engine is not touched.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import rkopt
from rkopt.core.options import integer, real
from support import flat, make_closure, make_data, make_mlp


class Backtracking(rkopt.StepSizePolicy):
    """Accept h iff L(θ_{n+1}) <= L(θ_n) - c h ‖d_1‖² (Armijo), else retry with h·shrink."""

    options = (
        rkopt.Option("bt_c", 1e-4, real(0.0, 1.0, low_open=True, high_open=True), doc="Armijo constant"),
        rkopt.Option("bt_shrink", 0.5, real(0.0, 1.0, low_open=True, high_open=True), doc="factor per retry"),
        rkopt.Option("bt_max_retries", 30, integer(0), doc="retries before accepting"),
    )

    def needs(self, group, tableau):
        return rkopt.PolicyNeeds(norms=((0, None),), evaluate_candidate=True, retries=True)

    def judge(self, groups, attempt):
        decrease = sum(
            group["bt_c"] * h * norms[(0, None)] for group, h, norms in zip(groups, attempt.h, attempt.norms)
        )
        if attempt.candidate_loss <= attempt.loss - decrease:
            return rkopt.Verdict.accept()
        if attempt.index >= min(group["bt_max_retries"] for group in groups):
            return rkopt.Verdict.fail("backtracking found no sufficient decrease")
        return rkopt.Verdict.retry([h * group["bt_shrink"] for group, h in zip(groups, attempt.h)])

    def commit(self, groups, attempt):
        for group, h in zip(groups, attempt.h):
            group["bt_h"] = h


rkopt.register_policy("backtracking", Backtracking)


def full_batch_loss(model, x, y) -> float:
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(x), y))


@pytest.mark.parametrize("tableau", ["rk4", "heun", "euler"])
def test_training_with_a_user_policy_decreases_the_loss_at_every_step(tableau):
    x, y = make_data()
    model = make_mlp()
    optimizer = rkopt.RungeKutta(model.parameters(), lr=50.0, tableau=tableau, lr_policy="backtracking")
    closure = make_closure(model, optimizer, x, y)
    losses = [full_batch_loss(model, x, y)]
    for _ in range(8):
        optimizer.step(closure)
        losses.append(full_batch_loss(model, x, y))
    assert all(after < before for before, after in itertools.pairwise(losses))
    counters = optimizer.counters
    assert counters.steps == 8 and counters.rejected_steps > 0  # lr 50 is far too large at first
    stages = rkopt.get_tableau(tableau).stages
    attempts = counters.steps + counters.rejected_steps
    assert counters.grad_evals == counters.steps + attempts * stages  # stage 1 once, then s per attempt
    assert optimizer.param_groups[0]["bt_h"] == optimizer.param_groups[0]["h"] < 50.0


def test_a_user_policy_matches_in_stagewise_mode_when_given_the_losses():
    x, y = make_data()
    runs = []
    for stagewise in (False, True):
        model = make_mlp()
        optimizer = rkopt.RK4(model.parameters(), lr=20.0, lr_policy="backtracking", stagewise=stagewise)
        if stagewise:
            for _ in range(4):
                for xb, yb in rkopt.repeat_batches([(x, y)], optimizer):
                    optimizer.zero_grad()
                    loss = nn.functional.cross_entropy(model(xb), yb)
                    loss.backward()
                    optimizer.step(loss=loss)
        else:
            for _ in range(4):
                optimizer.step(make_closure(model, optimizer, x, y))
        runs.append((flat(model), optimizer.counters))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]


def test_a_policy_that_needs_losses_says_so_in_stagewise_mode_without_them():
    x, y = make_data()
    model = make_mlp()
    optimizer = rkopt.Euler(model.parameters(), lr=1.0, lr_policy="backtracking", stagewise=True)
    theta0 = flat(model).clone()
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()  # stage 1; the next evaluation is at the candidate
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    with pytest.raises(RuntimeError, match=r"needs the loss at θ_\{n\+1\}.*step\(loss=loss\)"):
        optimizer.step()
    assert torch.equal(flat(model), theta0) and optimizer.step_complete


def test_user_policy_options_are_validated_and_misspellings_caught():
    with pytest.raises(ValueError, match="bt_shrink must be in"):
        rkopt.RK4(make_mlp().parameters(), lr=1.0, lr_policy="backtracking", bt_shrink=1.5)
    with pytest.raises(ValueError, match="did you mean 'bt_shrink'"):
        rkopt.RK4([{"params": make_mlp().parameters(), "bt_shrnk": 0.5}], lr=1.0)


def test_a_policy_that_retries_without_declaring_it_is_an_error_not_a_wrong_step():
    class Undeclared(rkopt.StepSizePolicy):
        def judge(self, groups, attempt):
            return (
                rkopt.Verdict.retry([h / 2 for h in attempt.h])
                if attempt.index == 0
                else rkopt.Verdict.accept()
            )

    rkopt.register_policy("undeclared_retry", Undeclared)
    x, y = make_data()
    model = make_mlp()
    theta0 = flat(model).clone()
    optimizer = rkopt.RK4(model.parameters(), lr=0.1, lr_policy="undeclared_retry")
    with pytest.raises(RuntimeError, match="PolicyNeeds\\(retries=True\\)"):
        optimizer.step(make_closure(model, optimizer, x, y))
    assert torch.equal(flat(model), theta0)
