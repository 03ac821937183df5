"""Writing files so that an interrupted run never leaves a broken one behind."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; renames it into place only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(handle)
    temp = Path(temp_name)
    try:
        yield temp
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as temp:
        temp.write_text(text)


def cache_dir() -> Path:
    """Where mnasnet keeps downloads, converted weights and built-in datasets.

    ``$MNASNET_HOME``, else ``$XDG_CACHE_HOME/mnasnet``, else the platform's user cache folder.
    """
    if os.environ.get("MNASNET_HOME"):
        return Path(os.environ["MNASNET_HOME"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "mnasnet"
    home = Path.home()
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "mnasnet"
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA", home / "AppData" / "Local")) / "mnasnet" / "Cache"
    return home / ".cache" / "mnasnet"
