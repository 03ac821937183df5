"""The command line starts without PyTorch; ``import mnasnet`` loads its public names on first use."""

import subprocess
import sys

import pytest

import mnasnet

COMMANDS = (
    "summary",
    "convert",
    "weights",
    "predict",
    "train",
    "evaluate",
    "plot",
    "export",
    "benchmark",
    "demo",
    "search",
    "detect",
)


def _modules_after(code: str) -> set[str]:
    script = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_building_the_parser_imports_no_torch():
    modules = _modules_after("import mnasnet.cli\nmnasnet.cli.build_parser()")
    heavy = {"torch", "numpy", "PIL", "onnx", "onnxruntime", "matplotlib", "sklearn"} & modules
    assert not heavy, f"building the parser imported {sorted(heavy)}"


def test_import_mnasnet_is_light():
    assert "torch" not in _modules_after("import mnasnet")


@pytest.mark.parametrize("argv", [["--help"], *[[command, "--help"] for command in COMMANDS]], ids=" ".join)
def test_help_runs_without_torch(argv):
    # the help of every command, in a process that would fail if it tried to load PyTorch
    code = "import sys; sys.modules['torch'] = None\nfrom mnasnet.cli import main\nsys.exit(main(sys.argv[1:]))"
    run = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "usage: " in run.stdout


def test_every_public_name_resolves_to_its_defining_object():
    import mnasnet.arch
    import mnasnet.factory
    import mnasnet.fuse
    import mnasnet.model

    sources = (mnasnet.arch, mnasnet.factory, mnasnet.fuse, mnasnet.model, mnasnet.errors)
    for name in mnasnet.__all__:
        defining = [module for module in sources if name in vars(module)]
        assert defining, f"{name} is in mnasnet.__all__ but defined nowhere"
        assert getattr(mnasnet, name) is getattr(defining[0], name)
    assert set(mnasnet.__all__) <= set(dir(mnasnet))
    with pytest.raises(AttributeError, match="no attribute 'create_modle'"):
        mnasnet.create_modle  # noqa: B018


def test_from_import_star_gives_the_public_names():
    namespace: dict = {}
    exec("from mnasnet import *", namespace)
    assert namespace["create_model"] is mnasnet.create_model
    assert namespace["MnasNet"] is mnasnet.MnasNet
