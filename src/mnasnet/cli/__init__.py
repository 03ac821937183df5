"""The ``mnasnet`` command line: thin wrappers over the Python API.

Each command group lives in its own module with a ``register(subparsers)``
function; this module only collects them and turns user errors into one line.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from mnasnet import __version__
from mnasnet.errors import MnasNetError

COMMAND_MODULES = (
    "mnasnet.cli.model_commands",  # summary, convert
    "mnasnet.cli.weights_commands",  # weights, predict
    "mnasnet.cli.train_commands",  # train, evaluate, plot
    "mnasnet.cli.deploy_commands",  # export, benchmark, npu-report
    "mnasnet.cli.workflow_commands",  # demo
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mnasnet",
        description="MnasNet: models, published weights, training, evaluation and int8 deployment.",
    )
    parser.add_argument("--version", action="version", version=f"mnasnet {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (MnasNetError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as error:
        # User errors: one line, no traceback.
        print(f"mnasnet {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mnasnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`mnasnet predict ... | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
