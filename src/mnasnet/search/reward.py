"""Rewards that trade accuracy against latency: MNAS's soft and hard forms, and TuNAS's absolute one.

MNAS (paper eq. 2): ``ACC x (LAT / T) ** w`` with ``w = alpha`` when ``LAT <= T``
and ``beta`` otherwise. The soft form (alpha = beta = -0.07) makes doubling the
latency cost about 5% of relative accuracy; the hard form (alpha = 0, beta = -1)
ignores latency under the target and penalises it sharply above.
TuNAS (Bender et al. 2020): ``Q + beta x |LAT / T - 1|`` with beta = -0.1, which
pushes towards the target from both sides.
"""

from __future__ import annotations

import dataclasses
import math

from mnasnet.errors import MnasNetError

__all__ = ["REWARDS", "Reward", "RewardError", "hard_reward", "mnas_reward", "soft_reward", "tunas_reward"]

REWARDS = ("soft", "hard", "tunas")


class RewardError(MnasNetError, ValueError):
    """A reward setting or an input that has no meaning (non-positive target or latency, NaN accuracy)."""


def _check(accuracy: float, latency_ms: float, target_ms: float) -> None:
    if not math.isfinite(accuracy):
        raise RewardError(f"accuracy must be a finite number, got {accuracy!r}")
    if not (latency_ms > 0 and math.isfinite(latency_ms)):
        raise RewardError(f"latency must be a positive number of ms, got {latency_ms!r}")
    if not (target_ms > 0 and math.isfinite(target_ms)):
        raise RewardError(f"target latency must be a positive number of ms, got {target_ms!r}")


def mnas_reward(accuracy: float, latency_ms: float, target_ms: float, *, alpha: float, beta: float) -> float:
    """``accuracy x (latency / target) ** w``, ``w = alpha`` at or under the target, ``beta`` above."""
    _check(accuracy, latency_ms, target_ms)
    ratio = latency_ms / target_ms
    return accuracy * ratio ** (alpha if latency_ms <= target_ms else beta)


def soft_reward(accuracy: float, latency_ms: float, target_ms: float) -> float:
    """MNAS's soft constraint: alpha = beta = -0.07."""
    return mnas_reward(accuracy, latency_ms, target_ms, alpha=-0.07, beta=-0.07)


def hard_reward(accuracy: float, latency_ms: float, target_ms: float) -> float:
    """MNAS's hard constraint: alpha = 0, beta = -1."""
    return mnas_reward(accuracy, latency_ms, target_ms, alpha=0.0, beta=-1.0)


def tunas_reward(accuracy: float, latency_ms: float, target_ms: float, *, beta: float = -0.1) -> float:
    """TuNAS's absolute reward ``accuracy + beta x |latency / target - 1|``."""
    _check(accuracy, latency_ms, target_ms)
    return accuracy + beta * abs(latency_ms / target_ms - 1.0)


@dataclasses.dataclass(frozen=True)
class Reward:
    """A reward with its settings fixed, called as ``reward(accuracy, latency_ms)``.

    Args:
        kind: ``soft``, ``hard`` or ``tunas``.
        target_ms: the latency target T.
        alpha / beta: override the exponents (MNAS) or the slope (TuNAS, alpha unused).
    """

    kind: str
    target_ms: float
    alpha: float | None = None
    beta: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in REWARDS:
            raise RewardError(f"unknown reward {self.kind!r}; choose from {', '.join(REWARDS)}")
        if not (isinstance(self.target_ms, int | float) and self.target_ms > 0 and math.isfinite(self.target_ms)):
            raise RewardError(f"target latency must be a positive number of ms, got {self.target_ms!r}")
        if self.kind == "tunas" and self.alpha is not None:
            raise RewardError("the TuNAS reward has no alpha; set beta")

    @property
    def exponents(self) -> tuple[float, float]:
        defaults = {"soft": (-0.07, -0.07), "hard": (0.0, -1.0), "tunas": (0.0, -0.1)}[self.kind]
        return (
            defaults[0] if self.alpha is None else self.alpha,
            defaults[1] if self.beta is None else self.beta,
        )

    def __call__(self, accuracy: float, latency_ms: float) -> float:
        alpha, beta = self.exponents
        if self.kind == "tunas":
            return tunas_reward(accuracy, latency_ms, self.target_ms, beta=beta)
        return mnas_reward(accuracy, latency_ms, self.target_ms, alpha=alpha, beta=beta)
