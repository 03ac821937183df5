"""The model is plain modules in every mode; speed comes from the explicit fuse step.

Yardsticks: PyTorch's own forward hooks, ``FlopCounterMode``, ``torch.fx``,
``torch.export`` and ``torch.jit.script``, and a freshly built model loaded with
the same state dict.
"""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import mnasnet
from mnasnet.checkpoint import save_checkpoint
from mnasnet.errors import CheckpointError
from mnasnet.fuse import fuse_model, is_fused
from mnasnet.profile import profile_model

from conftest import randomize_bn

MODES = {
    "grad": torch.enable_grad,
    "no_grad": torch.no_grad,
    "inference_mode": torch.inference_mode,
}


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(mnasnet.create_model("a1", width_multiplier=0.5, padding="same"))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(3))


def _count_hook_calls(model: nn.Module, kinds: tuple[type, ...], run) -> int:
    calls = []
    modules = [m for m in model.modules() if isinstance(m, kinds)]
    handles = [m.register_forward_hook(lambda module, *_: calls.append(module)) for m in modules]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    assert len(set(map(id, calls))) == len(modules), "some module's hook did not fire"
    return len(modules)


@pytest.mark.parametrize("mode", MODES)
def test_every_conv_and_bn_hook_fires_in_every_mode(model, images, mode):
    with MODES[mode]():
        convs = _count_hook_calls(model, (nn.Conv2d,), lambda: model(images))
        norms = _count_hook_calls(model, (nn.BatchNorm2d,), lambda: model(images))
    # a1: stem, 16 blocks (the first without expansion) and head = 49 conv+BN; 8 SE blocks add 16 convs
    assert convs == 65 and norms == 49


def test_flop_counter_sees_the_same_network_in_every_mode_and_after_fusion(model, images):
    counts = {}
    for mode, context in MODES.items():
        with context(), FlopCounterMode(display=False) as counter:
            model(images[:1])
        counts[mode] = counter.get_total_flops()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fuse_model(model)(images[:1])
    counts["fused"] = counter.get_total_flops()
    assert len(set(counts.values())) == 1, counts
    # torch counts 2 FLOPs per multiply-add; our profile counts MACs of convs and the dense layer
    assert counts["grad"] == 2 * profile_model(model, resolution=96).macs


def test_weights_changed_in_place_are_used_at_once(model, images):
    changed = mnasnet.create_model("a1", width_multiplier=0.5, padding="same")
    changed.load_state_dict(model.state_dict())
    changed.eval()
    with torch.no_grad():
        before = changed(images)
        changed.stages[1][0].depthwise.conv.weight.data.mul_(1.5)  # as pruning tools do
        changed.stem.bn.running_mean.data.add_(0.25)
        after = changed(images)
    reference = mnasnet.create_model("a1", width_multiplier=0.5, padding="same").eval()
    reference.load_state_dict(changed.state_dict())
    with torch.enable_grad():
        expected = reference(images).detach()
    assert (before - after).abs().max() > 1e-2
    torch.testing.assert_close(after, expected, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_fx_export_and_script_work_in_eval_mode(model, images):
    with torch.no_grad():
        expected = model(images)
        traced = torch.fx.symbolic_trace(model)
        torch.testing.assert_close(traced(images), expected, rtol=0, atol=0)
        exported = torch.export.export(model, (images,))
        torch.testing.assert_close(exported.module()(images), expected, rtol=1e-5, atol=1e-5)
        scripted = torch.jit.script(model)
        torch.testing.assert_close(scripted(images), expected, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_fused_model_is_real_conv_modules_with_the_same_outputs(model, images):
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    fused = model.fuse()
    assert is_fused(fused) and not is_fused(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    convs = [m for m in fused.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 65 and all(conv.bias is not None for conv in convs)
    assert all(conv.weight.is_contiguous(memory_format=torch.channels_last) for conv in convs)
    with torch.no_grad():
        _count_hook_calls(fused, (nn.Conv2d,), lambda: fused(images))
        torch.testing.assert_close(fused(images), model(images), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(torch.fx.symbolic_trace(fused)(images), fused(images), rtol=0, atol=0)
        torch.testing.assert_close(torch.jit.script(fused)(images), fused(images), rtol=1e-6, atol=1e-6)
    # the source model is untouched, and fusing twice is a no-op
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, state[name], rtol=0, atol=0)
    assert fuse_model(fused) is fused
    assert fused.preprocess == model.preprocess


def test_fused_conv_with_its_own_bias_folds_exactly():
    from mnasnet.fuse import fuse_conv_bn

    torch.manual_seed(0)
    conv, bn = nn.Conv2d(4, 6, 3, padding=1, bias=True), nn.BatchNorm2d(6)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.normal_()
    bn.eval()
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fuse_conv_bn(conv, bn)(x), bn(conv(x)), rtol=1e-5, atol=1e-5)


def test_fused_model_cannot_be_saved_as_a_checkpoint(model, tmp_path):
    with pytest.raises(CheckpointError, match="fused"):
        save_checkpoint(fuse_model(model), tmp_path / "fused.safetensors")
    assert not list(tmp_path.iterdir())


def test_gradients_flow_through_the_plain_model_in_eval(model, images):
    image = images.clone().requires_grad_(True)
    model(image).sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
