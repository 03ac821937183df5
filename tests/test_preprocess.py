"""Evaluation preprocessing against the publishers' own: torchvision, timm and TensorFlow."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mnasnet.data.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocess,
    build_eval_transform,
    reference_crop_window,
    tf_legacy_resize_bilinear,
)
from mnasnet.weights import get_weights

from oracles import import_timm, import_torchvision

FIXTURE = Path(__file__).parent / "fixtures" / "preprocess" / "tf_reference_eval.npz"


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    from skimage import data
    from sklearn.datasets import load_sample_images

    images = {name: Image.fromarray(getattr(data, name)()) for name in ("astronaut", "coffee", "chelsea", "rocket")}
    images["motorcycle"] = Image.fromarray(data.stereo_motorcycle()[0])
    for index, array in enumerate(load_sample_images().images):
        images[f"sklearn{index}"] = Image.fromarray(array)
    # odd sizes and a portrait, so rounding of the long side and of crop offsets matters
    images["portrait_odd"] = images["chelsea"].crop((11, 3, 110, 290))
    images["tiny"] = images["coffee"].crop((100, 100, 131, 141))
    return images


@pytest.mark.parametrize(
    "enum_name", ["MNASNet0_5_Weights", "MNASNet0_75_Weights", "MNASNet1_0_Weights", "MNASNet1_3_Weights"]
)
def test_matches_torchvision_weights_transforms(photos, enum_name):
    torchvision = import_torchvision()
    tv_weights = getattr(torchvision.models, enum_name).IMAGENET1K_V1
    entry = next(w for w in _registry() if w.source == "torchvision" and w.url == tv_weights.url)
    ours = build_eval_transform(entry.preprocess)
    theirs = tv_weights.transforms()
    for name, image in photos.items():
        expected = theirs(image)
        actual = ours(image)
        assert actual.shape == expected.shape == (3, 224, 224), name
        assert torch.max(torch.abs(actual - expected)).item() <= 1e-6, name


@pytest.mark.parametrize("timm_name", ["mnasnet_100", "semnasnet_100", "semnasnet_075", "mnasnet_small"])
def test_matches_timm_create_transform(photos, timm_name):
    timm = import_timm()
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model(timm_name, pretrained=False)
    theirs = create_transform(**resolve_data_config({}, model=model))
    entry = next(w for w in _registry() if w.publisher_name.split(".")[0] == timm_name)
    ours = build_eval_transform(entry.preprocess)
    for name, image in photos.items():
        assert torch.max(torch.abs(ours(image) - theirs(image))).item() <= 1e-6, name


@pytest.mark.parametrize("resolution", [96, 160])
def test_for_resolution_matches_timm_at_other_sizes(photos, resolution):
    timm = import_timm()
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model("semnasnet_100", pretrained=False)
    theirs = create_transform(**resolve_data_config({"input_size": (3, resolution, resolution)}, model=model))
    ours = build_eval_transform(Preprocess.for_resolution(resolution, interpolation="bicubic"))
    for name in ("coffee", "portrait_odd", "tiny"):
        image = photos[name]
        assert torch.max(torch.abs(ours(image) - theirs(image))).item() <= 1e-6, name


def _registry():
    from mnasnet.weights import list_weights

    return list_weights()


def _fixture_cases():
    fixture = np.load(FIXTURE)
    for index in range(int(fixture["num_cases"])):
        prefix = f"case{index}"
        yield {key[len(prefix) + 1 :]: fixture[key] for key in fixture.files if key.startswith(prefix + "_")}


def test_reference_preprocessing_matches_tensorflow():
    """TensorFlow's own crop + resize_bilinear output (tools/make_tf_preprocess_fixture.py)."""
    import skimage

    data_dir = Path(skimage.__file__).parent / "data"
    cases = list(_fixture_cases())
    assert len(cases) >= 8
    for case in cases:
        rows, cols = (int(v) or None for v in case["slice"])
        pixels = np.asarray(Image.open(data_dir / str(case["photo"])).convert("RGB"))[:rows, :cols]
        # the fixture was computed from exactly these pixels
        assert hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest() == str(case["input_sha256"])
        preprocess = Preprocess.reference(int(case["resolution"]))
        assert reference_crop_window(*pixels.shape[:2], preprocess.crop_pct) == tuple(case["window"])
        stride = int(case["stride"])
        ours = build_eval_transform(preprocess)(Image.fromarray(pixels)).numpy().transpose(1, 2, 0)[::stride, ::stride]
        assert ours.shape == case["output"].shape
        # 0-255 pixels scaled by 1/58: 1e-5 is far below one grey level (0.017)
        np.testing.assert_allclose(ours, case["output"], rtol=0, atol=1e-5, err_msg=str(case["photo"]))


def test_reference_crop_is_224_of_256_of_the_short_side():
    preprocess = get_weights("mnasnet-a1").preprocess
    assert preprocess.mode == "crop_resize" and preprocess.resolution == 224
    assert preprocess.crop_pct == 0.875
    # REFERENCE.md section 5: crop 224/(224+32) of the short side, centred (offsets round up)
    assert reference_crop_window(400, 600, preprocess.crop_pct) == (25, 125, 350)
    assert reference_crop_window(300, 451, preprocess.crop_pct) == (19, 95, 262)  # 262.5 truncates


def test_tf_legacy_resize_identity_and_corners():
    pixels = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    np.testing.assert_array_equal(tf_legacy_resize_bilinear(pixels, (5, 7)), pixels.astype(np.float32))
    doubled = tf_legacy_resize_bilinear(pixels, (10, 14))
    # no half-pixel shift: output (0, 0) is input (0, 0), odd outputs average neighbours,
    # the last row/column clamps at the edge
    np.testing.assert_array_equal(doubled[::2, ::2], pixels.astype(np.float32))
    np.testing.assert_allclose(doubled[0, 1], (pixels[0, 0].astype(np.float32) + pixels[0, 1]) / 2)
    np.testing.assert_array_equal(doubled[:, -1], doubled[:, -2])


def test_reference_normalisation_uses_0_255_constants():
    white = Image.new("RGB", (64, 64), (255, 255, 255))
    out = build_eval_transform(Preprocess.reference(32))(white)
    expected = (255 - np.array([123.675, 116.28, 103.53])) / np.array([58.395, 57.12, 57.375])
    np.testing.assert_allclose(out[:, 0, 0].numpy(), expected, rtol=1e-6)


def test_preprocess_round_trips_and_rejects_bad_values():
    for preprocess in (Preprocess(), Preprocess.reference(192), get_weights("mnasnet0_75").preprocess):
        assert Preprocess.from_dict(preprocess.to_dict()) == preprocess
    assert Preprocess.reference(192).crop_pct == 192 / 224
    assert Preprocess.for_resolution(96).scale_size == 109  # floor(96 / 0.875), as timm
    assert Preprocess().mean == IMAGENET_MEAN and Preprocess().std == IMAGENET_STD
    with pytest.raises(ValueError, match="mode"):
        Preprocess(mode="squash")
    with pytest.raises(ValueError, match="interpolation"):
        Preprocess(interpolation="lanczos")
    with pytest.raises(ValueError, match="bilinear"):
        Preprocess(mode="crop_resize", interpolation="bicubic")


def test_grayscale_and_rgba_inputs_are_converted(photos):
    transform = build_eval_transform(Preprocess.for_resolution(32))
    gray = photos["coffee"].convert("L")
    out = transform(gray)
    assert out.shape == (3, 32, 32)
    assert torch.equal(out, transform(gray.convert("RGB")))
