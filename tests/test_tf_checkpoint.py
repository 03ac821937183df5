"""The TF checkpoint reader and Google-checkpoint converter, against checkpoints TensorFlow wrote.

tests/fixtures/tf/ is made by tools/make_tf_fixture.py (TensorFlow, outside CI):
the reference MnasNet graph's variables saved by tf.compat.v1.train.Saver, plus
the logits TensorFlow computed and a few tensors as TensorFlow's reader returns them.
"""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mnasnet.errors import CheckpointError
from mnasnet.fuse import fuse_model
from mnasnet.weights.convert_tf import _parse_names, convert_tf_checkpoint
from mnasnet.weights.tf_checkpoint import TFCheckpoint, crc32c, open_checkpoint, resolve_prefix, safe_extract_tar

FIXTURES = Path(__file__).parent / "fixtures" / "tf"
A1_ARCHIVE = FIXTURES / "mnasnet-a1-0.2.tar.gz"  # a1, width 0.2, 10 classes, with EMA copies
SMALL_ARCHIVE = FIXTURES / "mnasnet-small-0.75.tar.gz"  # small, width 0.75, 10 classes, no EMA copies
MEAN_RGB = np.array([0.485 * 255, 0.456 * 255, 0.406 * 255], dtype=np.float32)
STDDEV_RGB = np.array([0.229 * 255, 0.224 * 255, 0.225 * 255], dtype=np.float32)
# Float32 TF and PyTorch sum in different orders (and we fold BN in float64); measured
# differences are ~1e-5 on logits of magnitude ~1-5.
LOGITS_ATOL = 1e-4


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "logits.npz") as data:
        return {key: data[key] for key in data.files}


def _extract(archive: Path, destination: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(destination, filter="data")
    (folder,) = destination.iterdir()
    return folder


@pytest.fixture
def a1_folder(tmp_path: Path) -> Path:
    return _extract(A1_ARCHIVE, tmp_path / "extracted")


def _logits(model: torch.nn.Module, pixels: np.ndarray) -> np.ndarray:
    normalised = (pixels.astype(np.float32) - MEAN_RGB) / STDDEV_RGB
    with torch.no_grad():
        return model(torch.from_numpy(normalised.transpose(0, 3, 1, 2).copy())).numpy()


# -- CRC32C --------------------------------------------------------------------------


def test_crc32c_matches_published_check_values():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert crc32c(b"") == 0
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4 test vectors
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E


def test_crc32c_vectorised_path_agrees_with_bytewise():
    # Above 4 KiB the CRC is computed column-wise and combined; a plain bytewise
    # CRC over the same data, fed in two parts, must agree for odd lengths too.
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, 12_345, dtype=np.uint8).tobytes()
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    crc = 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    assert crc32c(data) == crc ^ 0xFFFFFFFF


# -- reader ----------------------------------------------------------------------------


def test_reader_returns_what_tensorflow_reads(a1_folder, expected):
    checkpoint = TFCheckpoint(a1_folder / "model.ckpt")
    yardsticks = {key.split(":", 1)[1]: value for key, value in expected.items() if key.startswith("a1_tensor:")}
    assert len(yardsticks) >= 5
    for name, value in yardsticks.items():
        ours = checkpoint.read(name)
        assert ours.dtype == value.dtype, name
        assert ours.shape == value.shape, name
        np.testing.assert_array_equal(ours, value, err_msg=name)
    assert checkpoint.read("global_step") == 123456
    assert checkpoint.read("global_step").dtype == np.int64


def test_reader_sees_every_variable_kind(a1_folder):
    checkpoint = TFCheckpoint(a1_folder / "model.ckpt")
    names = checkpoint.keys()
    assert "global_step" in names
    assert any(name.endswith("/ExponentialMovingAverage") for name in names)
    assert any(name.endswith("/RMSProp_1") for name in names)
    assert checkpoint.shape("mnasnet-a1/mnas_net_model/mnas_head/dense/kernel") == (1280, 10)
    assert checkpoint.shape("mnasnet-a1/mnas_net_model/mnas_blocks_0/depthwise_conv2d/depthwise_kernel") == (3, 3, 8, 1)
    # Every stored checksum holds (large tensors go through the vectorised CRC).
    for name in names:
        checkpoint.read(name, verify=True)


@pytest.mark.parametrize(
    "given",
    ["archive", "tgz", "folder", "parent", "prefix", "index", "data"],
)
def test_open_accepts_every_form(given, a1_folder, tmp_path):
    tgz = tmp_path / "copy.tgz"
    shutil.copy(A1_ARCHIVE, tgz)
    path = {
        "archive": A1_ARCHIVE,
        "tgz": tgz,
        "folder": a1_folder,
        "parent": a1_folder.parent,
        "prefix": a1_folder / "model.ckpt",
        "index": a1_folder / "model.ckpt.index",
        "data": a1_folder / "model.ckpt.data-00000-of-00001",
    }[given]
    with open_checkpoint(path) as checkpoint:
        assert checkpoint.read("global_step") == 123456


def test_folder_without_state_file_or_with_foreign_paths(a1_folder):
    # Trainers write absolute paths of their own machine into `checkpoint`.
    (a1_folder / "checkpoint").write_text('model_checkpoint_path: "gs://bucket/run/model.ckpt"\n')
    assert resolve_prefix(a1_folder) == a1_folder / "model.ckpt"
    (a1_folder / "checkpoint").unlink()
    assert resolve_prefix(a1_folder) == a1_folder / "model.ckpt"


def test_state_file_naming_a_missing_checkpoint(a1_folder):
    (a1_folder / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-999"\n')
    with pytest.raises(CheckpointError, match="model.ckpt-999"):
        resolve_prefix(a1_folder)


@pytest.mark.parametrize("what", ["missing", "empty", "not a checkpoint"])
def test_bad_paths(what, tmp_path):
    path = tmp_path / "thing"
    if what == "empty":
        path.mkdir()
    elif what == "not a checkpoint":
        path.write_bytes(b"hello")
    with pytest.raises(CheckpointError), open_checkpoint(path):
        pass


def _index_block_trailer(index: bytes) -> int:
    """Offset of the index block's trailer (compression byte), from the table footer."""
    footer, pos, values = index[-48:], 0, []
    for _ in range(4):
        value = shift = 0
        while True:
            byte = footer[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        values.append(value)
    _, _, offset, size = values
    return offset + size


@pytest.mark.parametrize("damage", ["flip", "truncate", "compressed", "empty"])
def test_corrupt_index(damage, a1_folder):
    index = a1_folder / "model.ckpt.index"
    data = bytearray(index.read_bytes())
    if damage == "flip":
        data[len(data) // 3] ^= 0x40
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "compressed":
        data[_index_block_trailer(bytes(data))] = 1  # snappy
    else:
        data = bytearray()
    index.write_bytes(bytes(data))
    message = "compressed" if damage == "compressed" else "model.ckpt.index"
    with pytest.raises(CheckpointError, match=message), open_checkpoint(a1_folder) as checkpoint:
        checkpoint.read_all()


@pytest.mark.parametrize("damage", ["flip", "truncate", "missing"])
def test_corrupt_data_shard(damage, a1_folder):
    shard = a1_folder / "model.ckpt.data-00000-of-00001"
    data = bytearray(shard.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
        shard.write_bytes(bytes(data))
    elif damage == "truncate":
        shard.write_bytes(bytes(data[: len(data) // 2]))
    else:
        shard.unlink()
    message = {"flip": "checksum mismatch", "truncate": "truncated", "missing": "not found"}[damage]
    with pytest.raises(CheckpointError, match=message), open_checkpoint(a1_folder) as checkpoint:
        checkpoint.read_all()


def test_truncated_archive(tmp_path):
    archive = tmp_path / "cut.tar.gz"
    archive.write_bytes(A1_ARCHIVE.read_bytes()[: A1_ARCHIVE.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cut.tar.gz"), open_checkpoint(archive):
        pass


# -- tar safety ------------------------------------------------------------------------


def _tar_with(path: Path, *members: tuple[tarfile.TarInfo, bytes | None]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, payload in members:
            if payload is not None:
                info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return path


def _file(name: str, payload: bytes = b"evil") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), payload


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


@pytest.mark.parametrize("attack", ["dotdot", "absolute", "symlink_out", "symlink_then_write", "hardlink", "device"])
def test_tar_attacks_are_refused_and_write_nothing(attack, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "evil.txt"
    members = {
        "dotdot": [_file("ckpt/model.ckpt.index"), _file("../outside/evil.txt")],
        "absolute": [_file(str(victim))],
        "symlink_out": [_link("ckpt/escape", "../../outside", tarfile.SYMTYPE)],
        "symlink_then_write": [_link("escape", str(outside), tarfile.SYMTYPE), _file("escape/evil.txt")],
        "hardlink": [_link("ckpt/passwd", "/etc/passwd", tarfile.LNKTYPE)],
        "device": [_link("ckpt/null", "", tarfile.CHRTYPE)],
    }[attack]
    archive = _tar_with(tmp_path / "evil.tar.gz", *members)
    destination = tmp_path / "dest" / "inner"
    destination.mkdir(parents=True)
    with pytest.raises(CheckpointError, match="refusing archive"):
        safe_extract_tar(archive, destination)
    assert not victim.exists()
    assert list(outside.iterdir()) == []
    assert list(destination.iterdir()) == []  # checked before anything is written
    with pytest.raises(CheckpointError, match="refusing archive"):
        convert_tf_checkpoint(archive, arch="a1")


def test_tar_internal_files_extract(tmp_path):
    archive = _tar_with(tmp_path / "ok.tar.gz", _file("a/b.txt", b"fine"))
    safe_extract_tar(archive, tmp_path / "dest")
    assert (tmp_path / "dest" / "a" / "b.txt").read_bytes() == b"fine"


# -- converter -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def a1_model():
    return convert_tf_checkpoint(A1_ARCHIVE, arch="a1", width_multiplier=0.2)


@pytest.mark.parametrize("size", ["224", "99x131"])
def test_a1_logits_match_tensorflow(a1_model, expected, size):
    ours = _logits(a1_model, expected[f"input_{size}"])
    reference = expected[f"a1_logits_{size}"]
    assert np.abs(reference).max() > 0.5  # logits carry signal, not near-zero noise
    np.testing.assert_allclose(ours, reference, rtol=0, atol=LOGITS_ATOL)


def test_a1_fused_model_matches_tensorflow(a1_model, expected):
    # The inference copy (BN folded into the convs, channels-last) still gives TensorFlow's logits.
    ours = _logits(fuse_model(a1_model), expected["input_99x131"])
    np.testing.assert_allclose(ours, expected["a1_logits_99x131"], rtol=0, atol=LOGITS_ATOL)


def test_ema_copies_are_preferred(a1_model, expected, a1_folder):
    ours = _logits(a1_model, expected["input_224"])
    # The raw variables give clearly different logits...
    assert np.abs(ours - expected["a1_logits_raw_224"]).max() > 100 * LOGITS_ATOL
    # ...and every converted tensor is the EMA copy, BN statistics included.
    checkpoint = TFCheckpoint(a1_folder / "model.ckpt")
    scope = "mnasnet-a1/mnas_net_model/mnas_head"
    ema = checkpoint.read(f"{scope}/dense/kernel/ExponentialMovingAverage")
    raw = checkpoint.read(f"{scope}/dense/kernel")
    assert not np.allclose(ema, raw)
    np.testing.assert_array_equal(a1_model.classifier.weight.detach().numpy(), ema.T)
    variance = checkpoint.read("mnasnet-a1/mnas_head/batch_normalization/moving_variance/ExponentialMovingAverage")
    np.testing.assert_array_equal(a1_model.head.bn.running_var.numpy(), variance)


def test_converted_model_settings(a1_model):
    config = a1_model.config
    assert (config.arch, config.width_multiplier, config.num_classes) == ("a1", 0.2, 10)
    assert (config.padding, config.bn_eps, config.bn_momentum) == ("same", 1e-3, 0.01)
    assert not a1_model.training
    preprocess = a1_model.preprocess
    assert (preprocess.resolution, preprocess.resize, preprocess.crop_pct) == (224, None, 0.875)
    assert (preprocess.interpolation, preprocess.mode) == ("bilinear", "crop_resize")
    # (pixel - [123.675, 116.28, 103.53]) / [58.395, 57.12, 57.375], REFERENCE.md section 5
    np.testing.assert_allclose(np.array(preprocess.mean) * 255, [123.675, 116.28, 103.53])
    np.testing.assert_allclose(np.array(preprocess.std) * 255, [58.395, 57.12, 57.375])


@pytest.mark.parametrize("size", ["224", "99x131"])
def test_small_without_ema_and_block0_quirk(expected, size, tmp_path):
    folder = _extract(SMALL_ARCHIVE, tmp_path)
    model = convert_tf_checkpoint(folder, arch="small", width_multiplier=0.75)
    block = model.stages[0][0]
    # Stem has 8 filters, the block string says i16: convs take the real 8 channels, no skip.
    assert tuple(block.depthwise.conv.weight.shape) == (8, 1, 3, 3)
    assert tuple(block.project.conv.weight.shape) == (8, 8, 1, 1)
    assert not block.has_skip
    ours = _logits(model, expected[f"input_{size}"])
    np.testing.assert_allclose(ours, expected[f"small_logits_{size}"], rtol=0, atol=LOGITS_ATOL)


def test_wrong_architecture_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"'b1'.*--arch a1 --width 0\.2"):
        convert_tf_checkpoint(A1_ARCHIVE, arch="b1", width_multiplier=0.2)


def test_wrong_width_names_the_variable():
    with pytest.raises(CheckpointError, match=r"mnas_stem/conv2d_\d+/kernel.*width 0\.5"):
        convert_tf_checkpoint(A1_ARCHIVE, arch="a1", width_multiplier=0.5)


def test_wrong_class_count_and_unknown_arch():
    with pytest.raises(CheckpointError, match="10 classes"):
        convert_tf_checkpoint(A1_ARCHIVE, arch="a1", width_multiplier=0.2, num_classes=1000)
    with pytest.raises(CheckpointError, match="unknown architecture"):
        convert_tf_checkpoint(A1_ARCHIVE, arch="a2")


def test_names_are_ordered_by_number_and_scope():
    # Keras numbers convs with one global counter: a name sort would put conv2d_12 first.
    keras = [
        "m/mnas_net_model/mnas_blocks_4/conv2d_9/kernel",
        "m/mnas_net_model/mnas_blocks_4/conv2d_12/kernel",
        "m/mnas_net_model/mnas_blocks_4/se/conv2d_11/kernel",
        "m/mnas_net_model/mnas_blocks_4/se/conv2d_10/kernel",
        "m/mnas_blocks_4/batch_normalization_2/gamma",
        "m/mnas_blocks_4/batch_normalization/gamma",
        "m/mnas_blocks_4/batch_normalization_1/gamma",
        "m/mnas_net_model/mnas_blocks_4/conv2d_9/kernel/ExponentialMovingAverage",
        "m/mnas_net_model/mnas_blocks_4/conv2d_9/kernel/RMSProp",
        "global_step",
    ]
    # tf.layers (use_keras=False, as d1 uses) numbers per scope and has no Keras model scope.
    legacy = [
        "m/mnas_blocks_4/conv2d_1/kernel",
        "m/mnas_blocks_4/conv2d/kernel",
        "m/mnas_blocks_4/se/conv2d/kernel",
        "m/mnas_blocks_4/se/conv2d_1/kernel",
    ]
    for names, first, last in [(keras, "conv2d_9", "conv2d_12"), (legacy, "conv2d", "conv2d_1")]:
        model_name, scopes, sources = _parse_names(names)
        assert model_name == "m"
        scope = scopes["mnas_blocks_4"]
        assert [layer.path[-1] for layer in scope.kind("kernel", se=False)] == [first, last]
        assert [layer.path[-1] for layer in scope.kind("kernel", se=True)][0] == (
            "conv2d_10" if names is keras else "conv2d"
        )
    assert [layer.path for layer in scopes["mnas_blocks_4"].kind("gamma")] == []  # legacy list has no BN
    _, scopes, sources = _parse_names(keras)
    assert [layer.path for layer in scopes["mnas_blocks_4"].kind("gamma")] == [
        ("batch_normalization",),
        ("batch_normalization_1",),
        ("batch_normalization_2",),
    ]
    kernel = "m/mnas_net_model/mnas_blocks_4/conv2d_9/kernel"
    assert sources[kernel] == kernel + "/ExponentialMovingAverage"
    assert "global_step" not in sources and not any("RMSProp" in name for name in sources.values())


def test_names_of_another_network_or_several_models():
    with pytest.raises(CheckpointError, match="no MnasNet variables"):
        _parse_names(["resnet/conv1/kernel", "global_step"])
    with pytest.raises(CheckpointError, match="several models"):
        _parse_names(["a/mnas_stem/batch_normalization/gamma", "b/mnas_stem/batch_normalization/gamma"])


def test_converted_model_survives_our_checkpoint_format(a1_model, expected, tmp_path):
    # What `mnasnet convert --from tf` does with the result: save it, load it back.
    from mnasnet.checkpoint import load_model, save_checkpoint

    path = tmp_path / "a1.safetensors"
    save_checkpoint(a1_model, path)
    loaded = load_model(path)
    assert loaded.preprocess == a1_model.preprocess
    assert loaded.config == a1_model.config
    np.testing.assert_allclose(
        _logits(loaded, expected["input_99x131"]), expected["a1_logits_99x131"], rtol=0, atol=LOGITS_ATOL
    )


def test_cli_convert_from_tf_then_predict(expected, tmp_path, capsys):
    # As a user runs it: convert Google's tarball, then classify an image with the result.
    import json

    from PIL import Image

    from mnasnet.checkpoint import load_model
    from mnasnet.cli import main

    out = tmp_path / "a1.safetensors"
    assert main(["convert", str(A1_ARCHIVE), str(out), "--from", "tf", "--arch", "a1", "--width", "0.2"]) == 0
    assert "MnasNet-a1 x0.2" in capsys.readouterr().out
    model = load_model(out)
    assert model.config.padding == "same" and model.preprocess.mode == "crop_resize"
    np.testing.assert_allclose(_logits(model, expected["input_224"]), expected["a1_logits_224"], atol=LOGITS_ATOL)
    # A 224x224 image passes the reference preprocessing unchanged except for the 0.875 crop,
    # so predict's ranking is checked against a direct forward pass of the same crop.
    image = tmp_path / "photo.png"
    Image.fromarray(expected["input_224"][0]).save(image)
    assert main(["predict", str(image), "--weights", str(out), "--topk", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result) == 1 and len(result[0]["top"]) == 3
    from mnasnet.data.images import load_image
    from mnasnet.data.preprocess import build_eval_transform

    tensor = build_eval_transform(model.preprocess)(load_image(image))
    with torch.no_grad():
        logits = model(tensor[None])[0]
    assert [entry["index"] for entry in result[0]["top"]] == logits.topk(3).indices.tolist()
    assert main(["convert", str(A1_ARCHIVE), str(tmp_path / "x.safetensors"), "--from", "tf"]) == 2
    assert "--arch is needed" in capsys.readouterr().err
