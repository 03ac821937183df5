"""Exceptions a user can cause. The CLI prints them as one line and exits non-zero."""


class MnasNetError(Exception):
    """Base class for every error caused by user input (paths, files, options)."""


class BlockStringError(MnasNetError, ValueError):
    """A block string does not follow the grammar."""


class CheckpointError(MnasNetError, ValueError):
    """A checkpoint file is corrupt, of another format, or does not fit the model."""


class DataError(MnasNetError, ValueError):
    """A dataset folder or image is missing or unreadable."""
