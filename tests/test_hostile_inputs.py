"""Hostile input, by family: each case gives one clear error (and, through the CLI, one line and a
non-zero exit), allocates nothing absurd and leaves no half-written file.

Families here: the grammar's exactness, resource limits, meaning (evaluation classes),
interruption and partial files, and file modes. Training set-ups and the environment
have their own modules (test_hostile_training.py, test_hostile_environment.py).
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import mnasnet
from mnasnet.checkpoint import read_checkpoint, save_checkpoint
from mnasnet.cli import main
from mnasnet.data.images import load_image
from mnasnet.errors import BlockStringError, CheckpointError, DataError, MnasNetError, ModelConfigError
from mnasnet.evaluate import class_index, evaluate
from mnasnet.fileio import atomic_directory, atomic_path, atomic_write_text

VALID = "r1_k3_s11_e1_i32_o16_noskip"


def _cli(args: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(args)
    except SystemExit as exit:  # argparse's own checks: usage, then one error line
        code = exit.code
    err = capsys.readouterr().err
    return code, err


def _assert_one_line(code: int, err: str) -> None:
    assert code != 0
    # argparse prints its usage lines first; what matters is one error line and no traceback
    lines = [line for line in err.strip().splitlines() if line.strip() and not line.startswith(("usage:", " "))]
    assert len(lines) == 1 and "error" in lines[0], err
    assert "Traceback" not in err


# -- the grammar promises exactness ------------------------------------------------------


@pytest.mark.parametrize(
    "block",
    [
        "r1_k3_s12_e1_i32_o16",  # asymmetric stride: the builder would not honour it exactly
        "r1_k3_s21_e1_i32_o16",
        "r1_k3_s33_e1_i32_o16",
        "r1_k3_s00_e1_i32_o16",
        "r1_k4_s11_e1_i32_o16",  # even kernel: "same" and symmetric padding disagree
        "r1_k2_s11_e1_i32_o16",
        "r1_k99_s11_e1_i32_o16",
        "r0_k3_s11_e1_i32_o16",
        "r100000_k3_s11_e1_i32_o16",
        "r1_k3_s11_e0_i32_o16",
        "r1_k3_s11_e1000_i32_o16",
        "r1_k3_s11_e1_i0_o16",
        "r1_k3_s11_e1_i32_o999999",
        "r1_k3_s11_e1_i32_o99999999999999999999",
        "r1_k3_s11_e1_i32_o16_se0",
        "r1_k3_s11_e1_i32_o16_se1.5",
        "r1_k3_s11_e1_i32_o16_senan",
        "r1_k3_s11_e1_i32_o16_se1e-1",
        "r1_k3_s11_e1_i32_o16_sx0.25",
        "r١_k3_s11_e1_i32_o16",  # an Arabic-Indic digit: isdigit() but not a number we accept
        "r1_k3_s11_e1_i32_o16_",
        "",
        "___",
    ],
)
def test_block_strings_the_builder_cannot_honour_are_errors(block):
    with pytest.raises(BlockStringError) as error:
        mnasnet.create_model([VALID, block] if block else [block])
    assert "block string" in str(error.value) or "architecture" in str(error.value)


@pytest.mark.parametrize("block", ["ir_r1_k3_s3_e6_c24", "ir_r1_k4_s2_e6_c24", "ds_r99_k3_s1_c16"])
def test_timm_dialect_has_the_same_limits(block):
    with pytest.raises(BlockStringError):
        mnasnet.create_model(["ds_r1_k3_s1_c16", block])


def test_absurd_depth_is_refused_before_building():
    with pytest.raises(BlockStringError, match="limit is 256"):
        mnasnet.create_model([VALID] + ["r32_k3_s11_e1_i16_o16"] * 9)


@pytest.mark.parametrize(
    "settings",
    [
        {"width_multiplier": float("nan")},
        {"width_multiplier": float("inf")},
        {"width_multiplier": 0.0},
        {"width_multiplier": -1.0},
        {"width_multiplier": 1e9},
        {"width_multiplier": True},
        {"resolution": 0},
        {"resolution": -224},
        {"resolution": 10**6},
        {"resolution": 224.5},
        {"num_classes": 0},
        {"num_classes": -3},
        {"num_classes": 10**9},
        {"num_classes": 2.5},
        {"dropout": float("nan")},
        {"bn_eps": 0.0},
        {"bn_momentum": float("inf")},
        {"head_filters": 10**7},
    ],
)
def test_non_finite_zero_negative_and_absurd_settings_are_errors(settings):
    with pytest.raises(ModelConfigError):
        mnasnet.create_model("small", **settings)


def test_a_model_over_the_parameter_limit_is_refused_before_allocation():
    # each setting is within its own limit, together they would be ~1.7G parameters (6.8 GB)
    with pytest.raises(ModelConfigError, match="parameters"):
        mnasnet.create_model(["r8_k15_s11_e32_i8192_o8192"], stem_filters=8192, width_multiplier=None)


@pytest.mark.parametrize(
    "args",
    [
        ["summary", "a1", "--width", "nan"],
        ["summary", "a1", "--width", "-0.5"],
        ["summary", "a1", "--width", "1e12"],
        ["summary", "a1", "--resolution", "0"],
        ["summary", "a1", "--resolution", "1000000"],
        ["summary", "a1", "--num-classes", "0"],
        ["summary", "custom", "--blocks", "r1_k4_s11_e1_i32_o16"],
        ["summary", "custom", "--blocks", "r1_k3_s12_e1_i32_o16"],
    ],
)
def test_cli_bad_model_options_are_one_line(args, capsys):
    code, err = _cli(args, capsys)
    _assert_one_line(code, err)


# -- resource limits ---------------------------------------------------------------------


def _checkpoint_with_header(path: Path, header: dict | str) -> Path:
    text = header if isinstance(header, str) else json.dumps(header)
    save_file({"x": torch.zeros(1)}, str(path), metadata={"mnasnet": text})
    return path


def _valid_header() -> dict:
    model = mnasnet.create_model("small", width_multiplier=0.35, num_classes=3, resolution=32)
    return {"format": "mnasnet", "format_version": 1, "config": model.config.to_dict(), "preprocess": {}}


@pytest.mark.parametrize(
    "change",
    [
        {"num_classes": 10**9},
        {"head_filters": 10**6},
        {"blocks": ["r32_k15_s11_e32_i8192_o8192"] * 8},
        {"blocks": "r1_k3_s11_e1_i32_o16" * 1000},
        {"blocks": 7},
        {"resolution": -1},
        {"padding": "reflect"},
        {"unknown_setting": 1},
    ],
)
def test_checkpoint_headers_asking_for_absurd_models_are_refused(tmp_path, change):
    header = _valid_header()
    header["config"].update(change)
    path = _checkpoint_with_header(tmp_path / "hostile.safetensors", header)
    with pytest.raises(CheckpointError):
        read_checkpoint(path)


@pytest.mark.parametrize(
    "header",
    [
        "[" * 100_000 + "]" * 100_000,  # nesting that would overflow a recursive parser
        '{"format": "mnasnet", "format_version": 99}',
        '{"format": "mnasnet", "format_version": "1"}',
        "not json",
        "[]",
    ],
)
def test_corrupt_or_hostile_headers_are_one_checkpoint_error(tmp_path, header):
    path = _checkpoint_with_header(tmp_path / "bad.safetensors", header)
    with pytest.raises(CheckpointError):
        mnasnet.load_model(path)


def test_oversized_headers_are_refused(tmp_path):
    header = _valid_header()
    header["extra"] = {"padding": "x" * (17 * 2**20)}
    path = _checkpoint_with_header(tmp_path / "big.safetensors", header)
    with pytest.raises(CheckpointError, match="MiB"):
        read_checkpoint(path)


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG file whose header claims a huge grayscale canvas."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def test_an_image_claiming_a_huge_canvas_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_claiming(60_000, 60_000))
    with pytest.raises(DataError, match="pixels"):
        load_image(path)


@pytest.mark.slow
@pytest.mark.parametrize("size", [(1, 6000), (6000, 1), (2, 9000)])
def test_elongated_images_do_not_blow_up_memory(tmp_path, size):
    image_path = tmp_path / "strip.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(image_path)
    checkpoint = tmp_path / "m.safetensors"
    save_checkpoint(mnasnet.create_model("small", width_multiplier=0.35, num_classes=3, resolution=64), checkpoint)
    # run in a fresh process and read its peak memory: before the fix a 1x6000 strip took ~4 GB
    code = textwrap.dedent(
        f"""
        import re, sys
        from mnasnet.cli import main
        code = main(["predict", {str(image_path)!r}, "--weights", {str(checkpoint)!r}, "--json"])
        # VmHWM: this process's own peak. ru_maxrss would not do: Linux carries it across fork and
        # exec, so it reports the test runner's size once that is larger (1.6 GB late in the suite)
        status = open("/proc/self/status").read()
        peak_mb = int(re.search(r"VmHWM:\\s*(\\d+) kB", status).group(1)) / 1024
        print("PEAK", peak_mb, file=sys.stderr)
        sys.exit(code)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    peak = float(result.stderr.split("PEAK")[1].split()[0])
    assert peak < 1500, f"peak memory {peak:.0f} MB"
    assert json.loads(result.stdout)[0]["top"]


def test_box_resize_of_an_elongated_image_equals_the_full_resize():
    from mnasnet.data import preprocess

    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (3, 5000, 3), dtype=np.uint8))
    settings = preprocess.Preprocess(resolution=64, resize=73, interpolation="bicubic")
    limited = preprocess._resize_crop_transform(image, settings)  # 73 x 121,666 pixels > the limit
    original = preprocess.MAX_RESIZED_PIXELS
    try:
        preprocess.MAX_RESIZED_PIXELS = 10**12
        full = preprocess._resize_crop_transform(image, settings)
    finally:
        preprocess.MAX_RESIZED_PIXELS = original
    torch.testing.assert_close(limited, full, rtol=0, atol=0)


# -- meaning: evaluation classes ---------------------------------------------------------


def test_class_folders_are_matched_by_name_or_refused():
    labels = ["cat", "dog", "fox"]
    np.testing.assert_array_equal(class_index(["dog", "fox"], labels, 3), [1, 2])
    with pytest.raises(DataError, match="not among the model's"):
        class_index(["dog", "wolf"], labels, 3)
    with pytest.raises(DataError, match="by position"):
        class_index(["a", "b"], None, 3)
    np.testing.assert_array_equal(class_index(["a", "b"], None, 3, by_position=True), [0, 1])
    np.testing.assert_array_equal(class_index(["a", "b", "c"], None, 3), [0, 1, 2])
    # ImageNet synset folders against readable labels; Google's checkpoints add a background output
    synsets = [f"n{i:08d}" for i in range(3)]
    np.testing.assert_array_equal(class_index(synsets, labels, 3), [0, 1, 2])
    np.testing.assert_array_equal(class_index(synsets, ["background", *labels], 4), [1, 2, 3])


def test_evaluate_refuses_mismatched_classes_before_decoding_images(tmp_path):
    checkpoint = tmp_path / "m.safetensors"
    model = mnasnet.create_model("small", width_multiplier=0.35, num_classes=2, resolution=32)
    save_checkpoint(model, checkpoint, labels=["cat", "dog"])
    for name in ("horse", "zebra"):
        (tmp_path / "data" / "val" / name).mkdir(parents=True)
        (tmp_path / "data" / "val" / name / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="not among the model's 2 labels"):
        evaluate(checkpoint, tmp_path / "data")


# -- interruption and partial files ------------------------------------------------------


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_partial_files_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "model.safetensors"
    stale = tmp_path / f".model.safetensors.{_dead_pid()}.abc123.part"
    stale.write_bytes(b"half a checkpoint")
    live = tmp_path / f".model.safetensors.{os.getppid()}.def456.part"  # a writer still running
    live.write_bytes(b"in progress")
    stale_folder = tmp_path / f".digits-v1.{_dead_pid()}.xyz.part"
    (stale_folder / "train").mkdir(parents=True)
    save_checkpoint(mnasnet.create_model("small", width_multiplier=0.35, num_classes=3), target)
    with atomic_directory(tmp_path / "digits-v1") as folder:
        (folder / "done").write_text("ok")
    assert not stale.exists() and not stale_folder.exists()
    assert live.exists()
    assert (tmp_path / "digits-v1" / "done").read_text() == "ok"


def test_a_write_killed_midway_leaves_no_target(tmp_path):
    target = tmp_path / "out.txt"
    code = textwrap.dedent(
        f"""
        import os, signal, time
        from mnasnet.fileio import atomic_path
        with atomic_path({str(target)!r}) as temp:
            temp.write_text("partial")
            print("writing", flush=True)
            time.sleep(60)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "writing"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not target.exists()
    assert len(list(tmp_path.glob(".out.txt.*.part"))) == 1
    atomic_write_text(target, "complete")
    assert target.read_text() == "complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_an_error_inside_an_atomic_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "x.bin") as temp:
        temp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


# -- file modes --------------------------------------------------------------------------


@pytest.mark.parametrize(("umask", "file_mode", "folder_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_files_follow_the_umask(tmp_path, umask, file_mode, folder_mode):
    previous = os.umask(umask)
    try:
        save_checkpoint(mnasnet.create_model("small", width_multiplier=0.35, num_classes=3), tmp_path / "m.safetensors")
        atomic_write_text(tmp_path / "a.txt", "x")
        with atomic_directory(tmp_path / "folder") as folder:
            (folder / "f").write_text("y")
        # a plain open() under the same umask is the yardstick
        (tmp_path / "plain.txt").write_text("z")
    finally:
        os.umask(previous)
    assert (tmp_path / "plain.txt").stat().st_mode & 0o777 == file_mode
    for name in ("m.safetensors", "a.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == file_mode, name
    assert (tmp_path / "folder").stat().st_mode & 0o777 == folder_mode


def test_every_user_error_type_is_a_mnasnet_error():
    for error in (BlockStringError, CheckpointError, DataError, ModelConfigError):
        assert issubclass(error, MnasNetError) and issubclass(error, ValueError)


# -- absurd sizes in flags -----------------------------------------------------------------


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hostile") / "small.safetensors"
    model = mnasnet.create_model("small", width_multiplier=0.35, num_classes=3, resolution=32)
    save_checkpoint(model, path, labels=["0", "1", "2"])
    return path


@pytest.mark.parametrize(
    "args",
    [
        ["evaluate", "--data", "digits", "--batch-size", "0"],
        ["evaluate", "--data", "digits", "--batch-size", "1000000000"],
        ["evaluate", "--data", "digits", "--limit", "-3"],
        ["predict", ".", "--batch-size", "1000000000"],
        ["predict", ".", "--topk", "0"],
        ["benchmark", "--batch", "1,1000000000", "--runtimes", "pytorch"],
        ["benchmark", "--batch", "0", "--runtimes", "pytorch"],
    ],
)
def test_absurd_batch_sizes_are_refused_in_one_line(args, small_checkpoint, capsys):
    code, err = _cli([*args, "--weights", str(small_checkpoint)], capsys)
    _assert_one_line(code, err)
    assert "1000000000" in err or "0" in err or "-3" in err
