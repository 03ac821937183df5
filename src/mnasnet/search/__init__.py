"""Platform-aware architecture search (MNAS): the search space, rewards, latency backends and the Ray driver.

The heavy pieces (exports, Vela, runtimes, Ray) load only when used::

    from mnasnet.search import SearchSettings, run_search
    run_search(SearchSettings(target="vela:ethos-u65-256", latency_ms=0.8, trials=100), "runs/search")
"""

import importlib
from typing import Any

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

# Loaded on first use (PEP 562): the driver brings PyTorch and Ray.
_LAZY = {
    "SearchError": "mnasnet.search.driver",
    "SearchResult": "mnasnet.search.driver",
    "SearchSettings": "mnasnet.search.driver",
    "run_search": "mnasnet.search.driver",
    "run_small_search": "mnasnet.search.driver",
    "ProxySettings": "mnasnet.search.proxy",
    "write_outputs": "mnasnet.search.report",
    "read_blocks_file": "mnasnet.search.blocks_file",
    "write_blocks_file": "mnasnet.search.blocks_file",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'mnasnet.search' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "BUILTIN_SPACES",
    "REWARDS",
    "Candidate",
    "Decision",
    "ProxySettings",
    "Reward",
    "RewardError",
    "SearchError",
    "SearchResult",
    "SearchSettings",
    "SearchSpace",
    "SearchSpaceError",
    "StageSpace",
    "arch_hash",
    "hard_reward",
    "load_space",
    "mnas_reward",
    "parse_space",
    "read_blocks_file",
    "run_search",
    "run_small_search",
    "soft_reward",
    "tunas_reward",
    "write_blocks_file",
    "write_outputs",
]
