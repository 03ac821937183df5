"""Block files: one searched architecture as text, read by ``mnasnet train --blocks-file``.

The format is :meth:`Candidate.canonical_text`: one block string a line, then
``resolution=N`` (and ``stem=N`` where the stem is not the first block's input).
Blank lines and ``#`` comments are ignored, so a search can annotate the file::

    # trial 17: accuracy 0.712, 1.23 ms on vela ethos-u65-256
    r1_k3_s11_e1_i32_o16_noskip
    r2_k5_s22_e3_i16_o24
    ...
    resolution=64
"""

from __future__ import annotations

import os
from pathlib import Path

from mnasnet.arch import parse_arch
from mnasnet.errors import BlockStringError, MnasNetError
from mnasnet.fileio import atomic_write_text
from mnasnet.search.space import Candidate

__all__ = ["BlocksFileError", "read_blocks_file", "write_blocks_file"]


class BlocksFileError(MnasNetError, ValueError):
    """A blocks file that is missing, unreadable or holds no valid architecture."""


def _setting(line: str, path: Path, number: int) -> tuple[str, int]:
    key, _, value = line.partition("=")
    key = key.strip()
    if key not in ("resolution", "stem") or not value.strip().isdigit() or int(value) < 1:
        raise BlocksFileError(f"{path}:{number}: expected resolution=N or stem=N, got {line!r}")
    return key, int(value)


def read_blocks_file(path: str | os.PathLike) -> Candidate:
    """The architecture a blocks file describes.

    Raises:
        BlocksFileError: no such file, no block strings, a bad ``key=value`` line or a bad block string.
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise BlocksFileError(f"cannot read blocks file {path}: {getattr(error, 'strerror', None) or error}") from None
    blocks: list[str] = []
    settings: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if "=" in line:
            key, value = _setting(line, path, number)
            settings[key] = value
            continue
        blocks.append(line)
    if not blocks:
        raise BlocksFileError(f"{path} holds no block strings (one a line, e.g. r1_k3_s11_e1_i32_o16_noskip)")
    try:
        parse_arch(blocks)
    except BlockStringError as error:
        raise BlocksFileError(f"{path}: {error}") from None
    return Candidate(
        blocks=tuple(blocks), resolution=settings.get("resolution", 224), stem_filters=settings.get("stem")
    )


def write_blocks_file(path: str | os.PathLike, candidate: Candidate, comment: str = "") -> Path:
    """Writes ``candidate`` (atomically) in the format :func:`read_blocks_file` reads."""
    header = "".join(f"# {line}\n" for line in comment.splitlines())
    atomic_write_text(path, header + candidate.canonical_text() + "\n")
    return Path(path)
