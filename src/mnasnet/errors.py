"""Exceptions a user can cause. The CLI prints them as one line and exits non-zero."""


class MnasNetError(Exception):
    """Base class for every error caused by user input (paths, files, options)."""


class BlockStringError(MnasNetError, ValueError):
    """A block string does not follow the grammar."""


class CheckpointError(MnasNetError, ValueError):
    """A checkpoint file is corrupt, of another format, or does not fit the model."""


class DataError(MnasNetError, ValueError):
    """A dataset folder or image is missing or unreadable."""


class ModelConfigError(MnasNetError, ValueError):
    """A model setting (width, resolution, class count, filters, ...) the builder cannot honour."""


class ConfigError(MnasNetError, ValueError):
    """An option or setting has a value the command cannot use (a thread count, a batch size, a mode name)."""


class MissingDependencyError(MnasNetError, ImportError):
    """An optional package a feature needs is not installed; the message names the extra to install."""


class CacheError(MnasNetError, OSError):
    """The cache folder ($MNASNET_HOME) cannot be created or written."""
