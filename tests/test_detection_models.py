"""SSDLite and RetinaNet-FPN detectors against torchvision's own modules and the published sizes.

Yardsticks: torchvision's ``ssdlite320_mobilenet_v3_large`` extra blocks and ``SSDLiteHead``, its
``FeaturePyramidNetwork`` + ``LastLevelP6P7`` + ``RetinaNetHead`` (weights copied one to one, outputs
compared), its ``DefaultBoxGenerator`` / ``AnchorGenerator``, ``compute_loss`` and
``postprocess_detections`` on our head outputs, and section 8 of REFERENCE.md
(tests/fixtures/reference.md): the MnasNet paper's SSDLite + MnasNet-A1 size and torchvision's
published parameter count of ssdlite320_mobilenet_v3_large.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from functools import partial

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from detection_oracle import import_torchvision_detection, torchvision_ops, torchvision_retinanet, torchvision_ssd
from mnasnet.checkpoint import save_checkpoint
from mnasnet.detection import DetectionError
from mnasnet.detection.anchors import GridAnchors
from mnasnet.detection.model import (
    Detector,
    DetectorConfig,
    anchors_for,
    create_detector,
    load_detector,
    read_detector_config,
    save_detector,
)
from mnasnet.detection.retinanet import RetinaNet
from mnasnet.detection.ssdlite import SSDLite
from mnasnet.errors import CheckpointError
from mnasnet.factory import create_model, load_model

from reference_tables import _section, _table_rows, reference_text

tv = import_torchvision_detection()
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator  # noqa: E402
from torchvision.models.detection.image_list import ImageList  # noqa: E402
from torchvision.models.detection.retinanet import RetinaNetHead, _default_anchorgen  # noqa: E402
from torchvision.models.detection.ssdlite import SSDLiteHead, _extra_block  # noqa: E402
from torchvision.models.detection.transform import resize_boxes  # noqa: E402
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7  # noqa: E402

CUSTOM_BLOCKS = [
    "r1_k3_s11_e1_i32_o16_noskip",
    "r2_k3_s22_e6_i16_o24",
    "r2_k5_s22_e3_i24_o40_se0.25",
    "r2_k3_s22_e6_i40_o80",
    "r1_k5_s22_e6_i80_o160",
]
TV_BN = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)  # what ssdlite320_mobilenet_v3_large passes


def published_detectors() -> dict[str, dict[str, str]]:
    """Section 8's table: detector -> its row."""
    section = _section(reference_text(), 8)
    header = ["detector", "map", "params", "madds", "input", "source"]
    return {row[0]: dict(zip(header, row, strict=True)) for row in _table_rows(section)}


def randomize(module: nn.Module, seed: int) -> nn.Module:
    """Random weights, biases and BN statistics everywhere, so that every layer shapes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.BatchNorm2d):
                n = layer.num_features
                layer.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                layer.bias.copy_(torch.randn(n, generator=generator) * 0.1)
                layer.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                layer.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            elif isinstance(layer, nn.Conv2d):
                fan_in = layer.weight[0].numel()
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) / fan_in**0.5)
                if layer.bias is not None:
                    layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator) * 0.1)
    return module.eval()


def copy_in_order(source: nn.Module, target: nn.Module) -> None:
    """Copies ``source``'s state into ``target`` tensor by tensor, in registration order; shapes must agree."""
    theirs, ours = list(source.state_dict().items()), list(target.state_dict().items())
    assert len(theirs) == len(ours)
    with torch.no_grad():
        for (their_name, their_tensor), (our_name, our_tensor) in zip(theirs, ours, strict=True):
            assert their_tensor.shape == our_tensor.shape, (their_name, our_name)
            our_tensor.copy_(their_tensor)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def macs(model: nn.Module, *inputs) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*inputs)
    return counter.get_total_flops() / 2  # one multiply-add is two FLOPs


# ---------------------------------------------------------------- torchvision's modules as the oracle


def test_ssdlite_equals_torchvision_ssdlite320():
    """torchvision's ssdlite320_mobilenet_v3_large: its backbone's two maps through its extras and head, and ours."""
    reference = tv.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None).eval()
    randomize(reference, seed=0)
    body = reference.backbone.features
    channels = [body[0][-1].out_channels, body[1][-1].out_channels]  # C4 expansion and the last layer
    assert channels == [672, 480]  # without backbone weights (as for the published model) the tail is halved
    ours = SSDLite(channels, num_classes=91).eval()
    assert count(ours) == count(reference.backbone.extra) + count(reference.head)
    published = int(published_detectors()["torchvision `ssdlite320_mobilenet_v3_large`"]["params"].replace(",", ""))
    assert count(ours) + count(body) == published == 3_440_060
    copy_in_order(reference.backbone.extra, ours.extra)
    copy_in_order(reference.head, ours.head)
    their_norms = [m for part in (reference.backbone.extra, reference.head) for m in part.modules()]
    their_norms = [m for m in their_norms if isinstance(m, nn.BatchNorm2d)]
    our_norms = [m for m in ours.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(our_norms) == len(their_norms) == 4 * 3 + 2 * 6
    for mine, theirs in zip(our_norms, their_norms, strict=True):
        assert (mine.eps, mine.momentum) == (theirs.eps, theirs.momentum) == (0.001, 0.03)

    with torch.no_grad():
        expand = body[0](torch.randn(2, 3, 320, 320, generator=torch.Generator().manual_seed(1)))
        maps = [expand, body[1](expand)]
        for block in reference.backbone.extra:
            maps.append(block(maps[-1]))
        expected = reference.head(maps)
        cls_logits, bbox_regression = ours(maps[:2])
    assert [tuple(m.shape[-2:]) for m in maps] == [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    torch.testing.assert_close(cls_logits, expected["cls_logits"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bbox_regression, expected["bbox_regression"], rtol=1e-5, atol=1e-5)


def test_ssdlite_initialisation_follows_torchvision():
    torch.manual_seed(0)
    ours = SSDLite([672, 1280], num_classes=91)
    convs = [m for m in ours.modules() if isinstance(m, nn.Conv2d)]
    weights = torch.cat([m.weight.flatten() for m in convs])
    assert abs(weights.std().item() - 0.03) < 0.001 and abs(weights.mean().item()) < 0.001
    assert all(m.bias is None or not m.bias.any() for m in convs)
    reference_extra = [_extra_block(1280, 512, TV_BN), _extra_block(512, 256, TV_BN)]
    reference_head = SSDLiteHead([672, 1280, 512, 256, 256, 128], [6] * 6, 91, TV_BN)
    assert count(ours.extra[:2]) == sum(count(block) for block in reference_extra)
    assert count(ours.head) == count(reference_head)


def test_retinanet_equals_torchvision_fpn_and_head():
    """FeaturePyramidNetwork + LastLevelP6P7(256, 256) (retinanet_resnet50_fpn's) + RetinaNetHead, and ours."""
    in_channels = [40, 112, 320]  # MnasNet-A1 at strides 8, 16, 32
    extra = LastLevelP6P7(256, 256)
    assert extra.use_P5  # torchvision's v1 RetinaNet builds P6 from P5
    reference_fpn = randomize(FeaturePyramidNetwork(in_channels, 256, extra_blocks=extra), seed=2)
    reference_head = randomize(RetinaNetHead(256, 9, 91), seed=3)
    ours = RetinaNet(in_channels, num_classes=91).eval()
    assert count(ours.fpn) == count(reference_fpn) and count(ours.head) == count(reference_head)
    copy_in_order(reference_fpn, ours.fpn)
    copy_in_order(reference_head, ours.head)

    generator = torch.Generator().manual_seed(4)
    sizes = [(15, 13), (8, 7), (4, 4)]  # odd sizes: the top-down path upsamples to the lateral's size
    features = [torch.randn(2, c, *s, generator=generator) for c, s in zip(in_channels, sizes, strict=True)]
    with torch.no_grad():
        pyramid = reference_fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))
        expected = reference_head(list(pyramid.values()))
        maps = ours.feature_maps(features)
        cls_logits, bbox_regression = ours.head(maps)
    assert [tuple(m.shape) for m in maps] == [tuple(p.shape) for p in pyramid.values()]
    for mine, theirs in zip(maps, pyramid.values(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cls_logits, expected["cls_logits"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bbox_regression, expected["bbox_regression"], rtol=1e-5, atol=1e-5)


def test_retinanet_initialisation_follows_torchvision():
    torch.manual_seed(0)
    head = RetinaNet([40, 112, 320], num_classes=91).head
    reference = RetinaNetHead(256, 9, 91)
    torch.testing.assert_close(head.cls_logits.bias, reference.classification_head.cls_logits.bias)
    assert torch.sigmoid(head.cls_logits.bias[0]).item() == pytest.approx(0.01)
    assert not head.bbox_reg.bias.any()
    assert abs(head.classification_tower[0][0].weight.std().item() - 0.01) < 0.001


# ---------------------------------------------------------------- published size of SSDLite + MnasNet-A1


def test_ssdlite_a1_matches_the_published_size():
    """MnasNet paper, Table 3: SSDLite + MnasNet-A1 at 320 has 4.9M parameters and 0.8B multiply-adds.

    The paper's SSDLite is the TF Object Detection API's: 91 class outputs (90 COCO ids + background)
    and 3 boxes per location on the first (stride-16) map, 6 on the others. That layout gives 4.91M
    parameters and 0.84B MAdds. torchvision's layout (6 boxes everywhere), our default, has 5.10M and
    0.91B: the first map's three extra boxes cost 0.19M parameters and 77M MAdds.
    """
    row = published_detectors()["SSDLite + MnasNet-A1"]
    assert row["input"] == "320"
    params, madds = float(row["params"].rstrip("M")) * 1e6, float(row["madds"].rstrip("B")) * 1e9
    images = torch.randn(1, 3, 320, 320)

    model = create_detector("ssdlite", arch="a1", num_classes=91).eval()
    model.head = SSDLite([672, 1280], num_classes=91, num_anchors=(3, 6, 6, 6, 6, 6)).eval()
    assert count(model) == pytest.approx(params, rel=0.05)
    assert macs(model, images) == pytest.approx(madds, rel=0.05)

    default = create_detector("ssdlite", arch="a1", num_classes=91).eval()
    assert count(default) == pytest.approx(params, rel=0.05)
    extra_boxes = 672 * 3 * (91 + 4)  # the first map's 1x1 predictors for three more boxes
    assert count(default) - count(model) == extra_boxes + 3 * (91 + 4)
    assert macs(default, images) - macs(model, images) == extra_boxes * 20 * 20


# ---------------------------------------------------------------- backbones and anchors


def tv_default_boxes(image_size, map_sizes) -> torch.Tensor:
    generator = DefaultBoxGenerator([[2, 3]] * 6, min_ratio=0.2, max_ratio=0.95)
    images = ImageList(torch.zeros(1, 3, *image_size), [tuple(image_size)])
    return generator(images, [torch.zeros(1, 1, *s) for s in map_sizes])[0]


BACKBONES = [
    {"arch": "a1"},
    {"arch": "b1"},
    {"arch": "small"},
    {"arch": "a1", "width_multiplier": 0.5},
    {"blocks": CUSTOM_BLOCKS},
]


@pytest.mark.parametrize("backbone", BACKBONES, ids=["a1", "b1", "small", "a1_x0.5", "custom"])
def test_ssdlite_on_any_backbone_predicts_one_output_per_anchor(backbone):
    model = create_detector("ssdlite", num_classes=7, **backbone).eval()
    with torch.no_grad():
        cls_logits, bbox_regression, map_sizes = model.forward_with_sizes(torch.randn(1, 3, 320, 320))
    assert map_sizes == [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    expected = tv_default_boxes((320, 320), map_sizes)
    assert expected.shape[0] == 3234
    assert cls_logits.shape == (1, 3234, 7) and bbox_regression.shape == (1, 3234, 4)
    torch.testing.assert_close(anchors_for(model.config), expected, rtol=0, atol=1e-4)
    taps = model.tap_names
    assert taps[1] == "head" and taps[0].startswith("expand")
    assert model.backbone.feature_channels[taps[0]] == model.head.head.classification[0][0].conv.in_channels


@pytest.mark.parametrize("backbone", [BACKBONES[2], BACKBONES[4]], ids=["small", "custom"])
def test_retinanet_on_any_backbone_predicts_one_output_per_anchor(backbone):
    model = create_detector("retinanet", num_classes=5, **backbone).eval()
    image_size = (136, 200)
    with torch.no_grad():
        cls_logits, bbox_regression, map_sizes = model.forward_with_sizes(torch.randn(1, 3, *image_size))
    images = ImageList(torch.zeros(1, 3, *image_size), [image_size])
    expected = _default_anchorgen()(images, [torch.zeros(1, 1, *s) for s in map_sizes])[0]
    assert map_sizes == [(17, 25), (9, 13), (5, 7), (3, 4), (2, 2)]
    assert cls_logits.shape == (1, expected.shape[0], 5) and bbox_regression.shape == (1, expected.shape[0], 4)
    torch.testing.assert_close(anchors_for(model.config, image_size), expected, rtol=0, atol=0)
    assert model.config.size == 640 and anchors_for(model.config).shape[0] == 9 * sum(
        (640 // s) ** 2 for s in (8, 16, 32, 64, 128)
    )


def test_anchors_for_odd_input_sizes_match_the_maps():
    model = create_detector("ssdlite", arch="small", num_classes=3).eval()
    for size in [(300, 200), (161, 97)]:
        with torch.no_grad():
            _, _, map_sizes = model.forward_with_sizes(torch.randn(1, 3, *size))
        torch.testing.assert_close(
            anchors_for(model.config, size), tv_default_boxes(size, map_sizes), rtol=0, atol=1e-4
        )


def test_retinanet_drops_the_unused_backbone_head():
    model = create_detector("retinanet", arch="a1", num_classes=91)
    assert not any(name.startswith("backbone.head.") for name in model.state_dict())
    assert not any(name.startswith("backbone.classifier") for name in model.state_dict())
    backbone = create_model("a1")
    head_and_classifier = count(backbone.head) + count(backbone.classifier)
    assert count(model.backbone) == count(backbone) - head_and_classifier


# ---------------------------------------------------------------- loss and predict against torchvision


def make_targets(seed: int, image_size, counts, num_classes: int) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    height, width = image_size
    targets = []
    for n in counts:
        corner = torch.rand(n, 2, generator=generator) * torch.tensor([width, height]) * 0.6
        side = 8 + torch.rand(n, 2, generator=generator) * torch.tensor([width, height]) * 0.35
        labels = torch.randint(1, num_classes, (n,), generator=generator)
        targets.append({"boxes": torch.cat([corner, corner + side], 1), "labels": labels})
    return targets


def test_ssdlite_loss_and_predict_equal_torchvision():
    image_size = (160, 192)
    model = randomize(create_detector("ssdlite", arch="small", num_classes=6), seed=5)
    images = torch.randn(2, 3, *image_size, generator=torch.Generator().manual_seed(6))
    targets = make_targets(7, image_size, [3, 0], 6)
    with torch.no_grad():
        cls_logits, bbox_regression, map_sizes = model.forward_with_sizes(images)
    anchors = tv_default_boxes(image_size, map_sizes)
    oracle = torchvision_ssd(
        6,
        image_size[::-1],
        DefaultBoxGenerator([[2, 3]] * 6, 0.2, 0.95),
        score_thresh=0.001,  # ssdlite320_mobilenet_v3_large's post-processing
        nms_thresh=0.55,
        detections_per_img=300,
        topk_candidates=300,
    )
    outputs = {"cls_logits": cls_logits, "bbox_regression": bbox_regression}
    matched = [
        oracle.proposal_matcher(tv.ops.box_iou(t["boxes"], anchors))
        if len(t["boxes"])
        else torch.full((len(anchors),), -1)
        for t in targets
    ]
    expected = oracle.compute_loss(targets, outputs, [anchors] * 2, matched)
    ours = model.loss(images, targets)
    for key in expected:
        torch.testing.assert_close(ours[key], expected[key], rtol=1e-4, atol=1e-5)

    image_sizes = [image_size, (150, 170)]
    with torchvision_ops():
        expected = oracle.postprocess_detections(outputs, [anchors] * 2, image_sizes)
    detections = model.predict(images, image_sizes)
    for mine, theirs in zip(detections, expected, strict=True):
        assert len(mine["scores"]) == len(theirs["scores"]) > 0
        torch.testing.assert_close(mine["scores"], theirs["scores"], rtol=0, atol=0)
        torch.testing.assert_close(mine["boxes"], theirs["boxes"], rtol=0, atol=1e-4)
        assert torch.equal(mine["labels"], theirs["labels"])
    assert detections[1]["boxes"][:, 0::2].max() <= 170 and detections[1]["boxes"][:, 1::2].max() <= 150


def test_retinanet_loss_and_predict_equal_torchvision():
    image_size = (128, 160)
    model = randomize(create_detector("retinanet", arch="small", num_classes=4, score_threshold=0.2), seed=8)
    images = torch.randn(2, 3, *image_size, generator=torch.Generator().manual_seed(9))
    targets = make_targets(10, image_size, [2, 4], 4)
    with torch.no_grad():
        cls_logits, bbox_regression, map_sizes = model.forward_with_sizes(images)
    image_list = ImageList(torch.zeros(1, 3, *image_size), [image_size])
    anchors = _default_anchorgen()(image_list, [torch.zeros(1, 1, *s) for s in map_sizes])[0]
    oracle = torchvision_retinanet(4, score_thresh=0.2)  # otherwise retinanet_resnet50_fpn's post-processing
    outputs = {"cls_logits": cls_logits, "bbox_regression": bbox_regression}
    expected = oracle.compute_loss(targets, outputs, [anchors] * 2)
    ours = model.loss(images, targets)
    for key in expected:
        torch.testing.assert_close(ours[key], expected[key], rtol=1e-4, atol=1e-5)

    per_level = [h * w * 9 for h, w in map_sizes]
    split = {key: list(value.split(per_level, 1)) for key, value in outputs.items()}
    with torchvision_ops():
        expected = oracle.postprocess_detections(split, [list(anchors.split(per_level))] * 2, [image_size] * 2)
    detections = model.predict(images)
    for mine, theirs in zip(detections, expected, strict=True):
        assert len(mine["scores"]) == len(theirs["scores"]) > 0
        order = theirs["scores"].sort(descending=True, stable=True)[1]
        torch.testing.assert_close(mine["scores"], theirs["scores"][order], rtol=0, atol=0)
        torch.testing.assert_close(mine["boxes"], theirs["boxes"][order], rtol=0, atol=1e-4)


def test_loss_gives_gradients_everywhere():
    model = create_detector("ssdlite", arch="small", num_classes=5).train()
    images = torch.randn(2, 3, 128, 128)
    losses = model.loss(images, make_targets(11, (128, 128), [2, 1], 5))
    assert set(losses) == {"classification", "bbox_regression"}
    assert all(value.dim() == 0 and torch.isfinite(value) for value in losses.values())
    sum(losses.values()).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert model.backbone.stem.conv.weight.grad.abs().sum() > 0


def test_predict_scales_boxes_back_to_the_original_images():
    model = randomize(create_detector("ssdlite", arch="small", num_classes=4), seed=12)
    images = torch.randn(1, 3, 128, 128)
    in_input = model.predict(images)[0]["boxes"]
    scaled = model.predict(images, original_sizes=[(480, 640)])[0]["boxes"]
    torch.testing.assert_close(scaled, resize_boxes(in_input, (128, 128), (480, 640)))
    assert scaled[:, 0::2].max() <= 640 and scaled[:, 1::2].max() <= 480


def test_bad_images_and_targets_raise():
    model = create_detector("ssdlite", arch="small", num_classes=4)
    images = torch.randn(1, 3, 64, 64)
    box = torch.tensor([[1.0, 2.0, 30.0, 40.0]])
    with pytest.raises(DetectionError, match=r"\[B, 3, H, W\]"):
        model.predict(torch.randn(3, 64, 64))
    with pytest.raises(DetectionError, match="floats"):
        model.predict(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(DetectionError, match="image_sizes"):
        model.predict(images, image_sizes=[(64, 64), (64, 64)])
    bad_targets = [
        ({"boxes": box}, "'boxes' and 'labels'"),
        ({"boxes": box, "labels": torch.tensor([0])}, "0 is background"),
        ({"boxes": box, "labels": torch.tensor([4])}, "from 1 to 3"),
        ({"boxes": box, "labels": torch.tensor([1.0])}, "integers"),
        ({"boxes": torch.tensor([[5.0, 5.0, 5.0, 9.0]]), "labels": torch.tensor([1])}, "x2 > x1"),
        ({"boxes": torch.tensor([[5.0, 5.0, float("nan"), 9.0]]), "labels": torch.tensor([1])}, "finite"),
    ]
    for target, message in bad_targets:
        with pytest.raises(DetectionError, match=message):
            model.loss(images, [target])
    with pytest.raises(DetectionError, match="list of 1"):
        model.loss(images, [])


# ---------------------------------------------------------------- settings


def test_config_round_trips_through_json():
    model = create_detector("retinanet", arch="small", num_classes=3, labels=["bg", "cat", "dog"], nms_threshold=0.6)
    config = model.config
    assert (config.size, config.score_threshold, config.topk_candidates, config.nms_threshold) == (640, 0.05, 1000, 0.6)
    assert DetectorConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    ssd = create_detector("ssdlite", arch="small").config
    assert (ssd.size, ssd.num_classes, ssd.score_threshold, ssd.nms_threshold, ssd.topk_candidates) == (
        320,
        91,
        0.001,
        0.55,
        300,
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, "unknown detector settings"),
        ({"head": "yolo"}, "head must be one of"),
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": True}, "num_classes"),
        ({"size": 16}, "size"),
        ({"labels": ["a", "b"]}, "2 labels for 3 classes"),
        ({"labels": "abc"}, "list of strings"),
        ({"score_threshold": 1.5}, "score_threshold"),
        ({"nms_threshold": 0}, "nms_threshold"),
        ({"topk_candidates": 0}, "topk_candidates"),
        ({"detections_per_image": 2.5}, "detections_per_image"),
        ({"std": [1, 0, 1]}, "std"),
        ({"mean": [0.5]}, "mean"),
        ({"backbone": {"blocks": ["r1_k3_s11_e1_i32_o16_zz"], "stem_filters": 32}}, "bad backbone"),
        ({"backbone": "a1"}, "backbone settings"),
    ],
)
def test_bad_settings_raise_one_detection_error(change, message):
    data = create_detector("ssdlite", arch="small", num_classes=3).config.to_dict()
    data.update(change)
    with pytest.raises(DetectionError, match=message):
        DetectorConfig.from_dict(data)


def test_create_detector_rejects_bad_arguments():
    with pytest.raises(DetectionError, match="either arch or blocks"):
        create_detector(arch="a1", blocks=CUSTOM_BLOCKS)
    with pytest.raises(DetectionError, match="unknown detector settings"):
        create_detector(arch="small", nms=0.5)
    with pytest.raises(DetectionError, match="strides 8, 16 and 32"):
        create_detector("retinanet", blocks=CUSTOM_BLOCKS[:3])


def test_backbone_from_a_classification_checkpoint(tmp_path):
    classifier = randomize(create_model("small", num_classes=10), seed=13)
    path = save_checkpoint(classifier, tmp_path / "small.safetensors")
    model = create_detector("ssdlite", backbone_weights=path, num_classes=4)
    assert model.config.backbone == classifier.config
    theirs = classifier.state_dict()
    for name, tensor in model.backbone.state_dict().items():
        assert torch.equal(tensor, theirs[name]), name
    assert model.config.mean == tuple(classifier.preprocess.mean)
    with pytest.raises(CheckpointError, match="conflict"):
        create_detector("ssdlite", arch="a1", backbone_weights=path)


# ---------------------------------------------------------------- checkpoints


def test_save_and_load_give_identical_outputs(tmp_path):
    model = randomize(create_detector("retinanet", arch="small", num_classes=3, labels=["bg", "a", "b"]), seed=14)
    path = save_detector(model, tmp_path / "det.safetensors", extra={"trained_on": "nothing"})
    loaded = load_detector(path)
    assert not loaded.training and loaded.config == model.config and loaded.labels == ("bg", "a", "b")
    assert read_detector_config(path) == model.config
    images = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        for ours, theirs in zip(model(images), loaded(images), strict=True):
            assert torch.equal(ours, theirs)


def _write(path, metadata: dict | None, tensors: dict | None = None):
    save_file(tensors or {"x": torch.zeros(1)}, str(path), metadata=metadata)
    return path


def test_corrupt_foreign_and_mismatched_files_raise(tmp_path):
    model = create_detector("ssdlite", arch="small", num_classes=3)
    good = save_detector(model, tmp_path / "good.safetensors")
    header = json.loads(safe_open(str(good), "pt").metadata()["mnasnet_detector"])

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:5000])
    classifier = save_checkpoint(create_model("small"), tmp_path / "classifier.safetensors")
    retina_header = {**header, "config": {**header["config"], "head": "retinanet"}, "anchors": GridAnchors().to_dict()}
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    cases = [
        (tmp_path / "missing.safetensors", "not found"),
        (truncated, "not a readable safetensors"),
        (classifier, "classification checkpoint"),
        (_write(tmp_path / "plain.safetensors", None), "without mnasnet detector metadata"),
        (_write(tmp_path / "json.safetensors", {"mnasnet_detector": "{not json"}), "corrupt"),
        (_write(tmp_path / "list.safetensors", {"mnasnet_detector": "[1, 2]"}), "not a detector header"),
        (
            _write(tmp_path / "newer.safetensors", {"mnasnet_detector": json.dumps({**header, "format_version": 99})}),
            "newer",
        ),
        (
            _write(
                tmp_path / "unknown.safetensors",
                {"mnasnet_detector": json.dumps({**header, "config": {**header["config"], "x": 1}})},
            ),
            "unknown detector settings",
        ),
        (
            _write(
                tmp_path / "anchors.safetensors",
                {"mnasnet_detector": json.dumps({**header, "anchors": GridAnchors().to_dict()})},
            ),
            "other anchors",
        ),
        (
            _write(tmp_path / "shapes.safetensors", {"mnasnet_detector": json.dumps(retina_header)}, state),
            "does not match",
        ),
    ]
    for path, message in cases:
        with pytest.raises(CheckpointError, match=message):
            load_detector(path)
    with pytest.raises(CheckpointError, match="detector checkpoint"):
        load_model(good)  # a detector is not a classifier
    with pytest.raises(CheckpointError, match="fused"):
        save_detector(model.fuse(), tmp_path / "fused.safetensors")
    with pytest.raises(CheckpointError, match="JSON"):
        save_detector(model, tmp_path / "bad_extra.safetensors", extra={"x": object()})
    assert not (tmp_path / "bad_extra.safetensors").exists() and not (tmp_path / "fused.safetensors").exists()


# ---------------------------------------------------------------- inference forms


@pytest.mark.parametrize("head", ["ssdlite", "retinanet"])
def test_fused_detector_matches(head):
    model = randomize(create_detector(head, arch="small", num_classes=4), seed=15)
    fused = model.fuse()
    assert isinstance(fused, Detector) and fused.is_fused
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    images = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        for ours, theirs in zip(model(images), fused(images), strict=True):
            torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("head", ["ssdlite", "retinanet"])
def test_forward_exports_with_torch_export(head):
    model = randomize(create_detector(head, arch="small", num_classes=4), seed=16)
    images = torch.randn(1, 3, 128, 128)
    exported = torch.export.export(model, (images,))
    with torch.no_grad():
        expected = model(images)
    actual = exported.module()(images)
    assert len(actual) == 2
    for ours, theirs in zip(expected, actual, strict=True):
        torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
