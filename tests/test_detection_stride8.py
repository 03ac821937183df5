"""SSDLite's optional stride-8 map (``stride8_map``): a seventh map for small objects.

Yardsticks: torchvision's ``DefaultBoxGenerator`` over seven maps (the anchors), the backbone's own
stride-8 features (the tap), LiteRT running the exported int8 file, and Arm's Vela (every operator on
the NPU).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from detection_oracle import import_torchvision_detection
from mnasnet.cli import main
from mnasnet.detection import DetectionError
from mnasnet.detection.model import (
    STRIDE8_ANCHOR_SCALES,
    DetectorConfig,
    anchors_for,
    create_detector,
    load_detector,
    save_detector,
)
from mnasnet.detection.synthetic import SyntheticSettings, generate_faces_coins
from mnasnet.tasks.detection import detection_config

tv = import_torchvision_detection()
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator  # noqa: E402
from torchvision.models.detection.image_list import ImageList  # noqa: E402

SIZE = 128


def tv_default_boxes(image_size, map_sizes, min_ratio, max_ratio) -> torch.Tensor:
    generator = DefaultBoxGenerator([[2, 3]] * len(map_sizes), min_ratio=min_ratio, max_ratio=max_ratio)
    images = ImageList(torch.zeros(1, 3, *image_size), [tuple(image_size)])
    return generator(images, [torch.zeros(1, 1, *s) for s in map_sizes])[0]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    settings = SyntheticSettings(
        train_images=8, val_images=4, image_size=96, min_object_size=12, max_object_size=48, max_objects=3
    )
    return generate_faces_coins(tmp_path_factory.mktemp("s8") / "fc", settings)


@pytest.mark.parametrize("scales", [None, (0.05, 0.9)])
def test_seven_maps_with_torchvisions_default_boxes(scales):
    model = create_detector("ssdlite", arch="small", num_classes=3, size=SIZE, stride8_map=True, anchor_scales=scales)
    model.eval()
    map_sizes = model.forward_with_sizes(torch.zeros(1, 3, SIZE, SIZE))[2]
    assert map_sizes[:3] == [(SIZE // 8, SIZE // 8), (SIZE // 16, SIZE // 16), (SIZE // 32, SIZE // 32)]
    assert len(map_sizes) == 7
    expected = tv_default_boxes((SIZE, SIZE), map_sizes, *(scales or STRIDE8_ANCHOR_SCALES))
    torch.testing.assert_close(anchors_for(model.config), expected)
    cls_logits, boxes = model(torch.rand(2, 3, SIZE, SIZE))
    assert cls_logits.shape == (2, expected.shape[0], 3) and boxes.shape == (2, expected.shape[0], 4)


def test_the_first_map_is_the_backbones_stride8_output():
    torch.manual_seed(0)
    model = create_detector("ssdlite", arch="small", num_classes=3, size=SIZE, stride8_map=True).eval()
    plain = create_detector("ssdlite", arch="small", num_classes=3, size=SIZE).eval()
    assert model.tap_names == ["stride8", *plain.tap_names]
    images = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        features = model.backbone.features(images)
        maps = model.head.feature_maps([features[name] for name in model.tap_names])
        first = model.head.head.classification[0](maps[0])
    assert torch.equal(maps[0], features["stride8"]) and maps[0].shape[-1] == SIZE // 8
    # the first SIZE/8 * SIZE/8 * 6 predictions come from that map, in the anchors' order
    count = (SIZE // 8) ** 2 * 6
    logits = model(images)[0][0, :count]
    torch.testing.assert_close(logits, first.permute(0, 2, 3, 1).reshape(-1, 3))


def test_setting_survives_the_checkpoint_and_older_files_mean_off(tmp_path):
    torch.manual_seed(0)
    model = create_detector("ssdlite", arch="small", num_classes=3, size=64, stride8_map=True).eval()
    loaded = load_detector(save_detector(model, tmp_path / "d.safetensors"))
    assert loaded.config.stride8_map and loaded.tap_names == model.tap_names
    images = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(loaded.predict(images)[0]["boxes"], model.predict(images)[0]["boxes"])
    plain = create_detector("ssdlite", arch="small", num_classes=3, size=64)
    assert "stride8_map" not in plain.config.to_dict()  # headers as older versions wrote them
    assert DetectorConfig.from_dict(plain.config.to_dict()).stride8_map is False


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"head": "retinanet", "stride8_map": True}, "RetinaNet-FPN reads stride 8 already"),
        ({"head": "ssdlite", "stride8_map": "yes"}, "stride8_map must be true or false"),
        ({"head": "ssdlite", "stride8_map": 1}, "stride8_map must be true or false"),
    ],
)
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(DetectionError, match=message):
        create_detector(arch="small", num_classes=3, size=64, **settings)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--head", "retinanet", "--stride8-map"], "RetinaNet-FPN reads stride 8 already"),
        (["--qat", "--weights", "x.safetensors", "--stride8-map"], "drop --stride8-map"),
    ],
)
def test_cli_bad_combinations_are_one_line(tiny_data, tmp_path, capsys, flags, message):
    run = tmp_path / "run"
    code = main(["detect", "train", "--data", str(tiny_data), "--output", str(run), "--quiet", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and message in err[0], err
    assert not run.exists() or not any(run.iterdir())


def test_detection_config_rejects_a_non_boolean():
    with pytest.raises(ValueError, match="stride8_map must be true or false"):
        detection_config("faces-coins", stride8_map="no")


@pytest.mark.slow
def test_trains_from_the_command_line_and_exports_int8_that_runs_on_the_npu(tiny_data, tmp_path, capsys):
    """Trained a few steps through the CLI, the seven-map detector exports to full-integer TFLite whose outputs
    cover all its anchors, and Vela places every operator on the Ethos-U65."""
    pytest.importorskip("litert_torch")
    pytest.importorskip("ethosu.vela")
    from ai_edge_litert.interpreter import Interpreter

    from mnasnet.deploy.npu import vela_report
    from mnasnet.detection.export import read_detector_metadata

    run = tmp_path / "run"
    flags = ["--arch", "small", "--size", "64", "--epochs", "1", "--batch-size", "4", "--workers", "0"]
    code = main(["detect", "train", "--data", str(tiny_data), "--output", str(run), "--stride8-map", "--quiet", *flags])
    assert code == 0, capsys.readouterr().err
    weights = run / "last.safetensors"
    detector = load_detector(weights)
    assert detector.config.stride8_map
    out = tmp_path / "d_int8.tflite"
    code = main(["detect", "export", str(out), "--weights", str(weights), "--int8", "--calibration", str(tiny_data)])
    assert code == 0, capsys.readouterr().err
    interpreter = Interpreter(model_path=str(out))
    anchors = anchors_for(detector.config).shape[0]
    assert anchors == sum(h * w * 6 for h, w in [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1), (1, 1), (1, 1)])
    shapes = sorted(tuple(o["shape"]) for o in interpreter.get_output_details())
    assert shapes == [(1, anchors, 3), (1, anchors, 4)]
    assert all(o["dtype"] == np.int8 for o in interpreter.get_output_details())
    metadata = read_detector_metadata(out)
    assert metadata.config.stride8_map
    torch.testing.assert_close(metadata.anchor_boxes(), anchors_for(detector.config), rtol=0, atol=0)
    report = vela_report(out, "ethos-u65-256")
    assert report.cpu_operators == 0, report.format()
    # detect evaluate reads the int8 file and scores it with pycocotools
    capsys.readouterr()
    assert main(["detect", "evaluate", "--weights", str(out), "--data", str(tiny_data), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert set(scores) >= {"AP", "AP50", "n"} and scores["n"] == 4
