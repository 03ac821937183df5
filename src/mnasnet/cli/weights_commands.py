"""Commands of the weights issue (being written)."""


def register(subparsers) -> None:
    pass
