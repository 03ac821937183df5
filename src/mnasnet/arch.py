"""MnasNet architectures as data: block strings, their grammar and width scaling.

The canonical grammar is Google's reference (tensorflow/tpu, models/official/mnasnet):
``r3_k5_s22_e3_i24_o40_se0.25`` describes one stage of three blocks. timm's dialect
(``ir_r3_k5_s2_e3_c40_se0.25``) is read into the same :class:`BlockSpec`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence

from mnasnet import limits
from mnasnet.errors import BlockStringError

__all__ = [
    "ARCHS",
    "ArchDef",
    "BlockSpec",
    "format_block",
    "parse_arch",
    "parse_block",
    "parse_timm_arch",
    "parse_timm_block",
    "round_filters",
    "scale_blocks",
]

DEPTH_DIVISOR = 8

# What the builder honours exactly (see mnasnet.limits). Anything outside is refused by
# name before a tensor is allocated. Kernels must be odd: TF "same" and symmetric
# padding agree only for odd kernels.
LIMITS = {
    "repeats": limits.MAX_REPEATS,
    "kernel_size": limits.MAX_KERNEL_SIZE,
    "expand_ratio": limits.MAX_EXPAND_RATIO,
    "filters": limits.MAX_FILTERS,
    "blocks": limits.MAX_BLOCKS,
}
STRIDES = ((1, 1), (2, 2))  # the reference uses no others; asymmetric strides would break the feature taps


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One stage of identical MBConv blocks, as one block string describes it.

    ``input_filters`` is the filter count the string names. It sets the expanded
    width, the squeeze-excite width and the skip test, as in the reference; the
    convolutions themselves take the channels the previous layer really produces.
    """

    repeats: int
    kernel_size: int
    strides: tuple[int, int]
    expand_ratio: int
    input_filters: int
    output_filters: int
    se_ratio: float | None = None
    id_skip: bool = True

    @property
    def stride(self) -> int:
        return self.strides[0]


@dataclasses.dataclass(frozen=True)
class ArchDef:
    """A named variant: stem width, stage strings and classifier dropout."""

    stem_filters: int
    blocks: tuple[str, ...]
    dropout: float


# Google's reference strings (tensorflow/tpu models/official/mnasnet/mnasnet_models.py).
ARCHS: dict[str, ArchDef] = {
    "a1": ArchDef(
        stem_filters=32,
        dropout=0.2,
        blocks=(
            "r1_k3_s11_e1_i32_o16_noskip",
            "r2_k3_s22_e6_i16_o24",
            "r3_k5_s22_e3_i24_o40_se0.25",
            "r4_k3_s22_e6_i40_o80",
            "r2_k3_s11_e6_i80_o112_se0.25",
            "r3_k5_s22_e6_i112_o160_se0.25",
            "r1_k3_s11_e6_i160_o320",
        ),
    ),
    "b1": ArchDef(
        stem_filters=32,
        dropout=0.2,
        blocks=(
            "r1_k3_s11_e1_i32_o16_noskip",
            "r3_k3_s22_e3_i16_o24",
            "r3_k5_s22_e3_i24_o40",
            "r3_k5_s22_e6_i40_o80",
            "r2_k3_s11_e6_i80_o96",
            "r4_k5_s22_e6_i96_o192",
            "r1_k3_s11_e6_i192_o320_noskip",
        ),
    ),
    "small": ArchDef(
        stem_filters=8,
        dropout=0.0,
        blocks=(
            # i16 does not match the stem's 8 filters: the reference builds this
            # block on the real 8 channels and gives it no skip (16 != 8).
            "r1_k3_s11_e1_i16_o8",
            "r1_k3_s22_e3_i8_o16",
            "r2_k3_s22_e6_i16_o16",
            "r4_k5_s22_e6_i16_o32_se0.25",
            "r3_k3_s11_e6_i32_o32_se0.25",
            "r3_k5_s22_e6_i32_o88_se0.25",
            "r1_k3_s11_e6_i88_o144",
        ),
    ),
    "d1": ArchDef(
        stem_filters=32,
        dropout=0.2,
        blocks=(
            "r1_k3_s11_e9_i32_o24",
            "r3_k3_s22_e9_i24_o36",
            "r5_k3_s22_e9_i36_o48",
            "r4_k5_s22_e9_i48_o96",
            "r5_k7_s11_e3_i96_o96",
            "r3_k3_s22_e9_i96_o80",
            "r1_k7_s11_e6_i80_o320_noskip",
        ),
    ),
    "d1_320": ArchDef(
        stem_filters=32,
        dropout=0.2,
        blocks=(
            "r3_k5_s11_e6_i32_o24",
            "r4_k7_s22_e9_i24_o36",
            "r5_k5_s22_e9_i36_o48",
            "r5_k7_s22_e6_i48_o96",
            "r5_k3_s11_e9_i96_o144",
            "r5_k5_s22_e6_i144_o160",
            "r1_k7_s11_e9_i160_o320",
        ),
    ),
}

_TOKEN = re.compile(r"^([a-z]+)(.*)$")
_INT_FIELDS = {"r": "repeats", "k": "kernel_size", "e": "expand_ratio", "i": "input_filters", "o": "output_filters"}
_REQUIRED = ("r", "k", "s", "e", "i", "o")


def _split_token(token: str, block_string: str) -> tuple[str, str]:
    match = _TOKEN.match(token)
    if not match:
        raise BlockStringError(f"unknown token {token!r} in block string {block_string!r}")
    return match.group(1), match.group(2)


def _positive_int(key: str, value: str, token: str, block_string: str) -> int:
    if not value.isdigit() or not value.isascii():
        raise BlockStringError(f"non-numeric value in token {token!r} of block string {block_string!r}")
    if len(value) > 6:
        raise BlockStringError(f"token {token!r} is absurdly large in block string {block_string!r}")
    number = int(value)
    if number < 1:
        raise BlockStringError(f"token {token!r} must be at least 1 in block string {block_string!r}")
    field = _INT_FIELDS.get(key, "output_filters")  # timm's "c" is the output filters
    limit = LIMITS["filters" if field in ("input_filters", "output_filters") else field]
    if number > limit:
        raise BlockStringError(f"token {token!r} exceeds the limit of {limit} in block string {block_string!r}")
    if field == "kernel_size" and number % 2 == 0:
        raise BlockStringError(f"token {token!r}: kernels must be odd in block string {block_string!r}")
    return number


def _se_ratio(value: str, token: str, block_string: str) -> float:
    # plain decimals only: float() would also take "nan", "1e-3", "_1" or "٠.٢٥"
    if not re.fullmatch(r"[0-9]*\.?[0-9]+", value):
        raise BlockStringError(f"non-numeric value in token {token!r} of block string {block_string!r}")
    ratio = float(value)
    if not 0.0 < ratio <= 1.0:
        raise BlockStringError(f"token {token!r} must be in (0, 1] in block string {block_string!r}")
    return ratio


def _strides(value: str, digits: int, token: str, block_string: str) -> tuple[int, int]:
    if len(value) != digits or not value.isdigit() or not value.isascii():
        shape = "two digits, e.g. s22" if digits == 2 else "one digit, e.g. s2"
        raise BlockStringError(f"token {token!r} needs {shape} in block string {block_string!r}")
    strides = (int(value[0]), int(value[-1]))
    if strides not in STRIDES:
        allowed = "s11 or s22" if digits == 2 else "s1 or s2"
        raise BlockStringError(f"token {token!r}: the stride must be {allowed} in block string {block_string!r}")
    return strides


def parse_block(block_string: str) -> BlockSpec:
    """Parses one reference block string, e.g. ``r3_k5_s22_e3_i24_o40_se0.25``.

    Raises:
        BlockStringError: (a ``ValueError``) naming the offending token and string.
    """
    if not isinstance(block_string, str) or not block_string:
        raise BlockStringError(f"empty block string {block_string!r}")
    fields: dict[str, object] = {}
    seen: set[str] = set()
    for token in block_string.split("_"):
        if token == "noskip":
            key = "noskip"
        else:
            key, value = _split_token(token, block_string)
        if key in seen:
            raise BlockStringError(f"repeated token {token!r} in block string {block_string!r}")
        seen.add(key)
        if key == "noskip":
            fields["id_skip"] = False
        elif key in _INT_FIELDS:
            fields[_INT_FIELDS[key]] = _positive_int(key, value, token, block_string)
        elif key == "s":
            fields["strides"] = _strides(value, 2, token, block_string)
        elif key == "se":
            fields["se_ratio"] = _se_ratio(value, token, block_string)
        else:
            raise BlockStringError(f"unknown token {token!r} in block string {block_string!r}")
    missing = [key for key in _REQUIRED if key not in seen]
    if missing:
        raise BlockStringError(f"missing token {missing[0]!r} in block string {block_string!r}")
    return BlockSpec(**fields)


def format_block(spec: BlockSpec) -> str:
    """Formats a :class:`BlockSpec` in the reference grammar (inverse of :func:`parse_block`)."""
    parts = [
        f"r{spec.repeats}",
        f"k{spec.kernel_size}",
        f"s{spec.strides[0]}{spec.strides[1]}",
        f"e{spec.expand_ratio}",
        f"i{spec.input_filters}",
        f"o{spec.output_filters}",
    ]
    if spec.se_ratio:
        parts.append(f"se{spec.se_ratio:g}")
    if not spec.id_skip:
        parts.append("noskip")
    return "_".join(parts)


def parse_arch(block_strings: Iterable[str]) -> tuple[BlockSpec, ...]:
    """Parses a list of reference block strings, one per stage."""
    if isinstance(block_strings, str):
        block_strings = [block_strings]
    specs = tuple(parse_block(s) for s in block_strings)
    if not specs:
        raise BlockStringError("an architecture needs at least one block string")
    check_block_count(specs)
    return specs


def check_block_count(specs: Sequence[BlockSpec]) -> None:
    """Refuses networks deeper than ``LIMITS["blocks"]``."""
    total = sum(spec.repeats for spec in specs)
    if total > LIMITS["blocks"]:
        raise BlockStringError(f"the architecture has {total} blocks; the limit is {LIMITS['blocks']}")


_TIMM_TYPES = {"ds": 1, "ir": None}  # ds is a depthwise-separable block: no expansion


def parse_timm_block(block_string: str, input_filters: int) -> BlockSpec:
    """Reads one block string in timm's dialect (``ir_r3_k5_s2_e3_c40_se0.25``).

    timm names no input filters: they are the previous stage's output, passed in.
    Only the block types MnasNet uses (``ds``, ``ir``) are accepted.
    """
    if not isinstance(block_string, str) or "_" not in block_string:
        raise BlockStringError(f"not a timm block string: {block_string!r}")
    block_type, *tokens = block_string.split("_")
    if block_type not in _TIMM_TYPES:
        raise BlockStringError(
            f"unknown block type {block_type!r} in block string {block_string!r} (MnasNet uses 'ds' and 'ir')"
        )
    fields: dict[str, object] = {"input_filters": input_filters}
    seen: set[str] = set()
    for token in tokens:
        key, value = ("noskip", "") if token == "noskip" else _split_token(token, block_string)
        if key in seen:
            raise BlockStringError(f"repeated token {token!r} in block string {block_string!r}")
        seen.add(key)
        if key == "noskip":
            fields["id_skip"] = False
        elif key in ("r", "k", "e"):
            fields[_INT_FIELDS[key]] = _positive_int(key, value, token, block_string)
        elif key == "c":
            fields["output_filters"] = _positive_int(key, value, token, block_string)
        elif key == "s":
            fields["strides"] = _strides(value, 1, token, block_string)
        elif key == "se":
            fields["se_ratio"] = _se_ratio(value, token, block_string)
        else:
            raise BlockStringError(f"unknown token {token!r} in block string {block_string!r}")
    fixed_ratio = _TIMM_TYPES[block_type]
    if fixed_ratio is not None:
        if fields.get("expand_ratio", fixed_ratio) != fixed_ratio:
            raise BlockStringError(f"a 'ds' block cannot expand in block string {block_string!r}")
        fields["expand_ratio"] = fixed_ratio
        seen.add("e")
    missing = [key for key in ("r", "k", "s", "e", "c") if key not in seen]
    if missing:
        raise BlockStringError(f"missing token {missing[0]!r} in block string {block_string!r}")
    return BlockSpec(**fields)


def parse_timm_arch(block_strings: Iterable[str | Sequence[str]], stem_filters: int) -> tuple[BlockSpec, ...]:
    """Reads a timm ``arch_def`` (a flat list, or timm's list of per-stage lists).

    Input filters are chained from the stem, so the skip test sees the real
    channels, as timm's does.
    """
    flat: list[str] = []
    for item in [block_strings] if isinstance(block_strings, str) else block_strings:
        flat.extend([item] if isinstance(item, str) else item)
    if not flat:
        raise BlockStringError("an architecture needs at least one block string")
    specs = []
    filters = stem_filters
    for block_string in flat:
        spec = parse_timm_block(block_string, filters)
        specs.append(spec)
        filters = spec.output_filters
    check_block_count(specs)
    return tuple(specs)


def round_filters(filters: int, width_multiplier: float | None, min_depth: int | None = None) -> int:
    """Scales a filter count as the reference does (``round_filters`` in mnasnet_model.py).

    Without a multiplier the count is returned unrounded; an explicit 1.0 still
    rounds to a multiple of 8 (d1's 36 becomes 40), as in the reference.
    """
    if not width_multiplier:
        return filters
    scaled = filters * width_multiplier
    min_depth = min_depth or DEPTH_DIVISOR
    rounded = max(min_depth, int(scaled + DEPTH_DIVISOR / 2) // DEPTH_DIVISOR * DEPTH_DIVISOR)
    if rounded < 0.9 * scaled:  # never round down by more than 10%
        rounded += DEPTH_DIVISOR
    return int(rounded)


def scale_blocks(
    specs: Sequence[BlockSpec], width_multiplier: float | None, min_depth: int | None = None
) -> tuple[BlockSpec, ...]:
    """Applies :func:`round_filters` to every stage's input and output filters."""
    return tuple(
        dataclasses.replace(
            spec,
            input_filters=round_filters(spec.input_filters, width_multiplier, min_depth),
            output_filters=round_filters(spec.output_filters, width_multiplier, min_depth),
        )
        for spec in specs
    )
