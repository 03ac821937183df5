"""A reader of TensorFlow checkpoints (TensorBundle V2) in pure Python and NumPy.

A checkpoint is a prefix such as ``model.ckpt`` with two kinds of files:

- ``model.ckpt.index``: a LevelDB-style sorted table. The empty key holds a
  ``BundleHeaderProto`` (number of shards, endianness); every other key is a
  variable name whose value is a ``BundleEntryProto`` (dtype, shape, shard,
  offset, size, masked CRC32C of the bytes).
- ``model.ckpt.data-0000K-of-0000N``: the raw little-endian tensor bytes.

Google's trainer publishes a folder (with a ``checkpoint`` text file naming
the prefix), often packed as ``.tar.gz``; :func:`open_checkpoint` accepts
the folder, the prefix, either file, or the archive. Anything corrupt,
truncated or missing raises :class:`~mnasnet.errors.CheckpointError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import struct
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np

from mnasnet.errors import CheckpointError

__all__ = ["TFCheckpoint", "TensorEntry", "crc32c", "open_checkpoint", "resolve_prefix", "safe_extract_tar"]

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48  # two block handles padded to 40 bytes, then the 8-byte magic
BLOCK_TRAILER_SIZE = 5  # compression type byte + masked crc32c

# tensorflow/core/framework/types.proto -> NumPy (numeric types only).
_DTYPES = {
    1: np.dtype("float32"),
    2: np.dtype("float64"),
    3: np.dtype("int32"),
    4: np.dtype("uint8"),
    5: np.dtype("int16"),
    6: np.dtype("int8"),
    9: np.dtype("int64"),
    10: np.dtype("bool"),
    17: np.dtype("uint16"),
    19: np.dtype("float16"),
    22: np.dtype("uint32"),
    23: np.dtype("uint64"),
}
_DT_BFLOAT16 = 14
_DTYPE_NAMES = {7: "string", 8: "complex64", 18: "complex128", 20: "resource", 21: "variant"}


# -- CRC32C (Castagnoli), as LevelDB and TensorBundle use it ------------------------


def _make_crc_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table[byte] = crc
    return table


_CRC_TABLE = _make_crc_table()
_CRC_TABLE_LIST = [int(v) for v in _CRC_TABLE]
_BITS = np.arange(32, dtype=np.uint32)


def _crc_bytewise(data: bytes | memoryview, crc: int) -> int:
    table = _CRC_TABLE_LIST
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


def _apply(matrix: np.ndarray, states: np.ndarray) -> np.ndarray:
    """Applies a GF(2) 32x32 matrix (``matrix[b]`` = image of bit b) to many CRC registers."""
    bits = (states[:, None] >> _BITS) & np.uint32(1)
    return np.bitwise_xor.reduce(bits * matrix, axis=1)


def _zeros_operator(length: int) -> np.ndarray:
    """The linear map that advances a raw CRC register over ``length`` zero bytes."""
    one = np.array([_crc_bytewise(b"\0", 1 << bit) for bit in range(32)], dtype=np.uint32)
    result = (np.uint32(1) << _BITS).astype(np.uint32)  # identity
    power = one
    while length:
        if length & 1:
            result = _apply(power, result)
        length >>= 1
        if length:
            power = _apply(power, power)
    return result


def crc32c(data: bytes | memoryview | np.ndarray) -> int:
    """CRC32C of ``data``; large buffers are hashed as NumPy columns in lockstep.

    A CRC register is linear over GF(2) and leading zero bytes leave a zero
    register unchanged, so the data (with the initial value folded into its
    first four bytes) is zero-padded in front, cut into equal rows, each row
    hashed at once, and the rows' registers combined pairwise.
    """
    buffer = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    size = buffer.size
    if size < 4096:
        return _crc_bytewise(buffer.tobytes(), 0xFFFFFFFF) ^ 0xFFFFFFFF
    rows = 1 << min(12, (size // 64).bit_length() - 1)  # 64..4096 rows of >= 64 bytes
    length = -(-size // rows)
    message = np.zeros(rows * length, dtype=np.uint8)
    message[rows * length - size :] = buffer
    message[rows * length - size : rows * length - size + 4] ^= 0xFF  # initial register 0xFFFFFFFF
    columns = message.reshape(rows, length)
    states = np.zeros(rows, dtype=np.uint32)
    table, mask = _CRC_TABLE, np.uint32(0xFF)
    for column in range(length):
        states = table[(states ^ columns[:, column]) & mask] ^ (states >> np.uint32(8))
    operator = _zeros_operator(length)
    while states.size > 1:
        states = _apply(operator, states[0::2]) ^ states[1::2]
        operator = _apply(operator, operator)
    return int(states[0]) ^ 0xFFFFFFFF


def _unmask(masked: int) -> int:
    rotated = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rotated >> 17) | (rotated << 15)) & 0xFFFFFFFF


# -- protobuf wire format -----------------------------------------------------------


def _varint(data: bytes, pos: int, what: str) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise CheckpointError(f"truncated or corrupt {what}")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes, what: str) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) for each field of a serialized message."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos, what)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos, what)
        elif wire == 1:
            value, pos = int.from_bytes(data[pos : pos + 8], "little"), pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos, what)
            value, pos = data[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = int.from_bytes(data[pos : pos + 4], "little"), pos + 4
        else:
            raise CheckpointError(f"corrupt {what}: unsupported protobuf wire type {wire}")
        if pos > len(data) or number == 0:
            raise CheckpointError(f"truncated or corrupt {what}")
        yield number, wire, value


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


@dataclasses.dataclass(frozen=True)
class TensorEntry:
    """Where one variable lives: a ``BundleEntryProto``."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    shard_id: int = 0
    offset: int = 0
    size: int = 0
    crc32c: int | None = None  # masked, as stored
    sliced: bool = False

    @classmethod
    def parse(cls, name: str, data: bytes) -> TensorEntry:
        what = f"entry for {name!r}"
        values: dict = {"name": name, "dtype": 0, "shape": ()}
        for number, wire, value in _fields(data, what):
            if number == 1 and wire == 0:
                values["dtype"] = value
            elif number == 2 and wire == 2:
                values["shape"] = _parse_shape(value, what)
            elif number == 3 and wire == 0:
                values["shard_id"] = value
            elif number == 4 and wire == 0:
                values["offset"] = value
            elif number == 5 and wire == 0:
                values["size"] = value
            elif number == 6 and wire == 5:
                values["crc32c"] = value
            elif number == 7:
                values["sliced"] = True
        return cls(**values)

    @property
    def numpy_dtype(self) -> np.dtype | None:
        if self.dtype == _DT_BFLOAT16:
            return np.dtype("uint16")  # widened to float32 on read
        return _DTYPES.get(self.dtype)


def _parse_shape(data: bytes, what: str) -> tuple[int, ...]:
    dims = []
    for number, wire, value in _fields(data, what):
        if number == 2 and wire == 2:
            size = 0
            for dim_number, dim_wire, dim_value in _fields(value, what):
                if dim_number == 1 and dim_wire == 0:
                    size = _signed(dim_value)
            dims.append(size)
        elif number == 3 and wire == 0 and value:
            raise CheckpointError(f"corrupt {what}: shape of unknown rank")
    if any(size < 0 for size in dims):
        raise CheckpointError(f"corrupt {what}: negative dimension in shape {dims}")
    return tuple(dims)


# -- the LevelDB table in .index ----------------------------------------------------


def _read_block(data: bytes, handle: bytes, path: Path) -> bytes:
    offset, pos = _varint(handle, 0, f"block handle in {path}")
    size, _ = _varint(handle, pos, f"block handle in {path}")
    end = offset + size
    if end + BLOCK_TRAILER_SIZE > len(data):
        raise CheckpointError(f"{path} is truncated: a block ends at byte {end + BLOCK_TRAILER_SIZE} of {len(data)}")
    block, compression = data[offset:end], data[end]
    if compression != 0:
        kind = {1: "snappy", 2: "zlib"}.get(compression, f"type {compression}")
        raise CheckpointError(f"{path} has a {kind}-compressed block; only uncompressed checkpoints are supported")
    (stored,) = struct.unpack_from("<I", data, end + 1)
    if crc32c(data[offset : end + 1]) != _unmask(stored):
        raise CheckpointError(f"{path} is corrupt: checksum mismatch in the block at byte {offset}")
    return block


def _block_entries(block: bytes, path: Path) -> Iterator[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise CheckpointError(f"{path} is corrupt: block too short")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * num_restarts
    if limit < 0:
        raise CheckpointError(f"{path} is corrupt: bad restart count {num_restarts}")
    pos, key = 0, b""
    what = f"table block in {path}"
    while pos < limit:
        shared, pos = _varint(block, pos, what)
        unshared, pos = _varint(block, pos, what)
        value_length, pos = _varint(block, pos, what)
        if shared > len(key) or pos + unshared + value_length > limit:
            raise CheckpointError(f"{path} is corrupt: bad entry in a table block")
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        yield key, block[pos : pos + value_length]
        pos += value_length


def _read_table(path: Path) -> dict[bytes, bytes]:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint index {path}: {error.strerror or error}") from None
    if len(data) < FOOTER_SIZE:
        raise CheckpointError(f"{path} is not a TensorFlow checkpoint index (too short: {len(data)} bytes)")
    footer = data[-FOOTER_SIZE:]
    (magic,) = struct.unpack_from("<Q", footer, 40)
    if magic != TABLE_MAGIC:
        raise CheckpointError(f"{path} is not a TensorFlow checkpoint index (bad magic number; truncated?)")
    _, pos = _varint(footer, 0, f"footer of {path}")  # metaindex offset (unused: no filters)
    _, pos = _varint(footer, pos, f"footer of {path}")
    index = _read_block(data, footer[pos:40], path)
    table = {}
    for _, handle in _block_entries(index, path):
        for key, value in _block_entries(_read_block(data, handle, path), path):
            table[key] = value
    return table


# -- the checkpoint ---------------------------------------------------------------


class TFCheckpoint:
    """The variables of one checkpoint prefix; :meth:`read` loads a tensor from its shard."""

    def __init__(self, prefix: str | os.PathLike) -> None:
        self.prefix = Path(prefix)
        index = Path(f"{self.prefix}.index")
        if not index.is_file():
            raise CheckpointError(f"checkpoint index {index} not found")
        table = _read_table(index)
        if b"" not in table:
            raise CheckpointError(f"{index} has no bundle header (not a TensorBundle V2 checkpoint)")
        self.num_shards, self.byteorder = self._parse_header(table.pop(b""), index)
        self.entries: dict[str, TensorEntry] = {}
        for key, value in table.items():
            try:
                name = key.decode()
            except UnicodeDecodeError:
                raise CheckpointError(f"{index} is corrupt: a variable name is not UTF-8") from None
            entry = TensorEntry.parse(name, value)
            if entry.shard_id >= self.num_shards:
                raise CheckpointError(f"{index} is corrupt: {name!r} is in shard {entry.shard_id} of {self.num_shards}")
            self.entries[name] = entry
        self._shard_sizes: dict[int, int] = {}

    @staticmethod
    def _parse_header(data: bytes, index: Path) -> tuple[int, str]:
        num_shards, endianness = 1, 0
        for number, wire, value in _fields(data, f"header of {index}"):
            if number == 1 and wire == 0:
                num_shards = value
            elif number == 2 and wire == 0:
                endianness = value
        if num_shards < 1:
            raise CheckpointError(f"{index} is corrupt: {num_shards} shards")
        return num_shards, "<" if endianness == 0 else ">"

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name).shape

    def shard_path(self, shard_id: int) -> Path:
        return Path(f"{self.prefix}.data-{shard_id:05d}-of-{self.num_shards:05d}")

    def _entry(self, name: str) -> TensorEntry:
        try:
            return self.entries[name]
        except KeyError:
            raise CheckpointError(f"variable {name!r} not found in checkpoint {self.prefix}") from None

    def read(self, name: str, *, verify: bool = True) -> np.ndarray:
        """The variable's value as a NumPy array (bfloat16 widened to float32).

        Args:
            name: the variable name, e.g. ``mnasnet-a1/mnas_head/dense/bias``.
            verify: check the stored CRC32C of the bytes.
        """
        entry = self._entry(name)
        if entry.sliced:
            raise CheckpointError(f"variable {name!r} is partitioned into slices; sliced checkpoints are not supported")
        dtype = entry.numpy_dtype
        if dtype is None:
            kind = _DTYPE_NAMES.get(entry.dtype, f"dtype {entry.dtype}")
            raise CheckpointError(f"variable {name!r} holds {kind} values; only numeric tensors can be read")
        count = int(np.prod(entry.shape, dtype=np.int64))
        if count * dtype.itemsize != entry.size:
            raise CheckpointError(
                f"checkpoint {self.prefix} is corrupt: {name!r} of shape {list(entry.shape)} should take "
                f"{count * dtype.itemsize} bytes, the index says {entry.size}"
            )
        data = self._read_bytes(entry)
        if verify and entry.crc32c is not None and crc32c(data) != _unmask(entry.crc32c):
            raise CheckpointError(f"checkpoint {self.prefix} is corrupt: checksum mismatch for {name!r}")
        array = np.frombuffer(data, dtype=dtype.newbyteorder(self.byteorder)).reshape(entry.shape)
        if entry.dtype == _DT_BFLOAT16:
            return (array.astype(np.uint32) << 16).view(np.float32)
        return array.astype(dtype.newbyteorder("="), copy=True)

    def _read_bytes(self, entry: TensorEntry) -> bytes:
        path = self.shard_path(entry.shard_id)
        try:
            with path.open("rb") as handle:
                handle.seek(entry.offset)
                data = handle.read(entry.size)
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint data shard {path} not found") from None
        except OSError as error:
            raise CheckpointError(f"cannot read checkpoint data shard {path}: {error.strerror or error}") from None
        if len(data) != entry.size:
            raise CheckpointError(
                f"checkpoint data shard {path} is truncated: {entry.name!r} needs bytes "
                f"{entry.offset}..{entry.offset + entry.size}"
            )
        return data

    def read_all(self, names: list[str] | None = None) -> dict[str, np.ndarray]:
        return {name: self.read(name) for name in (self.keys() if names is None else names)}


# -- finding the prefix, archives -------------------------------------------------

_DATA_SUFFIX = re.compile(r"\.data-\d{5}-of-\d{5}$")
_PATH_LINE = re.compile(r'^\s*model_checkpoint_path\s*:\s*"((?:[^"\\]|\\.)*)"\s*$', re.MULTILINE)


def _prefix_from_state(folder: Path) -> Path | None:
    """The prefix a ``checkpoint`` state file names, looked up inside ``folder``."""
    state = folder / "checkpoint"
    if not state.is_file():
        return None
    try:
        match = _PATH_LINE.search(state.read_text(errors="replace"))
    except OSError:
        return None
    if match is None:
        return None
    named = re.sub(r"\\(.)", r"\1", match.group(1))  # text-proto string escapes
    # Trainers write absolute paths of their own machine (or gs://); the files sit beside the state file.
    for candidate in (folder / named, folder / PurePosixPath(named).name):
        if Path(f"{candidate}.index").is_file():
            return candidate
    raise CheckpointError(
        f"{state} names checkpoint {named!r}, but {PurePosixPath(named).name}.index is not in {folder}"
    )


def _prefixes_in(folder: Path) -> list[Path]:
    prefix = _prefix_from_state(folder)
    if prefix is not None:
        return [prefix]
    candidates = sorted(Path(str(index)[: -len(".index")]) for index in folder.glob("*.index"))
    numbered = [c for c in candidates if re.search(r"-\d+$", c.name)]
    if len(candidates) > 1 and len(numbered) == len(candidates):
        # Several steps of one run: model.ckpt-1000, model.ckpt-2000 -> the latest.
        return [max(numbered, key=lambda c: int(c.name.rsplit("-", 1)[1]))]
    return candidates


def resolve_prefix(path: str | os.PathLike) -> Path:
    """The checkpoint prefix for a folder, a prefix, or one of its ``.index``/``.data`` files.

    A folder is searched for a ``checkpoint`` state file or a single ``*.index``,
    then its subfolders level by level (a tarball usually holds one folder, a
    SavedModel keeps ``variables/variables.index``), three levels deep.
    """
    path = Path(path)
    if path.is_file() and path.suffix == ".index":
        return path.with_suffix("")
    if path.is_file() and _DATA_SUFFIX.search(path.name):
        return path.with_name(_DATA_SUFFIX.sub("", path.name))
    if Path(f"{path}.index").is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(f"no TensorFlow checkpoint at {path} (expected a folder, a prefix, or a .tar.gz)")
    level = [path]
    for _ in range(4):  # e.g. archive/mnasnet-a1/saved_model/variables/variables.index
        found = [prefix for folder in level for prefix in _prefixes_in(folder)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(str(p.relative_to(path)) for p in found)
            raise CheckpointError(f"{path} holds several checkpoints ({names}); pass the one to use")
        level = sorted(sub for folder in level for sub in folder.iterdir() if sub.is_dir() and not sub.is_symlink())
    raise CheckpointError(f"no TensorFlow checkpoint (a 'checkpoint' file or *.index) found in {path}")


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    name = member.name
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise CheckpointError(f"refusing archive {archive}: member {name!r} would be written outside its folder")
    if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
        raise CheckpointError(f"refusing archive {archive}: member {name!r} is a device or pipe")
    if member.issym() or member.islnk():
        target = member.linkname.replace("\\", "/")
        base = PurePosixPath(name).parent if member.issym() else PurePosixPath()
        depth = 0
        for part in (base / target).parts if not target.startswith("/") else ("..",):
            depth = depth - 1 if part == ".." else depth + (part not in ("", "."))
            if depth < 0:
                raise CheckpointError(
                    f"refusing archive {archive}: link {name!r} points outside its folder ({member.linkname!r})"
                )
    elif not (member.isfile() or member.isdir()):
        raise CheckpointError(f"refusing archive {archive}: member {name!r} is not a file or folder")


def safe_extract_tar(archive: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Extracts ``archive`` into ``destination``, refusing any member that could land outside it.

    Every member is checked before anything is written: no absolute paths, no
    ``..``, no links leading out, no devices. Python's ``data`` filter, where
    available, checks the same again while extracting.
    """
    archive, destination = Path(archive), Path(destination)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, archive)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(destination, members=members, filter="data")
            else:  # pragma: no cover - Python without PEP 706
                tar.extractall(destination, members=members)
    except CheckpointError:
        raise
    except getattr(tarfile, "FilterError", ()) as error:
        raise CheckpointError(f"refusing archive {archive}: {error}") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise CheckpointError(f"cannot extract {archive} (corrupt or truncated archive?): {error}") from None


def _is_archive(path: Path) -> bool:
    name = path.name.lower()
    if name.endswith((".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")):
        return True
    return path.is_file() and path.suffix != ".index" and not _DATA_SUFFIX.search(path.name)


@contextlib.contextmanager
def open_checkpoint(path: str | os.PathLike) -> Iterator[TFCheckpoint]:
    """Opens a checkpoint given as a folder, a prefix, an ``.index``/``.data`` file, or a tar archive.

    Archives are extracted (safely) into a temporary folder that is removed
    when the ``with`` block ends, so read what you need inside it.
    """
    path = Path(path)
    if not path.exists() and not Path(f"{path}.index").exists():
        raise CheckpointError(f"{path} does not exist")
    if _is_archive(path):
        with tempfile.TemporaryDirectory(prefix="mnasnet-tf-") as folder:
            safe_extract_tar(path, folder)
            try:
                prefix = resolve_prefix(folder)
            except CheckpointError as error:
                raise CheckpointError(f"{path}: {str(error).replace(folder, 'the archive')}") from None
            yield TFCheckpoint(prefix)
    else:
        yield TFCheckpoint(resolve_prefix(path))
