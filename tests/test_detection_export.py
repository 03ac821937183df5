"""Detector export: ONNX (with and without NonMaxSuppression), TFLite float32 and int8, Vela, predictors.

Yardsticks: ONNX Runtime and LiteRT running the files (against the PyTorch detector's raw outputs and
detections), ONNX Runtime's own ``NonMaxSuppression`` (against our CPU post-processing on the same raw
outputs), the LiteRT interpreter's tensor details (int8 input, two int8 outputs), Arm's Vela (NPU/CPU
placement for ethos-u65-256 and ethos-u55-128), and ``anchors_for`` for the anchors in the metadata.
The detector is a small SSDLite at 128 pixels with BN statistics measured on faces-coins images, so
its activations have trained-like ranges.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mnasnet.cli import main
from mnasnet.deploy.quantize import DeployError
from mnasnet.detection.data import DetectionDataset, eval_transform, load_coco
from mnasnet.detection.model import anchors_for, create_detector, save_detector
from mnasnet.detection.postprocess import ssd_postprocess
from mnasnet.detection.synthetic import SyntheticSettings, generate_faces_coins
from mnasnet.errors import CheckpointError, DataError

pytest.importorskip("onnxruntime")
pytest.importorskip("litert_torch")
from mnasnet.detection import export  # noqa: E402

SIZE = 128
# stride 32 in four strided stages; k5, SE and a repeated block give the NPU every op an A1 has
BLOCKS = ["r1_k3_s22_e3_i32_o16", "r2_k5_s22_e3_i16_o24_se0.25", "r1_k3_s22_e3_i24_o32", "r1_k5_s22_e6_i32_o48_se0.25"]
LABELS = ("background", "face", "coin")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    settings = SyntheticSettings(train_images=16, val_images=4, image_size=SIZE, max_object_size=64)
    return generate_faces_coins(tmp_path_factory.mktemp("fc") / "faces-coins", settings)


@pytest.fixture(scope="module")
def images(dataset) -> np.ndarray:
    """Four faces-coins validation images through the evaluation transform, normalised."""
    data = DetectionDataset(load_coco(dataset / "val.json"), eval_transform(SIZE))
    return np.stack([data[index][0].numpy() for index in range(len(data))])


@pytest.fixture(scope="module")
def detector(dataset):
    torch.manual_seed(0)
    model = create_detector("ssdlite", blocks=BLOCKS, num_classes=3, size=SIZE, labels=LABELS)
    # BN statistics measured on real images, as training would leave them
    data = DetectionDataset(load_coco(dataset / "train.json"), eval_transform(SIZE))
    batch = torch.stack([data[index][0] for index in range(len(data))])
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for module in norms:
            module.reset_running_stats()
            module.momentum = None
        model.train()(batch)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(detector, tmp_path_factory):
    return save_detector(detector, tmp_path_factory.mktemp("ckpt") / "ssdlite.safetensors")


@pytest.fixture(scope="module")
def files(checkpoint, dataset, tmp_path_factory):
    """Each format exported once: raw ONNX, ONNX with NMS, TFLite float32, TFLite int8."""
    folder = tmp_path_factory.mktemp("exports")
    # the NMS file through the CLI, as the README has it
    assert main(["detect", "export", str(folder / "nms.onnx"), "--weights", str(checkpoint), "--nms"]) == 0
    return {
        "onnx": export.export_detector_onnx(checkpoint, folder / "raw.onnx"),
        "onnx_nms": folder / "nms.onnx",
        "tflite": export.export_detector_tflite(checkpoint, folder / "fp32.tflite"),
        "int8": export.export_detector_tflite(checkpoint, folder / "int8.tflite", int8=True, calibration=dataset),
    }


def _same_detections(ours: dict, theirs: dict, top: int = 20, score_atol: float = 1e-4) -> None:
    """Our ``top`` best detections are among theirs: same label, same box, close score.

    Looks among their ``2 * top`` best, so near-ties that swap places across the cut still match.
    """
    ours = {key: np.asarray(value) for key, value in ours.items()}
    theirs = {key: np.asarray(value)[: 2 * top] for key, value in theirs.items()}
    count = min(top, len(ours["scores"]))
    assert count > 0
    for index in range(count):
        label, score, box = ours["labels"][index], ours["scores"][index], ours["boxes"][index]
        match = (
            (theirs["labels"] == label)
            & (np.abs(theirs["scores"] - score) <= score_atol)
            & (np.abs(theirs["boxes"] - box).max(axis=1) <= 1e-2)
        )
        assert match.any(), f"detection {index} (label {label}, score {score:.5f}, box {box.tolist()}) not found"


@pytest.mark.parametrize(
    ("head", "layout"), [("ssdlite", "nhwc"), pytest.param("retinanet", "nchw", marks=pytest.mark.slow)]
)
def test_export_graph_computes_what_the_detector_computes(head, layout) -> None:
    from mnasnet.detection.export_graph import ExportableDetector

    from conftest import randomize_bn

    torch.manual_seed(0)
    detector = randomize_bn(create_detector(head, blocks=BLOCKS, num_classes=4, size=96), resolution=96)
    images = torch.randn(2, 3, 96, 96)
    graph = ExportableDetector(detector, layout=layout)
    with torch.no_grad():
        expected = detector(images)
        found = graph(images.permute(0, 2, 3, 1) if layout == "nhwc" else images)
    for ours, theirs in zip(found, expected, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_in_graph_nms_module_equals_cpu_postprocessing(detector, images) -> None:
    """The graph ONNX gets, run eagerly (our NonMaxSuppression stand-in) against ``Detector.predict``."""
    from mnasnet.detection.export_graph import DetectorWithNMS, ExportableDetector

    module = DetectorWithNMS(ExportableDetector(detector), anchors_for(detector.config), (SIZE, SIZE))
    with torch.no_grad():
        boxes, scores, labels, counts, _, _ = module(torch.from_numpy(images))
    for index, expected in enumerate(detector.predict(torch.from_numpy(images))):
        count = int(counts[index])
        assert count == len(expected["scores"])
        found = {"boxes": boxes[index, :count], "scores": scores[index, :count], "labels": labels[index, :count]}
        _same_detections(expected, found, top=count, score_atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["onnx", "onnx_nms", "tflite"])
def test_float_files_give_the_detectors_raw_outputs(files, detector, images, kind) -> None:
    loader = export.load_tflite_predictor if kind == "tflite" else export.load_onnx_predictor
    predictor = loader(files[kind])
    cls_logits, bbox_regression = predictor.raw(images)
    with torch.no_grad():
        expected = [t.numpy() for t in detector(torch.from_numpy(images))]
    assert cls_logits.shape == expected[0].shape and bbox_regression.shape == expected[1].shape
    np.testing.assert_allclose(cls_logits, expected[0], atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(bbox_regression, expected[1], atol=2e-4, rtol=1e-4)


@pytest.mark.slow
def test_onnx_nms_equals_cpu_postprocessing_on_the_same_outputs(files, detector, images) -> None:
    predictor = export.load_onnx_predictor(files["onnx_nms"])
    assert predictor.metadata.nms
    import onnx

    ops = {node.op_type for node in onnx.load(str(files["onnx_nms"])).graph.node}
    assert "NonMaxSuppression" in ops
    in_graph = predictor.detect(images)  # ONNX Runtime's NonMaxSuppression
    cls_logits, bbox_regression = predictor.raw(images)
    config = detector.config
    on_cpu = ssd_postprocess(
        torch.from_numpy(cls_logits),
        torch.from_numpy(bbox_regression),
        anchors_for(config),
        [(SIZE, SIZE)] * len(images),
        score_threshold=config.score_threshold,
        topk_per_class=config.topk_candidates,
        nms_threshold=config.nms_threshold,
        detections_per_image=config.detections_per_image,
    )
    for graph_result, cpu_result in zip(in_graph, on_cpu, strict=True):
        assert len(graph_result["scores"]) == len(cpu_result["scores"])
        _same_detections(cpu_result, graph_result, top=len(cpu_result["scores"]), score_atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["onnx", "onnx_nms", "tflite"])
def test_file_predictors_detect_what_the_detector_detects(files, detector, images, kind) -> None:
    loader = export.load_tflite_predictor if kind == "tflite" else export.load_onnx_predictor
    predictor = loader(files[kind])
    assert predictor.config == detector.config
    torch.testing.assert_close(predictor.anchors, anchors_for(detector.config))
    original = [(240, 320)] * len(images)
    found = predictor.detect(images, original)
    expected = detector.predict(torch.from_numpy(images), original_sizes=original)
    for ours, theirs in zip(expected, found, strict=True):
        _same_detections(ours, theirs)


@pytest.mark.slow
def test_int8_tflite_has_int8_io_and_two_outputs(files, detector, images) -> None:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(files["int8"]))
    (model_input,) = interpreter.get_input_details()
    outputs = interpreter.get_output_details()
    assert model_input["dtype"] == np.int8 and list(model_input["shape"]) == [1, SIZE, SIZE, 3]
    anchors = anchors_for(detector.config).shape[0]
    assert sorted(tuple(o["shape"]) for o in outputs) == [(1, anchors, 3), (1, anchors, 4)]
    assert all(o["dtype"] == np.int8 for o in outputs)
    scales = {tuple(o["shape"])[-1]: o["quantization"][0] for o in outputs}
    metadata = export.read_detector_metadata(files["int8"])
    assert metadata.output_quantization["cls_logits"]["scale"] == pytest.approx(scales[3])
    assert metadata.output_quantization["bbox_regression"]["scale"] == pytest.approx(scales[4])
    # the int8 class output holds probabilities (an int8 SOFTMAX with TFLite's fixed 1/256 scale)
    assert metadata.class_output == "scores" and scales[3] == pytest.approx(1 / 256)
    # int8 class scores and boxes track the float ones (one shared int8 tensor would flatten the scores)
    cls_int8, boxes_int8 = export.load_tflite_predictor(files["int8"]).raw(images)
    cls_float, boxes_float = export.load_tflite_predictor(files["tflite"]).raw(images)
    scores_int8 = torch.softmax(torch.from_numpy(cls_int8), -1).numpy()
    scores_float = torch.softmax(torch.from_numpy(cls_float), -1).numpy()
    assert np.abs(scores_int8 - scores_float).mean() < 0.02
    assert np.corrcoef(scores_int8.ravel(), scores_float.ravel())[0, 1] > 0.95
    assert np.corrcoef(boxes_int8.ravel(), boxes_float.ravel())[0, 1] > 0.95


@pytest.mark.slow
@pytest.mark.parametrize("accelerator", ["ethos-u65-256", "ethos-u55-128"])
def test_vela_runs_the_whole_int8_detector_on_the_npu(files, accelerator) -> None:
    pytest.importorskip("ethosu.vela")
    from mnasnet.deploy.npu import vela_report

    report = vela_report(files["int8"], accelerator)
    assert report.cpu_operators == 0, report.format()
    assert report.cpu_fallback == []
    assert report.npu_operators > 50
    assert report.inference_time_ms is not None and report.inference_time_ms > 0


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["onnx", "onnx_nms", "tflite", "int8"])
def test_metadata_round_trip(files, detector, kind) -> None:
    metadata = export.read_detector_metadata(files[kind])
    assert metadata.config == detector.config
    assert metadata.config.labels == LABELS
    assert metadata.anchors == detector.config.anchor_generator.to_dict()
    torch.testing.assert_close(metadata.anchor_boxes(), anchors_for(detector.config), rtol=0, atol=0)
    assert metadata.precision == ("int8" if kind == "int8" else "float32")
    assert metadata.nms == (kind == "onnx_nms")
    assert metadata.layout == ("nchw" if kind.startswith("onnx") else "nhwc")
    again = export.DetectorExportMetadata.from_json(metadata.to_json())
    assert again == metadata


def test_metadata_reader_refuses_foreign_and_corrupt_text(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="corrupt"):
        export.DetectorExportMetadata.from_json(json.dumps({"format": "mnasnet-export"}))
    with pytest.raises(CheckpointError, match="newer"):
        export.DetectorExportMetadata.from_json(json.dumps({"format": "mnasnet-detector-export", "format_version": 99}))
    (tmp_path / "plain.tflite").write_bytes(b"\0" * 64)
    with pytest.raises(CheckpointError, match="TFL3"):
        export.read_detector_metadata(tmp_path / "plain.tflite")
    with pytest.raises(CheckpointError, match="not found"):
        export.read_detector_metadata(tmp_path / "missing.onnx")


def test_classification_checkpoint_is_refused_without_a_file(tmp_path) -> None:
    from mnasnet.checkpoint import save_checkpoint
    from mnasnet.factory import create_model

    classifier = tmp_path / "classifier.safetensors"
    save_checkpoint(create_model("small"), classifier)
    out = tmp_path / "out.onnx"
    with pytest.raises(CheckpointError, match="classification checkpoint, not a detector"):
        export.export_detector_onnx(classifier, out)
    assert list(tmp_path.iterdir()) == [classifier]


def test_bad_options_are_refused_before_any_work(checkpoint, tmp_path) -> None:
    with pytest.raises(DeployError, match="needs calibration images"):
        export.export_detector_tflite(checkpoint, tmp_path / "a.tflite", int8=True)
    with pytest.raises(DeployError, match="only applies to int8"):
        export.export_detector_tflite(checkpoint, tmp_path / "a.tflite", calibration="faces-coins")
    with pytest.raises(DeployError, match="unknown format"):
        export.export_detector(checkpoint, tmp_path / "a.engine", fmt="tensorrt")
    with pytest.raises(DeployError, match=r"should end in \.tflite"):
        export.export_detector(checkpoint, tmp_path / "a.onnx", fmt="tflite")
    with pytest.raises(DataError, match="detection dataset not found"):
        export.export_detector_tflite(checkpoint, tmp_path / "a.tflite", int8=True, calibration=tmp_path / "nowhere")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["x.engine"], "unknown format 'engine'"),
        (["x.tflite", "--int8"], "needs calibration images"),
        (["x.onnx", "--int8", "--calibration", "faces-coins"], "int8 detectors are exported as full-integer TFLite"),
        (["x.tflite", "--nms"], "--nms is for ONNX"),
    ],
)
def test_cli_export_errors_are_one_line(checkpoint, tmp_path, capsys, arguments, message) -> None:
    out = [str(tmp_path / arguments[0]), *arguments[1:]]
    assert main(["detect", "export", *out, "--weights", str(checkpoint)]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
