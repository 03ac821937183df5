"""The recipe's parts against independent formulas: TF RMSProp, schedules, EMA, L2, label smoothing, config."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

from mnasnet.model import create_model
from mnasnet.train.config import PRESETS, TrainConfig, load_config, save_config
from mnasnet.train.recipe import (
    ModelEma,
    RMSpropTF,
    add_l2_gradient,
    l2_penalty,
    learning_rate,
    smoothed_cross_entropy,
    split_decay_parameters,
)


def tf_rmsprop_numpy(weights, gradients, lrs, decay=0.9, momentum=0.9, epsilon=1e-3):
    """TensorFlow 1's ApplyRMSProp kernel, written out: ms starts at 1, epsilon inside the sqrt, lr in mom."""
    w = weights.astype(np.float64).copy()
    ms = np.ones_like(w)
    mom = np.zeros_like(w)
    for g, lr in zip(gradients, lrs, strict=True):
        ms = ms + (g * g - ms) * (1.0 - decay)
        mom = mom * momentum + lr * g / np.sqrt(ms + epsilon)
        w = w - mom
    return w


@pytest.mark.parametrize("momentum", [0.9, 0.0])
def test_rmsprop_tf_matches_tensorflow_update_formula(momentum):
    rng = np.random.default_rng(0)
    start = rng.normal(size=(4, 3)).astype(np.float32)
    gradients = [rng.normal(scale=s, size=(4, 3)).astype(np.float32) for s in (0.1, 1.0, 3.0, 0.01, 2.0)]
    lrs = [0.1, 0.2, 0.05, 0.3, 0.01]  # a changing lr: TF folds it into the momentum buffer
    param = torch.nn.Parameter(torch.from_numpy(start.copy()))
    optimizer = RMSpropTF([param], lr=0.1, decay=0.9, momentum=momentum, epsilon=1e-3)
    for g, lr in zip(gradients, lrs, strict=True):
        optimizer.param_groups[0]["lr"] = lr
        param.grad = torch.from_numpy(g)
        optimizer.step()
    expected = tf_rmsprop_numpy(start, gradients, lrs, momentum=momentum)
    np.testing.assert_allclose(param.detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    # torch's RMSprop (epsilon outside the sqrt, ms from 0) is a different optimiser: the test can tell
    other = torch.nn.Parameter(torch.from_numpy(start.copy()))
    torch_rms = torch.optim.RMSprop([other], lr=0.1, alpha=0.9, momentum=momentum, eps=1e-3)
    for g, lr in zip(gradients, lrs, strict=True):
        torch_rms.param_groups[0]["lr"] = lr
        other.grad = torch.from_numpy(g)
        torch_rms.step()
    assert not np.allclose(other.detach().numpy(), expected, rtol=1e-3)


def test_rmsprop_state_round_trips_through_state_dict():
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = RMSpropTF([param], lr=0.1)
    param.grad = torch.tensor([1.0, -2.0, 0.5])
    optimizer.step()
    restored = RMSpropTF([torch.nn.Parameter(param.detach().clone())], lr=0.1)
    restored.load_state_dict(optimizer.state_dict())
    state = next(iter(restored.state.values()))
    np.testing.assert_allclose(state["mean_square"].numpy(), 0.9 + 0.1 * np.array([1.0, 4.0, 0.25]), rtol=1e-6)


def test_paper_schedule_warmup_then_staircase():
    # REFERENCE.md section 5: 0.016 per 256 images -> 0.256 at 4096; 5 warmup epochs; x0.97 every 2.4 epochs
    peak = 0.016 * 4096 / 256
    assert peak == pytest.approx(0.256)
    kwargs = {"peak": peak, "total_epochs": 350, "warmup_epochs": 5}
    assert learning_rate(0.0, **kwargs) == 0.0
    assert learning_rate(2.5, **kwargs) == pytest.approx(0.128)
    assert learning_rate(4.999, **kwargs) == pytest.approx(peak * 4.999 / 5)
    # after warmup the staircase counts from step 0, as TF's exponential_decay(global_step)
    assert learning_rate(5.0, **kwargs) == pytest.approx(peak * 0.97**2)  # floor(5 / 2.4) = 2
    assert learning_rate(7.19, **kwargs) == pytest.approx(peak * 0.97**2)
    assert learning_rate(7.2, **kwargs) == pytest.approx(peak * 0.97**3)
    assert learning_rate(349.9, **kwargs) == pytest.approx(peak * 0.97 ** math.floor(349.9 / 2.4))


def test_cosine_schedule_for_finetuning():
    kwargs = {"peak": 0.1, "total_epochs": 11, "warmup_epochs": 1, "schedule": "cosine"}
    assert learning_rate(0.5, **kwargs) == pytest.approx(0.05)
    assert learning_rate(1.0, **kwargs) == pytest.approx(0.1)
    assert learning_rate(6.0, **kwargs) == pytest.approx(0.05)
    assert learning_rate(11.0, **kwargs) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(3.0, **kwargs) == pytest.approx(0.05 * (1 + math.cos(math.pi * 0.2)))
    with pytest.raises(ValueError, match="unknown schedule"):
        learning_rate(6.0, peak=0.1, total_epochs=10, schedule="linear")


def test_ema_averages_weights_and_bn_statistics_with_tf_num_updates():
    model = create_model("small", width_multiplier=0.35, num_classes=4, resolution=32)
    ema = ModelEma(model, decay=0.9999)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(1.0)
        model.stem.bn.num_batches_tracked.fill_(7)
    ema.update(model, step=3)
    decay = min(0.9999, (1 + 3) / (10 + 3))  # tf.train.ExponentialMovingAverage(num_updates=3)
    after = {k: v.clone() for k, v in ema.module.state_dict().items()}
    source = model.state_dict()
    for name in ("stem.conv.weight", "stem.bn.running_mean", "stem.bn.running_var", "classifier.bias"):
        expected = decay * before[name].numpy() + (1 - decay) * source[name].numpy()
        np.testing.assert_allclose(after[name].numpy(), expected, rtol=1e-6, atol=1e-7)
    assert int(after["stem.bn.num_batches_tracked"]) == 7
    # late in training the decay is the configured one
    ema.update(model, step=10**6)
    np.testing.assert_allclose(
        ema.module.state_dict()["stem.bn.running_mean"].numpy(),
        0.9999 * after["stem.bn.running_mean"].numpy() + 0.0001 * source["stem.bn.running_mean"].numpy(),
        rtol=1e-6,
        atol=1e-7,
    )


def test_l2_gradient_equals_autograd_of_the_reference_loss_term():
    model = create_model("small", width_multiplier=0.35, num_classes=4, resolution=32)
    decay, no_decay = split_decay_parameters(model)
    bn_params = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    assert {id(p) for p in no_decay} == bn_params
    assert len(decay) + len(no_decay) == len(list(model.parameters()))
    weight_decay = 1e-2
    # the reference: weight_decay * sum(tf.nn.l2_loss(v)) over variables without 'batch_normalization'
    loss = weight_decay * sum(0.5 * (p**2).sum() for p in decay)
    loss.backward()
    expected = {id(p): p.grad.clone() for p in model.parameters() if p.grad is not None}
    assert float(l2_penalty(decay, weight_decay)) == pytest.approx(float(loss.detach()), rel=1e-5)
    model.zero_grad(set_to_none=False)
    add_l2_gradient(decay, weight_decay)
    for param in decay:
        torch.testing.assert_close(param.grad, expected[id(param)])
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in no_decay)


def test_label_smoothing_matches_tf_formula():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(5, 7)).astype(np.float32)
    labels = rng.integers(0, 7, size=5)
    smoothing = 0.1
    onehot = np.eye(7)[labels] * (1 - smoothing) + smoothing / 7  # tf.losses.softmax_cross_entropy
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected = float(-(onehot * log_softmax).sum(1).mean())
    value = smoothed_cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels), smoothing)
    assert float(value) == pytest.approx(expected, rel=1e-5)


def test_paper_preset_is_reference_recipe():
    config = load_config("paper", overrides={"data": "/data/imagenet"})
    assert (config.optimizer, config.rmsprop_decay, config.momentum, config.epsilon) == ("rmsprop_tf", 0.9, 0.9, 1e-3)
    assert (config.base_lr, config.base_batch, config.warmup_epochs) == (0.016, 256, 5.0)
    assert (config.schedule, config.decay_rate, config.decay_epochs, config.epochs) == ("exponential", 0.97, 2.4, 350)
    assert (config.weight_decay, config.label_smoothing, config.ema_decay, config.dropout) == (1e-5, 0.1, 0.9999, 0.2)
    assert (config.crop_min_area, config.crop_min_object_covered, config.crop_attempts) == (0.08, 0.1, 10)
    finetune = load_config("finetune")
    assert finetune.schedule == "cosine" and finetune.epochs < config.epochs
    assert set(PRESETS) == {"paper", "finetune"}


def test_builtin_dataset_brings_its_own_defaults_below_user_settings():
    from mnasnet.train.config import DIGITS_SETTINGS

    config = load_config("paper")  # data defaults to the built-in digits
    assert config.data == "digits"
    for name, value in DIGITS_SETTINGS.items():
        assert getattr(config, name) == value, name
    assert config.optimizer == "rmsprop_tf" and config.label_smoothing == 0.1  # still the paper's optimiser
    mine = load_config("paper", overrides={"data": "digits", "arch": "a1", "epochs": 2, "hflip": True})
    assert (mine.arch, mine.epochs, mine.hflip, mine.resolution) == ("a1", 2, True, 32)


def test_config_precedence_yaml_then_overrides_and_saved_round_trip(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"recipe": "finetune", "epochs": 7, "lr": 0.5, "hflip": False}))
    config = load_config(yaml_path=path, overrides={"epochs": "9", "crop_aspect_ratio": "0.5,2"})
    assert config.recipe == "finetune" and config.schedule == "cosine"  # preset from the file
    assert (config.epochs, config.lr, config.hflip) == (9, 0.5, False)  # flag beats file beats preset
    assert config.crop_aspect_ratio == (0.5, 2.0)
    save_config(config, tmp_path / "saved.yaml", extra={"peak_lr": 0.5})
    again = load_config(yaml_path=tmp_path / "saved.yaml")
    assert again == config
    with pytest.raises(Exception, match="unknown training settings.*learning_rate"):
        load_config(overrides={"learning_rate": 0.1})
    with pytest.raises(ValueError, match="epochs"):
        load_config(overrides={"epochs": "many"})
    with pytest.raises(ValueError, match="amp"):
        load_config(overrides={"amp": "int4"})
    assert TrainConfig().validate().recipe == "paper"
