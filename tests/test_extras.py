"""A missing optional package is reported as one line naming the pip extra that installs it."""

import sys
from pathlib import Path

import pytest
import tomllib

from mnasnet.cli import main
from mnasnet.errors import MissingDependencyError, MnasNetError
from mnasnet.extras import OPTIONAL_PACKAGES, check_installed, missing_packages, require

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _extras() -> dict[str, list[str]]:
    return tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]


def _requirement_names(requirements: list[str]) -> set[str]:
    return {requirement.split("=")[0].split(">")[0].split("<")[0].split("[")[0].strip() for requirement in requirements}


@pytest.mark.parametrize("module", sorted(OPTIONAL_PACKAGES))
def test_every_named_extra_exists_and_lists_the_package(module):
    distribution, extra = OPTIONAL_PACKAGES[module]
    extras = _extras()
    assert extra in extras, f"pip install 'mnasnet[{extra}]' would install nothing"
    # a package the extra pulls in indirectly (torchao comes with litert-torch) is in the installed metadata
    assert distribution in _requirement_names(extras[extra]) or module == "torchao"


def test_require_returns_the_module():
    import numpy

    assert require("numpy.linalg", extra="train") is numpy.linalg


@pytest.mark.parametrize(("module", "message"), [
    ("onnx", "onnx is not installed: pip install 'mnasnet[deploy]'"),
    ("ai_edge_litert.interpreter", "ai-edge-litert is not installed: pip install 'mnasnet[deploy]'"),
    ("sklearn.datasets", "scikit-learn is not installed: pip install 'mnasnet[train]'"),
    ("matplotlib", "matplotlib is not installed: pip install 'mnasnet[train]'"),
])  # fmt: skip
def test_a_missing_package_names_its_extra(module, message, monkeypatch):
    top = module.split(".")[0]
    for name in [name for name in sys.modules if name == top or name.startswith(top + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, top, None)  # as if not installed
    with pytest.raises(MissingDependencyError) as error:
        require(module)
    assert str(error.value) == message
    assert isinstance(error.value, ImportError) and isinstance(error.value, MnasNetError)


def test_a_broken_dependency_of_an_installed_package_is_not_hidden(monkeypatch, tmp_path):
    # the package imports, but something it needs does not: that is not "install the extra"
    (tmp_path / "fake_optional.py").write_text("import package_that_does_not_exist\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(OPTIONAL_PACKAGES, "fake_optional", ("fake-optional", "deploy"))
    with pytest.raises(ModuleNotFoundError, match="package_that_does_not_exist"):
        require("fake_optional")


def test_check_installed_lists_everything_missing_in_one_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    monkeypatch.setitem(sys.modules, "sklearn", None)
    assert missing_packages(["numpy", "onnx", "sklearn"]) == ["onnx", "sklearn"]
    with pytest.raises(MissingDependencyError) as error:
        check_installed(["numpy", "onnx", "sklearn"], purpose="this test")
    assert (
        str(error.value)
        == "onnx, scikit-learn are not installed: pip install 'mnasnet[deploy,train]' (this test needs them)"
    )


def test_export_without_onnx_is_one_line_naming_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)
    code = main(["export", str(tmp_path / "m.onnx"), "--weights", "a1_100.timm_rmsp_in1k", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert (
        err
        == "mnasnet export: error: onnx is not installed: pip install 'mnasnet[deploy]' (the ONNX export needs it)\n"
    )
    assert not (tmp_path / "m.onnx").exists()


def test_demo_checks_every_extra_before_training(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setitem(sys.modules, "litert_torch", None)
    output = tmp_path / "report"
    code = main(["demo", "--output", str(output), "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "onnxruntime, litert-torch" in err and "mnasnet[deploy]" in err
    assert not output.exists()  # nothing trained, nothing written
