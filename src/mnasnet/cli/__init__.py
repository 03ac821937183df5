"""The ``mnasnet`` command line: thin wrappers over the Python API.

Each command group lives in its own module with a ``register(subparsers)``
function; this module only collects them, prepares the process (OpenMP settings
before PyTorch loads, the thread count) and turns user errors into one line.
Building the parser imports nothing heavy, so ``mnasnet --help`` is instant.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import sys
import warnings

from mnasnet import __version__
from mnasnet.errors import MnasNetError
from mnasnet.threads import prepare_environment

COMMAND_MODULES = (
    "mnasnet.cli.model_commands",  # summary, convert
    "mnasnet.cli.weights_commands",  # weights, predict
    "mnasnet.cli.train_commands",  # train, evaluate, plot
    "mnasnet.cli.deploy_commands",  # export, benchmark, npu-report
    "mnasnet.cli.detect_commands",  # detect train|evaluate|predict|export
    "mnasnet.cli.workflow_commands",  # demo
    "mnasnet.cli.search_commands",  # search
)

# Errors from outside the project that mean the user's input or machine, not a bug: the operating
# system refusing a path it names, or a full or read-only disk. Anything else shows its traceback.
_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


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


def is_user_error(error: BaseException) -> bool:
    """True for errors the CLI reports as one line: the project's own, and the few of :data:`_PATH_ERRORS`."""
    if isinstance(error, MnasNetError):
        return True
    if isinstance(error, _PATH_ERRORS) and error.filename is not None:
        return True
    if isinstance(error, OSError) and error.errno in _DISK_ERRNOS:
        return True
    # out of memory: a batch too large for the machine
    out_of_memory = getattr(sys.modules.get("torch"), "OutOfMemoryError", None)
    return out_of_memory is not None and isinstance(error, out_of_memory)


def _one_line_warnings(command: str):
    """A ``warnings.showwarning`` that prints the project's own warnings (a dataset's skipped entries)
    as ``mnasnet COMMAND: warning: ...``, one line without the source line; others as Python does."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if not category.__module__.startswith("mnasnet"):
            return default(message, category, filename, lineno, file, line)
        text = " ".join(str(message).split())
        with contextlib.suppress(OSError):  # stderr is gone: nobody to tell
            print(f"mnasnet {command}: warning: {text}", file=file or sys.stderr)

    return show


def main(argv: list[str] | None = None) -> int:
    prepare_environment()  # before anything imports torch: OpenMP reads it once, when it loads
    parser = build_parser()
    args = parser.parse_args(argv)
    # only where nobody (a test's recorder, an embedding program) has replaced Python's own display:
    # catch_warnings(record=True) keeps showwarning and swaps the private _showwarnmsg_impl
    shown_by_python = getattr(getattr(warnings, "_showwarnmsg_impl", None), "__module__", None) == "warnings"
    replace = shown_by_python and warnings.showwarning is getattr(warnings, "_showwarning_orig", None)
    if replace:
        warnings.showwarning = _one_line_warnings(args.command)
    try:
        return _run(args)
    finally:
        if replace:
            warnings.showwarning = warnings._showwarning_orig


def _run(args: argparse.Namespace) -> int:
    try:
        if hasattr(args, "threads"):
            from mnasnet.threads import configure_threads

            args.threads = configure_threads(args.threads)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"mnasnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`mnasnet predict ... | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as error:
        if not is_user_error(error):
            raise  # a bug: the traceback is what a report needs
        print(f"mnasnet {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
