"""Quantisation-aware training of detectors, and the int8 TFLite it exports, against outside yardsticks.

The float detector is SSDLite on MnasNet-small at 64 px, trained for a few steps on a tiny faces-coins set
(8 training images of 96 px), enough for its box offsets to span a trained range. QAT fine-tunes it for two
epochs; its int8 file is then read and run by LiteRT and compiled by Vela.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("pycocotools")
pytest.importorskip("skimage")

import mnasnet  # noqa: E402
from mnasnet.checkpoint import save_checkpoint  # noqa: E402
from mnasnet.cli import main  # noqa: E402
from mnasnet.deploy import DeployError  # noqa: E402
from mnasnet.deploy.qat import observers_frozen, sync_qparams  # noqa: E402
from mnasnet.detection.export import (  # noqa: E402
    detection_calibration_images,
    export_detector_tflite,
    read_detector_metadata,
)
from mnasnet.detection.export_graph import ExportableDetector  # noqa: E402
from mnasnet.detection.model import Detector, create_detector, load_detector, save_detector  # noqa: E402
from mnasnet.detection.synthetic import SyntheticSettings, generate_faces_coins  # noqa: E402
from mnasnet.errors import CheckpointError, ConfigError, DataError  # noqa: E402
from mnasnet.tasks.detection import detection_config, train_detector  # noqa: E402
from mnasnet.tasks.detection_qat import detection_qat_config, train_detector_qat  # noqa: E402

# one thread from before the module-scoped trainings below, whose results the checks depend on
pytestmark = pytest.mark.usefixtures("one_thread_for_module")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    settings = SyntheticSettings(
        train_images=8, val_images=4, image_size=96, min_object_size=12, max_object_size=48, max_objects=3
    )
    return generate_faces_coins(tmp_path_factory.mktemp("detqat") / "fc", settings)


@pytest.fixture(scope="module")
def float_detector(tiny_data, tmp_path_factory):
    """A float SSDLite trained for 16 steps: a random head's box offsets span ~0.1 (int8 steps of ~5e-4), where
    LiteRT's integer kernels and PyTorch's simulation of them disagree by many steps; trained ones span ~50."""
    output = tmp_path_factory.mktemp("detqat_float") / "run"
    config = detection_config(str(tiny_data), arch="small", size=64, epochs=8, batch_size=4, workers=0, lr=0.05,
                              ema_decay=0.5, bn_momentum=0.3, output=str(output))  # fmt: skip
    train_detector(config, progress=False)
    return output / "last.safetensors"


def _config(data, weights, output, **overrides):
    settings = dict(weights=str(weights), output=str(output), epochs=2, batch_size=4, workers=0)
    return detection_qat_config(str(data), **{**settings, **overrides})


@pytest.fixture(scope="module")
def qat_run(tiny_data, float_detector, tmp_path_factory):
    return train_detector_qat(_config(tiny_data, float_detector, tmp_path_factory.mktemp("detqat") / "run"),
                              progress=False)  # fmt: skip


@pytest.fixture(scope="module")
def qat_tflite(qat_run):
    return export_detector_tflite(qat_run.run_dir / "last.safetensors", qat_run.run_dir / "qat.tflite", int8=True)


@pytest.mark.slow
def test_qat_checkpoint_is_a_detector_checkpoint_that_refolds_exactly(qat_run):
    last = qat_run.run_dir / "last.safetensors"
    detector = load_detector(last)
    assert isinstance(detector, Detector) and detector.config.labels == ("background", "face", "coin")
    header = json.loads(_safetensors_metadata(last)["mnasnet_detector"])
    state = header["extra"]["qat"]
    assert state["per_channel"] is True and len(state["activation_ranges"]) > 100
    assert all(low <= high for low, high in state["activation_ranges"])
    # the exporter folds the saved BN again: it must get back the trained graph's float32 weights, bit for bit
    refolded = ExportableDetector(detector, class_scores=True).state_dict()
    trained = qat_run.model.state_dict()
    assert all(torch.equal(refolded[name], trained[name]) for name in refolded)


def _safetensors_metadata(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()


def _observer(graph, node):
    module = graph.get_submodule(node.target)
    return float(module.scale), int(module.zero_point)


@pytest.mark.slow
def test_int8_export_carries_the_trained_ranges_and_agrees_with_the_fake_quant_graph(qat_run, qat_tflite, tiny_data):
    from ai_edge_litert.interpreter import Interpreter

    graph = qat_run.model  # the fake-quant graph last.safetensors was written from (the EMA)
    sync_qparams(graph)
    nodes = list(graph.graph.nodes)
    input_node = next(n for n in nodes if n.op == "call_module" and n.args[0].op == "placeholder")
    score_node, box_node = next(n for n in nodes if n.op == "output").args[0]
    # LiteRT's own view of the file: int8 NHWC input, two int8 outputs, quantised with the QAT graph's scales
    interpreter = Interpreter(model_path=str(qat_tflite))
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]
    outputs = interpreter.get_output_details()
    assert source["dtype"] == np.int8 and tuple(source["shape"]) == (1, 64, 64, 3)
    assert [(d["dtype"], tuple(d["shape"])) for d in outputs] == [(np.int8, (1, 144, 3)), (np.int8, (1, 144, 4))]
    for detail, node in ((source, input_node), (outputs[0], score_node), (outputs[1], box_node)):
        scale, zero_point = _observer(graph, node)
        assert detail["quantization"][0] == pytest.approx(scale, rel=1e-6) and detail["quantization"][1] == zero_point
    assert outputs[0]["quantization"] == (1 / 256, -128)  # TFLite's int8 softmax output
    metadata = read_detector_metadata(qat_tflite)
    assert (metadata.precision, metadata.class_output, metadata.quantization["calibration_images"]) == (
        "int8", "scores", 0)  # fmt: skip
    # the file run by LiteRT agrees with the fake-quant graph in PyTorch on the same images
    images = detection_calibration_images(load_detector(qat_run.run_dir / "last.safetensors").config, str(tiny_data))
    graph.eval()
    with torch.no_grad(), observers_frozen(graph):
        expected = [output.numpy() for output in graph(torch.from_numpy(images))]
    scale, zero_point = source["quantization"]
    results = []
    for image in images:
        quantised = np.clip(np.round(image.transpose(1, 2, 0)[None] / scale) + zero_point, -128, 127)
        interpreter.set_tensor(source["index"], quantised.astype(np.int8))
        interpreter.invoke()
        results.append([interpreter.get_tensor(d["index"]).astype(np.float32) for d in outputs])
    for index, detail in enumerate(outputs):
        step, zero = detail["quantization"]
        found = (np.concatenate([result[index] for result in results]) - zero) * step
        steps = np.abs(found - expected[index]) / step
        # integer kernels round otherwise (requantisation, the softmax's table): a few values a step or two off
        assert steps.mean() <= 0.75 and np.quantile(steps, 0.97) <= 2.0, (index, steps.mean(), steps.max())


@pytest.mark.slow
def test_qat_tflite_runs_entirely_on_the_npu_and_evaluates(qat_tflite, tiny_data, capsys):
    from mnasnet.deploy.npu import vela_report

    report = vela_report(qat_tflite, "ethos-u65-256")
    assert report.cpu_operators == 0, report.format()
    assert main(["detect", "evaluate", "--weights", str(qat_tflite), "--data", str(tiny_data), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 4 and 0.0 <= result["AP50"] <= 1.0


@pytest.mark.slow
def test_resumed_qat_run_ends_equal_to_an_uninterrupted_one(tiny_data, float_detector, tmp_path):
    whole = train_detector_qat(_config(tiny_data, float_detector, tmp_path / "whole"), progress=False)
    first = train_detector_qat(_config(tiny_data, float_detector, tmp_path / "split", max_steps=2), progress=False)
    assert first.status == "stopped" and first.step == 2
    split = _config(tiny_data, float_detector, tmp_path / "split")
    second = train_detector_qat(split, resume=True, progress=False)
    assert second.status == "completed" and second.step == whole.step == 4
    state, reference = second.model.state_dict(), whole.model.state_dict()
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[name], reference[name]) for name in reference)


def _one_error_line(capsys, code) -> str:
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_bad_qat_training_input_gives_one_clear_error(tiny_data, tmp_path, capsys):
    untrained = create_detector("ssdlite", arch="small", num_classes=3, size=64, labels=["background", "face", "coin"])
    float_detector = save_detector(untrained, tmp_path / "float.safetensors")
    train = ["detect", "train", "--qat", "--data", str(tiny_data), "--workers", "0", "--quiet"]
    assert "--weights DETECTOR_CHECKPOINT" in _one_error_line(capsys, main([*train, "--output", str(tmp_path / "a")]))
    missing = ["--weights", str(tmp_path / "none.safetensors"), "--output", str(tmp_path / "b")]
    assert "not found" in _one_error_line(capsys, main([*train, *missing]))
    classifier = save_checkpoint(mnasnet.create_model("small", num_classes=2), tmp_path / "classifier.safetensors")
    line = _one_error_line(capsys, main([*train, "--weights", str(classifier), "--output", str(tmp_path / "c")]))
    assert "classification checkpoint, not a detector" in line
    fixed = main([*train, "--weights", str(float_detector), "--size", "96", "--output", str(tmp_path / "d")])
    assert "fixes the architecture: drop --size" in _one_error_line(capsys, fixed)
    no_qat = ["detect", "train", "--per-tensor", "--data", str(tiny_data), "--output", str(tmp_path / "e")]
    assert "add --qat" in _one_error_line(capsys, main(no_qat))
    # a detector of other classes: the data set's and the checkpoint's classes named
    other = generate_faces_coins(
        tmp_path / "other",
        SyntheticSettings(train_images=2, val_images=1, image_size=96, min_object_size=12, max_object_size=48),
    )
    (other / "train.json").write_text((other / "train.json").read_text().replace('"face"', '"cat"'))
    (other / "val.json").write_text((other / "val.json").read_text().replace('"face"', '"cat"'))
    with pytest.raises(DataError, match="face, coin.*cat, coin"):
        train_detector_qat(_config(other, float_detector, tmp_path / "f"), progress=False)
    with pytest.raises(ConfigError, match="--weights"):
        detection_qat_config(str(tiny_data))
    with pytest.raises(CheckpointError):
        train_detector_qat(_config(tiny_data, classifier, tmp_path / "g"), progress=False)
    assert not any((tmp_path / name).exists() for name in "abcdefg")


@pytest.mark.slow
def test_export_with_the_other_weight_granularity_gives_one_clear_error(qat_run, tmp_path, capsys):
    last = qat_run.run_dir / "last.safetensors"
    with pytest.raises(DeployError, match="per-channel weight scales, not per-tensor: drop --per-tensor"):
        export_detector_tflite(last, tmp_path / "pt.tflite", int8=True, per_tensor=True)
    export = ["detect", "export", str(tmp_path / "pt.tflite"), "--weights", str(last), "--int8", "--per-tensor"]
    assert "drop --per-tensor" in _one_error_line(capsys, main(export))
    assert not (tmp_path / "pt.tflite").exists()
