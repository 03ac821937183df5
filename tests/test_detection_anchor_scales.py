"""SSDLite's default-box scales as a detector setting: torchvision's generator with the same
``min_ratio``/``max_ratio`` is the oracle, and the setting survives checkpoints and exports."""

from __future__ import annotations

import json

import pytest
import torch

from detection_oracle import import_torchvision_detection
from mnasnet.detection import DetectionError
from mnasnet.detection.model import DetectorConfig, anchors_for, create_detector, load_detector, save_detector
from mnasnet.errors import CheckpointError

tv = import_torchvision_detection()
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator  # noqa: E402
from torchvision.models.detection.image_list import ImageList  # noqa: E402


def tv_default_boxes(image_size, map_sizes, min_ratio, max_ratio) -> torch.Tensor:
    generator = DefaultBoxGenerator([[2, 3]] * 6, min_ratio=min_ratio, max_ratio=max_ratio)
    images = ImageList(torch.zeros(1, 3, *image_size), [tuple(image_size)])
    return generator(images, [torch.zeros(1, 1, *s) for s in map_sizes])[0]


@pytest.mark.parametrize("scales", [(0.07, 0.6), (0.05, 0.95), (0.3, 0.9)])
def test_detector_anchors_equal_torchvision_with_the_same_scales(scales):
    model = create_detector("ssdlite", arch="small", num_classes=3, size=128, anchor_scales=scales).eval()
    map_sizes = model.forward_with_sizes(torch.zeros(1, 3, 128, 128))[2]
    expected = tv_default_boxes((128, 128), map_sizes, *scales)
    torch.testing.assert_close(anchors_for(model.config), expected)
    # the smallest box of the first level is the smallest scale times the image side
    first = anchors_for(model.config)[0]
    assert float(first[2] - first[0]) == pytest.approx(scales[0] * 128, rel=1e-5)


def test_default_is_torchvisions_ssdlite_and_files_without_the_setting_still_load(tmp_path):
    model = create_detector("ssdlite", arch="small", num_classes=3, size=64)
    assert model.config.anchor_scales is None
    assert "anchor_scales" not in model.config.to_dict()  # headers as older versions wrote them
    map_sizes = model.eval().forward_with_sizes(torch.zeros(1, 3, 64, 64))[2]
    torch.testing.assert_close(anchors_for(model.config), tv_default_boxes((64, 64), map_sizes, 0.2, 0.95))
    path = save_detector(model, tmp_path / "d.safetensors")
    assert load_detector(path).config.anchor_scales is None


def test_scales_survive_the_checkpoint_and_change_the_predictions(tmp_path):
    torch.manual_seed(0)
    model = create_detector("ssdlite", arch="small", num_classes=3, size=64, anchor_scales=(0.08, 0.5)).eval()
    path = save_detector(model, tmp_path / "d.safetensors")
    loaded = load_detector(path)
    assert loaded.config.anchor_scales == (0.08, 0.5)
    images = torch.rand(1, 3, 64, 64)
    boxes = loaded.predict(images)[0]["boxes"]
    torch.testing.assert_close(boxes, model.predict(images)[0]["boxes"])
    # the same weights under torchvision's scales decode to other boxes: the setting is used, not just stored
    default = DetectorConfig.from_dict({**model.config.to_dict(), "anchor_scales": None})
    assert not torch.equal(anchors_for(default), anchors_for(model.config))


def test_a_header_whose_anchors_disagree_with_its_scales_is_refused(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    model = create_detector("ssdlite", arch="small", num_classes=3, size=64, anchor_scales=(0.08, 0.5))
    path = save_detector(model, tmp_path / "d.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    header = json.loads(metadata["mnasnet_detector"])
    header["config"]["anchor_scales"] = [0.1, 0.5]
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={"mnasnet_detector": json.dumps(header)})
    with pytest.raises(CheckpointError, match="other anchors"):
        load_detector(tmp_path / "bad.safetensors")


@pytest.mark.parametrize(
    ("head", "scales", "message"),
    [
        ("ssdlite", (0.5, 0.2), "0 < smallest < largest <= 1"),
        ("ssdlite", (0.0, 0.5), "0 < smallest < largest <= 1"),
        ("ssdlite", (0.1, 1.5), "0 < smallest < largest <= 1"),
        ("ssdlite", (float("nan"), 0.5), "two numbers"),
        ("ssdlite", (0.1, 0.2, 0.3), "two numbers"),
        ("ssdlite", "0.1", "two numbers"),
        ("ssdlite", (True, 0.5), "two numbers"),
        ("retinanet", (0.1, 0.5), "SSDLite's default boxes"),
    ],
)
def test_bad_scales_are_refused(head, scales, message):
    with pytest.raises(DetectionError, match=message):
        create_detector(head, arch="small", num_classes=3, size=64, anchor_scales=scales)
