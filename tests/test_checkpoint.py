import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import mnasnet
from mnasnet.checkpoint import read_checkpoint, save_checkpoint
from mnasnet.data.preprocess import Preprocess
from mnasnet.errors import CheckpointError

from conftest import randomize_bn


@pytest.fixture
def model():
    torch.manual_seed(0)
    return randomize_bn(
        mnasnet.create_model("small", width_multiplier=0.5, num_classes=3, padding="same", bn_eps=1e-5, resolution=96)
    )


def test_round_trip_rebuilds_the_exact_model(tmp_path, model):
    path = tmp_path / "model.safetensors"
    preprocess = Preprocess(resolution=96, resize=110, interpolation="bicubic")
    save_checkpoint(model, path, preprocess=preprocess, labels=["cat", "dog", "fox"], extra={"note": "test"})
    loaded = mnasnet.load_model(path)
    assert loaded.config == model.config
    assert loaded.preprocess == preprocess and loaded.labels == ["cat", "dog", "fox"]
    assert not loaded.training
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    checkpoint = read_checkpoint(path)
    assert checkpoint.extra == {"note": "test"}
    # the file is plain safetensors: other tools read it
    tensors = load_file(str(path))
    assert set(tensors) == set(model.state_dict())


def test_metadata_holds_block_strings_and_settings(tmp_path, model):
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        header = json.loads(handle.metadata()["mnasnet"])
    config = header["config"]
    assert config["blocks"][0] == "r1_k3_s11_e1_i8_o8"  # small's i16 o8 at width 0.5
    assert (config["padding"], config["bn_eps"], config["num_classes"]) == ("same", 1e-5, 3)
    assert header["preprocess"]["resolution"] == 96


def test_missing_corrupt_and_foreign_files_give_one_clear_error(tmp_path, model):
    with pytest.raises(CheckpointError, match="not found"):
        mnasnet.load_model(tmp_path / "absent.safetensors")
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        mnasnet.load_model(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError):
        mnasnet.load_model(garbage)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="without mnasnet metadata"):
        mnasnet.load_model(foreign)


def test_mismatched_weights_are_refused(tmp_path, model):
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    tensors = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        header = json.loads(handle.metadata()["mnasnet"])
    header["config"]["blocks"][1] = header["config"]["blocks"][1].replace("k3", "k5")
    mismatched = tmp_path / "mismatched.safetensors"
    save_file(tensors, str(mismatched), metadata={"mnasnet": json.dumps(header)})
    with pytest.raises(CheckpointError, match="does not match its architecture"):
        mnasnet.load_model(mismatched)
    header["config"]["blocks"][1] = "r1_k3_s22_e3_i8_sx0.25"
    bad_string = tmp_path / "bad_string.safetensors"
    save_file(tensors, str(bad_string), metadata={"mnasnet": json.dumps(header)})
    with pytest.raises(CheckpointError, match="corrupt mnasnet metadata"):
        mnasnet.load_model(bad_string)


def test_a_failed_write_leaves_no_file(tmp_path, model, monkeypatch):
    path = tmp_path / "m.safetensors"
    with pytest.raises(CheckpointError):
        save_checkpoint(model, path, labels=["only one label"])

    def interrupted_save(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr("mnasnet.checkpoint.save_file", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(model, path)
    assert list(tmp_path.iterdir()) == []
