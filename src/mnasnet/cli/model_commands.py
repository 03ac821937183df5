"""``mnasnet summary`` and ``mnasnet convert``."""


def register(subparsers) -> None:
    pass
