"""The MNAS search space: sampled candidates build, chain and count as the block strings say."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mnasnet.arch import ARCHS
from mnasnet.errors import MnasNetError
from mnasnet.model import create_model
from mnasnet.profile import profile_model
from mnasnet.search.space import BUILTIN_SPACES, Candidate, SearchSpaceError, load_space, parse_space

from oracles import import_torchvision

# MobileNetV2's skeleton (Sandler et al. 2018, Table 2; REFERENCE.md section 9): repeats, filters, strides.
MOBILENETV2 = {
    "repeats": (1, 2, 3, 4, 3, 3, 1),
    "filters": (16, 24, 32, 64, 96, 160, 320),
    "strides": (1, 2, 2, 2, 1, 2, 1),
}
# The paper's per-stage choices (MnasNet paper section 4.1, REFERENCE.md section 9).
PAPER_STAGE_OPTIONS = {"expand_ratio": 3, "kernel_size": 2, "se_ratio": 2, "skip": 2}

_BLOCK = re.compile(r"^r(\d+)_k(\d+)_s(\d)(\d)_e(\d+)_i(\d+)_o(\d+)(?:_se([\d.]+))?(_noskip)?$")


def manual_count(blocks, stem=32, head=1280, classes=1000):
    """Parameters and identity skips counted by hand from the strings (REFERENCE.md section 3)."""
    params, skips, channels = 3 * 9 * stem + 2 * stem, 0, stem
    for block in blocks:
        repeats, kernel, stride, _, expand, first_in, out, se, noskip = _BLOCK.match(block).groups()
        repeats, kernel, stride, expand, first_in, out = map(int, (repeats, kernel, stride, expand, first_in, out))
        for layer in range(repeats):
            named_in = first_in if layer == 0 else out
            layer_stride = stride if layer == 0 else 1
            assert named_in == channels, f"{block}: input {named_in} does not follow the previous {channels}"
            hidden = named_in * expand if expand != 1 else channels
            if expand != 1:
                params += channels * hidden + 2 * hidden
            params += kernel * kernel * hidden + 2 * hidden
            if se:
                squeeze = max(1, int(named_in * float(se)))
                params += hidden * squeeze + squeeze + squeeze * hidden + hidden
            params += hidden * out + 2 * out
            skips += int(not noskip and layer_stride == 1 and named_in == out)
            channels = out
    return params + channels * head + 2 * head + head * classes + classes, skips


def test_builtin_spaces_follow_the_skeletons():
    space = load_space("mobilenetv2")
    assert [s.repeats for s in space.stages] == list(MOBILENETV2["repeats"])
    assert [s.filters for s in space.stages] == list(MOBILENETV2["filters"])
    assert [s.stride for s in space.stages] == list(MOBILENETV2["strides"])
    a1 = load_space("a1")
    a1_blocks = ARCHS["a1"].blocks
    assert [s.filters for s in a1.stages] == [int(re.search(r"_o(\d+)", b).group(1)) for b in a1_blocks]
    assert [s.repeats for s in a1.stages] == [int(b[1]) for b in a1_blocks]
    for stage in space.stages:
        assert all(value % 8 == 0 for value in stage.filter_choices())
        # x0.75, x1.0, x1.25 of the skeleton, rounded to 8 as the reference's round_filters does,
        # never down by more than 10% (REFERENCE.md section 3): 24 x 0.75 = 18 gives 24, not 16.
        expected = set()
        for multiplier in (0.75, 1.0, 1.25):
            scaled = stage.filters * multiplier
            rounded = max(8, int(scaled + 4) // 8 * 8)
            expected.add(rounded + 8 if rounded < 0.9 * scaled else rounded)
        assert set(stage.filter_choices()) == expected
    # Per stage: 3 x 2 x 2 x 2 op choices, filters and layers as counted; one-layer stages lose -1.
    stage_sizes = [
        math.prod(PAPER_STAGE_OPTIONS.values()) * len(s.filter_choices()) * (2 if s.repeats == 1 else 3)
        for s in space.stages
    ]
    assert space.size() == math.prod(stage_sizes)
    assert len(space.decisions) == 7 * 6 + 2


def test_200_sampled_candidates_build_chain_and_count(monkeypatch):
    # Counting needs no weight values; skipping the random init makes each build 10x faster.
    for name in ("normal_", "uniform_", "kaiming_uniform_"):
        monkeypatch.setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
    space = load_space("mobilenetv2")
    rng = np.random.default_rng(2024)
    for _ in range(200):
        candidate = space.sample(rng)
        model = create_model(list(candidate.blocks))
        expected_params, expected_skips = manual_count(candidate.blocks)
        assert profile_model(model, resolution=32).params == expected_params, candidate.blocks
        assert sum(block.has_skip for stage in model.stages for block in stage) == expected_skips
        assert space.decode(space.encode(candidate)) == candidate


def test_macs_match_torch_flop_counter():
    space = load_space("a1")
    rng = np.random.default_rng(7)
    for _ in range(2):
        model = create_model(list(space.sample(rng).blocks), resolution=64).eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(1, 3, 64, 64))
        assert profile_model(model, resolution=64).macs == counter.get_total_flops() // 2


def test_paper_architectures_are_points_of_the_spaces():
    """A1 is a point of the A1 space, MobileNetV2 of the MobileNetV2 space (torchvision's parameter count)."""
    a1 = load_space("a1")
    indices = a1.encode(Candidate(ARCHS["a1"].blocks, 224))
    model = create_model(list(a1.decode(indices).blocks))
    assert sum(p.numel() for p in model.parameters()) == 3_887_038  # REFERENCE.md section 4

    space = load_space("mobilenetv2")
    choose = {"expand_ratio": 6, "kernel_size": 3, "se_ratio": 0.0, "skip": "identity", "filters": None, "layers": 0}
    indices = []
    for number, decision in enumerate(space.decisions):
        key = decision.name.split(".")[-1]
        stage = space.stages[number // 6] if number < 42 else None
        if key == "filters":
            value = stage.filters
        elif key == "expand_ratio" and number // 6 == 0:
            value = 1  # MobileNetV2's first block does not expand
        else:
            value = choose.get(key, decision.choices[0])
        indices.append(decision.choices.index(value))
    mobilenet = create_model(list(space.decode(indices).blocks))
    oracle = import_torchvision().models.mobilenet_v2()
    assert sum(p.numel() for p in mobilenet.parameters()) == sum(p.numel() for p in oracle.parameters())


def test_width_and_resolution_as_decisions(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(
        "skeleton: a1\nwidth_multiplier: [0.5, 1.0]\nresolution: [128, 160, 224]\n"
        "stages:\n  - {choices: {expand_ratio: [1]}}\n  - {}\n  - {}\n  - {}\n  - {}\n  - {}\n  - {}\n"
    )
    space = load_space(path)
    assert space.decisions[0].choices == (1,)
    assert space.decisions[-2].choices == (0.5, 1.0) and space.decisions[-1].choices == (128, 160, 224)
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(12):
        candidate = space.sample(rng)
        seen.add(candidate.width_multiplier)
        stem = candidate.stem
        assert stem == (16 if candidate.width_multiplier == 0.5 else 32)
        model = create_model(list(candidate.blocks), stem_filters=stem, resolution=candidate.resolution)
        assert model(torch.zeros(1, 3, candidate.resolution, candidate.resolution)).shape == (1, 1000)
        assert manual_count(candidate.blocks, stem=stem)[0] == sum(p.numel() for p in model.parameters())
        assert space.decode(space.encode(candidate)) == candidate
    assert seen == {0.5, 1.0}


def test_skip_is_dropped_where_it_cannot_apply_and_hash_is_stable():
    space = parse_space({"stages": [{"repeats": 1, "filters": 16, "stride": 2}], "stem_filters": 16})
    skip_index = next(i for i, d in enumerate(space.decisions) if d.name == "stage1.skip")
    indices = [0] * len(space.decisions)
    with_skip = space.decode(indices)
    indices[skip_index] = 1
    without = space.decode(indices)
    assert with_skip == without and "noskip" not in without.blocks[0]  # stride 2: never a skip
    assert with_skip.arch_hash == without.arch_hash
    import hashlib

    text = "\n".join(with_skip.blocks) + f"\nresolution={with_skip.resolution}"
    assert with_skip.arch_hash == hashlib.sha256(text.encode()).hexdigest()
    other = Candidate(with_skip.blocks, resolution=192)
    assert other.arch_hash != with_skip.arch_hash


def test_decode_and_encode_refuse_what_is_not_in_the_space():
    space = load_space("mobilenetv2")
    with pytest.raises(SearchSpaceError, match="expected 44 choice indices"):
        space.decode([0] * 3)
    with pytest.raises(SearchSpaceError, match="stage1.kernel_size"):
        space.decode([0, 5] + [0] * 42)
    with pytest.raises(SearchSpaceError, match="kernel_size = 7"):
        space.encode(Candidate(("r1_k7_s11_e1_i32_o16",) + ARCHS["a1"].blocks[1:], 224))


BAD_SPACES = [
    ({"skeleton": "a1", "choices": {"kernel": [3]}}, "choices.kernel"),
    ({"skeleton": "a1", "choices": {"kernel_size": []}}, "choices.kernel_size: the list of options is empty"),
    ({"skeleton": "a1", "choices": {"kernel_size": [3, 4]}}, "choices.kernel_size: kernel sizes must be odd"),
    ({"skeleton": "a1", "choices": {"expand_ratio": [0, 6]}}, "choices.expand_ratio"),
    ({"skeleton": "a1", "choices": {"se_ratio": [1.5]}}, "choices.se_ratio"),
    ({"skeleton": "a1", "choices": {"skip": ["pool"]}}, "choices.skip"),
    ({"skeleton": "a1", "choices": {"filters": [-1.0]}}, "choices.filters"),
    ({"skeleton": "a1", "choices": {"kernel_size": 3}}, "choices.kernel_size: expected a list"),
    ({"skeleton": "a1", "choices": {"kernel_size": [3, 3]}}, "repeated option"),
    ({"skeleton": "z9"}, "skeleton: unknown architecture"),
    ({"stages": [{"repeats": 1, "filters": 16, "stride": 3}]}, "stages[0].stride: must be 1 or 2"),
    ({"stages": [{"repeats": 1, "filters": 0, "stride": 1}]}, "stages[0].filters: must be positive"),
    ({"stages": [{"repeats": 1, "filters": 16}]}, "stages[0].stride: missing"),
    ({"stages": [{"repeats": 1, "filters": 16, "stride": 1, "kernel": 3}]}, "stages[0].kernel: unknown key"),
    ({"stages": [{"repeats": True, "filters": 16, "stride": 1}]}, "stages[0].repeats: expected an integer"),
    ({"stages": [{"repeats": 1, "filters": 16, "stride": 1, "choices": {"layers": [-1]}}]}, "choices.layers"),
    ({"stages": []}, "stages: give a non-empty list"),
    ({"skeleton": "a1", "resolution": [16]}, "resolution: must be at least 32"),
    ({"skeleton": "a1", "width_multiplier": [0]}, "width_multiplier: must be positive"),
    ({"skeleton": "a1", "stem_filter": 32}, "stem_filter: unknown key"),
]


@pytest.mark.parametrize(("data", "message"), BAD_SPACES)
def test_bad_space_files_raise_one_clear_error(data, message):
    with pytest.raises(SearchSpaceError, match=re.escape(message)) as info:
        parse_space(data, source="space.yaml")
    assert isinstance(info.value, MnasNetError)


def test_bad_files_and_names(tmp_path):
    with pytest.raises(SearchSpaceError, match="search space not found"):
        load_space(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("stages: [1, 2\n")
    with pytest.raises(SearchSpaceError, match="not a readable YAML file"):
        load_space(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(SearchSpaceError, match="expected a mapping at the top level"):
        load_space(listed)
    assert set(BUILTIN_SPACES) == {"mobilenetv2", "a1"}
