"""Converted torchvision and timm weights must give the source model's outputs."""

import pytest
import torch
from safetensors.torch import save_file

import mnasnet
from mnasnet.cli import main
from mnasnet.errors import CheckpointError
from mnasnet.fuse import fuse_model
from mnasnet.weights.convert import convert_file, convert_state_dict

from conftest import randomize_bn
from oracles import import_timm, import_torchvision

RESOLUTION = 96


def realistic(model: torch.nn.Module, classifier: torch.nn.Linear, seed: int) -> torch.nn.Module:
    """Calibrated BN statistics and logits of ImageNet-like scale (std ~4)."""
    torch.manual_seed(seed)
    randomize_bn(model, seed=seed, resolution=RESOLUTION)
    with torch.no_grad():
        logits = model(torch.randn(4, 3, RESOLUTION, RESOLUTION))
        classifier.weight.mul_(4.0 / logits.std())
    return model


def assert_same_outputs(source: torch.nn.Module, ours: torch.nn.Module) -> None:
    x = torch.randn(3, 3, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = source(x)
        # Eval mode, plain modules: the bar is 1e-4; the conversion is in fact bit-exact.
        torch.testing.assert_close(ours(x), expected, atol=1e-4, rtol=0)
        # The fused copy (BN folded into the convs) reassociates float32 sums; random-init nets
        # amplify that ~1000x, to ~1e-4 on logits of ~15 (2e-5 of the largest).
        torch.testing.assert_close(fuse_model(ours)(x), expected, atol=4e-4, rtol=0)
    assert expected.std() > 1.0  # the comparison is not between two near-zero outputs


@pytest.mark.parametrize(
    ("name", "width", "params"),
    [
        ("mnasnet0_5", 0.5, 2_218_512),
        ("mnasnet0_75", 0.75, 3_170_208),
        ("mnasnet1_0", 1.0, 4_383_312),
        ("mnasnet1_3", 1.3, 6_282_256),
    ],
)
def test_torchvision(name, width, params):
    torchvision = import_torchvision()
    source = getattr(torchvision.models, name)()
    realistic(source, source.classifier[1], seed=0)
    ours = convert_state_dict(source.state_dict(), "torchvision")
    assert (ours.config.arch, ours.config.width_multiplier) == ("b1", width)
    assert sum(p.numel() for p in ours.parameters()) == params
    assert ours.preprocess.interpolation == "bilinear"
    assert_same_outputs(source, ours)


def test_torchvision_version_1_checkpoint_keeps_its_unscaled_stem(tmp_path):
    torchvision = import_torchvision()
    source = torchvision.models.mnasnet0_5()
    # torchvision's own migration turns a width-0.5 model into its version-1 layout (32-filter stem)
    source._load_from_state_dict({}, "", {"version": 1}, False, [], [], [])
    assert source.layers[0].out_channels == 32 and source._version == 1
    realistic(source, source.classifier[1], seed=1)
    state = source.state_dict()
    assert state._metadata[""]["version"] == 1
    path = tmp_path / "mnasnet0_5_v1.pth"
    torch.save(state, path)
    ours = convert_file(path, "torchvision")
    assert ours.config.stem_filters == 32 and ours.config.blocks[0].output_filters == 16
    assert ours.config.width_multiplier == 0.5
    assert_same_outputs(source, ours)


@pytest.mark.parametrize(
    ("name", "arch", "width"),
    [
        ("mnasnet_100", "b1", 1.0),
        ("semnasnet_075", "a1", 0.75),
        ("semnasnet_100", "a1", 1.0),
        ("mnasnet_small", "small", 1.0),
    ],
)
def test_timm(name, arch, width):
    timm = import_timm()
    source = timm.create_model(name)
    realistic(source, source.classifier, seed=2)
    ours = convert_state_dict(source.state_dict(), "timm")
    assert (ours.config.arch, ours.config.width_multiplier) == (arch, width)
    assert ours.preprocess.interpolation == "bicubic"
    assert_same_outputs(source, ours)


def test_timm_small_keeps_timms_extra_skip():
    timm = import_timm()
    source = timm.create_model("mnasnet_small")
    assert source.blocks[0][0].has_skip  # timm tests the real 8 channels
    ours = convert_state_dict(source.state_dict(), "timm")
    assert ours.stages[0][0].has_skip
    assert not mnasnet.create_model("small").stages[0][0].has_skip  # the reference does not


def test_cli_convert_from_pth_and_safetensors(tmp_path, capsys):
    timm = import_timm()
    torchvision = import_torchvision()
    tv_source = torchvision.models.mnasnet0_5()
    realistic(tv_source, tv_source.classifier[1], seed=3)
    torch.save(tv_source.state_dict(), tmp_path / "tv.pth")
    assert (
        main(
            [
                "convert",
                str(tmp_path / "tv.pth"),
                str(tmp_path / "tv.safetensors"),
                "--from",
                "torchvision",
                "--width",
                "0.5",
            ]
        )
        == 0
    )
    assert "MnasNet-b1 x0.5 (2,218,512 parameters)" in capsys.readouterr().out
    assert_same_outputs(tv_source, mnasnet.load_model(tmp_path / "tv.safetensors"))

    timm_source = timm.create_model("semnasnet_075")
    realistic(timm_source, timm_source.classifier, seed=4)
    save_file({k: v.contiguous() for k, v in timm_source.state_dict().items()}, str(tmp_path / "timm.safetensors"))
    assert (
        main(
            [
                "convert",
                str(tmp_path / "timm.safetensors"),
                str(tmp_path / "ours.safetensors"),
                "--from",
                "timm",
                "--arch",
                "a1",
                "--interpolation",
                "bilinear",
            ]
        )
        == 0
    )
    converted = mnasnet.load_model(tmp_path / "ours.safetensors")
    assert converted.preprocess.interpolation == "bilinear"
    assert_same_outputs(timm_source, converted)


def test_mismatches_and_bad_files_give_one_clear_error(tmp_path, capsys):
    timm = import_timm()
    state = timm.create_model("semnasnet_100").state_dict()
    with pytest.raises(CheckpointError, match="do not fit MnasNet b1"):
        convert_state_dict(state, "timm", arch="b1")
    with pytest.raises(CheckpointError, match="not x0.5 as asked"):
        convert_state_dict(state, "timm", width_multiplier=0.5)
    with pytest.raises(CheckpointError, match="not a torchvision MnasNet state dict"):
        convert_state_dict(state, "torchvision")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a checkpoint")
    out = tmp_path / "out.safetensors"
    assert main(["convert", str(bad), str(out), "--from", "timm"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "cannot read weights" in error and "Traceback" not in error
    assert not out.exists()
    assert main(["convert", str(tmp_path / "absent.pth"), str(out), "--from", "torchvision"]) == 2
    assert "not found" in capsys.readouterr().err
