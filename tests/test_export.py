"""Export round trips: ONNX and TFLite, float32 and int8, against the PyTorch model they came from.

One small A1 (x0.35 at 64 px, 10 classes) is exported once per format for the
whole session (the fixtures are in conftest.py, shared with test_runtimes.py,
test_npu.py and test_benchmark.py; the helpers they use are below). Its BN
statistics come from real photos (skimage.data), so activations have the spread
a trained network has; weights are random, which makes int8 noisier than on a
trained model, hence the int8 thresholds below.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import mnasnet  # noqa: E402
from mnasnet.checkpoint import save_checkpoint  # noqa: E402
from mnasnet.data.preprocess import Preprocess, build_eval_transform  # noqa: E402
from mnasnet.deploy import DeployError, export_onnx, export_tflite, read_metadata  # noqa: E402
from mnasnet.runtime import TorchPredictor, load_predictor  # noqa: E402

RESOLUTION = 64
LABELS = [f"class{i}" for i in range(10)]
# ONNX float32 within 1e-4 of PyTorch, relative to the largest logit (about 10 here): float32
# rounding alone moves these logits by 1.4e-4 between PyTorch's own plain and BN-folded paths.
ONNX_FP32_TOL = 1e-4
# TFLite's XNNPACK sums in other orders (and with FMA) than oneDNN; still float32 rounding.
TFLITE_FP32_TOL = 1e-4


def assert_close_to_logit_scale(actual: np.ndarray, expected: np.ndarray, tolerance: float) -> None:
    error = np.abs(actual - expected).max()
    assert error <= tolerance * max(1.0, np.abs(expected).max()), (error, np.abs(expected).max())


def photo_views():
    """30 real-photo crops: 5 skimage photos x (full, flipped, 4 corner crops)."""
    from PIL import Image
    from skimage import data

    photos = [getattr(data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket")]
    photos.append(data.stereo_motorcycle()[0])
    views = []
    for array in photos:
        image = Image.fromarray(array).convert("RGB")
        width, height = image.size
        views += [image, image.transpose(Image.FLIP_LEFT_RIGHT)]
        for fraction in (0.5, 0.7):
            crop_w, crop_h = int(width * fraction), int(height * fraction)
            views += [image.crop((0, 0, crop_w, crop_h)), image.crop((width - crop_w, height - crop_h, width, height))]
    return views


def realistic_bn(model: torch.nn.Module, images: np.ndarray) -> torch.nn.Module:
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the batch
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(images))
    return model.eval()


def fit_classifier(model: torch.nn.Module, images: np.ndarray) -> torch.nn.Module:
    """A least-squares linear probe: view i belongs to class i % 10, as in ``photo_folder``.

    Random features with a fitted head give the clear class margins a trained model has,
    so int8 agreement measures quantisation rather than coin flips between near-equal logits.
    """
    with torch.no_grad():
        features = model.forward_features(torch.from_numpy(images)).mean((2, 3)).double()
        targets = -torch.ones(len(images), len(LABELS), dtype=torch.float64)
        targets[torch.arange(len(images)), torch.arange(len(images)) % len(LABELS)] = 1.0
        design = torch.cat([features, torch.ones(len(images), 1, dtype=torch.float64)], 1)
        solution = torch.linalg.lstsq(design, targets * 5).solution
        model.classifier.weight.copy_(solution[:-1].T.float())
        model.classifier.bias.copy_(solution[-1].float())
    return model


def make_checkpoint(path, arch: str, photo_batch: np.ndarray, seed: int = 0):
    torch.manual_seed(seed)
    model = mnasnet.create_model(arch, width_multiplier=0.35, resolution=RESOLUTION, num_classes=len(LABELS))
    model = fit_classifier(realistic_bn(model, photo_batch), photo_batch)
    save_checkpoint(model, path, labels=LABELS)
    return path


def write_photo_folder(root):
    """The photo views as a dataset folder: val/<label>/<image>.png (3 views per class)."""
    for index, image in enumerate(photo_views()):
        folder = root / "val" / LABELS[index % len(LABELS)]
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"view{index:02d}.png")
    return root


def preprocessed_photos() -> np.ndarray:
    transform = build_eval_transform(Preprocess.for_resolution(RESOLUTION))
    return np.stack([transform(image).numpy() for image in photo_views()])


# The session fixtures built from these helpers (photo_folder, photo_batch, a1_checkpoint, onnx_fp32,
# tflite_fp32, tflite_int8) are in conftest.py: a fixture imported into a module is that module's own
# fixture, so each module importing them from here exported the same files again. An old
# `from test_export import a1_checkpoint` still imports (as None) and the test gets conftest's fixture.
_FIXTURES_IN_CONFTEST = {"photo_folder", "photo_batch", "a1_checkpoint", "onnx_fp32", "tflite_fp32", "tflite_int8"}


def __getattr__(name: str):
    if name in _FIXTURES_IN_CONFTEST:
        return None
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def torch_logits(checkpoint, images: np.ndarray) -> np.ndarray:
    return TorchPredictor(mnasnet.load_model(checkpoint))(images)


def assert_int8_close(logits: np.ndarray, reference: np.ndarray) -> None:
    # Measured here: 93% top-1 agreement, mean error 23-25% of the mean |logit| (random
    # backbone features are less robust to int8 than trained ones). A wrong layout gives
    # chance agreement (10%); a wrong input/output scale or zero point an error of 50% or more.
    agreement = (logits.argmax(1) == reference.argmax(1)).mean()
    relative_error = np.abs(logits - reference).mean() / np.abs(reference).mean()
    assert agreement >= 0.8, agreement
    assert relative_error < 0.4, relative_error


# -- ONNX ---------------------------------------------------------------------------


def test_onnx_fp32_matches_pytorch_at_any_batch(onnx_fp32, a1_checkpoint, photo_batch):
    predictor = load_predictor(onnx_fp32)
    assert predictor.name == "onnxruntime-fp32"
    reference = torch_logits(a1_checkpoint, photo_batch)
    for images, expected in ((photo_batch[:1], reference[:1]), (photo_batch, reference)):  # dynamic batch
        assert_close_to_logit_scale(predictor(images), expected, ONNX_FP32_TOL)


def test_onnx_metadata_survives(onnx_fp32, a1_checkpoint):
    model = mnasnet.load_model(a1_checkpoint)
    metadata = read_metadata(onnx_fp32)
    assert metadata.config == model.config.to_dict()
    assert metadata.preprocess == model.preprocess
    assert metadata.labels == LABELS
    assert (metadata.layout, metadata.precision, metadata.batch) == ("nchw", "float32", None)
    assert mnasnet.MnasNetConfig.from_dict(metadata.config) == model.config


@pytest.mark.slow
@pytest.mark.parametrize("per_channel", [True, False])
def test_onnx_int8_is_static_qdq(a1_checkpoint, photo_folder, photo_batch, per_channel):
    import onnx

    out = a1_checkpoint.with_name(f"a1_int8_{per_channel}.onnx")
    export_onnx(a1_checkpoint, out, int8=True, calibration=photo_folder, per_channel=per_channel)
    graph = onnx.load(str(out)).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert "DynamicQuantizeLinear" not in ops and "ConvInteger" not in ops  # static, not dynamic
    weight_scales = [
        onnx.numpy_helper.to_array(init)
        for init in graph.initializer
        if init.name.endswith("_scale") and "weight" in init.name.lower()
    ]
    assert weight_scales and any(scale.size > 1 for scale in weight_scales) == per_channel
    metadata = read_metadata(out)
    assert metadata.precision == "int8" and metadata.quantization["calibration_images"] == 30
    assert_int8_close(load_predictor(out)(photo_batch), torch_logits(a1_checkpoint, photo_batch))


# -- TFLite -------------------------------------------------------------------------


def test_tflite_fp32_is_nhwc_and_matches_pytorch(tflite_fp32, a1_checkpoint, photo_batch):
    from ai_edge_litert.interpreter import Interpreter

    from mnasnet.deploy.npu import operator_counts

    interpreter = Interpreter(model_path=str(tflite_fp32))
    details = interpreter.get_input_details()[0]
    assert list(details["shape"]) == [1, RESOLUTION, RESOLUTION, 3] and details["dtype"] == np.float32
    assert "TRANSPOSE" not in operator_counts(tflite_fp32)  # NHWC-native graph
    predictor = load_predictor(tflite_fp32)
    reference = torch_logits(a1_checkpoint, photo_batch)
    assert_close_to_logit_scale(predictor(photo_batch), reference, TFLITE_FP32_TOL)
    assert read_metadata(tflite_fp32).layout == "nhwc" and predictor.labels == LABELS


def test_tflite_int8_has_int8_input_and_output(tflite_int8):
    from ai_edge_litert.interpreter import Interpreter

    from mnasnet.deploy.npu import operator_counts

    interpreter = Interpreter(model_path=str(tflite_int8))
    interpreter.allocate_tensors()
    tensor_in, tensor_out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert tensor_in["dtype"] == np.int8 and tensor_out["dtype"] == np.int8
    operators = operator_counts(tflite_int8)
    assert "DEQUANTIZE" not in operators and "TRANSPOSE" not in operators  # all-int8, no float islands
    metadata = read_metadata(tflite_int8)
    scale, zero_point = tensor_in["quantization"]
    assert metadata.input_quantization == {"dtype": "int8", "scale": pytest.approx(scale), "zero_point": zero_point}
    assert metadata.output_quantization["scale"] == pytest.approx(tensor_out["quantization"][0])
    assert metadata.labels == LABELS and metadata.quantization["weights"].startswith("int8 per-channel")


def test_tflite_int8_agrees_with_pytorch_on_photos(tflite_int8, a1_checkpoint, photo_batch):
    predictor = load_predictor(tflite_int8)
    assert predictor.name == "litert-int8"
    assert_int8_close(predictor(photo_batch), torch_logits(a1_checkpoint, photo_batch))


# -- bad inputs ---------------------------------------------------------------------


def test_bad_options_raise_one_clear_error(a1_checkpoint, tmp_path):
    out = tmp_path / "m.tflite"
    with pytest.raises(DeployError, match="needs calibration images"):
        export_tflite(a1_checkpoint, out, int8=True)
    with pytest.raises(DeployError, match="only applies to int8"):
        export_onnx(a1_checkpoint, tmp_path / "m.onnx", calibration="digits")
    with pytest.raises(DeployError, match="dynamic is not supported for TFLite"):
        export_tflite(a1_checkpoint, out, batch="dynamic")
    with pytest.raises(DeployError, match="should end in .onnx"):
        export_onnx(a1_checkpoint, tmp_path / "m.tflite")
    with pytest.raises(mnasnet.DataError, match="calibration"):
        export_tflite(a1_checkpoint, out, int8=True, calibration=tmp_path / "no-such-folder")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mnasnet", *args], capture_output=True, text=True)


def test_cli_bad_inputs_exit_2_with_one_line(a1_checkpoint, tmp_path):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a model")
    cases = [
        ("export", "--weights", str(a1_checkpoint), "--int8", str(tmp_path / "x.onnx")),
        ("export", "--weights", str(a1_checkpoint), "--target", "ethos-u65-256", str(tmp_path / "x.onnx")),
        ("export", "--weights", str(corrupt), str(tmp_path / "x.onnx")),
        ("export", "--weights", str(a1_checkpoint), str(tmp_path / "x.bin")),
    ]
    # the four commands run side by side (each spends its time starting Python and importing torch)
    running = [subprocess.Popen([sys.executable, "-m", "mnasnet", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for args in cases]  # fmt: skip
    for args, process in zip(cases, running, strict=True):
        _, stderr = process.communicate()
        assert process.returncode == 2, (args, stderr)
        assert "Traceback" not in stderr and stderr.strip().count("\n") == 0, stderr
        assert "error:" in stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["corrupt.safetensors"]


@pytest.mark.slow
def test_cli_export_onnx_int8_prints_accuracy_comparison(a1_checkpoint, photo_folder, tmp_path):
    out = tmp_path / "cli.onnx"
    result = run_cli(
        "export", "--weights", str(a1_checkpoint), "--int8", "--calibration", str(photo_folder),
        "--eval-data", str(photo_folder), out.as_posix(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "pytorch float32" in result.stdout and "onnxruntime-int8" in result.stdout and "(30 images" in result.stdout
    assert json.loads(json.dumps(read_metadata(out).quantization))["format"] == "QDQ"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--int8"], "int8 export needs calibration images"),
        (["--calibration", "digits"], "--calibration only applies to int8 exports"),
        (["--pooling", "mean"], "--pooling applies to TFLite exports"),
    ],
)
def test_flag_errors_come_before_the_weights_are_opened(tmp_path, capsys, flags, message):
    """A registry name would start a download: a mistake in the flags is reported first."""
    from mnasnet.cli import main

    code = main(["export", "--weights", str(tmp_path / "missing.safetensors"), str(tmp_path / "x.onnx"), *flags])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], lines
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_accelerator_is_refused_before_the_weights_are_opened(tmp_path, capsys):
    pytest.importorskip("ethosu.vela")
    from mnasnet.cli import main

    flags = ["--int8", "--calibration", "digits", "--target", "ethos-u99"]
    code = main(["export", "--weights", str(tmp_path / "missing.safetensors"), str(tmp_path / "x.tflite"), *flags])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "unknown accelerator 'ethos-u99'" in lines[0], lines
    assert list(tmp_path.iterdir()) == []
