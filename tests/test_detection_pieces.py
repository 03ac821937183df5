"""Detection pieces against torchvision's Python detection code (and NMS against a brute-force loop).

Every test feeds the same inputs to ours and to torchvision's ``DefaultBoxGenerator``,
``AnchorGenerator``, ``BoxCoder``, ``SSDMatcher`` / ``Matcher``, ``SSD.compute_loss`` /
``RetinaNet.compute_loss`` and ``postprocess_detections`` (see detection_oracle.py).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from detection_oracle import (
    import_torchvision_detection,
    nms_kernel,
    torchvision_ops,
    torchvision_retinanet,
    torchvision_ssd,
)
from mnasnet.detection import DetectionError
from mnasnet.detection.anchors import RETINANET_SIZES, DefaultBoxes, GridAnchors, anchors_from_dict
from mnasnet.detection.box_coder import RETINANET_BOX_WEIGHTS, SSD_BOX_WEIGHTS, BoxCoder
from mnasnet.detection.losses import retinanet_loss, ssd_loss
from mnasnet.detection.matcher import BETWEEN_THRESHOLDS, box_iou, match_retinanet, match_ssd
from mnasnet.detection.postprocess import batched_nms, nms, retinanet_postprocess, ssd_postprocess

tv = import_torchvision_detection()
from torchvision.models.detection import _utils as tv_det_utils  # noqa: E402
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator  # noqa: E402
from torchvision.models.detection.image_list import ImageList  # noqa: E402
from torchvision.models.detection.retinanet import _default_anchorgen  # noqa: E402
from torchvision.ops import boxes as tv_boxes  # noqa: E402

# (height, width) of the input and of each head's map: square SSDLite 320, and non-square inputs
SSD_CASES = [
    ((320, 320), [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]),
    ((160, 240), [(10, 15), (5, 8), (3, 4), (2, 2), (1, 1), (1, 1)]),
    ((300, 200), [(19, 13), (10, 7), (5, 4), (3, 2), (2, 1), (1, 1)]),
]
RETINA_CASES = [
    ((128, 192), [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]),
    ((200, 136), [(25, 17), (13, 9), (7, 5), (4, 3), (2, 2)]),
]


def torchvision_anchors(generator, image_size, feature_sizes) -> torch.Tensor:
    images = ImageList(torch.zeros(1, 3, *image_size), [tuple(image_size)])
    features = [torch.zeros(1, 1, *size) for size in feature_sizes]
    return generator(images, features)[0]


def random_boxes(generator: torch.Generator, count: int, image_size, min_side: float = 2.0) -> torch.Tensor:
    height, width = image_size
    limit = torch.tensor([width, height], dtype=torch.float32)
    corner = torch.rand(count, 2, generator=generator) * limit * 0.8
    side = min_side + torch.rand(count, 2, generator=generator) * (limit - corner - min_side)
    return torch.cat([corner, corner + side], dim=1)


def make_targets(seed: int, image_size, counts, num_classes: int, lowest_label: int) -> list[dict]:
    """One target per entry of ``counts``; a count of -1 gives one degenerate tiny box (< 1 px)."""
    generator = torch.Generator().manual_seed(seed)
    targets = []
    for count in counts:
        if count == -1:
            corner = torch.rand(1, 2, generator=generator) * 50
            boxes = torch.cat([corner, corner + 0.01 + torch.rand(1, 2, generator=generator) * 0.5], dim=1)
        else:
            boxes = random_boxes(generator, count, image_size)
        labels = torch.randint(lowest_label, num_classes, (boxes.shape[0],), generator=generator)
        targets.append({"boxes": boxes, "labels": labels})
    return targets


# ---------------------------------------------------------------- anchors


@pytest.mark.parametrize(("image_size", "feature_sizes"), SSD_CASES)
@pytest.mark.parametrize(
    "settings",
    [
        {},  # SSDLite: [[2, 3]] * 6, 0.2 .. 0.95, clipped
        {"clip": False, "min_ratio": 0.1, "max_ratio": 1.2},
        {"aspect_ratios": [[2], [2, 3], [2, 3], [2, 3], [2], [2]], "steps": [8, 16, 32, 64, 100, 300]},
        {"aspect_ratios": [[2]] * 6, "scales": [0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05]},
    ],
)
def test_default_boxes_equal_torchvision(image_size, feature_sizes, settings):
    ours = DefaultBoxes(**{k: tuple(map(tuple, v)) if k == "aspect_ratios" else v for k, v in settings.items()})
    theirs = DefaultBoxGenerator(**{"aspect_ratios": [[2, 3]] * 6, "min_ratio": 0.2, "max_ratio": 0.95, **settings})
    expected = torchvision_anchors(theirs, image_size, feature_sizes)
    anchors = ours.generate(image_size, feature_sizes)
    assert anchors.shape == expected.shape and anchors.dtype == torch.float32
    torch.testing.assert_close(anchors, expected, rtol=0, atol=1e-6)
    assert ours.num_anchors_per_location() == theirs.num_anchors_per_location()
    relative = ours.generate(image_size, feature_sizes, fmt="cxcywh")
    torch.testing.assert_close(relative, theirs._grid_default_boxes(feature_sizes, image_size), rtol=0, atol=0)


def test_ssdlite_scales_equal_torchvision():
    assert DefaultBoxes().scale_values() == tuple(DefaultBoxGenerator([[2, 3]] * 6, 0.2, 0.95).scales)


@pytest.mark.parametrize(("image_size", "feature_sizes"), RETINA_CASES)
def test_retinanet_anchors_equal_torchvision(image_size, feature_sizes):
    theirs = _default_anchorgen()
    assert theirs.sizes == RETINANET_SIZES
    ours = GridAnchors()
    expected = torchvision_anchors(theirs, image_size, feature_sizes)
    torch.testing.assert_close(ours.generate(image_size, feature_sizes), expected, rtol=0, atol=0)
    assert ours.num_anchors_per_location() == theirs.num_anchors_per_location()
    assert sum(ours.num_anchors_per_level(feature_sizes)) == expected.shape[0]


def test_custom_grid_anchors_equal_torchvision():
    sizes, ratios = ((16, 24), (48,)), ((0.25, 1.0, 3.0), (1.0, 2.0))
    theirs = AnchorGenerator(sizes, ratios)
    expected = torchvision_anchors(theirs, (97, 131), [(13, 17), (7, 9)])
    torch.testing.assert_close(GridAnchors(sizes, ratios).generate((97, 131), [(13, 17), (7, 9)]), expected)


@pytest.mark.parametrize("setting", [DefaultBoxes(), DefaultBoxes(steps=(8, 16, 32, 64, 100, 300)), GridAnchors()])
def test_anchor_settings_survive_json(setting):
    restored = anchors_from_dict(json.loads(json.dumps(setting.to_dict())))
    assert restored == setting
    image_size, feature_sizes = (SSD_CASES if isinstance(setting, DefaultBoxes) else RETINA_CASES)[1]
    assert torch.equal(restored.generate(image_size, feature_sizes), setting.generate(image_size, feature_sizes))


def test_bad_anchor_settings_raise():
    with pytest.raises(DetectionError, match="feature-map sizes"):
        DefaultBoxes().generate((320, 320), [(20, 20)] * 5)
    with pytest.raises(DetectionError, match="scales"):
        DefaultBoxes(scales=(0.1, 0.2))
    with pytest.raises(DetectionError, match="positive"):
        GridAnchors(sizes=((32,),), aspect_ratios=((0.0,),))
    with pytest.raises(DetectionError, match="unknown anchor kind"):
        anchors_from_dict({"kind": "yolo"})
    with pytest.raises(DetectionError, match="bad grid_anchors"):
        anchors_from_dict({"kind": "grid_anchors", "strides": [8]})


# ---------------------------------------------------------------- box coder and IoU


@pytest.mark.parametrize("weights", [SSD_BOX_WEIGHTS, RETINANET_BOX_WEIGHTS])
@pytest.mark.parametrize("seed", [0, 1])
def test_box_coder_equals_torchvision(weights, seed):
    generator = torch.Generator().manual_seed(seed)
    anchors = DefaultBoxes().generate((240, 160), SSD_CASES[2][1])[:500] + 0.5
    boxes = random_boxes(generator, 500, (240, 160), min_side=0.05)
    theirs = tv_det_utils.BoxCoder(weights)
    ours = BoxCoder(weights)
    torch.testing.assert_close(ours.encode(boxes, anchors), theirs.encode_single(boxes, anchors), rtol=1e-6, atol=1e-6)
    # offsets up to +-12: exp() clamps at log(1000/16) for the widths and heights
    offsets = torch.randn(500, 4, generator=generator) * 4 * torch.tensor(weights)
    decoded = ours.decode(offsets, anchors)
    torch.testing.assert_close(decoded, theirs.decode_single(offsets, anchors), rtol=0, atol=0)
    batch = torch.stack([offsets, offsets.flip(0)])
    assert torch.equal(ours.decode(batch, anchors)[1], ours.decode(offsets.flip(0), anchors))
    torch.testing.assert_close(ours.decode(ours.encode(boxes, anchors), anchors), boxes, rtol=1e-5, atol=1e-3)


def test_box_iou_equals_torchvision_including_empty_boxes():
    generator = torch.Generator().manual_seed(3)
    boxes1 = random_boxes(generator, 40, (50, 70), min_side=0.0)
    boxes2 = torch.cat([random_boxes(generator, 30, (50, 70)), torch.tensor([[5.0, 5.0, 5.0, 5.0]])])
    boxes1[0] = torch.tensor([5.0, 5.0, 5.0, 5.0])  # two empty boxes: 0 / 0, NaN in both
    expected = tv_boxes.box_iou(boxes1, boxes2)
    assert expected.isnan().any()
    torch.testing.assert_close(box_iou(boxes1, boxes2), expected, rtol=0, atol=0, equal_nan=True)


# ---------------------------------------------------------------- matchers


MATCH_COUNTS = [[0], [1], [-1], [5], [40]]


@pytest.mark.parametrize("counts", MATCH_COUNTS)
@pytest.mark.parametrize("seed", [0, 7])
def test_ssd_matcher_equals_torchvision(counts, seed):
    image_size, feature_sizes = SSD_CASES[1]
    anchors = DefaultBoxes().generate(image_size, feature_sizes)
    (target,) = make_targets(seed, image_size, counts, 5, 1)
    ours = match_ssd(target["boxes"], anchors)
    if counts == [0]:
        expected = torch.full((anchors.shape[0],), -1)  # what SSD.forward does for an image without boxes
    else:
        expected = tv_det_utils.SSDMatcher(0.5)(tv_boxes.box_iou(target["boxes"], anchors))
        assert (ours >= 0).sum() >= target["boxes"].shape[0] or counts == [40]  # every box has an anchor
    assert ours.dtype == torch.int64
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("counts", MATCH_COUNTS)
@pytest.mark.parametrize("seed", [0, 7])
def test_retinanet_matcher_equals_torchvision(counts, seed):
    image_size, feature_sizes = RETINA_CASES[0]
    anchors = GridAnchors().generate(image_size, feature_sizes)  # whole-pixel anchors: many IoU ties
    (target,) = make_targets(seed, image_size, counts, 5, 0)
    ours = match_retinanet(target["boxes"], anchors)
    if counts == [0]:
        expected = torch.full((anchors.shape[0],), -1)
    else:
        matcher = tv_det_utils.Matcher(0.5, 0.4, allow_low_quality_matches=True)
        expected = matcher(tv_boxes.box_iou(target["boxes"], anchors))
        assert (expected == BETWEEN_THRESHOLDS).any() or counts in ([1], [-1])
    assert torch.equal(ours, expected)
    without_low_quality = match_retinanet(target["boxes"], anchors, allow_low_quality_matches=False)
    if counts != [0]:
        matcher = tv_det_utils.Matcher(0.5, 0.4, allow_low_quality_matches=False)
        assert torch.equal(without_low_quality, matcher(tv_boxes.box_iou(target["boxes"], anchors)))


# ---------------------------------------------------------------- losses


LOSS_BATCHES = [[3, 0, 1], [-1, 12], [1], [0, 0]]


def head_outputs(seed: int, batch: int, count: int, num_classes: int, shift: float = 0.0):
    generator = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, count, num_classes, generator=generator) * 2 + shift).requires_grad_()
    regression = torch.randn(batch, count, 4, generator=generator).requires_grad_()
    return logits, regression


@pytest.mark.parametrize("counts", LOSS_BATCHES)
@pytest.mark.parametrize("seed", [0, 5])
def test_ssd_loss_equals_torchvision(counts, seed):
    image_size, feature_sizes = SSD_CASES[1]
    num_classes = 6
    anchors = DefaultBoxes().generate(image_size, feature_sizes)
    targets = make_targets(seed, image_size, counts, num_classes, 1)
    logits, regression = head_outputs(seed, len(counts), anchors.shape[0], num_classes)

    oracle = torchvision_ssd(num_classes, image_size[::-1], DefaultBoxGenerator([[2, 3]] * 6, 0.2, 0.95))
    matched = [
        oracle.proposal_matcher(tv_boxes.box_iou(t["boxes"], anchors))
        if t["boxes"].numel()
        else torch.full((anchors.shape[0],), -1)
        for t in targets
    ]
    expected = oracle.compute_loss(
        targets, {"cls_logits": logits, "bbox_regression": regression}, [anchors] * 3, matched
    )
    ours = ssd_loss(logits, regression, anchors, targets)
    assert ours.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(ours[key], expected[key], rtol=1e-5, atol=1e-5)
    expected_grads = torch.autograd.grad(sum(expected.values()), (logits, regression))
    for ours_grad, expected_grad in zip(
        torch.autograd.grad(sum(ours.values()), (logits, regression)), expected_grads, strict=True
    ):
        torch.testing.assert_close(ours_grad, expected_grad, rtol=1e-5, atol=1e-7)


def test_ssd_loss_with_more_hard_negatives_asked_than_exist():
    # few anchors, many positives: 3 x positives exceeds the negatives, and torchvision counts
    # some positives again among the "negatives"; we must too
    anchors = DefaultBoxes(aspect_ratios=((2.0,),), min_ratio=0.5, max_ratio=0.9).generate((40, 40), [(2, 2)])
    targets = make_targets(2, (40, 40), [10], 4, 1)
    logits, regression = head_outputs(2, 1, anchors.shape[0], 4)
    oracle = torchvision_ssd(4, (40, 40), DefaultBoxGenerator([[2]], 0.5, 0.9))
    matched = [oracle.proposal_matcher(tv_boxes.box_iou(targets[0]["boxes"], anchors))]
    positives = int((matched[0] >= 0).sum())
    assert 3 * positives > anchors.shape[0] - positives
    expected = oracle.compute_loss(targets, {"cls_logits": logits, "bbox_regression": regression}, [anchors], matched)
    ours = ssd_loss(logits, regression, anchors, targets)
    for key in expected:
        torch.testing.assert_close(ours[key], expected[key], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("counts", LOSS_BATCHES)
@pytest.mark.parametrize("seed", [0, 5])
def test_retinanet_loss_equals_torchvision(counts, seed):
    image_size, feature_sizes = RETINA_CASES[1]
    num_classes = 5
    anchors = GridAnchors().generate(image_size, feature_sizes)
    targets = make_targets(seed, image_size, counts, num_classes, 0)
    logits, regression = head_outputs(seed, len(counts), anchors.shape[0], num_classes, shift=-3.0)

    oracle = torchvision_retinanet(num_classes)
    outputs = {"cls_logits": logits, "bbox_regression": regression}
    expected = oracle.compute_loss(targets, outputs, [anchors] * len(counts))
    ours = retinanet_loss(logits, regression, anchors, targets)
    assert ours.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(ours[key], expected[key], rtol=1e-5, atol=1e-5)
    expected_grads = torch.autograd.grad(sum(expected.values()), (logits, regression))
    for ours_grad, expected_grad in zip(
        torch.autograd.grad(sum(ours.values()), (logits, regression)), expected_grads, strict=True
    ):
        torch.testing.assert_close(ours_grad, expected_grad, rtol=1e-5, atol=1e-7)


def test_losses_reject_bad_inputs():
    anchors = DefaultBoxes().generate(*SSD_CASES[1])
    logits, regression = head_outputs(0, 1, anchors.shape[0], 6)
    targets = make_targets(0, SSD_CASES[1][0], [2], 6, 1)
    with pytest.raises(DetectionError, match="labels must lie in"):
        ssd_loss(logits, regression, anchors, [{"boxes": targets[0]["boxes"], "labels": torch.tensor([0, 6])}])
    with pytest.raises(DetectionError, match="targets for a batch"):
        ssd_loss(logits, regression, anchors, targets * 2)
    with pytest.raises(DetectionError, match="anchor sets"):
        retinanet_loss(logits, regression, anchors[:-1], targets)
    with pytest.raises(DetectionError, match="head outputs"):
        retinanet_loss(logits, regression[..., :3], anchors, targets)


# ---------------------------------------------------------------- NMS


def brute_force_nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> list[int]:
    """Greedy NMS in plain Python floats, O(n^2): keep a box unless a kept box overlaps it too much."""

    def iou(a, b):
        inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else math.nan

    box_list, score_list = boxes.tolist(), scores.tolist()
    kept = []
    for i in sorted(range(len(box_list)), key=lambda i: -score_list[i]):  # stable: ties in input order
        if not any(iou(box_list[k], box_list[i]) > threshold for k in kept):
            kept.append(i)
    return kept


def brute_force_batched_nms(boxes, scores, labels, threshold) -> list[int]:
    kept = []
    for label in labels.unique().tolist():
        members = torch.where(labels == label)[0]
        kept += members[brute_force_nms(boxes[members], scores[members], threshold)].tolist()
    return sorted(kept, key=lambda i: (-scores[i].item(), i))


def grid_boxes(seed: int, count: int, levels: int = 3):
    """Whole-pixel boxes crowded into a 12 x 12 patch, scores from a few values: heavy overlap and ties."""
    generator = torch.Generator().manual_seed(seed)
    corner = torch.randint(0, 8, (count, 2), generator=generator)
    side = torch.randint(1, 6, (count, 2), generator=generator)
    boxes = torch.cat([corner, corner + side], dim=1).float()
    scores = torch.randint(1, levels + 1, (count,), generator=generator).float() / levels
    return boxes, scores


@pytest.mark.parametrize("count", [0, 1, 2, 60, 250])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.25, 0.5, 0.75])
def test_nms_equals_brute_force_with_ties_and_overlap(count, seed, threshold):
    boxes, scores = grid_boxes(seed, count)
    boxes[: count // 10, 2:] = boxes[: count // 10, :2]  # a few empty boxes
    if count > 4:
        boxes[3], scores[3] = boxes[1], scores[1]  # an exact duplicate
    expected = brute_force_nms(boxes, scores, threshold)
    kept = nms(boxes, scores, threshold)
    assert kept.dtype == torch.int64
    assert kept.tolist() == expected
    assert nms_kernel(boxes, scores, threshold).tolist() == expected  # the oracle's kernel agrees too


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_equals_brute_force_on_random_boxes(seed):
    generator = torch.Generator().manual_seed(seed)
    boxes = random_boxes(generator, 300, (100, 150), min_side=1.0)
    scores = torch.rand(300, generator=generator)
    for threshold in (0.3, 0.5, 0.7):
        assert nms(boxes, scores, threshold).tolist() == brute_force_nms(boxes, scores, threshold)


@pytest.mark.parametrize("count", [0, 1, 200, 1500])  # torchvision: offsets up to 1000 boxes, a loop above
@pytest.mark.parametrize("seed", [0, 1])
def test_batched_nms_equals_torchvision(count, seed):
    generator = torch.Generator().manual_seed(seed)
    boxes = random_boxes(generator, count, (60, 80), min_side=1.0)
    scores = torch.rand(count, generator=generator)
    labels = torch.randint(0, 5, (count,), generator=generator)
    with torchvision_ops():
        expected = tv.ops.batched_nms(boxes, scores, labels, 0.5)
    assert torch.equal(batched_nms(boxes, scores, labels, 0.5), expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_nms_with_ties_equals_brute_force(seed):
    boxes, scores = grid_boxes(seed, 300)
    labels = torch.randint(0, 4, (300,), generator=torch.Generator().manual_seed(seed))
    for threshold in (0.25, 0.5):
        expected = brute_force_batched_nms(boxes, scores, labels, threshold)
        assert batched_nms(boxes, scores, labels, threshold).tolist() == expected


def test_nms_by_hand():
    pair = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11]])  # IoU 81 / 119 = 0.68
    assert nms(pair, torch.tensor([0.8, 0.9]), 0.5).tolist() == [1]
    assert nms(pair, torch.tensor([0.8, 0.9]), 0.7).tolist() == [1, 0]
    # A overlaps B and B overlaps C by 50 / 150 = 1/3; A and C are apart: removing B saves C
    chain = torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(chain, scores, 0.3).tolist() == [0, 2]
    assert nms(chain, scores, 0.4).tolist() == [0, 1, 2]
    assert batched_nms(chain, scores, torch.tensor([0, 1, 0]), 0.3).tolist() == [0, 1, 2]


def test_nms_rejects_bad_shapes():
    with pytest.raises(DetectionError, match="nms needs"):
        nms(torch.zeros(3, 4), torch.zeros(2), 0.5)


# ---------------------------------------------------------------- post-processing


def canonical_order(detections: dict) -> dict:
    """Sorted by score, then label and box: torchvision leaves the order of equal scores open
    (sigmoid and softmax scores of ~10^5 anchors do tie in float32)."""
    keys = torch.cat([detections["boxes"], detections["labels"][:, None].float(), -detections["scores"][:, None]], 1)
    order = torch.arange(len(keys))
    for column in range(keys.shape[1]):  # least significant key first, stable sorts
        order = order[torch.sort(keys[order, column], stable=True)[1]]
    return {key: value[order] for key, value in detections.items()}


def assert_same_detections(ours, expected):
    assert len(ours) == len(expected)
    for mine, theirs in zip(ours, expected, strict=True):
        assert torch.equal(mine["scores"], mine["scores"].sort(descending=True)[0])
        mine, theirs = canonical_order(mine), canonical_order(theirs)
        assert mine["labels"].dtype == theirs["labels"].dtype == torch.int64
        assert torch.equal(mine["labels"], theirs["labels"])
        torch.testing.assert_close(mine["scores"], theirs["scores"], rtol=0, atol=0)
        torch.testing.assert_close(mine["boxes"], theirs["boxes"], rtol=0, atol=1e-5)


SSD_SETTINGS = [
    {},  # SSDLite: score 0.001, 300 per class, NMS 0.55, 300 per image
    {"score_threshold": 0.2, "topk_per_class": 40, "nms_threshold": 0.45, "detections_per_image": 50},
]


@pytest.mark.parametrize("settings", SSD_SETTINGS)
@pytest.mark.parametrize("case", [0, 1])
def test_ssd_postprocess_equals_torchvision(settings, case):
    image_size, feature_sizes = SSD_CASES[case]
    anchors = DefaultBoxes().generate(image_size, feature_sizes)
    num_classes = 5
    logits, regression = head_outputs(case, 2, anchors.shape[0], num_classes)
    logits, regression = logits.detach(), regression.detach()
    image_sizes = [image_size, (image_size[0] - 30, image_size[1] - 10)]  # the second clips harder
    full = {"score_threshold": 0.001, "topk_per_class": 300, "nms_threshold": 0.55, "detections_per_image": 300}
    full.update(settings)
    oracle = torchvision_ssd(
        num_classes,
        image_size[::-1],
        DefaultBoxGenerator([[2, 3]] * 6, 0.2, 0.95),
        score_thresh=full["score_threshold"],
        topk_candidates=full["topk_per_class"],
        nms_thresh=full["nms_threshold"],
        detections_per_img=full["detections_per_image"],
    )
    with torchvision_ops():
        expected = oracle.postprocess_detections(
            {"cls_logits": logits, "bbox_regression": regression}, [anchors] * 2, image_sizes
        )
    ours = ssd_postprocess(logits, regression, anchors, image_sizes, **settings)
    assert_same_detections(ours, expected)
    assert len(ours[0]["scores"]) == full["detections_per_image"]
    for detections, (height, width) in zip(ours, image_sizes, strict=True):
        assert detections["boxes"][:, 0::2].max() <= width and detections["boxes"][:, 1::2].max() <= height


RETINA_SETTINGS = [
    {},  # score 0.05, 1000 per level, NMS 0.5, 300 per image
    {"score_threshold": 0.3, "topk_per_level": 100, "nms_threshold": 0.4, "detections_per_image": 80},
]


@pytest.mark.parametrize("settings", RETINA_SETTINGS)
@pytest.mark.parametrize("case", [0, 1])
def test_retinanet_postprocess_equals_torchvision(settings, case):
    image_size, feature_sizes = RETINA_CASES[case]
    generator = GridAnchors()
    anchors = generator.generate(image_size, feature_sizes)
    per_level = generator.num_anchors_per_level(feature_sizes)
    num_classes = 4
    logits, regression = head_outputs(case, 2, anchors.shape[0], num_classes, shift=-2.0)
    logits, regression = logits.detach(), regression.detach()
    image_sizes = [image_size, (image_size[0] - 20, image_size[1] - 30)]
    full = {"score_threshold": 0.05, "topk_per_level": 1000, "nms_threshold": 0.5, "detections_per_image": 300}
    full.update(settings)
    oracle = torchvision_retinanet(
        num_classes,
        score_thresh=full["score_threshold"],
        topk_candidates=full["topk_per_level"],
        nms_thresh=full["nms_threshold"],
        detections_per_img=full["detections_per_image"],
    )
    split = {"cls_logits": list(logits.split(per_level, 1)), "bbox_regression": list(regression.split(per_level, 1))}
    with torchvision_ops():
        expected = oracle.postprocess_detections(split, [list(anchors.split(per_level))] * 2, image_sizes)
    ours = retinanet_postprocess(logits, regression, anchors, image_sizes, per_level, **settings)
    assert_same_detections(ours, expected)
    assert len(ours[0]["scores"]) > 0


def test_postprocess_without_candidates_gives_empty_detections():
    anchors = DefaultBoxes().generate(*SSD_CASES[1])
    logits = torch.zeros(1, anchors.shape[0], 3)
    logits[..., 0] = 30.0  # background everywhere: every object score below 0.001
    (detections,) = ssd_postprocess(logits, torch.zeros(1, anchors.shape[0], 4), anchors, [SSD_CASES[1][0]])
    assert detections["boxes"].shape == (0, 4) and detections["labels"].dtype == torch.int64


def test_postprocess_rejects_bad_inputs():
    anchors = GridAnchors().generate(*RETINA_CASES[0])
    logits, regression = torch.zeros(1, anchors.shape[0], 3), torch.zeros(1, anchors.shape[0], 4)
    with pytest.raises(DetectionError, match="does not add up"):
        retinanet_postprocess(logits, regression, anchors, [RETINA_CASES[0][0]], [10, 20])
    with pytest.raises(DetectionError, match="image sizes"):
        ssd_postprocess(logits, regression, anchors, [])
