"""A hostile environment (read-only cache, full disk) gets one clear line; a genuine bug keeps its traceback."""

import errno
import os

import pytest

import mnasnet.profile
from mnasnet.cli import main
from mnasnet.data.datasets import resolve_dataset
from mnasnet.errors import CacheError, MnasNetError
from mnasnet.fileio import writable_cache_dir

# -- the CLI's error policy ---------------------------------------------------------------------


@pytest.mark.parametrize("bug", [ValueError("math domain error"), TypeError("unsupported operand"), KeyError("x")])
def test_a_bug_deep_in_library_code_keeps_its_traceback(bug, monkeypatch):
    def broken(*args, **kwargs):
        raise bug

    monkeypatch.setattr(mnasnet.profile, "profile_model", broken)
    with pytest.raises(type(bug)):
        main(["summary", "small", "--resolution", "32"])


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (CacheError("the cache folder /x is not writable"), "the cache folder /x is not writable"),
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
        (PermissionError(errno.EACCES, "Permission denied", "/root/out.onnx"), "Permission denied: '/root/out.onnx'"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "in.png"), "No such file or directory: 'in.png'"),
    ],
)
def test_user_and_machine_errors_are_one_line(error, shown, monkeypatch, capsys):
    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(mnasnet.profile, "profile_model", failing)
    assert main(["summary", "small", "--resolution", "32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mnasnet summary: error: ") and shown in err and err.count("\n") == 1


def test_an_os_error_that_names_no_path_is_a_bug(monkeypatch):
    def failing(*args, **kwargs):
        raise PermissionError("operation not permitted")  # no file name: not about the user's paths

    monkeypatch.setattr(mnasnet.profile, "profile_model", failing)
    with pytest.raises(PermissionError):
        main(["summary", "small", "--resolution", "32"])


def test_an_unknown_architecture_is_a_project_error(capsys):
    assert main(["summary", "a7"]) == 2
    assert "unknown architecture 'a7'" in capsys.readouterr().err


def test_a_bad_training_flag_is_one_line(tmp_path, capsys):
    assert main(["train", "--epochs", "many", "--output", str(tmp_path / "run"), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mnasnet train: error: ") and "epochs" in err and err.count("\n") == 1


# -- an unwritable cache -------------------------------------------------------------------------


@pytest.fixture
def cache_under_a_file(tmp_path, monkeypatch):
    # We run as root, where chmod blocks nothing: a path below a regular file can never be created.
    blocker = tmp_path / "somefile"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MNASNET_HOME", str(blocker / "cache"))
    return blocker / "cache"


def test_a_cache_below_a_file_is_named_as_not_writable(cache_under_a_file):
    with pytest.raises(CacheError) as error:
        writable_cache_dir("datasets")
    message = str(error.value)
    assert f"the cache folder {cache_under_a_file / 'datasets'} is not writable" in message
    assert "MNASNET_HOME" in message and "download" not in message
    assert isinstance(error.value, MnasNetError)


def test_a_read_only_cache_is_named_as_not_writable(tmp_path, monkeypatch):
    monkeypatch.setenv("MNASNET_HOME", str(tmp_path / "cache"))
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if mode & os.W_OK else real_access(path, mode))
    with pytest.raises(CacheError, match=f"the cache folder {tmp_path / 'cache' / 'datasets'} is not writable"):
        writable_cache_dir("datasets")


def test_a_writable_cache_folder_is_created(tmp_path, monkeypatch):
    monkeypatch.setenv("MNASNET_HOME", str(tmp_path / "cache"))
    assert writable_cache_dir("a", "b") == tmp_path / "cache" / "a" / "b"
    assert (tmp_path / "cache" / "a" / "b").is_dir()


def test_the_built_in_dataset_reports_an_unwritable_cache(cache_under_a_file):
    with pytest.raises(CacheError, match="is not writable"):
        resolve_dataset("digits")


def test_the_cli_reports_an_unwritable_cache_in_one_line(cache_under_a_file, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["train", "--data", "digits", "--epochs", "1", "--output", str(run_dir), "--threads", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and not run_dir.exists()
    assert f"the cache folder {cache_under_a_file / 'datasets'} is not writable" in err
