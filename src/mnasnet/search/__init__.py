"""Platform-aware architecture search (MNAS): the search space, rewards and latency backends.

The heavy pieces (exports, Vela, runtimes) load only when a latency is measured.
"""

from mnasnet.search.reward import REWARDS, Reward, RewardError, hard_reward, mnas_reward, soft_reward, tunas_reward
from mnasnet.search.space import (
    BUILTIN_SPACES,
    Candidate,
    Decision,
    SearchSpace,
    SearchSpaceError,
    StageSpace,
    arch_hash,
    load_space,
    parse_space,
)

__all__ = [
    "BUILTIN_SPACES",
    "REWARDS",
    "Candidate",
    "Decision",
    "Reward",
    "RewardError",
    "SearchSpace",
    "SearchSpaceError",
    "StageSpace",
    "arch_hash",
    "hard_reward",
    "load_space",
    "mnas_reward",
    "parse_space",
    "soft_reward",
    "tunas_reward",
]
