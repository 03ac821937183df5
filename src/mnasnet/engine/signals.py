"""Ctrl-C and SIGTERM during training: the first asks the loop to save and stop, a second Ctrl-C aborts."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["stop_on_signals"]


@contextlib.contextmanager
def stop_on_signals() -> Iterator[dict[str, Any]]:
    """Yields ``{"signal": None}``; the first SIGINT/SIGTERM sets it, a second SIGINT raises KeyboardInterrupt.

    Outside the main thread (where handlers cannot be installed) it only yields.
    """
    request: dict[str, Any] = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, _frame):
        if request["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        request["signal"] = signum
        print("\nstopping: saving a checkpoint (Ctrl-C again to abort without saving)", file=sys.stderr)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
