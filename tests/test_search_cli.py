"""``mnasnet search`` and ``mnasnet train --blocks-file``: help, one-line errors, blocks files.

The end-to-end search through the command line runs in test_search_driver.py, which owns the Ray cluster.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from mnasnet.arch import ARCHS
from mnasnet.cli import main
from mnasnet.search.blocks_file import BlocksFileError, read_blocks_file, write_blocks_file
from mnasnet.search.space import Candidate, load_space


def test_search_help_loads_neither_torch_nor_ray():
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['ray'] = None\n"
        "from mnasnet.cli import main\nsys.exit(main(sys.argv[1:]))"
    )
    run = subprocess.run([sys.executable, "-c", code, "search", "--help"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    for flag in ("--data", "--target", "--latency-ms", "--trials", "--output", "--controller", "--resume", "--address"):
        assert flag in run.stdout


def test_search_help_quotes_the_proxy_defaults_it_uses(capsys):
    import re

    from mnasnet.search.proxy import ProxySettings

    with pytest.raises(SystemExit):
        main(["search", "--help"])
    text = " ".join(capsys.readouterr().out.split()).split("proxy training (each candidate)")[1]
    for flag, value in [("--epochs", ProxySettings.epochs), ("--lr", ProxySettings.lr), ("--repeats", 1)]:
        quoted = re.search(rf"{flag} \S+ .*?\(default: ([^)]+)\)", text).group(1)
        assert float(quoted) == value, (flag, quoted)
    assert ProxySettings().repeats == 1


def test_repeats_reaches_the_saved_proxy_settings(tmp_path):
    import argparse

    from mnasnet.cli.search_commands import settings_from_args

    args = argparse.Namespace(output=str(tmp_path), resume=False, repeats=3, epochs=1)
    settings = settings_from_args(args)
    assert settings.proxy == {"repeats": 3, "epochs": 1}
    assert settings.proxy_settings().repeats == 3


@pytest.mark.slow
def test_an_unreachable_cluster_is_one_line_and_leaves_no_run_folder(tmp_path):
    output = tmp_path / "run"
    flags = ["--address", "ray://127.0.0.1:9", "--output", str(output), "--data", "digits", "--target", "macs"]
    run = subprocess.run([sys.executable, "-m", "mnasnet", "search", *flags], capture_output=True, text=True)
    assert run.returncode == 2
    lines = [line for line in run.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot reach the Ray cluster at ray://127.0.0.1:9" in lines[0], run.stderr
    assert not output.exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--target", "tpu-v9"], "unknown latency target 'tpu-v9'"),
        (["--target", "vela:ethos-u99"], "unknown accelerator"),
        (["--target", "command:benchmark --graph"], "needs {model}"),
        (["--controller", "genetic"], "unknown controller 'genetic'"),
        (["--reward", "linear"], "unknown reward 'linear'"),
        (["--latency-ms", "-2"], "target latency must be a positive number"),
        (["--space", "no-such-space.yaml"], "search space not found"),
        (["--repeats", "1000"], "repeats must be an integer from 1 to 100"),
    ],
)
def test_bad_search_settings_are_one_line_and_touch_nothing(tmp_path, capsys, flags, message):
    output = tmp_path / "run"
    assert main(["search", "--output", str(output), "--data", "digits", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mnasnet search: error:") and "\n" not in err
    assert message in err
    assert not output.exists()


def test_resume_without_a_search_is_one_line(tmp_path, capsys):
    assert main(["search", "--output", str(tmp_path / "nothing"), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds no search to resume" in err and "\n" not in err


def test_blocks_file_round_trips_a_space_candidate(tmp_path):
    space = load_space("a1")
    candidate = space.decode(space.sample_indices(3))
    path = write_blocks_file(tmp_path / "x.blocks", candidate, "trial 3\naccuracy 0.5")
    text = path.read_text()
    assert text.startswith("# trial 3\n# accuracy 0.5\n")
    read = read_blocks_file(path)
    assert read.blocks == candidate.blocks and read.resolution == 224
    assert read.arch_hash == Candidate(blocks=candidate.blocks, resolution=224).arch_hash


def test_blocks_file_errors_name_the_problem(tmp_path):
    empty = tmp_path / "empty.blocks"
    empty.write_text("# nothing\n\n")
    with pytest.raises(BlocksFileError, match="holds no block strings"):
        read_blocks_file(empty)
    bad = tmp_path / "bad.blocks"
    bad.write_text("\n".join(ARCHS["a1"].blocks[:2]) + "\nr1_k3_s11_e1_i32_o16_sx0.25\n")
    with pytest.raises(BlocksFileError, match="unknown token 'sx0.25'"):
        read_blocks_file(bad)
    setting = tmp_path / "setting.blocks"
    setting.write_text(ARCHS["a1"].blocks[0] + "\nresolution=big\n")
    with pytest.raises(BlocksFileError, match=r"setting.blocks:2: expected resolution=N"):
        read_blocks_file(setting)
    with pytest.raises(BlocksFileError, match="cannot read blocks file"):
        read_blocks_file(tmp_path / "missing.blocks")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "cannot read blocks file"),
        (["--width", "0.5"], "a blocks file fixes the architecture"),
    ],
)
def test_train_blocks_file_errors_are_one_line(tmp_path, capsys, extra, message):
    blocks = tmp_path / "arch.blocks"
    if extra:
        write_blocks_file(blocks, Candidate(blocks=ARCHS["a1"].blocks, resolution=64))
    output = tmp_path / "run"
    argv = ["train", "--blocks-file", str(blocks), "--data", "digits", "--output", str(output), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mnasnet train: error:") and message in err and "\n" not in err
    assert not output.exists()


def test_train_blocks_file_takes_its_resolution_unless_given(tmp_path):
    from mnasnet.train.config import load_config

    blocks = write_blocks_file(tmp_path / "arch.blocks", Candidate(blocks=ARCHS["a1"].blocks, resolution=64))
    assert load_config(overrides={"blocks_file": str(blocks)}).resolution == 64
    assert load_config(overrides={"blocks_file": str(blocks), "resolution": "96"}).resolution == 96
    arch, settings = load_config(overrides={"blocks_file": str(blocks)}).architecture()
    assert arch == list(ARCHS["a1"].blocks) and settings == {"stem_filters": ARCHS["a1"].stem_filters}
