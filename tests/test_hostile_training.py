"""Training refuses nonsense set-ups with one clear error, before it writes anything into the run folder.

Organised by family: numeric settings, the dataset, resuming, the run folder. Through
the CLI each is one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import dataclasses
import re
import shutil

import pytest

from mnasnet.cli import main as cli_main
from mnasnet.engine import RunLock, RunLockedError
from mnasnet.errors import CheckpointError, ConfigError, DataError, MnasNetError
from mnasnet.train import load_config, train
from train_helpers import make_colour_dataset, tiny_settings

NAN, INF = float("nan"), float("inf")


# 2 shared cores: one intra-op thread is both faster and reproducible here
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_colour_dataset(tmp_path_factory.mktemp("colours") / "data")


@pytest.fixture
def copy_of_data(data, tmp_path):
    return shutil.copytree(data, tmp_path / "data")


def config_for(data, output, **overrides):
    return load_config(overrides=tiny_settings(data, output, **overrides))


def cli_error(argv: list[str], capsys) -> str:
    """Runs the CLI; asserts exit 2 and exactly one line on stderr; returns that line."""
    assert cli_main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# -- numeric settings ------------------------------------------------------------------------

BAD_SETTINGS = [
    ("epochs", 0),
    ("epochs", -3),
    ("batch_size", 0),
    ("accum_steps", 0),
    ("max_steps", 0),
    ("lr", 0.0),
    ("lr", -0.1),
    ("lr", NAN),
    ("lr", INF),
    ("base_lr", 0.0),
    ("base_lr", NAN),
    ("base_batch", 0),
    ("weight_decay", -1e-5),
    ("weight_decay", NAN),
    ("weight_decay", INF),
    ("momentum", -0.1),
    ("momentum", 1.0),
    ("momentum", NAN),
    ("rmsprop_decay", 1.0),
    ("epsilon", 0.0),
    ("warmup_epochs", -1.0),
    ("warmup_epochs", NAN),
    ("decay_rate", 0.0),
    ("decay_rate", 1.5),
    ("decay_epochs", 0.0),
    ("min_lr", -0.01),
    ("label_smoothing", 1.0),
    ("label_smoothing", -0.1),
    ("label_smoothing", NAN),
    ("ema_decay", 1.0),
    ("ema_decay", -0.5),
    ("ema_decay", NAN),
    ("dropout", 1.0),
    ("drop_path_rate", -0.1),
    ("bn_momentum", 0.0),
    ("bn_momentum", 1.5),
    ("width", 0.0),
    ("width", NAN),
    ("resolution", 4),
    ("crop_min_area", 0.0),
    ("crop_min_object_covered", 1.5),
    ("crop_aspect_ratio", (2.0, 1.0)),
    ("crop_aspect_ratio", (0.0, 1.0)),
    ("crop_attempts", 0),
    ("save_every", -1),
    ("eval_every", 0),
    ("log_every", 0),
    ("workers", -1),
    ("seed", -1),
]


@pytest.mark.parametrize(("name", "value"), BAD_SETTINGS, ids=[f"{n}={v}" for n, v in BAD_SETTINGS])
def test_bad_setting_is_refused_before_any_file(name, value, data, tmp_path):
    config = dataclasses.replace(config_for(data, tmp_path / "run"), **{name: value})
    with pytest.raises(ConfigError, match=name):  # a MnasNetError and a ValueError
        train(config, progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("flag", "value"), [("lr", "nan"), ("weight-decay", "-1"), ("ema-decay", "1"), ("epochs", "0")]
)
def test_bad_setting_through_the_cli_is_one_line(flag, value, data, tmp_path, capsys):
    line = cli_error(["train", "--data", str(data), "--output", str(tmp_path / "run"), f"--{flag}", value], capsys)
    assert line.startswith("mnasnet train: error: ") and flag.replace("-", "_") in line
    assert not (tmp_path / "run").exists()


# -- the dataset -----------------------------------------------------------------------------


def _empty_train_class(root):
    shutil.rmtree(root / "train" / "c1")
    (root / "train" / "c1").mkdir()


def _empty_val_class(root):
    for image in (root / "val" / "c2").iterdir():
        image.unlink()


def _single_class(root):
    for split in ("train", "val"):
        for name in ("c1", "c2"):
            shutil.rmtree(root / split / name)


def _val_lacks_a_class(root):
    shutil.rmtree(root / "val" / "c2")


def _val_has_an_extra_class(root):
    shutil.copytree(root / "val" / "c0", root / "val" / "zebra")


def _no_val_folder(root):
    shutil.rmtree(root / "val")


def _no_images(root):
    for image in (root / "train").rglob("*.png"):
        image.unlink()


DATA_CASES = {
    "empty train class": (_empty_train_class, r"class folder .*train/c1 holds no images"),
    "empty val class": (_empty_val_class, r"class folder .*val/c2 holds no images"),
    "single class": (_single_class, r"one class folder \(c0\); a classifier needs two"),
    "val lacks a class": (_val_lacks_a_class, r"must hold the training classes: it lacks c2"),
    "val has an extra class": (_val_has_an_extra_class, r"must hold the training classes: it adds zebra"),
    "no val folder": (_no_val_folder, r"has no val/ folder"),
    "no images": (_no_images, r"no images in"),
}


@pytest.mark.parametrize("case", DATA_CASES)
def test_bad_dataset_is_refused_before_any_file(case, copy_of_data, tmp_path):
    damage, message = DATA_CASES[case]
    damage(copy_of_data)
    with pytest.raises(DataError, match=message):
        train(config_for(copy_of_data, tmp_path / "run"), progress=False)
    assert not (tmp_path / "run").exists()


def test_dataset_that_is_a_file_is_one_clear_error(tmp_path):
    (tmp_path / "data.zip").write_bytes(b"PK")
    with pytest.raises(DataError, match="dataset folder not found"):
        train(config_for(tmp_path / "data.zip", tmp_path / "run"), progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_is_one_line_naming_the_file(workers, copy_of_data, tmp_path, capsys):
    bad = copy_of_data / "train" / "c1" / "3.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n but cut short")
    argv = ["train", *(f"--{k.replace('_', '-')}={v}" for k, v in tiny_settings(copy_of_data, tmp_path / "run").items()
                       if not isinstance(v, bool))]  # fmt: skip
    line = cli_error([*argv, f"--workers={workers}", "--no-tensorboard", "--no-plot", "--quiet"], capsys)
    assert line.startswith(f"mnasnet train: error: cannot read image {bad}"), line
    assert "DataLoader worker" not in line


# -- resuming --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stopped_run(data, tmp_path_factory):
    """A run stopped after one step, holding a resumable checkpoint."""
    output = tmp_path_factory.mktemp("stopped") / "run"
    train(config_for(data, output, max_steps=1), progress=False)
    return output


def _snapshot(folder):
    return {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"arch": "a1"}, r"arch 'small' -> 'a1'"),
        ({"width": 0.5}, r"width 0.35 -> 0.5"),
        ({"classes": 4}, r"num_classes 3 -> 4"),
    ],
    ids=["arch", "width", "classes"],
)
def test_resume_with_another_model_names_the_keys_and_writes_nothing(
    overrides, message, data, stopped_run, tmp_path, capsys
):
    before = _snapshot(stopped_run)
    settings = {"data": str(data)}
    if "classes" in overrides:
        settings["data"] = str(make_colour_dataset(tmp_path / "four", classes=4))
    else:
        settings.update(overrides)
    argv = ["train", "--output", str(stopped_run), "--resume", "--quiet"]
    argv += [f"--{k}={v}" for k, v in settings.items()]
    line = cli_error(argv, capsys)
    assert "cannot resume" in line and re.search(message, line), line
    with pytest.raises(CheckpointError, match=message):
        config = load_config(yaml_path=stopped_run / "config.yaml", overrides={**settings, "max_steps": "none"})
        train(config, resume=True, progress=False)
    assert _snapshot(stopped_run) == before


def test_resume_without_a_checkpoint_and_a_new_run_over_an_old_one(data, stopped_run, tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(config_for(data, tmp_path / "empty"), resume=True, progress=False)
    assert not (tmp_path / "empty").exists()
    before = _snapshot(stopped_run)
    with pytest.raises(MnasNetError, match="already holds a run; pass --resume"):
        train(config_for(data, stopped_run), progress=False)
    assert _snapshot(stopped_run) == before


def test_unreadable_checkpoint_is_one_clear_error(data, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read training checkpoint"):
        train(config_for(data, tmp_path / "run"), resume=True, progress=False)


# -- the run folder --------------------------------------------------------------------------


def test_output_that_is_a_file_is_refused(data, tmp_path):
    (tmp_path / "run").write_text("notes")
    with pytest.raises(MnasNetError, match="is a file, not a folder"):
        train(config_for(data, tmp_path / "run"), progress=False)
    assert (tmp_path / "run").read_text() == "notes"


def test_a_second_run_into_a_busy_folder_is_refused(data, tmp_path):
    with RunLock(tmp_path / "run"):  # the first run holds the folder
        with pytest.raises(RunLockedError, match=r"another training run is writing to .*run \(process \d+\)"):
            train(config_for(data, tmp_path / "run"), progress=False)
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"]
    assert train(config_for(data, tmp_path / "run", epochs=1), progress=False).status == "completed"
