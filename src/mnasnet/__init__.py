"""MnasNet, faithful to Google's reference, from training to an int8 file on an edge NPU.

The public names load on first use (PEP 562), so ``import mnasnet`` and the
``mnasnet`` command start without importing PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mnasnet.errors import BlockStringError, CheckpointError, DataError, MnasNetError

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "ARCHS": "mnasnet.arch",
    "BlockSpec": "mnasnet.arch",
    "format_block": "mnasnet.arch",
    "parse_block": "mnasnet.arch",
    "round_filters": "mnasnet.arch",
    "create_model": "mnasnet.factory",
    "load_model": "mnasnet.factory",
    "fuse_model": "mnasnet.fuse",
    "MnasNet": "mnasnet.model",
    "MnasNetConfig": "mnasnet.model",
    "list_models": "mnasnet.model",
}

if TYPE_CHECKING:
    from mnasnet.arch import ARCHS, BlockSpec, format_block, parse_block, round_filters
    from mnasnet.factory import create_model, load_model
    from mnasnet.fuse import fuse_model
    from mnasnet.model import MnasNet, MnasNetConfig, list_models


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'mnasnet' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "ARCHS",
    "BlockSpec",
    "BlockStringError",
    "CheckpointError",
    "DataError",
    "MnasNet",
    "MnasNetConfig",
    "MnasNetError",
    "create_model",
    "format_block",
    "fuse_model",
    "list_models",
    "load_model",
    "parse_block",
    "round_filters",
]
