import math

import pytest
import torch

import mnasnet
from mnasnet.errors import BlockStringError
from mnasnet.layers import Conv2dSame, same_padding
from mnasnet.profile import profile_model

import reference_tables
from conftest import randomize_bn
from oracles import import_timm

SIZES = reference_tables.sizes()


def _label(row):
    arch, width, _, _ = row
    return f"{arch}-x{width}" if width else arch


@pytest.mark.parametrize("row", SIZES, ids=[_label(row) for row in SIZES])
def test_parameters_and_macs_match_the_reference(row):
    arch, width, params, macs = row
    model = mnasnet.create_model(arch, width_multiplier=width)
    assert sum(p.numel() for p in model.parameters()) == params
    if macs is not None:
        profile = profile_model(model, 224)
        assert profile.params == params
        assert abs(profile.macs - macs) / macs < 0.005, (profile.macs, macs)


def test_list_models():
    assert mnasnet.list_models() == ["a1", "b1", "small", "d1", "d1_320"]


@pytest.mark.parametrize("arch", ["a1", "b1", "small", "d1", "d1_320"])
def test_every_variant_runs_at_any_resolution_and_class_count(arch):
    model = mnasnet.create_model(arch, width_multiplier=0.35, num_classes=7).eval()
    for size in (33, 64):
        with torch.no_grad():
            assert model(torch.randn(2, 3, size, size)).shape == (2, 7)


def test_custom_architecture_in_both_dialects_builds_the_same_network():
    reference = ["r1_k3_s11_e1_i32_o16_noskip", "r2_k5_s22_e6_i16_o24_se0.25"]
    timm_style = ["ds_r1_k3_s1_e1_c16_noskip", "ir_r2_k5_s2_e6_c24_se0.25"]
    ours = mnasnet.create_model(reference, num_classes=10)
    theirs = mnasnet.create_model(timm_style, num_classes=10)
    assert [p.shape for p in ours.parameters()] == [p.shape for p in theirs.parameters()]
    assert len(ours.stages) == 2 and len(ours.stages[1]) == 2


def test_custom_architecture_errors_are_clear():
    with pytest.raises(ValueError, match="unknown architecture 'a2'"):
        mnasnet.create_model("a2")
    with pytest.raises(BlockStringError, match="sx0.25"):
        mnasnet.create_model(["r1_k3_s11_e1_i32_o16_sx0.25"])
    with pytest.raises(ValueError, match="width_multiplier"):
        mnasnet.create_model("a1", width_multiplier=0)


def test_reference_layer_settings():
    model = mnasnet.create_model("a1")
    bn = model.stem.bn
    assert (bn.eps, bn.momentum) == (1e-3, 0.01)  # TF's 0.99 decay in PyTorch's convention
    custom = mnasnet.create_model("a1", bn_eps=1e-5, bn_momentum=0.1)
    assert (custom.stem.bn.eps, custom.stem.bn.momentum) == (1e-5, 0.1)
    # SE width from the block's input filters: a1 stage 2 block 0 has i24, se0.25 -> 6, expanded 72
    se = model.stages[2][0].se
    assert (se.reduce.in_channels, se.reduce.out_channels) == (72, 6)
    # dropout sits before the classifier
    assert model.dropout.p == 0.2 and mnasnet.create_model("small").dropout.p == 0.0
    # skips: a1 block 0 is noskip; small block 0 has i16 != its 8 real channels, so no skip either
    assert not model.stages[0][0].has_skip and model.stages[1][1].has_skip
    assert not mnasnet.create_model("small").stages[0][0].has_skip


def test_reference_initialisation():
    torch.manual_seed(0)
    model = mnasnet.create_model("a1")
    expand = model.stages[6][0].expand.conv  # 1x1, 960 outputs: std sqrt(2/960)
    assert expand.weight.std().item() == pytest.approx(math.sqrt(2 / 960), rel=0.05)
    depthwise = model.stages[6][0].depthwise.conv  # 3x3 depthwise: fan-out counts one output
    assert depthwise.weight.std().item() == pytest.approx(math.sqrt(2 / 9), rel=0.05)
    bound = 1 / math.sqrt(1000)
    weight = model.classifier.weight
    assert weight.abs().max().item() <= bound and weight.abs().max().item() > 0.99 * bound
    assert model.classifier.bias.abs().max().item() == 0


def test_tf_same_padding_matches_timm():
    timm = import_timm()
    from timm.layers import Conv2dSame as TimmConv2dSame

    assert timm.__name__ == "timm"
    assert same_padding(224, 3, 2) == (0, 1)  # TF pads 0 top, 1 bottom on stride 2
    assert same_padding(224, 5, 2) == (1, 2)
    torch.manual_seed(0)
    for kernel, stride, size in [(3, 2, 224), (5, 2, 56), (3, 2, 225), (5, 2, 15), (7, 2, 20)]:
        ours = Conv2dSame(4, 4, kernel, stride, groups=4, bias=False)
        theirs = TimmConv2dSame(4, 4, kernel, stride, groups=4, bias=False)
        theirs.weight.data.copy_(ours.weight.data)
        x = torch.randn(1, 4, size, size)
        torch.testing.assert_close(ours(x), theirs(x))


def test_same_padding_differs_from_symmetric_and_is_stored():
    torch.manual_seed(0)
    same = randomize_bn(mnasnet.create_model("small", width_multiplier=0.5, padding="same"))
    symmetric = mnasnet.create_model("small", width_multiplier=0.5, padding="symmetric").eval()
    symmetric.load_state_dict(same.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (same(x) - symmetric(x)).abs().max() > 1e-3
    assert same.config.padding == "same"
    with pytest.raises(ValueError, match="padding"):
        mnasnet.create_model("a1", padding="valid")


def test_stochastic_depth_is_off_by_default_and_works_when_set():
    model = mnasnet.create_model("small", width_multiplier=0.5)
    assert all(block.drop_path is None for stage in model.stages for block in stage)
    dropping = mnasnet.create_model("small", width_multiplier=0.5, drop_path_rate=0.5).train()
    rates = [b.drop_path.drop_prob for s in dropping.stages for b in s if b.drop_path is not None]
    assert rates and rates == sorted(rates) and max(rates) < 0.5
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(0)
    first = dropping(x)
    torch.manual_seed(1)
    assert not torch.allclose(first, dropping(x))
    dropping.eval()
    with torch.no_grad():
        torch.testing.assert_close(dropping(x), dropping(x))


def test_feature_maps_for_detection():
    model = mnasnet.create_model("a1").eval()
    info = {tap["name"]: tap for tap in model.feature_info}
    assert {name: tap["stride"] for name, tap in info.items()} == {
        "stride2": 2,
        "stride4": 4,
        "stride8": 8,
        "stride16": 16,
        "stride32": 32,
        "expand16": 16,
        "head": 32,
    }
    assert model.feature_channels == {
        "stride2": 16,
        "stride4": 24,
        "stride8": 40,
        "stride16": 112,
        "stride32": 320,
        "expand16": 672,
        "head": 1280,
    }
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        maps = model.features(x)
        head = model.forward_features(x)
    for name, tensor in maps.items():
        stride = info[name]["stride"]
        assert tensor.shape == (1, model.feature_channels[name], 224 // stride, 224 // stride), name
    torch.testing.assert_close(maps["head"], head)
