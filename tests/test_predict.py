"""`mnasnet predict` end to end: converted timm weights against timm's own transform and forward pass."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mnasnet.cli import main
from mnasnet.data.images import load_image
from mnasnet.data.labels import imagenet_labels
from mnasnet.errors import DataError
from mnasnet.predict import predict_images
from mnasnet.runtime import load_predictor

from conftest import randomize_bn
from oracles import import_timm


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """timm's mnasnet_small with random weights and BN statistics, saved by timm's rules and converted by our CLI."""
    timm = import_timm()
    torch.manual_seed(0)
    model = randomize_bn(timm.create_model("mnasnet_small", pretrained=False), seed=2).eval()
    with torch.no_grad():  # logits with a spread of a few units, so the top-5 probabilities all matter
        model.classifier.weight.mul_(0.15)
    folder = tmp_path_factory.mktemp("weights")
    torch.save(model.state_dict(), folder / "mnasnet_small.pth")
    checkpoint = folder / "mnasnet_small.safetensors"
    assert main(["convert", str(folder / "mnasnet_small.pth"), str(checkpoint), "--from", "timm"]) == 0
    return model, checkpoint


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    from skimage import data
    from sklearn.datasets import load_sample_images

    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.astronaut()).save(folder / "astronaut.jpg", quality=92)
    Image.fromarray(data.coffee()).save(folder / "coffee.png")
    Image.fromarray(data.chelsea()).save(folder / "chelsea.webp", quality=90)
    Image.fromarray(data.rocket()).save(folder / "rocket.bmp")
    Image.fromarray(load_sample_images().images[1]).save(folder / "flower.jpeg")
    return folder


def _timm_top5(timm_model, path: Path) -> list[tuple[int, float]]:
    from timm.data import create_transform, resolve_data_config

    transform = create_transform(**resolve_data_config({}, model=timm_model))
    with Image.open(path) as image:
        x = transform(image.convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        probs = timm_model(x).softmax(-1)[0].double()
    top = probs.topk(5)
    return list(zip(top.indices.tolist(), top.values.tolist(), strict=True))


@pytest.mark.slow
def test_predict_json_matches_timm_forward_pass(converted, photo_dir):
    timm_model, checkpoint = converted
    extra = photo_dir / "coffee.png"  # a file given besides its folder is predicted again
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mnasnet",
            "predict",
            str(photo_dir),
            str(extra),
            "--weights",
            str(checkpoint),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    predictions = json.loads(result.stdout)
    expected_paths = sorted(str(p) for p in photo_dir.iterdir()) + [str(extra)]
    assert [p["image"] for p in predictions] == expected_paths
    labels = imagenet_labels()
    for prediction in predictions:
        expected = _timm_top5(timm_model, Path(prediction["image"]))
        top = prediction["top"]
        assert [item["index"] for item in top] == [index for index, _ in expected], prediction["image"]
        np.testing.assert_allclose([item["prob"] for item in top], [p for _, p in expected], atol=1e-4, rtol=0)
        assert [item["label"] for item in top] == [labels[index] for index, _ in expected]
        assert set(prediction) == {"image", "top"}


def test_predict_text_output_and_topk(converted, photo_dir, capsys):
    _, checkpoint = converted
    image = photo_dir / "rocket.bmp"
    assert main(["predict", str(image), "--weights", str(checkpoint), "--topk", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(image) and len(lines) == 4
    index = int(lines[1].rsplit("(", 1)[1].rstrip(")"))
    assert lines[1].startswith("  1. ") and imagenet_labels()[index] in lines[1] and "%" in lines[1]


def _write_bad_files(folder: Path, photo_dir: Path) -> dict[str, Path]:
    good_jpeg = (photo_dir / "astronaut.jpg").read_bytes()
    bad = {
        "corrupt": folder / "corrupt.jpg",
        "truncated": folder / "truncated.jpg",
        "not_an_image": folder / "notes.png",
        "text": folder / "readme.txt",
    }
    bad["corrupt"].write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8)
    bad["truncated"].write_bytes(good_jpeg[: len(good_jpeg) // 3])
    bad["not_an_image"].write_text("this is not a PNG\n")
    bad["text"].write_text("plain text\n")
    return bad


def test_bad_files_one_line_each_others_still_predicted(converted, photo_dir, tmp_path, capsys):
    _, checkpoint = converted
    bad = _write_bad_files(tmp_path, photo_dir)
    missing = tmp_path / "missing.jpg"
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    good = photo_dir / "coffee.png"
    argv = [str(bad["corrupt"]), str(good), str(bad["truncated"]), str(bad["not_an_image"]), str(bad["text"])]
    argv += [str(missing), str(empty)]
    code = main(["predict", *argv, "--weights", str(checkpoint), "--json", "--batch-size", "2"])
    captured = capsys.readouterr()
    assert code == 1
    errors = captured.err.strip().splitlines()
    assert len(errors) == 6 and all(line.startswith("mnasnet predict: error: ") for line in errors)
    assert "Traceback" not in captured.err
    predictions = json.loads(captured.out)
    assert [p["image"] for p in predictions] == argv
    assert [("top" in p, "error" in p) for p in predictions] == [(False, True), (True, False)] + [(False, True)] * 5
    for prediction, line in zip([p for p in predictions if "error" in p], errors, strict=True):
        assert prediction["error"] in line and prediction["image"] in line
    assert "not found" in predictions[5]["error"] and "no images" in predictions[6]["error"]


def test_bad_weights_is_one_line(photo_dir, tmp_path, capsys):
    not_a_checkpoint = tmp_path / "model.safetensors"
    not_a_checkpoint.write_bytes(b"junk")
    assert main(["predict", str(photo_dir / "coffee.png"), "--weights", str(not_a_checkpoint)]) == 2
    assert main(["predict", str(photo_dir / "coffee.png"), "--weights", "b1_100.nowhere"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "unknown weights 'b1_100.nowhere'" in err[1]


@pytest.fixture(scope="module")
def odd_formats(tmp_path_factory) -> dict[str, tuple[Path, np.ndarray]]:
    """Every accepted format, with the RGB pixels load_image must return."""
    from skimage import data

    folder = tmp_path_factory.mktemp("formats")
    rgb = np.asarray(Image.fromarray(data.chelsea()).resize((48, 32)))
    cases = {}

    rgba = np.dstack([rgb, np.where(np.arange(48) < 24, 255, 0)[None, :].repeat(32, 0)]).astype(np.uint8)
    Image.fromarray(rgba).save(folder / "rgba.png")
    expected = rgb.copy()
    expected[:, 24:] = 255  # transparent pixels become white, not black
    cases["rgba"] = (folder / "rgba.png", expected)

    palette = Image.fromarray(rgb).quantize(colors=64)
    palette.save(folder / "palette.png")
    cases["palette"] = (folder / "palette.png", np.asarray(palette.convert("RGB")))

    gray = rgb.mean(axis=2).round().astype(np.uint8)
    Image.fromarray(gray.astype(np.uint16) * 257).save(folder / "gray16.png")  # 16-bit, full range
    assert Image.open(folder / "gray16.png").mode.startswith("I")
    cases["gray16"] = (folder / "gray16.png", np.dstack([gray] * 3))

    Image.fromarray(gray).save(folder / "gray.png")
    cases["gray"] = (folder / "gray.png", np.dstack([gray] * 3))

    Image.fromarray(rgb).save(folder / "lossless.webp", lossless=True)
    cases["webp"] = (folder / "lossless.webp", rgb)

    Image.fromarray(rgb).save(folder / "image.bmp")
    cases["bmp"] = (folder / "image.bmp", rgb)

    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the camera was turned; show rotated 90 degrees clockwise
    Image.fromarray(rgb).save(folder / "rotated.png", exif=exif)
    cases["exif_rotated"] = (folder / "rotated.png", np.rot90(rgb, k=-1))

    Image.fromarray(rgb).save(folder / "photo.jpg", quality=95)
    cases["jpeg"] = (folder / "photo.jpg", rgb)
    return cases


def test_load_image_accepts_every_named_format(odd_formats):
    for name, (path, expected) in odd_formats.items():
        image = load_image(path)
        assert image.mode == "RGB", name
        actual = np.asarray(image)
        assert actual.shape == expected.shape, name
        difference = np.abs(actual.astype(int) - expected.astype(int))
        if name == "jpeg":  # lossy (and chroma-subsampled): close on average
            assert difference.mean() < 4, name
        else:
            assert difference.max() == 0, name


def test_load_image_rejects_bad_files(photo_dir, tmp_path):
    for name, path in _write_bad_files(tmp_path, photo_dir).items():
        with pytest.raises(DataError, match="cannot read image"):
            load_image(path)
        assert name
    with pytest.raises(DataError, match="not found"):
        load_image(tmp_path / "missing.png")


def test_every_accepted_format_is_predicted(converted, odd_formats):
    _, checkpoint = converted
    predictor = load_predictor(checkpoint)
    paths = [path for path, _ in odd_formats.values()]
    results = predict_images(predictor, paths, topk=5, batch_size=3, progress=False)
    assert [r.image for r in results] == [str(p) for p in paths]
    assert all(r.error is None and len(r.top) == 5 for r in results)
    # batching does not change results
    single = predict_images(predictor, paths[:2], topk=5, batch_size=1, progress=False)
    for a, b in zip(single, results[:2], strict=True):
        assert [s.index for s in a.top] == [s.index for s in b.top]
        np.testing.assert_allclose([s.prob for s in a.top], [s.prob for s in b.top], atol=1e-6)
    # gray: all three channels equal, so the 16-bit and 8-bit versions are the same image
    gray16, gray8 = (results[list(odd_formats).index(name)] for name in ("gray16", "gray"))
    assert [s.index for s in gray16.top] == [s.index for s in gray8.top]
