"""Commands of the train issue (being written)."""


def register(subparsers) -> None:
    pass
