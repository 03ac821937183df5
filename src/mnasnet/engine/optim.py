"""The reference recipe's optimisation parts: TF-style RMSProp, learning-rate schedules, L2 decay."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from mnasnet.errors import ConfigError

__all__ = ["RMSpropTF", "add_l2_gradient", "l2_penalty", "learning_rate", "split_decay_parameters"]


class RMSpropTF(torch.optim.Optimizer):
    """RMSProp as TensorFlow 1 computes it (``tf.train.RMSPropOptimizer``), which the reference uses.

    Per step, for gradient ``g``::

        ms  = decay * ms + (1 - decay) * g**2        # ms starts at 1, not 0
        mom = momentum * mom + lr * g / sqrt(ms + epsilon)
        w  -= mom

    Unlike ``torch.optim.RMSprop``: epsilon sits inside the square root, the mean
    square starts at one (so early steps are not huge), and the learning rate is
    folded into the momentum buffer (so a changing lr only affects new gradients).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.016,
        decay: float = 0.9,
        momentum: float = 0.9,
        epsilon: float = 1e-3,
    ) -> None:
        if lr < 0 or not 0.0 <= decay < 1.0 or momentum < 0 or epsilon < 0:
            raise ConfigError(f"bad RMSProp settings: lr={lr}, decay={decay}, momentum={momentum}, epsilon={epsilon}")
        super().__init__(params, {"lr": lr, "decay": decay, "momentum": momentum, "epsilon": epsilon})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, mean_squares, moms = [], [], [], []
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["mean_square"] = torch.ones_like(param, memory_format=torch.preserve_format)
                    state["momentum"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                params.append(param)
                grads.append(param.grad)
                mean_squares.append(state["mean_square"])
                moms.append(state["momentum"])
            if params:
                self._update(params, grads, mean_squares, moms, group)
        return loss

    @staticmethod
    def _update(params, grads, mean_squares, moms, group) -> None:
        decay, momentum, epsilon, lr = group["decay"], group["momentum"], group["epsilon"], group["lr"]
        # foreach ops: one kernel per op for all tensors instead of one per tensor
        torch._foreach_mul_(mean_squares, decay)
        torch._foreach_addcmul_(mean_squares, grads, grads, value=1.0 - decay)
        denominators = torch._foreach_add(mean_squares, epsilon)
        torch._foreach_sqrt_(denominators)
        if momentum > 0:
            torch._foreach_mul_(moms, momentum)
            torch._foreach_addcdiv_(moms, grads, denominators, value=lr)
            torch._foreach_sub_(params, moms)
        else:
            torch._foreach_addcdiv_(params, grads, denominators, value=-lr)


def learning_rate(
    epoch: float,
    *,
    peak: float,
    total_epochs: float,
    warmup_epochs: float = 5.0,
    schedule: str = "exponential",
    decay_rate: float = 0.97,
    decay_epochs: float = 2.4,
    min_lr: float = 0.0,
) -> float:
    """The learning rate at a (fractional) epoch.

    Linear warmup from 0 to ``peak`` over ``warmup_epochs``, then:
    ``exponential`` (the reference: ``peak * decay_rate ** floor(epoch / decay_epochs)``,
    staircase, counted from the start of training as TF's exponential_decay does),
    ``cosine`` (from ``peak`` at the end of warmup to ``min_lr`` at ``total_epochs``),
    or ``constant``.
    """
    if warmup_epochs > 0 and epoch < warmup_epochs:
        return peak * epoch / warmup_epochs
    if schedule == "exponential":
        return peak * decay_rate ** math.floor(epoch / decay_epochs)
    if schedule == "cosine":
        span = max(total_epochs - warmup_epochs, 1e-12)
        progress = min(max((epoch - warmup_epochs) / span, 0.0), 1.0)
        return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "constant":
        return peak
    raise ConfigError(f"unknown schedule {schedule!r}; choose exponential, cosine or constant")


def split_decay_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(parameters that get L2 decay, BN parameters that do not), as the reference splits them."""
    norm_ids = {
        id(param)
        for module in model.modules()
        if isinstance(module, nn.modules.batchnorm._NormBase)
        for param in module.parameters(recurse=False)
    }
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if id(param) in norm_ids else decay).append(param)
    return decay, no_decay


@torch.no_grad()
def l2_penalty(params: list[torch.Tensor], weight_decay: float) -> torch.Tensor:
    """The reference's L2 loss term: ``weight_decay * sum(tf.nn.l2_loss(w))`` = ``weight_decay * sum(w**2) / 2``."""
    if not params or weight_decay == 0:
        return torch.zeros(())
    norms = torch._foreach_norm([p.detach().float() for p in params])
    return 0.5 * weight_decay * torch.stack(norms).pow(2).sum()


@torch.no_grad()
def add_l2_gradient(params: list[torch.Tensor], weight_decay: float) -> None:
    """Adds the gradient of :func:`l2_penalty` (``weight_decay * w``) to each parameter's gradient.

    The same update as putting the L2 term into the loss (it goes through RMSProp's
    normalisation, unlike decoupled weight decay), without an autograd graph over
    every weight.
    """
    with_grad = [p for p in params if p.grad is not None]
    if with_grad and weight_decay:
        torch._foreach_add_([p.grad for p in with_grad], [p.detach() for p in with_grad], alpha=weight_decay)
