"""MnasNet, faithful to Google's reference, from training to an int8 file on an edge NPU."""

from mnasnet.arch import ARCHS, BlockSpec, format_block, parse_block, round_filters
from mnasnet.errors import BlockStringError, CheckpointError, DataError, MnasNetError
from mnasnet.model import MnasNet, MnasNetConfig, create_model, list_models

__version__ = "0.1.0"


def load_model(path, **kwargs):
    """Rebuilds a model from one of our checkpoint files (see :func:`mnasnet.checkpoint.load_model`)."""
    from mnasnet.checkpoint import load_model as _load_model

    return _load_model(path, **kwargs)


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
    "list_models",
    "load_model",
    "parse_block",
    "round_filters",
]
