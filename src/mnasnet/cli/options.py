"""Argument types and flags shared by several commands. Imports nothing heavy: the parser is built at every start."""

from __future__ import annotations

import argparse

from mnasnet.threads import MAX_THREADS


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def thread_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"expected a whole number of threads from 1 to {MAX_THREADS}, got {text!r}")
    return value


def add_threads_flag(parser: argparse.ArgumentParser, what: str = "PyTorch") -> None:
    """``--threads N``; the CLI entry applies it (``mnasnet.threads.configure_threads``) before the command runs."""
    parser.add_argument(
        "--threads",
        type=thread_count,
        default=None,
        metavar="N",
        help=f"CPU threads for {what} (default: one per core, at most the CPUs this process may use, "
        "or $OMP_NUM_THREADS)",
    )
