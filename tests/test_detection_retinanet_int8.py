"""RetinaNet-FPN as full-integer int8 TFLite: every operator on the NPU, after calibration and after QAT.

RetinaNet's towers run one set of weights on all five pyramid levels, its FPN upsamples and adds, and a
ReLU sits between P6 and P7. litert-torch's quantiser annotated only the first use of a shared weight and
none of the others, so the int8 file used to carry 66 float operators that Vela left on the CPU. The
yardsticks here: Arm's Vela (operator placement on ethos-u65-256 and ethos-u55-128), the TFLite file's
own tensor types (no float32 output on any operator), LiteRT running the float and int8 files side by
side, and torchao's converted graph (every conv reads int8 weights).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("litert_torch")
pytest.importorskip("skimage")

from mnasnet.cli import main  # noqa: E402
from mnasnet.deploy import DeployError  # noqa: E402
from mnasnet.deploy.export_tflite import check_full_integer, float_operators  # noqa: E402
from mnasnet.deploy.quantize import quantize_pt2e  # noqa: E402
from mnasnet.detection.data import DetectionDataset, eval_transform, load_coco  # noqa: E402
from mnasnet.detection.export import export_detector_tflite, load_tflite_predictor, read_detector_metadata  # noqa: E402
from mnasnet.detection.model import create_detector, save_detector  # noqa: E402
from mnasnet.detection.synthetic import SyntheticSettings, generate_faces_coins  # noqa: E402
from mnasnet.tasks.detection import detection_config, train_detector  # noqa: E402

SIZE = 64
BLOCKS = ["r1_k3_s22_e3_i32_o16", "r2_k5_s22_e3_i16_o24_se0.25", "r1_k3_s22_e3_i24_o32", "r1_k5_s22_e6_i32_o48_se0.25"]
LABELS = ("background", "face", "coin")
ACCELERATORS = ("ethos-u65-256", "ethos-u55-128")


# one thread from before the module-scoped trainings below, whose results the checks depend on
pytestmark = pytest.mark.usefixtures("one_thread_for_module")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    settings = SyntheticSettings(
        train_images=8, val_images=4, image_size=96, min_object_size=12, max_object_size=48, max_objects=3
    )
    return generate_faces_coins(tmp_path_factory.mktemp("retina") / "fc", settings)


@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory):
    """A RetinaNet with BN statistics measured on faces-coins images, so activations have real ranges."""
    torch.manual_seed(0)
    detector = create_detector("retinanet", blocks=BLOCKS, num_classes=3, size=SIZE, labels=LABELS)
    # predictors as a trained head has them: scores spread over 0..1 rather than all at the 0.01 prior
    for predictor in (detector.head.head.cls_logits, detector.head.head.bbox_reg):
        torch.nn.init.normal_(predictor.weight, std=0.1)
        torch.nn.init.zeros_(predictor.bias)
    images = DetectionDataset(load_coco(data / "train.json"), eval_transform(SIZE))
    batch = torch.stack([images[index][0] for index in range(len(images))])
    for module in detector.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    with torch.no_grad():
        detector.train()(batch)
    return save_detector(detector.eval(), tmp_path_factory.mktemp("retina_ckpt") / "retinanet.safetensors")


@pytest.fixture(scope="module")
def files(checkpoint, data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("retina_files")
    int8 = folder / "int8.tflite"
    # through the CLI, as a user exports it
    command = ["detect", "export", str(int8), "--weights", str(checkpoint), "--int8", "--calibration", str(data)]
    assert main(command) == 0
    return {"int8": int8, "float": export_detector_tflite(checkpoint, folder / "fp32.tflite")}


def test_every_use_of_a_shared_weight_is_quantised() -> None:
    """One conv applied twice (as RetinaNet's towers are, once per level): both uses read int8 weights."""

    class Twice(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            return torch.relu(self.conv(x)) + torch.relu(self.conv(torch.flip(x, dims=[3])))

    torch.manual_seed(0)
    sample = torch.randn(1, 3, 16, 16)
    converted, _ = quantize_pt2e(Twice().eval(), sample, torch.randn(4, 3, 16, 16).numpy())
    convs = [node for node in converted.graph.nodes if node.target == torch.ops.aten.conv2d.default]
    assert len(convs) == 2
    for conv in convs:
        assert conv.args[1].target == torch.ops.quantized_decomposed.dequantize_per_channel.default
        assert conv.args[0].target == torch.ops.quantized_decomposed.dequantize_per_tensor.default


@pytest.mark.slow
def test_int8_retinanet_has_no_float_operator_and_shares_its_tower_weights(files) -> None:
    assert float_operators(files["int8"]) == []
    float_ops = float_operators(files["float"])
    assert float_ops.count("CONV_2D") > 60  # the float file, for contrast, computes everything in float
    # the towers' weights are stored once: the int8 file is about a quarter of the float one, not larger
    assert files["int8"].stat().st_size < 0.35 * files["float"].stat().st_size


@pytest.mark.slow
@pytest.mark.parametrize("accelerator", ACCELERATORS)
def test_vela_runs_the_whole_int8_retinanet_on_the_npu(files, accelerator) -> None:
    pytest.importorskip("ethosu.vela")
    from mnasnet.deploy.npu import vela_report

    report = vela_report(files["int8"], accelerator)
    assert report.cpu_operators == 0, report.format()
    assert report.npu_operators > 100  # 5 levels x (2 towers of 4 convs + 2 predictors) and the backbone
    assert report.inference_time_ms is not None and report.inference_time_ms > 0


@pytest.mark.slow
def test_int8_retinanet_scores_and_boxes_track_the_float_file(files, data) -> None:
    metadata = read_detector_metadata(files["int8"])
    assert metadata.class_output == "scores"
    assert metadata.output_quantization["cls_logits"] == {"scale": pytest.approx(1 / 256), "zero_point": -128}
    images = DetectionDataset(load_coco(data / "val.json"), eval_transform(SIZE))
    batch = np.stack([images[index][0].numpy() for index in range(len(images))])
    scores_int8, boxes_int8 = load_tflite_predictor(files["int8"]).raw(batch)
    logits_float, boxes_float = load_tflite_predictor(files["float"]).raw(batch)
    scores_int8 = 1 / (1 + np.exp(-scores_int8))  # the predictor hands back logits of the int8 probabilities
    scores_float = 1 / (1 + np.exp(-logits_float))
    assert np.abs(scores_int8 - scores_float).mean() < 0.01
    assert np.corrcoef(scores_int8.ravel(), scores_float.ravel())[0, 1] > 0.95
    assert np.corrcoef(boxes_int8.ravel(), boxes_float.ravel())[0, 1] > 0.95


@pytest.mark.slow
def test_a_float_file_is_refused_as_int8_and_nothing_is_written(files, tmp_path) -> None:
    """The exporter's last check: a file that still computes in float is not an int8 file."""
    candidate = tmp_path / "candidate.tflite"
    candidate.write_bytes(files["float"].read_bytes())
    with pytest.raises(DeployError, match=r"left \d+ operators in float \(.*CONV_2D"):
        check_full_integer(candidate)
    check_full_integer(files["int8"])  # passes quietly


@pytest.mark.slow
def test_qat_retinanet_exports_int8_that_runs_on_the_npu(data, tmp_path, capsys) -> None:
    """``detect train --qat`` on a RetinaNet, then the int8 export without calibration, as a user runs them."""
    pytest.importorskip("ethosu.vela")
    from mnasnet.deploy.npu import vela_report

    base = detection_config(str(data), head="retinanet", arch="small", size=SIZE, epochs=1, batch_size=4,
                            workers=0, output=str(tmp_path / "float"))  # fmt: skip
    train_detector(base, progress=False)
    qat, weights = tmp_path / "qat", tmp_path / "float" / "last.safetensors"
    command = ["detect", "train", "--qat", "--data", str(data), "--weights", str(weights), "--epochs", "1",
               "--batch-size", "4", "--workers", "0", "--output", str(qat), "--quiet"]  # fmt: skip
    assert main(command) == 0
    out = tmp_path / "qat.tflite"
    assert main(["detect", "export", str(out), "--weights", str(qat / "last.safetensors"), "--int8"]) == 0
    assert read_detector_metadata(out).quantization["calibration_images"] == 0
    assert float_operators(out) == []
    report = vela_report(out, "ethos-u65-256")
    assert report.cpu_operators == 0, report.format()
    capsys.readouterr()
    assert main(["detect", "evaluate", "--weights", str(out), "--data", str(data), "--json"]) == 0
