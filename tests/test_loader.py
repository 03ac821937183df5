"""One owner of "name or path -> model", and no import cycles between the layers."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mnasnet
from mnasnet.checkpoint import save_checkpoint
from mnasnet.errors import CheckpointError
from mnasnet.runtime import load_predictor
from mnasnet.weights import load_weights

SRC = Path(__file__).resolve().parents[1] / "src" / "mnasnet"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = mnasnet.create_model("small", width_multiplier=0.5, num_classes=1000, resolution=96)
    path = tmp_path_factory.mktemp("loader") / "small.safetensors"
    save_checkpoint(model, path)
    return path


def test_every_entry_point_gives_the_same_model(checkpoint):
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    reference = load_weights(checkpoint)
    with torch.no_grad():
        expected = reference(x)
        for model in (mnasnet.create_model(weights=checkpoint), mnasnet.load_model(checkpoint)):
            torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    # the runtime predictor runs the fused copy of the same weights
    torch.testing.assert_close(torch.from_numpy(load_predictor(checkpoint)(x)), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"num_classes": 10}, "num_classes=10"),
        ({"arch": "a1"}, "arch='a1'"),
        ({"width_multiplier": 1.0}, "width_multiplier=1.0"),
        ({"padding": "same"}, "padding='same'"),
        ({"resolution": 224}, "resolution=224"),
        ({"arch": ["r1_k3_s11_e1_i32_o16_noskip"]}, "block strings"),
    ],
)
def test_arguments_that_conflict_with_the_weights_raise(checkpoint, arguments, named):
    with pytest.raises(CheckpointError, match="conflict") as error:
        mnasnet.create_model(weights=checkpoint, **arguments)
    assert named in str(error.value)


def test_arguments_that_agree_or_only_change_training_are_accepted(checkpoint):
    model = mnasnet.create_model("small", width_multiplier=0.5, num_classes=1000, weights=checkpoint, dropout=0.5)
    assert model.dropout.p == 0.5 and model.config.dropout == 0.5
    assert model.config.num_classes == 1000


def test_exported_and_missing_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="exported file"):
        load_weights(tmp_path / "model.tflite")
    with pytest.raises(CheckpointError, match="not found"):
        load_predictor(tmp_path / "model.onnx")


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path, modules: set[str]) -> set[str]:
    """Modules of ours that ``path`` imports when it is imported (function-level imports excluded)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in modules else node.module)
    return {name for name in found if name in modules}


def test_no_import_cycles():
    files = {_module_name(path): path for path in SRC.rglob("*.py")}
    modules = set(files)
    graph = {name: _top_level_imports(path, modules) - {name} for name, path in files.items()}
    # a module's parent packages are imported first by Python itself; not an edge of ours
    graph = {name: {dep for dep in deps if not name.startswith(dep + ".")} for name, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                cycle = trail[trail.index(dep) :] + [dep] if dep in trail else [name, dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, trail + [dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_model_module_knows_nothing_of_weight_files():
    tree = ast.parse((SRC / "model.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not any(name and name.startswith(("mnasnet.weights", "mnasnet.checkpoint")) for name in imported)


def test_runtimes_are_registered_without_import_side_effects():
    code = (
        "import sys, mnasnet.runtime; "
        "print(sorted(m for m in sys.modules if m.startswith(('mnasnet.deploy', 'onnxruntime', 'ai_edge_litert'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
