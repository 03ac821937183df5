"""Rewards against the papers' formulas, computed by hand (MnasNet eq. 2 and section 3; TuNAS section 3.2)."""

from __future__ import annotations

import math

import pytest

from mnasnet.errors import MnasNetError
from mnasnet.search.reward import Reward, RewardError, hard_reward, mnas_reward, soft_reward, tunas_reward


def test_soft_reward_doubling_latency_costs_about_five_percent():
    # "doubling the latency gives about 5% relative accuracy": 2 ** -0.07 = 0.95264
    assert soft_reward(0.75, 150.0, 75.0) / soft_reward(0.75, 75.0, 75.0) == pytest.approx(0.952638, abs=1e-6)
    assert soft_reward(0.75, 75.0, 75.0) == pytest.approx(0.75)
    # under the target the same exponent rewards speed: half the latency gives 2 ** 0.07
    assert soft_reward(0.75, 37.5, 75.0) == pytest.approx(0.75 * 1.049717, abs=1e-6)
    # A1 in the paper: 75.2% at 78 ms against T = 75 ms: 0.752 * (78 / 75) ** -0.07
    assert soft_reward(0.752, 78.0, 75.0) == pytest.approx(0.749938, abs=1e-6)


def test_hard_reward_ignores_latency_under_the_target_and_divides_above():
    assert hard_reward(0.70, 40.0, 75.0) == pytest.approx(0.70)
    assert hard_reward(0.70, 75.0, 75.0) == pytest.approx(0.70)
    assert hard_reward(0.70, 150.0, 75.0) == pytest.approx(0.35)  # (150 / 75) ** -1 = 0.5
    assert hard_reward(0.70, 90.0, 75.0) == pytest.approx(0.70 * 75 / 90)


def test_general_mnas_reward_uses_alpha_at_or_under_and_beta_above():
    assert mnas_reward(0.6, 50.0, 100.0, alpha=-0.2, beta=-0.5) == pytest.approx(0.6 * 0.5**-0.2)
    assert mnas_reward(0.6, 200.0, 100.0, alpha=-0.2, beta=-0.5) == pytest.approx(0.6 * 2**-0.5)


def test_tunas_absolute_reward_is_symmetric_around_the_target():
    assert tunas_reward(0.7, 75.0, 75.0) == pytest.approx(0.7)
    assert tunas_reward(0.7, 90.0, 75.0) == pytest.approx(0.7 - 0.1 * 0.2)
    assert tunas_reward(0.7, 60.0, 75.0) == pytest.approx(0.7 - 0.1 * 0.2)
    assert tunas_reward(0.7, 150.0, 75.0, beta=-0.5) == pytest.approx(0.2)


def test_reward_object_carries_the_settings():
    assert Reward("soft", 75.0)(0.75, 150.0) == pytest.approx(0.75 * 2**-0.07)
    assert Reward("hard", 75.0)(0.75, 150.0) == pytest.approx(0.375)
    assert Reward("tunas", 75.0)(0.75, 150.0) == pytest.approx(0.65)
    assert Reward("soft", 75.0, beta=-0.15)(0.75, 150.0) == pytest.approx(0.75 * 2**-0.15)
    assert Reward("soft", 75.0).exponents == (-0.07, -0.07)
    assert Reward("hard", 22.0).exponents == (0.0, -1.0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: Reward("medium", 75.0), "unknown reward 'medium'"),
        (lambda: Reward("soft", 0.0), "target latency"),
        (lambda: Reward("tunas", 75.0, alpha=-0.1), "no alpha"),
        (lambda: soft_reward(0.7, 0.0, 75.0), "latency must be a positive"),
        (lambda: soft_reward(0.7, math.inf, 75.0), "latency must be a positive"),
        (lambda: hard_reward(math.nan, 10.0, 75.0), "accuracy must be a finite"),
        (lambda: tunas_reward(0.7, 10.0, -1.0), "target latency"),
    ],
)
def test_bad_settings_raise_one_clear_error(call, message):
    with pytest.raises(RewardError, match=message) as info:
        call()
    assert isinstance(info.value, MnasNetError)
