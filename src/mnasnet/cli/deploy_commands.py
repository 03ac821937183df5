"""Commands of the deploy issue (being written)."""


def register(subparsers) -> None:
    pass
