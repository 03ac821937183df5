import contextlib
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # for `import oracles`

REFERENCE_MD = Path(__file__).resolve().parent / "fixtures" / "reference.md"  # copied from REFERENCE.md


@contextlib.contextmanager
def _torch_threads(count: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture
def one_thread():
    """One intra-op thread for a test: on 2 shared cores both faster and reproducible.

    Use it for a whole module with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    with _torch_threads(1):
        yield


@pytest.fixture(scope="module")
def one_thread_for_module():
    """One intra-op thread from before a module's module-scoped fixtures to its end.

    For modules whose module-scoped trainings feed later checks (``one_thread`` would start after them).
    """
    with _torch_threads(1):
        yield


def randomize_bn(model: torch.nn.Module, seed: int = 0, resolution: int = 64) -> torch.nn.Module:
    """Gives every BN layer realistic statistics and affine weights, in eval mode.

    Freshly initialised BN (mean 0, var 1, gamma 1, beta 0) leaves logits tiny or
    huge, so any two implementations would look alike. Here gamma and beta are
    random and the running statistics are measured on random images, as training
    would measure them, so every layer shapes the output.
    """
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for module in norms:
            n = module.num_features
            module.weight.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
            module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
        model.train()
        for _ in range(2):
            model(torch.randn(8, 3, resolution, resolution, generator=generator))
    for module in norms:
        module.momentum = 0.01
    return model.eval()


@pytest.fixture
def reference_md() -> str:
    if not REFERENCE_MD.is_file():
        pytest.fail(f"reference facts not found at {REFERENCE_MD}")
    return REFERENCE_MD.read_text()


# -- the A1 files exported once per session for test_export.py, test_npu.py, test_runtimes.py and
# test_benchmark.py (defined here, not imported into each module: an imported fixture is the importing
# module's own and would be computed again there). The helpers are test_export.py's.


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory):
    """30 real-photo views as a dataset folder: val/<label>/<image>.png (3 views per class)."""
    from test_export import write_photo_folder

    return write_photo_folder(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="session")
def photo_batch():
    """The same 30 views, preprocessed for the A1 below (float32 NCHW)."""
    from test_export import preprocessed_photos

    return preprocessed_photos()


@pytest.fixture(scope="session")
def a1_checkpoint(tmp_path_factory, photo_batch):
    from test_export import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("a1") / "a1.safetensors", "a1", photo_batch)


@pytest.fixture(scope="session")
def onnx_fp32(a1_checkpoint):
    from mnasnet.deploy import export_onnx

    return export_onnx(a1_checkpoint, a1_checkpoint.with_name("a1_fp32.onnx"))


@pytest.fixture(scope="session")
def tflite_fp32(a1_checkpoint):
    from mnasnet.deploy import export_tflite

    return export_tflite(a1_checkpoint, a1_checkpoint.with_name("a1_fp32.tflite"))


@pytest.fixture(scope="session")
def tflite_int8(a1_checkpoint, photo_folder):
    from mnasnet.deploy import export_tflite

    return export_tflite(a1_checkpoint, a1_checkpoint.with_name("a1_int8.tflite"), int8=True, calibration=photo_folder)
