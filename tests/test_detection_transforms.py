"""Box-aware augmentations against hand-computed boxes and torchvision.transforms.v2 on the same parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mnasnet.detection.data import transforms as T

from oracles import import_torchvision


@pytest.fixture(scope="module")
def tv():
    import_torchvision()
    from torchvision import tv_tensors
    from torchvision.transforms.v2 import functional

    return functional, tv_tensors


def _sample(height: int = 50, width: int = 100, seed: int = 0) -> T.Sample:
    generator = torch.Generator().manual_seed(seed)
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0], [60.5, 5.25, 99.0, 50.0], [0.0, 0.0, 4.0, 3.0]])
    return T.Sample(torch.rand(3, height, width, generator=generator), boxes, torch.tensor([1, 2, 3]))


def _tv_boxes(tv, sample: T.Sample):
    _, tv_tensors = tv
    return tv_tensors.BoundingBoxes(sample.boxes, format="XYXY", canvas_size=sample.size)


def test_flip_hand_computed_and_torchvision(tv) -> None:
    functional, _ = tv
    sample = _sample()
    flipped = T.hflip(sample)
    # width 100: x -> 100 - x, corners swap
    torch.testing.assert_close(flipped.boxes[0], torch.tensor([70.0, 20.0, 90.0, 40.0]))
    torch.testing.assert_close(
        flipped.boxes, functional.horizontal_flip(_tv_boxes(tv, sample)).as_subclass(torch.Tensor)
    )
    torch.testing.assert_close(flipped.image, functional.horizontal_flip(sample.image), rtol=0, atol=0)
    assert T.hflip(flipped).boxes.equal(sample.boxes)


@pytest.mark.parametrize(("height", "width"), [(320, 320), (37, 211), (200, 60)])
def test_resize_hand_computed_and_torchvision(tv, height: int, width: int) -> None:
    functional, _ = tv
    sample = _sample()
    resized = T.resize(sample, height, width)
    sx, sy = width / 100, height / 50
    torch.testing.assert_close(resized.boxes[0], torch.tensor([10 * sx, 20 * sy, 30 * sx, 40 * sy]))
    expected_boxes = functional.resize(_tv_boxes(tv, sample), [height, width])
    torch.testing.assert_close(resized.boxes, expected_boxes.as_subclass(torch.Tensor))
    expected_image = functional.resize(sample.image, [height, width], antialias=True).clamp(0, 1)
    torch.testing.assert_close(resized.image, expected_image, rtol=0, atol=1e-6)


def test_letterbox_keeps_aspect_and_pads_with_fill(tv) -> None:
    functional, _ = tv
    sample = _sample(height=50, width=100)
    boxed = T.Letterbox(64, fill=(0.25, 0.5, 0.75))(sample)
    assert boxed.size == (64, 64)
    # longer side 100 -> 64: factor 0.64, height 50 -> 32; bottom rows are fill
    torch.testing.assert_close(boxed.boxes[0], torch.tensor([6.4, 12.8, 19.2, 25.6]))
    torch.testing.assert_close(boxed.image[:, 32:], torch.tensor([0.25, 0.5, 0.75]).view(3, 1, 1).expand(3, 32, 64))
    expected = functional.resize(sample.image, [32, 64], antialias=True).clamp(0, 1)
    torch.testing.assert_close(boxed.image[:, :32], expected, rtol=0, atol=1e-6)
    assert boxed.scale == (0.64, 0.64) and boxed.offset == (0.0, 0.0)


def test_crop_and_pad_match_torchvision(tv) -> None:
    functional, _ = tv
    sample = _sample()
    cropped = T.crop(sample, top=10, left=15, height=30, width=50)
    expected = functional.crop(_tv_boxes(tv, sample), top=10, left=15, height=30, width=50).as_subclass(torch.Tensor)
    keep = (expected[:, 2] - expected[:, 0] >= 1) & (expected[:, 3] - expected[:, 1] >= 1)  # SanitizeBoundingBoxes
    torch.testing.assert_close(cropped.boxes, expected[keep])
    assert cropped.labels.tolist() == [1, 2]  # the 4x3 box at the origin falls outside the window
    torch.testing.assert_close(cropped.image, functional.crop(sample.image, 10, 15, 30, 50))

    padded = T.pad(sample, top=7, left=11, height=90, width=150, fill=(0.1, 0.2, 0.3))
    # torchvision pads by (left, top, right, bottom)
    padding = [11, 7, 150 - 100 - 11, 90 - 50 - 7]
    expected_boxes = functional.pad(_tv_boxes(tv, sample), padding).as_subclass(torch.Tensor)
    torch.testing.assert_close(padded.boxes, expected_boxes)
    expected_image = torch.stack(
        [functional.pad(sample.image[c : c + 1], padding, fill=v)[0] for c, v in enumerate((0.1, 0.2, 0.3))]
    )
    torch.testing.assert_close(padded.image, expected_image)


def test_box_iou_matches_torchvision(tv) -> None:
    torchvision = import_torchvision()
    boxes = _sample().boxes
    other = torch.tensor([[0.0, 0.0, 50.0, 50.0], [20.0, 25.0, 70.0, 45.0]])
    torch.testing.assert_close(T.box_iou(boxes, other), torchvision.ops.box_iou(boxes, other))


@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation", "hue"])
@pytest.mark.parametrize("factor_index", [0, 1])
def test_colour_adjustments_match_torchvision(tv, name: str, factor_index: int) -> None:
    functional, _ = tv
    factor = {"brightness": (0.875, 1.125), "contrast": (0.5, 1.5), "saturation": (0.5, 1.5), "hue": (-0.05, 0.05)}
    value = factor[name][factor_index]
    image = _sample(seed=3).image
    ours = getattr(T, f"adjust_{name}")(image, value)
    theirs = getattr(functional, f"adjust_{name}")(image, value)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-6)


def test_photometric_distort_matches_torchvision_sequence(tv) -> None:
    functional, _ = tv
    distort = T.PhotometricDistort(p=1.0)
    image = _sample(seed=5).image
    for seed in range(4):
        params = distort.draw(np.random.default_rng(seed))
        expected = functional.adjust_brightness(image, params["brightness"])
        if params["contrast_before"]:
            expected = functional.adjust_contrast(expected, params["contrast"])
        expected = functional.adjust_hue(functional.adjust_saturation(expected, params["saturation"]), params["hue"])
        if not params["contrast_before"]:
            expected = functional.adjust_contrast(expected, params["contrast"])
        expected = functional.permute_channels(expected, params["permutation"])
        torch.testing.assert_close(T.PhotometricDistort.apply(image, params), expected, rtol=0, atol=2e-6)


def _apply_map(boxes: torch.Tensor, sample: T.Sample) -> torch.Tensor:
    (sx, sy), (ox, oy) = sample.scale, sample.offset
    mapped = boxes * torch.tensor([sx, sy, sx, sy]) + torch.tensor([ox, oy, ox, oy])
    # a flip (negative scale) swaps the corners
    x1, x2 = torch.minimum(mapped[:, 0], mapped[:, 2]), torch.maximum(mapped[:, 0], mapped[:, 2])
    return torch.stack([x1, mapped[:, 1], x2, mapped[:, 3]], dim=1)


def test_iou_crop_keeps_centred_boxes_clamped_and_meets_min_iou() -> None:
    crop = T.IoUCrop()
    sample = _sample(height=120, width=160)
    cropped_count = 0
    for seed in range(60):
        out = crop(sample, np.random.default_rng(seed))
        if out is sample:
            continue
        cropped_count += 1
        height, width = out.size
        left, top = int(-out.offset[0]), int(-out.offset[1])
        assert out.scale == (1.0, 1.0) and 0.3 * 120 - 1 <= height <= 120 and 0.3 * 160 - 1 <= width <= 160
        assert 0.5 <= width / height <= 2.0
        centre_x = (sample.boxes[:, 0] + sample.boxes[:, 2]) / 2
        centre_y = (sample.boxes[:, 1] + sample.boxes[:, 3]) / 2
        inside = (left < centre_x) & (centre_x < left + width) & (top < centre_y) & (centre_y < top + height)
        expected = _apply_map(sample.boxes[inside], out)
        expected[:, 0::2] = expected[:, 0::2].clamp(0, width)
        expected[:, 1::2] = expected[:, 1::2].clamp(0, height)
        torch.testing.assert_close(out.boxes, expected)
        assert out.labels.tolist() == sample.labels[inside].tolist()
        torch.testing.assert_close(out.image, sample.image[:, top : top + height, left : left + width])
    assert 20 <= cropped_count <= 58  # the "keep whole" option is drawn about 1 time in 7


def test_zoom_out_places_image_on_mean_canvas() -> None:
    zoom = T.ZoomOut(fill=(0.1, 0.2, 0.3), p=1.0)
    sample = _sample()
    out = zoom(sample, np.random.default_rng(1))
    left, top = int(out.offset[0]), int(out.offset[1])
    height, width = out.size
    assert 50 <= height <= 200 and 100 <= width <= 400
    torch.testing.assert_close(out.image[:, top : top + 50, left : left + 100], sample.image)
    outside = torch.ones(height, width, dtype=torch.bool)
    outside[top : top + 50, left : left + 100] = False
    torch.testing.assert_close(out.image[:, outside], torch.tensor([[0.1], [0.2], [0.3]]).expand(3, int(outside.sum())))
    torch.testing.assert_close(out.boxes, sample.boxes + torch.tensor([left, top, left, top], dtype=torch.float32))


@pytest.mark.parametrize(
    "pipeline",
    [
        T.ssd_train_transform(96),
        T.ssd_train_transform(96, iou_crop=False),
        T.retinanet_train_transform(96),
        T.retinanet_train_transform(96, letterbox=False),
    ],
    ids=["ssd", "ssd-no-crop", "retinanet-letterbox", "retinanet-resize"],
)
def test_pipelines_are_seeded_and_track_the_box_map(pipeline) -> None:
    sample = _sample(height=120, width=160)
    for seed in range(10):
        out = pipeline(sample, np.random.default_rng(seed))
        again = pipeline(sample, np.random.default_rng(seed))
        assert out.image.equal(again.image) and out.boxes.equal(again.boxes)
        assert out.size == (96, 96) and out.image.min() >= 0 and out.image.max() <= 1
        assert (out.boxes >= 0).all() and (out.boxes <= 96 + 1e-4).all()
        assert ((out.boxes[:, 2:] - out.boxes[:, :2]) > 0).all()
        if "IoUCrop" not in repr(pipeline):  # no crop: every box survives, mapped exactly
            torch.testing.assert_close(out.boxes, _apply_map(sample.boxes, out), rtol=1e-6, atol=1e-4)


def test_eval_transform_matches_torchvision_resize_on_image_and_boxes(tv) -> None:
    functional, _ = tv
    sample = _sample(height=77, width=123)
    out = T.eval_transform(320)(sample, np.random.default_rng(0))
    torch.testing.assert_close(
        out.boxes, functional.resize(_tv_boxes(tv, sample), [320, 320]).as_subclass(torch.Tensor)
    )
    expected = functional.resize(sample.image, [320, 320], antialias=True).clamp(0, 1)
    torch.testing.assert_close(out.image, expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="input size"):
        T.eval_transform(0)


def test_ssd_pipeline_without_the_crop_keeps_every_box_and_the_whole_image() -> None:
    pipeline = T.ssd_train_transform(96, photometric=False, zoom_out=False, iou_crop=False)
    assert "IoUCrop" not in repr(pipeline) and "IoUCrop" in repr(T.ssd_train_transform(96))
    sample = _sample(height=120, width=160)
    resized = T.Resize(96)(sample, np.random.default_rng(0))
    for seed in range(6):
        out = pipeline(sample, np.random.default_rng(seed))
        assert len(out.boxes) == len(sample.boxes)
        # either the plain resize or its mirror image (flipped before resizing: equal up to rounding)
        candidates = (out.image, out.image.flip(-1))
        assert any(torch.allclose(image, resized.image, atol=1e-5) for image in candidates)
