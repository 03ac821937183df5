"""Writing files so that an interrupted run never leaves a broken one behind."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

_PART_SUFFIX = ".part"


def current_umask() -> int:
    """The process umask, read without changing it where the platform allows."""
    try:  # Linux: no race with other threads
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def remove_stale_parts(target: Path) -> None:
    """Deletes temporary files of ``target`` left by writers that were killed (their process is gone)."""
    for part in target.parent.glob(f".{glob.escape(target.name)}.*{_PART_SUFFIX}"):
        pid = part.name[len(target.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            if part.is_dir():
                shutil.rmtree(part, ignore_errors=True)
            else:
                part.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; renames it into place only if the block succeeds.

    The file ends with the permissions a plain ``open(path, "w")`` would give
    (0644 under umask 022), not the temporary file's 0600. The temporary name
    carries the writer's process id, so temporaries of killed writers are removed
    by the next write to the same path.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(target)
    handle, temp_name = tempfile.mkstemp(
        prefix=f".{target.name}.{os.getpid()}.", suffix=_PART_SUFFIX, dir=target.parent
    )
    os.close(handle)
    temp = Path(temp_name)
    try:
        yield temp
        if temp.exists():
            os.chmod(temp, 0o666 & ~current_umask())
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary folder beside ``path``; renames it into place only if the block succeeds.

    For outputs made of many files (a generated dataset): readers see the whole
    folder or none. If another process completed ``path`` first, its folder is kept.
    Folders left by killed writers are removed by the next writer, and the folder
    gets the permissions ``mkdir`` would give (0755 under umask 022).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(target)
    temp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=_PART_SUFFIX, dir=target.parent))
    try:
        yield temp
        os.chmod(temp, 0o777 & ~current_umask())
        try:
            os.replace(temp, target)
        except OSError:
            if not target.is_dir():  # not another process that finished first
                raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)


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


def writable_cache_dir(*parts: str) -> Path:
    """``cache_dir() / parts``, created if missing and checked to be writable.

    Raises:
        CacheError: the folder cannot be created or written; the message names it (not a failed download).
    """
    from mnasnet.errors import CacheError

    folder = cache_dir().joinpath(*parts)
    hint = "set MNASNET_HOME to a writable folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CacheError(f"the cache folder {folder} is not writable ({error.strerror or error}); {hint}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CacheError(f"the cache folder {folder} is not writable; {hint}")
    return folder
