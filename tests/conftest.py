import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # for `import oracles`

REFERENCE_MD = Path(__file__).resolve().parents[1].parent / "shared" / "REFERENCE.md"


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Gives every BN layer realistic statistics and affine weights.

    Freshly initialised BN (mean 0, var 1, gamma 1, beta 0) makes logits tiny, so
    any two implementations would look equal; these make every layer count.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=generator) * 0.5 + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
    return model


@pytest.fixture
def reference_md() -> str:
    if not REFERENCE_MD.is_file():
        pytest.fail(f"REFERENCE.md not found at {REFERENCE_MD} (CI checks out shared/ beside the repo)")
    return REFERENCE_MD.read_text()
