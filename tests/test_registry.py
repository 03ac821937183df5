"""The weights registry against its publishers: torchvision's enums, timm's configs, REFERENCE.md."""

import json
import re

import pytest

import mnasnet
from mnasnet.cli import main
from mnasnet.weights import Weights, get_weights, list_weights, register_weights

from oracles import import_timm, import_torchvision

PUBLISHED = {
    # publisher's name -> (source, arch); the list of every published checkpoint
    "mnasnet0_5": ("torchvision", "b1"),
    "mnasnet0_75": ("torchvision", "b1"),
    "mnasnet1_0": ("torchvision", "b1"),
    "mnasnet1_3": ("torchvision", "b1"),
    "mnasnet_100.rmsp_in1k": ("timm", "b1"),
    "semnasnet_100.rmsp_in1k": ("timm", "a1"),
    "semnasnet_075.rmsp_in1k": ("timm", "a1"),
    "mnasnet_small.lamb_in1k": ("timm", "small"),
    "mnasnet-a1": ("tf", "a1"),
    "mnasnet-b1": ("tf", "b1"),
}
TORCHVISION_ENUMS = {
    "mnasnet0_5": "MNASNet0_5_Weights",
    "mnasnet0_75": "MNASNet0_75_Weights",
    "mnasnet1_0": "MNASNet1_0_Weights",
    "mnasnet1_3": "MNASNet1_3_Weights",
}


def _count(model) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def test_one_complete_entry_per_published_checkpoint():
    entries = list_weights()
    assert sorted(entry.publisher_name for entry in entries) == sorted(PUBLISHED)
    assert len({entry.name for entry in entries}) == len(entries)
    for entry in entries:
        source, arch = PUBLISHED[entry.publisher_name]
        assert (entry.source, entry.arch) == (source, arch)
        assert get_weights(entry.publisher_name) is entry is get_weights(entry.name)
        assert entry.url.startswith("https://") and entry.file_name
        assert entry.top1 is not None and entry.num_params > 0 and entry.license and entry.hash_source
        assert entry.num_classes == 1000 and entry.labels == "imagenet-1k"
        assert re.fullmatch(rf"{arch}_\d{{3}}\.(torchvision|timm|google)_\w*in1k", entry.name), entry.name
        if source == "tf":
            assert entry.sha256 is None and "none published" in entry.hash_source
        else:
            assert entry.sha256 is not None


def test_parameter_counts_recomputed_from_our_model():
    for entry in list_weights():
        model = mnasnet.create_model(entry.arch, width_multiplier=entry.width_multiplier)
        assert _count(model) == entry.num_params, entry.name


@pytest.mark.parametrize("publisher_name", sorted(TORCHVISION_ENUMS))
def test_torchvision_entries_match_torchvision_metadata(publisher_name):
    torchvision = import_torchvision()
    tv_weights = getattr(torchvision.models, TORCHVISION_ENUMS[publisher_name]).IMAGENET1K_V1
    entry = get_weights(publisher_name)
    assert entry.url == tv_weights.url
    # torch.hub's check_hash convention: the hex digits after the last '-' are a sha256 prefix
    assert entry.sha256 == re.search(r"-([a-f0-9]*)\.", entry.file_name).group(1)
    metrics = tv_weights.meta["_metrics"]["ImageNet-1K"]
    assert (entry.top1, entry.top5) == (metrics["acc@1"], metrics["acc@5"])
    assert entry.num_params == tv_weights.meta["num_params"]
    assert entry.num_params == _count(getattr(torchvision.models, publisher_name)())
    transforms = tv_weights.transforms()
    preprocess = entry.preprocess
    assert preprocess.mode == "resize_crop"
    assert [preprocess.scale_size] == transforms.resize_size and [preprocess.resolution] == transforms.crop_size
    assert preprocess.interpolation == transforms.interpolation.value
    assert list(preprocess.mean) == transforms.mean and list(preprocess.std) == transforms.std
    assert transforms.antialias  # PIL resizes always antialias, as ours does


@pytest.mark.parametrize("publisher_name", [name for name, (source, _) in PUBLISHED.items() if source == "timm"])
def test_timm_entries_match_timm_pretrained_cfg(publisher_name):
    timm = import_timm()
    model = timm.create_model(publisher_name, pretrained=False)
    cfg = model.pretrained_cfg
    entry = get_weights(publisher_name)
    assert entry.url == cfg["url"]
    assert entry.sha256 == re.search(r"-([a-f0-9]*)\.", entry.file_name).group(1)
    assert entry.num_params == _count(model)
    assert entry.license.lower().startswith(cfg["license"])
    preprocess = entry.preprocess
    assert (preprocess.resolution, preprocess.crop_pct) == (cfg["input_size"][1], cfg["crop_pct"])
    assert preprocess.interpolation == cfg["interpolation"] and cfg["crop_mode"] == "center"
    assert (preprocess.mean, preprocess.std) == (tuple(cfg["mean"]), tuple(cfg["std"]))


def test_accuracy_matches_reference_md(reference_md):
    section = reference_md.split("## 6.")[1].split("## 7.")[0]
    for entry in list_weights():
        if entry.source == "tf":
            continue
        row = next(line for line in section.splitlines() if f"| {entry.publisher_name}" in line)
        top1, top5 = re.search(r"\| ([\d.]+) / ([\d.]+) \|", row).groups()
        assert (entry.top1, entry.top5) == (float(top1), float(top5)), entry.name
    google = next(line for line in section.splitlines() if line.startswith("| Google"))
    a1, b1 = re.search(r"\| ([\d.]+) / ([\d.]+) \(reported\)", google).groups()
    assert get_weights("mnasnet-a1").top1 == float(a1) and get_weights("mnasnet-b1").top1 == float(b1)
    assert "section 5" in google and get_weights("mnasnet-a1").preprocess.mode == "crop_resize"


def test_unknown_name_suggests_close_ones():
    with pytest.raises(ValueError, match="did you mean a1_100.timm_rmsp_in1k"):
        get_weights("a1_100.timm_rmsp")


def test_register_rejects_taken_names():
    entry = get_weights("mnasnet1_0")
    with pytest.raises(ValueError, match="already"):
        register_weights(entry)
    with pytest.raises(ValueError, match="sha256"):
        Weights(**{**entry.__dict__, "name": "x", "sha256": "XYZ"})


def test_weights_command_table_and_json(capsys):
    assert main(["weights"]) == 0
    table = capsys.readouterr().out
    for entry in list_weights():
        line = next(line for line in table.splitlines() if line.startswith(entry.name + " "))
        assert f"{entry.num_params:,}" in line and (entry.sha256 or "none published") in line
    assert main(["weights", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [item["name"] for item in data] == [entry.name for entry in list_weights()]
    assert data[0]["preprocess"]["resize"] == 256 and data[0]["url"].endswith(".pth")


def test_every_pytorch_entry_converts_from_its_publishers_layout():
    """The entry's arch and width fit a state dict laid out as torchvision/timm publish it."""
    from mnasnet.weights.convert import convert_state_dict

    torchvision, timm = import_torchvision(), import_timm()
    for entry in list_weights():
        if entry.source == "torchvision":
            source_model = getattr(torchvision.models, entry.publisher_name)()
        elif entry.source == "timm":
            source_model = timm.create_model(entry.publisher_name, pretrained=False)
        else:
            continue  # TF checkpoints: tests/test_tf_checkpoint.py
        model = convert_state_dict(
            source_model.state_dict(), entry.source, arch=entry.arch, width_multiplier=entry.width_multiplier
        )
        assert (model.config.arch, model.config.width_multiplier) == (entry.arch, entry.width_multiplier)
        assert _count(model) == entry.num_params == _count(source_model), entry.name
