import pytest

from mnasnet.arch import (
    ARCHS,
    BlockSpec,
    format_block,
    parse_arch,
    parse_block,
    parse_timm_arch,
    parse_timm_block,
    round_filters,
)
from mnasnet.errors import BlockStringError

import reference_tables
from oracles import import_timm, import_torchvision

REFERENCE_ARCHS = reference_tables.architectures()
ALL_REFERENCE_STRINGS = [s for arch in REFERENCE_ARCHS.values() for s in arch["blocks"]]


def test_reference_lists_every_variant():
    assert set(REFERENCE_ARCHS) == {"a1", "b1", "small", "d1", "d1_320"}


@pytest.mark.parametrize("name", sorted(REFERENCE_ARCHS))
def test_builtin_archs_are_the_reference_strings(name):
    reference = REFERENCE_ARCHS[name]
    assert list(ARCHS[name].blocks) == reference["blocks"]
    assert ARCHS[name].stem_filters == reference["stem"]
    assert ARCHS[name].dropout == reference["dropout"]


@pytest.mark.parametrize("block_string", ALL_REFERENCE_STRINGS)
def test_format_parse_round_trip(block_string):
    assert format_block(parse_block(block_string)) == block_string


def test_parse_fields():
    spec = parse_block("r3_k5_s22_e3_i24_o40_se0.25")
    assert spec == BlockSpec(
        repeats=3, kernel_size=5, strides=(2, 2), expand_ratio=3, input_filters=24, output_filters=40, se_ratio=0.25
    )
    assert parse_block("r1_k3_s11_e1_i32_o16_noskip").id_skip is False
    # tokens may come in any order, as the reference decoder allows
    assert parse_block("k5_r3_o40_i24_e3_s22_se0.25") == spec


@pytest.mark.parametrize(
    ("block_string", "token"),
    [
        ("r3_k5_s22_e3_i24_o40_sx0.25", "sx0.25"),  # timm would silently drop the SE here
        ("r3_k5_s22_e3_i24_o40_se0.x", "se0.x"),
        ("rX_k5_s22_e3_i24_o40", "rX"),
        ("r3_k5_s2_e3_i24_o40", "s2"),
        ("r0_k5_s22_e3_i24_o40", "r0"),
        ("r3_k5_s22_e3_i24_o40_q7", "q7"),
        ("r3_k5_s22_e3_i24_o40_r2", "r2"),
        ("r3_k5_s22_e3_i24_o40_se1.5", "se1.5"),
    ],
)
def test_bad_tokens_name_the_token_and_string(block_string, token):
    with pytest.raises(ValueError) as info:
        parse_block(block_string)
    assert repr(token) in str(info.value)
    assert repr(block_string) in str(info.value)
    assert isinstance(info.value, BlockStringError)


def test_missing_field_is_named():
    with pytest.raises(BlockStringError, match=r"missing token 'i' in block string 'r3_k5_s22_e3_o40'"):
        parse_block("r3_k5_s22_e3_o40")
    with pytest.raises(BlockStringError):
        parse_block("")
    with pytest.raises(BlockStringError):
        parse_arch([])


@pytest.mark.parametrize(
    "timm_string",
    [
        "ds_r1_k3_s1_e1_c16_noskip",
        "ir_r2_k3_s2_e6_c24",
        "ir_r3_k5_s2_e3_c40_se0.25",
        "ds_r1_k3_s1_c8",
        "ir_r1_k3_s1_e6_c320_noskip",
        "ir_r4_k5_s2_e6_c192",
    ],
)
def test_timm_dialect_reads_as_timm_does(timm_string):
    timm = import_timm()
    from timm.models._efficientnet_builder import _decode_block_str

    theirs, repeats = _decode_block_str(timm_string)[:2]
    ours = parse_timm_block(timm_string, input_filters=32)
    assert ours.repeats == repeats
    assert ours.kernel_size == theirs["dw_kernel_size"]
    assert ours.strides == (theirs["stride"], theirs["stride"])
    assert ours.output_filters == theirs["out_chs"]
    assert ours.expand_ratio == theirs.get("exp_ratio", 1.0)
    assert (ours.se_ratio or 0.0) == theirs["se_ratio"]
    assert ours.id_skip == (not theirs["noskip"])
    assert timm.__name__ == "timm"


def test_timm_arch_chains_input_filters_from_the_stem():
    specs = parse_timm_arch([["ds_r1_k3_s1_c8"], ["ir_r1_k3_s2_e3_c16"]], stem_filters=8)
    assert [(s.input_filters, s.output_filters) for s in specs] == [(8, 8), (8, 16)]


@pytest.mark.parametrize(
    "bad", ["xx_r1_k3_s1_c8", "ir_r1_k3_s22_e3_c16", "ir_r1_k3_s2_e3_c16_zz1", "ds_r1_k3_s1_e3_c8"]
)
def test_timm_dialect_is_strict(bad):
    with pytest.raises(BlockStringError):
        parse_timm_block(bad, input_filters=8)


def test_round_filters_agrees_with_timm_and_torchvision():
    torchvision = import_torchvision()
    timm = import_timm()
    from timm.models._efficientnet_builder import round_channels
    from torchvision.models.mnasnet import _round_to_multiple_of

    for filters in (8, 16, 24, 32, 36, 40, 48, 80, 88, 96, 112, 144, 160, 192, 320, 1280):
        for width in (0.25, 0.35, 0.5, 0.75, 1.0, 1.3, 1.4, 2.0):
            ours = round_filters(filters, width)
            assert ours == round_channels(filters, width), (filters, width)
            assert ours == _round_to_multiple_of(filters * width, 8), (filters, width)
    assert torchvision.__name__ == "torchvision" and timm.__name__ == "timm"


def test_round_filters_without_multiplier_keeps_filters():
    assert round_filters(36, None) == 36
    assert round_filters(36, 1.0) == 40  # the reference rounds an explicit 1.0
    assert round_filters(16, 0.35, min_depth=16) == 16
