"""Published weights: registry, download and cache, converters, and the one loader (:func:`load_weights`)."""

from mnasnet.weights.download import DownloadError, cache_dir
from mnasnet.weights.loader import load_weights
from mnasnet.weights.registry import Weights, get_weights, list_weights, register_weights

__all__ = [
    "DownloadError",
    "Weights",
    "cache_dir",
    "get_weights",
    "list_weights",
    "load_weights",
    "register_weights",
]
