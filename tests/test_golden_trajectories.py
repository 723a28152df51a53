"""Every recorded trajectory (tests/golden_scenarios.py) is reproduced bit for bit, on both list-op
flavours: the engine's structure may change, its numbers may not."""

from __future__ import annotations

import json

import pytest

from golden_scenarios import FIXTURE, SCENARIOS, run

RECORDED = json.loads(FIXTURE.read_text())


def test_the_fixture_covers_every_scenario():
    assert sorted(RECORDED) == sorted(SCENARIOS)


def assert_reproduces(name: str, replayed: dict) -> None:
    recorded = RECORDED[name]
    if replayed["parameters"] != recorded["parameters"]:
        worst = max(
            abs(a - b) / max(abs(b), 1e-300)
            for a, b in zip(replayed["parameters"], recorded["parameters"], strict=True)
        )
        pytest.fail(f"{name}: parameters differ from the recording (max relative difference {worst:.3g})")
    assert replayed == recorded, name


@pytest.mark.parametrize("foreach", [False, True], ids=["per-tensor", "foreach"])
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_recorded_trajectory_is_reproduced_bit_for_bit(name, foreach):
    assert_reproduces(name, run(SCENARIOS[name], foreach=foreach))
