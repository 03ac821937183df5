"""``mnasnet detect train|evaluate|predict`` end to end: outputs, files written, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pycocotools")
pytest.importorskip("skimage")

from mnasnet.cli import main  # noqa: E402
from mnasnet.detection.model import create_detector, save_detector  # noqa: E402
from mnasnet.detection.synthetic import SyntheticSettings, generate_faces_coins  # noqa: E402


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    settings = SyntheticSettings(
        train_images=8, val_images=4, image_size=96, min_object_size=12, max_object_size=48, max_objects=3
    )
    return generate_faces_coins(tmp_path_factory.mktemp("detcli") / "fc", settings)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    detector = create_detector("ssdlite", arch="small", num_classes=3, size=64, labels=["background", "face", "coin"])
    return save_detector(detector, tmp_path_factory.mktemp("detw") / "det.safetensors")


def _one_error_line(capsys, code, expected_code=2) -> str:
    captured = capsys.readouterr()
    assert code == expected_code
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


@pytest.mark.slow
def test_train_then_resume_from_the_command_line(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    common = ["detect", "train", "--data", str(tiny_data), "--output", str(run), "--arch", "small"]
    common += ["--size", "64", "--epochs", "2", "--batch-size", "4", "--workers", "0", "--quiet", "--threads", "1"]
    assert main([*common, "--max-steps", "2"]) == 0
    assert "stopped: 0 epoch(s), 2 steps" in capsys.readouterr().out
    assert main(["detect", "train", "--output", str(run), "--resume", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("completed: 2 epoch(s), 4 steps; val AP")
    assert (run / "best.safetensors").is_file()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--data", "/no/such/folder"], "detection dataset not found: /no/such/folder needs train.json"),
        (["--size", "100"], "size must be a multiple of 32"),
        (["--size", "16"], "size must be an integer from 64 to 2048"),
        (["--head", "yolo"], "head must be one of ssdlite, retinanet"),
        (["--anchor-scales", "0.5", "0.1"], "anchor_scales must be two numbers 0 < smallest < largest <= 1"),
        (["--anchor-scales", "nan", "0.5"], "anchor_scales must be two numbers"),
        (["--anchor-scales", "0.1", "1.5"], "anchor_scales must be two numbers"),
        (["--head", "retinanet", "--anchor-scales", "0.1", "0.5"], "RetinaNet's anchors are fixed pixel sizes"),
        (["--head", "retinanet", "--no-iou-crop"], "iou_crop is SSD's augmentation"),
        (["--stride8-map", "--anchor-scales", "0.5", "0.1"], "anchor_scales must be two numbers 0 < smallest"),
    ],
)
def test_train_bad_input_is_one_line(tmp_path, capsys, flags, message, tiny_data):
    base = ["detect", "train", "--data", str(tiny_data), "--output", str(tmp_path / "run"), "--quiet"]
    line = _one_error_line(capsys, main([*base, *flags]))
    assert line.startswith("mnasnet detect: error: ") and message in line
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_folder_without_train_json_is_one_line(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "val.json").write_text("{}")
    line = _one_error_line(capsys, main(["detect", "evaluate", "--weights", "x.safetensors", "--data", "x"]))
    assert "detector weights not found" in line
    code = main(["detect", "train", "--data", str(tmp_path / "data"), "--output", str(tmp_path / "run")])
    assert "needs train.json (COCO format)" in _one_error_line(capsys, code)


def test_evaluate_json(tiny_data, weights, capsys):
    assert main(["detect", "evaluate", "--weights", str(weights), "--data", str(tiny_data), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result) == ["AP", "AP50", "AP75", "APs", "APm", "APl", "n"]
    assert result["n"] == 4
    assert all(value is None or 0.0 <= value <= 1.0 for key, value in result.items() if key != "n")


def test_evaluate_refuses_a_classifier_checkpoint(tiny_data, tmp_path, capsys):
    from mnasnet.checkpoint import save_checkpoint
    from mnasnet.model import create_model

    path = tmp_path / "cls.safetensors"
    save_checkpoint(create_model("small", num_classes=3), path)
    code = main(["detect", "evaluate", "--weights", str(path), "--data", str(tiny_data)])
    assert "classification checkpoint, not a detector" in _one_error_line(capsys, code)


def test_predict_json_and_draw(tiny_data, weights, tmp_path, capsys):
    images = sorted((tiny_data / "images" / "val").iterdir())[:2]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    drawn = tmp_path / "drawn"
    args = ["detect", "predict", str(images[0]), str(bad), str(images[1]), "--weights", str(weights)]
    code = main([*args, "--json", "--score-threshold", "0.0", "--draw", str(drawn)])
    captured = capsys.readouterr()
    assert code == 1  # the broken file
    assert captured.err.count("mnasnet detect predict: error:") == 1 and str(bad) in captured.err
    entries = json.loads(captured.out)
    assert [entry["image"] for entry in entries] == [str(images[0]), str(bad), str(images[1])]
    first = entries[0]["detections"]
    assert first and set(first[0]) == {"box", "score", "label"}
    assert all(d["label"] in ("face", "coin") for d in first)
    x1, y1, x2, y2 = np.array([d["box"] for d in first]).T
    assert (x1 >= 0).all() and (x2 <= 96).all() and (y2 <= 96).all() and (x2 >= x1).all() and (y2 >= y1).all()
    assert x2.max() > 64  # boxes are in the 96-pixel originals, not the 64-pixel input
    written = sorted(p.name for p in drawn.iterdir())
    assert written == sorted(f"{p.stem}.png" for p in images)
    original = np.asarray(Image.open(images[0]).convert("RGB"))
    with Image.open(drawn / f"{images[0].stem}.png") as image:
        result = np.asarray(image.convert("RGB"))
    assert result.shape == original.shape and (result != original).any()


@pytest.mark.parametrize("under_a_file", [False, True])
def test_predict_draw_into_a_file_is_one_line_before_any_work(tiny_data, tmp_path, capsys, under_a_file):
    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    draw = blocker / "sub" if under_a_file else blocker
    # missing weights would be the error if the folder were checked after loading the model
    code = main(["detect", "predict", str(tiny_data), "--weights", "missing.safetensors", "--draw", str(draw)])
    assert "is a file, not a folder" in _one_error_line(capsys, code)
    assert blocker.read_text() == "a file"


def test_predict_missing_weights_is_one_line(tiny_data, capsys):
    code = main(["detect", "predict", str(tiny_data), "--weights", "missing.safetensors"])
    assert "detector weights not found: missing.safetensors" in _one_error_line(capsys, code)
