"""Hostile input for ``mnasnet detect ...`` and ``mnasnet search ...``, by family.

Each bad input gives one error line on stderr and a non-zero exit, never a traceback, and
leaves no output behind. Families already covered elsewhere (test_detection_data.py: the
reader's skip reasons; test_detection_cli.py / test_search_cli.py: the first bad flags) are
not repeated; these are the ones an audit found open: annotation files with out-of-range
numbers, image paths leaving the dataset folder, declared sizes that lie, warnings that took
two lines, a Vela target checked only after a whole export, and search settings (flags,
space files, saved run state) that passed every check and failed in each trial instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pycocotools")
pytest.importorskip("skimage")

from mnasnet.cli import main  # noqa: E402
from mnasnet.detection.data import load_coco  # noqa: E402
from mnasnet.detection.data.records import image_path  # noqa: E402
from mnasnet.detection.model import create_detector, save_detector  # noqa: E402
from mnasnet.detection.synthetic import SyntheticSettings, generate_faces_coins  # noqa: E402
from mnasnet.errors import DataError  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::mnasnet.detection.data.records.AnnotationWarning")

HUGE = 2**64  # fits no int64 id
DIGITS = "9" * 5000  # an integer Python refuses to parse (more than 4,300 digits)


def _cli(args: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(args)
    except SystemExit as exit:  # argparse's own checks: usage lines, then one error line
        code = exit.code
    return code, capsys.readouterr().err


def _one_error_line(code: int, err: str, phrase: str) -> str:
    assert code not in (0, None), err
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.strip() and not line.startswith(("usage:", " "))]
    assert len(lines) == 1, err
    assert "error" in lines[0] and phrase in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    settings = SyntheticSettings(
        train_images=4, val_images=2, image_size=64, min_object_size=12, max_object_size=32, max_objects=2
    )
    return generate_faces_coins(tmp_path_factory.mktemp("hostile-det") / "fc", settings)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    detector = create_detector("ssdlite", arch="small", num_classes=3, size=64, labels=["background", "face", "coin"])
    return save_detector(detector, tmp_path_factory.mktemp("hostile-detw") / "det.safetensors")


def _copy_with_val(dataset: Path, folder: Path, change=None, raw: bytes | None = None) -> Path:
    """A copy of ``dataset`` whose val.json is ``raw``, or the original changed in place by ``change``."""
    target = folder / "data"
    shutil.copytree(dataset, target)
    if raw is not None:
        (target / "val.json").write_bytes(raw)
    else:
        document = json.loads((dataset / "val.json").read_text())
        change(document)
        (target / "val.json").write_text(json.dumps(document))
    return target


def _each(section: str, **values):
    def change(document):
        for entry in document[section]:
            entry.update(values)

    return change


def _images(key: str, make):
    def change(document):
        for entry in document["images"]:
            entry[key] = make(entry)

    return change


def _first_category(**values):
    return lambda document: document["categories"][0].update(values)


# -- detection data: annotation files that used to crash, lie or read outside the folder -----------


@pytest.mark.parametrize(
    ("change", "raw", "phrase"),
    [
        (None, b"", "is not valid JSON"),
        (None, b"\x00\x01 binary", "is not valid JSON"),
        (None, b"42", "not a COCO annotation file"),
        (None, b'"images"', "not a COCO annotation file"),
        (None, b'{"images": [{"id": 1}], "categories": [{"id": ' + DIGITS.encode() + b', "name": "a"}]}', "JSON"),
        (_first_category(id=HUGE), None, "does not fit in 64 bits"),
        (_first_category(id=-HUGE), None, "does not fit in 64 bits"),
        (_first_category(id=1.0), None, "integer id and a name"),
        (lambda d: d.__setitem__("categories", {"1": "face"}), None, "'categories' must be a non-empty list"),
        (lambda d: d.__setitem__("annotations", "none"), None, "must be lists"),
        (_images("file_name", lambda e: "/" + e["file_name"]), None, "path outside the dataset folder"),
        (_images("file_name", lambda e: "../" + e["file_name"]), None, "path outside the dataset folder"),
        (_images("file_name", lambda e: "images/../../" + e["file_name"]), None, "path outside the dataset folder"),
        (_images("file_name", lambda e: "images"), None, "not a file"),
        (_images("id", lambda e: HUGE + e["id"]), None, "malformed image entry"),
        (_each("images", width=640, height=480), None, "its annotations say 640x480"),
        (_each("images", width=10**12, height=10**12), None, "no usable images"),
    ],
    ids=[
        "empty",
        "binary",
        "number",
        "string",
        "5000-digit id",
        "category id 2**64",
        "category id -2**64",
        "category id float",
        "categories a dict",
        "annotations a string",
        "absolute paths",
        "dotdot paths",
        "dotdot inside",
        "paths to a folder",
        "image ids 2**64",
        "declared size lies",
        "huge declared size",
    ],
)
def test_evaluate_bad_annotation_files_are_one_line(dataset, weights, tmp_path, capsys, change, raw, phrase):
    data = _copy_with_val(dataset, tmp_path, change, raw)
    code, err = _cli(["detect", "evaluate", "--weights", str(weights), "--data", str(data), "--json"], capsys)
    line = _one_error_line(code, err, phrase)
    assert line.startswith("mnasnet detect: error: ")


@pytest.mark.parametrize(
    "change",
    [
        _each("annotations", bbox=[1, 1, 10**400, 5]),  # an int no float can hold
        _each("annotations", area=10**400),
        _each("annotations", bbox=[1, 1, 1e308, 1e308]),
        _each("annotations", bbox=["1", "2", "3", "4"]),
    ],
    ids=["bbox int over float range", "area int over float range", "bbox 1e308", "bbox strings"],
)
def test_evaluate_skips_unusable_boxes_without_crashing(dataset, weights, tmp_path, capsys, change):
    data = _copy_with_val(dataset, tmp_path, change)
    code, err = _cli(["detect", "evaluate", "--weights", str(weights), "--data", str(data), "--json"], capsys)
    assert code == 0 and "Traceback" not in err, err


def test_train_refuses_images_outside_the_folder_before_writing(dataset, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    document = json.loads((data / "train.json").read_text())
    for entry in document["images"]:
        entry["file_name"] = str((data / entry["file_name"]).resolve())  # absolute: refused even inside
    (data / "train.json").write_text(json.dumps(document))
    run = tmp_path / "run"
    args = ["detect", "train", "--data", str(data), "--output", str(run), "--arch", "small", "--size", "64"]
    code, err = _cli([*args, "--max-steps", "1", "--workers", "0", "--quiet", "--threads", "1"], capsys)
    _one_error_line(code, err, "no usable images (skipped 4 images (4 path outside the dataset folder))")
    assert not (run / "checkpoint.pt").exists() and not (run / "last.safetensors").exists()


@pytest.mark.parametrize(
    ("name", "inside"),
    [
        ("a.jpg", True),
        ("images/./a.jpg", True),
        ("images/../a.jpg", True),
        ("../a.jpg", False),
        ("images/../../a.jpg", False),
        ("/etc/passwd", False),
        ("a\x00.jpg", False),
    ],
)
def test_image_paths_stay_inside_the_dataset_folder(tmp_path, name, inside):
    assert (image_path(tmp_path, name) is not None) == inside


def test_strict_reading_names_the_path_outside(dataset, tmp_path):
    data = _copy_with_val(dataset, tmp_path, lambda d: d["images"][0].update(file_name="../../x.jpg"))
    with pytest.raises(DataError, match="path outside the dataset folder"):
        load_coco(data / "val.json", strict=True)


def test_skipped_entries_warn_in_one_line_through_the_cli(dataset, weights, tmp_path):
    data = _copy_with_val(dataset, tmp_path, lambda d: d["annotations"][0].update(bbox=[1, 1, 0, 5]))
    args = ["detect", "evaluate", "--weights", str(weights), "--data", str(data), "--json", "--threads", "1"]
    # a fresh process: Python's own warning display, as in a shell (pytest records warnings instead)
    code = f"import sys; from mnasnet.cli import main; sys.exit(main({args!r}))"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == [
        "mnasnet detect: warning: val.json: skipped 1 annotation (1 zero or negative area)"
    ]


# -- detect export: a bad Vela target is refused before the export ----------------------------------


@pytest.mark.parametrize("target", ["ethos-u99", "ethos-u55-7", "npu"])
def test_export_refuses_an_unknown_accelerator_before_writing(dataset, weights, tmp_path, capsys, target):
    pytest.importorskip("ethosu.vela")
    out = tmp_path / "det.tflite"
    args = ["detect", "export", str(out), "--weights", str(weights), "--int8", "--calibration", str(dataset)]
    code, err = _cli([*args, "--target", target, "--threads", "1"], capsys)
    _one_error_line(code, err, f"unknown accelerator {target!r}")
    assert list(tmp_path.iterdir()) == []  # no .tflite and no partial file


# -- search: settings that used to pass every check and fail in each trial ---------------------------


@pytest.mark.parametrize(
    ("flags", "phrase"),
    [
        (["--target", "vela:"], "names no accelerator"),
        (["--target", "table:vela: "], "names no accelerator"),
        (["--target", 'command:bench "{model}'], "No closing quotation"),
        (["--target", "command:bench '{model}"], "No closing quotation"),
        (["--cpus-per-trial", "inf"], "expected a positive finite number, got 'inf'"),
        (["--cpus-per-trial", "0"], "expected a positive finite number"),
        (["--gpus-per-trial", "nan"], "expected a non-negative finite number"),
        (["--lr", "nan"], "--lr: expected a positive finite number"),
        (["--lr", "0"], "--lr: expected a positive finite number"),
        (["--lr", "inf"], "--lr: expected a positive finite number"),
        (["--seed", "-1"], "expected a seed from 0 to"),
        (["--seed", str(2**70)], "expected a seed from 0 to"),
        (["--reference-widths", "0.5,inf"], "expected widths"),
        (["--reference-widths", "1e9"], "expected widths"),
        (["--latency-resource", "board=inf"], "a positive number"),
        (["--latency-resource", "board=nan"], "a positive number"),
        (["--resolution", "100000"], "resolution must be an integer from 32 to 4096"),
        (["--resolution", "8"], "resolution must be an integer from 32 to 4096"),
        (["--batch-size", "1000000000"], "batch_size must be an integer from 1 to 4096"),
        (["--device", "tpu"], "device must be one of auto, cpu, cuda"),
        (["--data", "/no/such/dataset"], "dataset folder not found: /no/such/dataset"),
    ],
)
def test_bad_search_flags_are_one_line_and_start_nothing(tmp_path, capsys, flags, phrase):
    output = tmp_path / "run"
    code, err = _cli(["search", "--output", str(output), "--data", "digits", "--trials", "1", *flags], capsys)
    line = _one_error_line(code, err, phrase)
    assert line.startswith("mnasnet search: error:")
    assert not output.exists()


def test_latency_cache_that_is_a_file_is_refused(tmp_path, capsys):
    cache = tmp_path / "cache"
    cache.write_text("not a folder")
    args = ["search", "--output", str(tmp_path / "run"), "--data", "digits", "--latency-cache", str(cache)]
    _one_error_line(*_cli(args, capsys), "is a file, not a folder")
    assert not (tmp_path / "run").exists() and cache.read_text() == "not a folder"


_SKELETON = "name: hostile\nskeleton: a1\n"


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        (_SKELETON + "choices:\n  filters: [.nan]\n", "expected a finite number"),
        (_SKELETON + "choices:\n  filters: [.inf]\n", "expected a finite number"),
        (_SKELETON + "choices:\n  filters: [100000]\n", "filter multiplier 100000.0 is over the limit"),
        (_SKELETON + "choices:\n  expand_ratio: [1000]\n", "expansion ratio 1000 is over the limit"),
        (_SKELETON + "choices:\n  kernel_size: [99]\n", "kernel size 99 is over the limit"),
        (_SKELETON + "choices:\n  layers: [1000000]\n", "is over the limit of 32"),
        (_SKELETON + "width_multiplier: [.inf]\n", "expected a finite number"),
        (_SKELETON + "width_multiplier: 1000\n", "width multiplier 1000.0 is over the limit"),
        (_SKELETON + "resolution: 100000\n", "resolution 100000 is over the limit"),
        (_SKELETON + "stem_filters: 100000\n", "stem filters 100000 is over the limit"),
        ("stages:\n" + "  - {repeats: 20, filters: 16, stride: 1}\n" * 20, "block count 420 is over the limit of 256"),
        ("stages:\n  - {repeats: 1000, filters: 16, stride: 1}\n", "repeats 1000 is over the limit"),
        ("stages:\n  - {repeats: 1, filters: 100000, stride: 1}\n", "filters 100000 is over the limit"),
    ],
)
def test_search_space_files_asking_for_absurd_networks_are_one_line(tmp_path, capsys, text, phrase):
    space = tmp_path / "space.yaml"
    space.write_text(text)
    output = tmp_path / "run"
    args = ["search", "--output", str(output), "--data", "digits", "--trials", "1", "--space", str(space)]
    _one_error_line(*_cli(args, capsys), phrase)
    assert not output.exists()


@pytest.mark.parametrize(
    ("state", "phrase"),
    [
        ('{"settings": [1, 2]}', "'settings' must be a mapping"),
        ('{"settings": "a1"}', "'settings' must be a mapping"),
        ('{"settings": {"proxy": [1]}}', "setting 'proxy' has the wrong type"),
        ('{"settings": {"reference_widths": 5}}', "setting 'reference_widths' has the wrong type"),
        ('{"settings": {"latency_resources": 5}}', "setting 'latency_resources' has the wrong type"),
        ('{"settings": {"latency_resources": {"board": Infinity}}}', "latency_resources must map names"),
        ('{"settings": {"target": 7}}', "setting 'target' has the wrong type"),
        ('{"settings": {"seed": ' + DIGITS + "}}", "holds no search to resume"),
        ('{"settings": {"proxy": {"lr": NaN}}}', "lr must be a finite number > 0"),
        ('{"settings": {"seed": 18446744073709551616}}', "seed must be an integer from 0 to"),
        ("[" * 100_000 + "]" * 100_000, "holds no search to resume"),
    ],
)
def test_resuming_a_corrupt_search_state_is_one_line(tmp_path, capsys, state, phrase):
    run = tmp_path / "run"
    run.mkdir()
    (run / "search.json").write_text(state)
    _one_error_line(*_cli(["search", "--output", str(run), "--resume", "--quiet"], capsys), phrase)
    assert sorted(p.name for p in run.iterdir()) == ["search.json"]
