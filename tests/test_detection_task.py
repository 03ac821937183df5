"""Detection training through the engine, COCO evaluation against pycocotools, the runtime interface and predict."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("pycocotools")
pytest.importorskip("skimage")

from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from mnasnet.detection.data.records import DetectionData, make_record  # noqa: E402
from mnasnet.detection.evaluate import coco_ground_truth, coco_metrics, coco_results  # noqa: E402
from mnasnet.detection.model import anchors_for, create_detector, load_detector  # noqa: E402
from mnasnet.detection.predict import detect_images, prepare_image  # noqa: E402
from mnasnet.detection.runtime import DetectionPredictor, TorchDetectionPredictor  # noqa: E402
from mnasnet.detection.synthetic import SyntheticSettings, generate_faces_coins  # noqa: E402
from mnasnet.errors import ConfigError, DataError  # noqa: E402
from mnasnet.tasks.detection import detection_config, train_detector  # noqa: E402


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A faces-coins of 8 training and 4 validation images of 96 pixels."""
    settings = SyntheticSettings(
        train_images=8, val_images=4, image_size=96, min_object_size=12, max_object_size=48, max_objects=3
    )
    return generate_faces_coins(tmp_path_factory.mktemp("det") / "fc", settings)


def _config(data, output, **overrides):
    settings = {"arch": "small", "size": 64, "epochs": 2, "batch_size": 4, "workers": 0, "output": str(output)}
    return detection_config(str(data), **{**settings, **overrides})


# -- training through the engine ----------------------------------------------------------


@pytest.mark.slow
def test_train_resume_is_exact(tiny_data, tmp_path):
    straight = train_detector(_config(tiny_data, tmp_path / "a"), progress=False)
    assert straight.status == "completed" and straight.step == 4
    row = straight.metrics[-1]
    assert {"train_classification", "train_bbox_regression", "val_AP", "val_AP50"} <= set(row)
    assert 0.0 <= row["val_AP"] <= 1.0 and row["val_n"] == 4

    stopped = train_detector(_config(tiny_data, tmp_path / "b", max_steps=3), progress=False)
    assert stopped.status == "stopped" and stopped.step == 3
    resumed = train_detector(_config(tiny_data, tmp_path / "b"), resume=True, progress=False)
    assert resumed.status == "completed" and resumed.step == 4

    a = load_detector(tmp_path / "a" / "last.safetensors").state_dict()
    b = load_detector(tmp_path / "b" / "last.safetensors").state_dict()
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    detector = load_detector(tmp_path / "a" / "best.safetensors")
    assert detector.config.labels == ("background", "face", "coin")
    assert detector.config.size == 64


def test_channels_last_reaches_the_engine_and_trains(tiny_data, tmp_path):
    config = _config(tiny_data, tmp_path / "cl", channels_last=True, epochs=1)
    assert config.engine_config().channels_last and not _config(tiny_data, tmp_path).engine_config().channels_last
    plain = train_detector(_config(tiny_data, tmp_path / "plain", epochs=1), progress=False)
    cl = train_detector(config, progress=False)
    # the same function in another layout; their float32 roundings differ and hard-negative mining (a sort of
    # per-anchor losses) can then pick other negatives, so the two runs agree closely, not bit for bit
    assert cl.metrics[0]["train_loss"] == pytest.approx(plain.metrics[0]["train_loss"], rel=0.02)
    assert 0.0 <= cl.metrics[0]["val_AP"] <= 1.0
    assert "channels_last: true" in (tmp_path / "cl" / "config.yaml").read_text()


@pytest.mark.parametrize("iou_crop", [True, False])
def test_iou_crop_setting_reaches_the_training_pipeline(tiny_data, tmp_path, iou_crop):
    from mnasnet.cli import main
    from mnasnet.engine.distributed import DistributedContext
    from mnasnet.tasks.detection import DetectionTask

    task = DetectionTask(_config(tiny_data, tmp_path / "run", iou_crop=iou_crop))
    task.setup(DistributedContext())
    task.build_model()
    assert ("IoUCrop" in repr(task.train_set.transform)) == iou_crop
    flag = "--iou-crop" if iou_crop else "--no-iou-crop"
    args = ["detect", "train", "--data", str(tiny_data), "--output", str(tmp_path / "cli"), "--arch", "small"]
    args += ["--size", "64", "--batch-size", "4", "--workers", "0", "--max-steps", "1", "--quiet", flag]
    assert main(args) == 0
    assert f"iou_crop: {str(iou_crop).lower()}" in (tmp_path / "cli" / "config.yaml").read_text()


def test_bad_settings_raise_config_errors(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="size"):
        _config(tiny_data, tmp_path, size=100)
    with pytest.raises(ConfigError, match="head"):
        _config(tiny_data, tmp_path, head="yolo")
    with pytest.raises(DataError, match="train.json"):
        train_detector(_config(tmp_path, tmp_path / "run"), progress=False)
    assert not (tmp_path / "run").exists()


def test_builtin_defaults_apply_to_faces_coins_only():
    builtin = detection_config("faces-coins")
    assert (builtin.arch, builtin.size, builtin.channels_last, builtin.iou_crop) == ("small", 256, True, False)
    assert detection_config("/some/folder").iou_crop  # SSD's augmentation for everyone else
    assert detection_config("faces-coins", head="retinanet").iou_crop  # RetinaNet has no IoU crop to leave out
    assert detection_config("/some/folder").arch is None
    assert detection_config("faces-coins", size=320).size == 320


# -- COCO evaluation ----------------------------------------------------------------------


def _data() -> DetectionData:
    """Two images; categories 3 and 7 (non-contiguous ids, as COCO's)."""
    records = [
        make_record(1, "a.jpg", 100, 80, [[10, 10, 50, 40], [60, 20, 90, 70]], [3, 7]),
        make_record(2, "b.jpg", 64, 64, [[5, 5, 30, 60]], [7]),
    ]
    return DetectionData(records, {3: "cat", 7: "dog"})


def _pycocotools(ground_truth: dict, results: list[dict]) -> list[float]:
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = ground_truth
        truth.createIndex()
        evaluator = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats[:6]]


def test_ground_truth_as_detections_scores_one():
    data = _data()
    results = []
    for record in data.records:
        labels = data.labels(record)
        results += coco_results(record.image_id, record.boxes, np.ones(len(labels)), labels, data)
    metrics = coco_metrics(coco_ground_truth(data), results)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    assert metrics["n"] == 2
    assert metrics["APl"] is None  # no object over 96x96: COCOeval's -1


def test_results_match_pycocotools_directly():
    data = _data()
    # labels 1 and 2 are categories 3 and 7; boxes xyxy -> COCO xywh
    boxes = np.array([[12, 11, 50, 42], [60, 25, 92, 70], [0, 0, 20, 20]], dtype=np.float32)
    results = coco_results(1, boxes, np.array([0.9, 0.6, 0.8]), np.array([1, 2, 2]), data)
    results += coco_results(2, np.array([[5, 10, 30, 58]]), np.array([0.7]), np.array([1]), data)
    assert results[0] == {"image_id": 1, "category_id": 3, "bbox": [12.0, 11.0, 38.0, 31.0], "score": 0.9}
    assert [r["category_id"] for r in results] == [3, 7, 7, 3]

    ground_truth = {
        "images": [{"id": 1, "width": 100, "height": 80}, {"id": 2, "width": 64, "height": 64}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 40, 30], "area": 1200, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [60, 20, 30, 50], "area": 1500, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 7, "bbox": [5, 5, 25, 55], "area": 1375, "iscrowd": 0},
        ],
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
    }
    expected = _pycocotools(ground_truth, [dict(r) for r in results])
    ours = coco_metrics(coco_ground_truth(data), results)
    got = [ours[name] if ours[name] is not None else -1.0 for name in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
    assert got == pytest.approx(expected)
    assert 0 < ours["AP"] < 1  # a wrong class and a stray box cost something


# -- runtime and predict in original pixels --------------------------------------------------


class _OneBox(DetectionPredictor):
    """A stand-in runtime whose raw output is one confident class-1 box: anchor ``index`` itself."""

    def __init__(self, config, index):
        self.config, self.anchors, self.name, self.index = config, anchors_for(config), "stand-in", index

    def raw(self, images):
        n, classes = self.anchors.shape[0], self.config.num_classes
        logits = np.full((len(images), n, classes), -20.0, dtype=np.float32)
        logits[:, self.index, 1] = 20.0
        return logits, np.zeros((len(images), n, 4), dtype=np.float32)


@pytest.mark.parametrize("head", ["ssdlite", "retinanet"])
def test_predict_maps_boxes_to_original_pixels(tmp_path, head):
    detector = create_detector(head, arch="small", num_classes=3, size=128, labels=["background", "face", "coin"])
    predictor = _OneBox(detector.config, index=None)
    anchors = predictor.anchors
    inside = ((anchors[:, 0] >= 0) & (anchors[:, 1] >= 0) & (anchors[:, 2] <= 128) & (anchors[:, 3] <= 64)).nonzero()
    predictor.index = int(inside[len(inside) // 2])
    path = tmp_path / "wide.png"
    Image.new("RGB", (400, 200), (90, 120, 150)).save(path)  # width 400, height 200

    (result,) = detect_images(predictor, [path], score_threshold=0.5)
    assert [d.label for d in result.detections] == ["face"]
    x1, y1, x2, y2 = anchors[predictor.index].tolist()
    if head == "ssdlite":  # plain resize: x by 400/128, y by 200/128
        expected = [x1 * 400 / 128, y1 * 200 / 128, x2 * 400 / 128, y2 * 200 / 128]
    else:  # letterbox: the image fills the top 64 rows, one factor 400/128 for both axes
        expected = [v * 400 / 128 for v in (x1, y1, x2, y2)]
    assert list(result.detections[0].box) == pytest.approx(expected, abs=0.02)
    entry = result.to_dict()
    assert entry["image"] == str(path) and set(entry["detections"][0]) == {"box", "score", "label"}


def test_torch_predictor_matches_detector_predict(tiny_data):
    torch.manual_seed(0)
    detector = create_detector("ssdlite", arch="small", num_classes=3, size=64).eval()
    image = Image.open(next((tiny_data / "images" / "val").iterdir())).convert("RGB")
    prepared = prepare_image(image, detector.config)
    ours = TorchDetectionPredictor(detector).detect(prepared.image[None], [prepared.original_size])[0]
    reference = detector.predict(torch.from_numpy(prepared.image[None]), original_sizes=[prepared.original_size])[0]
    top = min(20, len(reference["scores"]))
    assert len(ours["scores"]) == len(reference["scores"])
    np.testing.assert_allclose(ours["scores"][:top], reference["scores"][:top].numpy(), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(ours["boxes"][:top], reference["boxes"][:top].numpy(), rtol=1e-3, atol=1e-2)


def test_bad_image_is_reported_and_others_processed(tmp_path):
    detector = create_detector("ssdlite", arch="small", num_classes=3, size=64)
    good = tmp_path / "good.png"
    Image.new("RGB", (50, 40)).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    results = detect_images(TorchDetectionPredictor(detector), [bad, good, tmp_path / "missing.png"])
    assert [r.error is not None for r in results] == [True, False, True]
    assert results[1].size == (40, 50)
