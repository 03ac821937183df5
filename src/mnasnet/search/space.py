"""The MNAS factorised hierarchical search space, written in our block-string grammar.

The network is a fixed skeleton of stages (MobileNetV2's or MnasNet-A1's); each
stage picks its own block, repeated: expansion ratio, kernel size, squeeze-excite,
skip, filters (a multiple of the skeleton's, rounded to 8) and layers (the
skeleton's count -1, 0 or +1). Layers in a stage are identical and only the first
strides, which is exactly what one block string says (paper section 4.1).

Differences from the paper: the paper's plain-convolution op and its pooling skip
are not in our grammar, so the conv op is the expansion ratio (1 is the paper's
depthwise-separable conv, 3 and 6 its MBConv).

A space is data: ``spaces/mobilenetv2.yaml`` and ``spaces/a1.yaml`` ship with the
package and are read by the same strict parser as a user's file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import random
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mnasnet import limits
from mnasnet.arch import ARCHS, BlockSpec, format_block, parse_arch, round_filters
from mnasnet.errors import MnasNetError

__all__ = [
    "BUILTIN_SPACES",
    "Candidate",
    "Decision",
    "SearchSpace",
    "SearchSpaceError",
    "StageSpace",
    "arch_hash",
    "canonical_block",
    "load_space",
    "parse_space",
]

BUILTIN_SPACES = ("mobilenetv2", "a1")
SKIPS = ("identity", "none")
_SPACES_DIR = Path(__file__).parent / "spaces"
# The paper's per-stage choices (section 4.1), used where a file names none.
PAPER_CHOICES: dict[str, tuple] = {
    "expand_ratio": (1, 3, 6),
    "kernel_size": (3, 5),
    "se_ratio": (0.0, 0.25),
    "skip": SKIPS,
    "filters": (0.75, 1.0, 1.25),
    "layers": (-1, 0, 1),
}


class SearchSpaceError(MnasNetError, ValueError):
    """A search-space file or a candidate that does not fit the space."""


@dataclasses.dataclass(frozen=True)
class Decision:
    """One choice the controller makes: a name such as ``stage3.kernel_size`` and its options."""

    name: str
    choices: tuple


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One architecture: final (width-scaled) block strings and the input resolution.

    The first block's input filters are the stem's. ``stem_filters``, ``head_filters``
    and ``num_classes`` are only set for the latency probes of a lookup table (a stem
    with no blocks, a small head); a searched candidate leaves them at their defaults.
    """

    blocks: tuple[str, ...]
    resolution: int
    width_multiplier: float = 1.0
    stem_filters: int | None = None
    head_filters: int = 1280
    num_classes: int = 1000

    @property
    def stem(self) -> int:
        if self.stem_filters is not None:
            return self.stem_filters
        return parse_arch(self.blocks)[0].input_filters

    def canonical_text(self) -> str:
        """The block strings and resolution, one a line: what :func:`arch_hash` hashes."""
        lines = [*self.blocks, f"resolution={self.resolution}"]
        if self.stem_filters is not None:
            lines.append(f"stem={self.stem_filters}")
        if (self.head_filters, self.num_classes) != (1280, 1000):
            lines.append(f"head={self.head_filters} classes={self.num_classes}")
        return "\n".join(lines)

    @property
    def arch_hash(self) -> str:
        return arch_hash(self)

    def build_model(self, **settings: Any):
        """A randomly initialised :class:`~mnasnet.model.MnasNet` of this architecture."""
        from mnasnet.model import MnasNet, MnasNetConfig

        config = MnasNetConfig(
            blocks=parse_arch(self.blocks) if self.blocks else (),
            stem_filters=self.stem,
            head_filters=self.head_filters,
            num_classes=self.num_classes,
            resolution=self.resolution,
            **settings,
        )
        return MnasNet(config)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"blocks": list(self.blocks)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Candidate:
        return cls(**{**data, "blocks": tuple(data["blocks"])})


def canonical_block(spec: BlockSpec) -> BlockSpec:
    """Drops a ``noskip`` that cannot matter: a single layer that strides or changes filters has no skip."""
    can_skip = spec.repeats > 1 or (spec.strides == (1, 1) and spec.input_filters == spec.output_filters)
    return spec if can_skip else dataclasses.replace(spec, id_skip=True)


def arch_hash(candidate: Candidate) -> str:
    """A stable sha256 of the candidate's canonical block strings and resolution."""
    return hashlib.sha256(candidate.canonical_text().encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class StageSpace:
    """One stage of the skeleton and the choices searched for it."""

    repeats: int
    filters: int
    stride: int
    expand_ratio: tuple[int, ...] = PAPER_CHOICES["expand_ratio"]
    kernel_size: tuple[int, ...] = PAPER_CHOICES["kernel_size"]
    se_ratio: tuple[float, ...] = PAPER_CHOICES["se_ratio"]
    skip: tuple[str, ...] = SKIPS
    filters_multiplier: tuple[float, ...] = PAPER_CHOICES["filters"]
    layers: tuple[int, ...] = PAPER_CHOICES["layers"]

    def filter_choices(self) -> tuple[int, ...]:
        """Distinct filter counts: the skeleton's times each multiplier, rounded to multiples of 8."""
        return tuple(sorted({round_filters(self.filters, multiplier) for multiplier in self.filters_multiplier}))

    def layer_choices(self) -> tuple[int, ...]:
        """Layer deltas that leave at least one layer (-1 is dropped from a one-layer stage)."""
        return tuple(delta for delta in self.layers if self.repeats + delta >= 1)


class SearchSpace:
    """A factorised space: per-stage decisions, then the width multiplier and the resolution.

    Every decision is always present (a single-option one is fixed), so a decision's
    index in :attr:`decisions` never depends on the space's options.
    """

    _STAGE_KEYS = ("expand_ratio", "kernel_size", "se_ratio", "skip", "filters", "layers")

    def __init__(
        self,
        stages: Sequence[StageSpace],
        *,
        stem_filters: int = 32,
        width_multipliers: Sequence[float] = (1.0,),
        resolutions: Sequence[int] = (224,),
        name: str = "custom",
    ) -> None:
        if not stages:
            raise SearchSpaceError("a search space needs at least one stage")
        self.stages = tuple(stages)
        self.stem_filters = stem_filters
        self.width_multipliers = tuple(width_multipliers)
        self.resolutions = tuple(resolutions)
        self.name = name
        decisions = []
        for number, stage in enumerate(self.stages, start=1):
            options = {
                "expand_ratio": stage.expand_ratio,
                "kernel_size": stage.kernel_size,
                "se_ratio": stage.se_ratio,
                "skip": stage.skip,
                "filters": stage.filter_choices(),
                "layers": stage.layer_choices(),
            }
            decisions.extend(Decision(f"stage{number}.{key}", tuple(options[key])) for key in self._STAGE_KEYS)
        decisions.append(Decision("width_multiplier", self.width_multipliers))
        decisions.append(Decision("resolution", self.resolutions))
        self.decisions = tuple(decisions)

    def __repr__(self) -> str:
        return f"SearchSpace({self.name!r}, {len(self.stages)} stages, {self.size():.3g} architectures)"

    def size(self) -> int:
        """How many choice vectors the space holds (the paper's count: the product of the options).

        A skip choice on a single layer that changes shape makes no difference, so a
        few vectors decode to the same network.
        """
        return math.prod(len(decision.choices) for decision in self.decisions)

    def sample(self, rng: np.random.Generator | random.Random | int | None = None) -> Candidate:
        """A uniformly random candidate."""
        return self.decode(self.sample_indices(rng))

    def sample_indices(self, rng: np.random.Generator | random.Random | int | None = None) -> list[int]:
        if rng is None or isinstance(rng, int):
            rng = np.random.default_rng(rng)
        if isinstance(rng, random.Random):
            return [rng.randrange(len(decision.choices)) for decision in self.decisions]
        return [int(rng.integers(len(decision.choices))) for decision in self.decisions]

    def decode(self, indices: Sequence[int]) -> Candidate:
        """The candidate a choice vector (one index per decision) describes."""
        if len(indices) != len(self.decisions):
            raise SearchSpaceError(f"expected {len(self.decisions)} choice indices, got {len(indices)}")
        values = []
        for decision, index in zip(self.decisions, indices, strict=True):
            if not isinstance(index, int | np.integer) or not 0 <= index < len(decision.choices):
                raise SearchSpaceError(
                    f"choice index {index!r} out of range for {decision.name} ({len(decision.choices)} options)"
                )
            values.append(decision.choices[index])
        width, resolution = values[-2], values[-1]
        scale = None if width == 1.0 else width
        channels = round_filters(self.stem_filters, scale)
        blocks = []
        per_stage = len(self._STAGE_KEYS)
        for number, stage in enumerate(self.stages):
            chosen = dict(zip(self._STAGE_KEYS, values[number * per_stage : (number + 1) * per_stage], strict=True))
            filters = round_filters(chosen["filters"], scale)
            repeats = stage.repeats + chosen["layers"]
            # A skip needs stride 1 and equal filters; a single layer that changes shape has none,
            # so the canonical string leaves the meaningless `noskip` out.
            spec = BlockSpec(
                repeats=repeats,
                kernel_size=chosen["kernel_size"],
                strides=(stage.stride, stage.stride),
                expand_ratio=chosen["expand_ratio"],
                input_filters=channels,
                output_filters=filters,
                se_ratio=chosen["se_ratio"] or None,
                id_skip=chosen["skip"] == "identity",
            )
            blocks.append(format_block(canonical_block(spec)))
            channels = filters
        return Candidate(blocks=tuple(blocks), resolution=resolution, width_multiplier=width)

    def encode(self, candidate: Candidate) -> list[int]:
        """The choice vector of a candidate of this space (``decode(encode(c)) == c``).

        Raises:
            SearchSpaceError: the candidate is not in the space.
        """
        specs = parse_arch(candidate.blocks)
        if len(specs) != len(self.stages):
            raise SearchSpaceError(f"candidate has {len(specs)} stages, the space {len(self.stages)}")
        width = candidate.width_multiplier
        scale = None if width == 1.0 else width
        indices = []
        for number, (stage, spec) in enumerate(zip(self.stages, specs, strict=True), start=1):
            filters = {round_filters(value, scale): value for value in reversed(stage.filter_choices())}
            values = {
                "expand_ratio": spec.expand_ratio,
                "kernel_size": spec.kernel_size,
                "se_ratio": spec.se_ratio or 0.0,
                "skip": "identity" if spec.id_skip else "none",
                "filters": filters.get(spec.output_filters, -1),
                "layers": spec.repeats - stage.repeats,
            }
            for key in self._STAGE_KEYS:
                indices.append(self._index(f"stage{number}.{key}", values[key]))
        indices.append(self._index("width_multiplier", width))
        indices.append(self._index("resolution", candidate.resolution))
        canonical = dataclasses.replace(candidate, blocks=tuple(format_block(canonical_block(s)) for s in specs))
        if self.decode(indices) != canonical:
            raise SearchSpaceError(f"candidate {candidate.blocks} is not in search space {self.name!r}")
        return indices

    def _index(self, name: str, value: Any) -> int:
        decision = next(d for d in self.decisions if d.name == name)
        for index, choice in enumerate(decision.choices):
            if choice == value:
                return index
        raise SearchSpaceError(f"{name} = {value!r} is not one of the space's options {decision.choices}")


# -- YAML ------------------------------------------------------------------------------------

_TOP_KEYS = {"name", "description", "skeleton", "stem_filters", "stages", "choices", "width_multiplier", "resolution"}
_STAGE_FIELDS = {"repeats", "filters", "stride", "choices"}


def _fail(source: str, key: str, message: str) -> SearchSpaceError:
    return SearchSpaceError(f"{source}: {key}: {message}")


def _number(value: Any, source: str, key: str, kind: type) -> int | float:
    # bool is an int in Python; `true` is never a filter count
    ok = isinstance(value, int) if kind is int else isinstance(value, int | float)
    if not ok or isinstance(value, bool):
        raise _fail(source, key, f"expected {'an integer' if kind is int else 'a number'}, got {value!r}")
    # a float too large (or an int too large to be one) is no setting: .inf, .nan, 1e999 written out
    if kind is not int and not (abs(value) <= sys.float_info.max and math.isfinite(value)):
        raise _fail(source, key, f"expected a finite number, got {value!r}")
    return kind(value)


def _at_most(value: int | float, limit: int | float, source: str, key: str, what: str) -> None:
    if value > limit:
        raise _fail(source, key, f"{what} {value} is over the limit of {limit}")


def _choice_list(value: Any, source: str, key: str) -> list:
    items = value if isinstance(value, list) else None
    if items is None:
        raise _fail(source, key, f"expected a list of options, got {value!r}")
    if not items:
        raise _fail(source, key, "the list of options is empty")
    if len(set(map(str, items))) != len(items):
        raise _fail(source, key, f"repeated option in {items}")
    return items


def _check_choice(name: str, value: Any, source: str, key: str) -> Any:
    if name == "skip":
        if value not in SKIPS:
            raise _fail(source, key, f"skip options are {', '.join(SKIPS)}; got {value!r}")
        return value
    if name == "kernel_size":
        kernel = _number(value, source, key, int)
        if kernel < 1 or kernel % 2 == 0:
            raise _fail(source, key, f"kernel sizes must be odd and positive, got {value!r}")
        _at_most(kernel, limits.MAX_KERNEL_SIZE, source, key, "kernel size")
        return kernel
    if name == "expand_ratio":
        ratio = _number(value, source, key, int)
        if ratio < 1:
            raise _fail(source, key, f"expansion ratios must be at least 1, got {value!r}")
        _at_most(ratio, limits.MAX_EXPAND_RATIO, source, key, "expansion ratio")
        return ratio
    if name == "se_ratio":
        ratio = _number(value, source, key, float)
        if not 0.0 <= ratio <= 1.0:
            raise _fail(source, key, f"squeeze-excite ratios must be in [0, 1] (0 = none), got {value!r}")
        return ratio
    if name == "filters":
        multiplier = _number(value, source, key, float)
        if multiplier <= 0:
            raise _fail(source, key, f"filter multipliers must be positive, got {value!r}")
        _at_most(multiplier, limits.MAX_WIDTH_MULTIPLIER, source, key, "filter multiplier")
        return multiplier
    return _number(value, source, key, int)  # layers: a delta, any sign


def _parse_choices(data: Any, source: str, key: str, defaults: Mapping[str, tuple]) -> dict[str, tuple]:
    if not isinstance(data, dict):
        raise _fail(source, key, f"expected a mapping of options, got {data!r}")
    unknown = sorted(set(data) - set(PAPER_CHOICES), key=str)
    if unknown:
        raise _fail(source, f"{key}.{unknown[0]}", f"unknown key; use {', '.join(PAPER_CHOICES)}")
    merged = dict(defaults)
    for name, value in data.items():
        items = _choice_list(value, source, f"{key}.{name}")
        merged[name] = tuple(_check_choice(name, item, source, f"{key}.{name}") for item in items)
    return merged


def _parse_stage(data: Any, source: str, key: str, defaults: Mapping[str, tuple]) -> StageSpace:
    if not isinstance(data, dict):
        raise _fail(source, key, f"expected a mapping with repeats, filters and stride, got {data!r}")
    unknown = sorted(set(data) - _STAGE_FIELDS, key=str)
    if unknown:
        raise _fail(source, f"{key}.{unknown[0]}", f"unknown key; use {', '.join(sorted(_STAGE_FIELDS))}")
    for field in ("repeats", "filters", "stride"):
        if field not in data:
            raise _fail(source, f"{key}.{field}", "missing")
    repeats = _number(data["repeats"], source, f"{key}.repeats", int)
    filters = _number(data["filters"], source, f"{key}.filters", int)
    stride = _number(data["stride"], source, f"{key}.stride", int)
    if repeats < 1:
        raise _fail(source, f"{key}.repeats", f"must be at least 1, got {repeats}")
    if filters < 1:
        raise _fail(source, f"{key}.filters", f"must be positive, got {filters}")
    if stride not in (1, 2):
        raise _fail(source, f"{key}.stride", f"must be 1 or 2, got {stride}")
    _at_most(repeats, limits.MAX_REPEATS, source, f"{key}.repeats", "repeats")
    _at_most(filters, limits.MAX_FILTERS, source, f"{key}.filters", "filters")
    choices = _parse_choices(data.get("choices", {}), source, f"{key}.choices", defaults)
    stage = StageSpace(
        repeats=repeats,
        filters=filters,
        stride=stride,
        expand_ratio=choices["expand_ratio"],
        kernel_size=choices["kernel_size"],
        se_ratio=choices["se_ratio"],
        skip=choices["skip"],
        filters_multiplier=choices["filters"],
        layers=choices["layers"],
    )
    if not stage.layer_choices():
        raise _fail(source, f"{key}.choices.layers", f"every option leaves fewer than 1 of the {repeats} layers")
    # the largest choices must build: limits on block strings (arch.py), checked here, before any trial
    _at_most(repeats + max(stage.layer_choices()), limits.MAX_REPEATS, source, f"{key}.choices.layers", "layers")
    _at_most(max(stage.filter_choices()), limits.MAX_FILTERS, source, f"{key}.choices.filters", "filters")
    return stage


def _skeleton(name: Any, source: str) -> tuple[int, list[dict[str, int]]]:
    if name not in ARCHS:
        raise _fail(source, "skeleton", f"unknown architecture {name!r}; choose from {', '.join(ARCHS)}")
    stages = [
        {"repeats": spec.repeats, "filters": spec.output_filters, "stride": spec.stride}
        for spec in parse_arch(ARCHS[name].blocks)
    ]
    return ARCHS[name].stem_filters, stages


def _one_or_list(value: Any, source: str, key: str, kind: type) -> tuple:
    items = value if isinstance(value, list) else [value]
    items = _choice_list(items, source, key)
    numbers = tuple(_number(item, source, key, kind) for item in items)
    if any(number <= 0 for number in numbers):
        raise _fail(source, key, f"must be positive, got {list(numbers)}")
    return numbers


def parse_space(data: Any, source: str = "search space") -> SearchSpace:
    """Builds a :class:`SearchSpace` from a parsed YAML mapping, strictly.

    Keys: ``name``, ``description``, ``skeleton`` (an architecture name, e.g. ``a1``)
    or ``stages`` (a list of ``{repeats, filters, stride, choices}``), ``stem_filters``,
    ``choices`` (defaults for every stage: ``expand_ratio``, ``kernel_size``,
    ``se_ratio``, ``skip``, ``filters`` multipliers, ``layers`` deltas),
    ``width_multiplier`` and ``resolution`` (a value or a list of options).
    A ``skeleton`` may be combined with ``stages`` entries that hold only ``choices``.

    Raises:
        SearchSpaceError: naming the offending key.
    """
    if not isinstance(data, dict):
        raise SearchSpaceError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    unknown = sorted(set(data) - _TOP_KEYS, key=str)
    if unknown:
        raise _fail(source, str(unknown[0]), f"unknown key; use {', '.join(sorted(_TOP_KEYS))}")
    defaults = _parse_choices(data.get("choices", {}), source, "choices", PAPER_CHOICES)
    stem = 32
    stage_data = data.get("stages")
    if "skeleton" in data:
        stem, skeleton_stages = _skeleton(data["skeleton"], source)
        if stage_data is not None:
            if not isinstance(stage_data, list) or len(stage_data) != len(skeleton_stages):
                raise _fail(source, "stages", f"with a skeleton, give one entry per stage ({len(skeleton_stages)})")
            skeleton_stages = [
                {**base, **(extra or {})} if isinstance(extra, dict) or extra is None else extra
                for base, extra in zip(skeleton_stages, stage_data, strict=True)
            ]
        stage_data = skeleton_stages
    elif not isinstance(stage_data, list) or not stage_data:
        raise _fail(source, "stages", "give a non-empty list of stages, or a skeleton name")
    stages = [_parse_stage(stage, source, f"stages[{i}]", defaults) for i, stage in enumerate(stage_data)]
    if "stem_filters" in data:
        stem = _number(data["stem_filters"], source, "stem_filters", int)
        if stem < 1:
            raise _fail(source, "stem_filters", f"must be positive, got {stem}")
    _at_most(stem, limits.MAX_FILTERS, source, "stem_filters", "stem filters")
    depth = sum(stage.repeats + max(stage.layer_choices()) for stage in stages)
    _at_most(depth, limits.MAX_BLOCKS, source, "stages", "the deepest network's block count")
    widths = _one_or_list(data.get("width_multiplier", 1.0), source, "width_multiplier", float)
    _at_most(max(widths), limits.MAX_WIDTH_MULTIPLIER, source, "width_multiplier", "width multiplier")
    resolutions = _one_or_list(data.get("resolution", 224), source, "resolution", int)
    if any(size < 32 for size in resolutions):
        raise _fail(source, "resolution", f"must be at least 32 (the network strides by 32), got {list(resolutions)}")
    _at_most(max(resolutions), limits.MAX_RESOLUTION, source, "resolution", "resolution")
    name = data.get("name", "custom")
    if not isinstance(name, str):
        raise _fail(source, "name", f"expected text, got {name!r}")
    return SearchSpace(stages, stem_filters=stem, width_multipliers=widths, resolutions=resolutions, name=name)


def load_space(space: str | os.PathLike) -> SearchSpace:
    """A built-in space (``mobilenetv2``, ``a1``) or a user's YAML file.

    Raises:
        SearchSpaceError: an unknown name, an unreadable file, or a file that breaks the schema.
    """
    import yaml

    text = str(space)
    path = _SPACES_DIR / f"{text}.yaml" if text in BUILTIN_SPACES else Path(text).expanduser()
    if not path.is_file():
        raise SearchSpaceError(f"search space not found: {text} (a YAML file, or one of {', '.join(BUILTIN_SPACES)})")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SearchSpaceError(f"{path}: not a readable YAML file ({first})") from None
    return parse_space(data, source=str(path) if text not in BUILTIN_SPACES else f"built-in space {text!r}")
