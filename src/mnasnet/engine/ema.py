"""An exponential moving average of a model's weights and BN statistics, as TF's reference keeps it."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ModelEma"]


class ModelEma:
    """Exponential moving average of a model's weights *and* BN statistics, as the reference keeps.

    The decay follows ``tf.train.ExponentialMovingAverage(decay, num_updates=step)``:
    ``min(decay, (1 + step) / (10 + step))``, so early averages are not stuck at
    the random initialisation. Integer buffers (BN's batch counter) are copied.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)
        self.updates = 0

    def _pairs(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor], list, list]:
        # state_dict() tensors share storage with the live ones; build the lists once per model
        if getattr(self, "_cached_for", None) is not model:
            mine, theirs, mine_int, theirs_int = [], [], [], []
            source = model.state_dict()
            for name, tensor in self.module.state_dict().items():
                if tensor.is_floating_point():
                    mine.append(tensor)
                    theirs.append(source[name].detach())
                else:
                    mine_int.append(tensor)
                    theirs_int.append(source[name])
            self._cache = (mine, theirs, mine_int, theirs_int)
            self._cached_for = model
        return self._cache

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        step = self.updates if step is None else step
        decay = min(self.decay, (1.0 + step) / (10.0 + step))
        mine, theirs, mine_int, theirs_int = self._pairs(model)
        # ema = decay * ema + (1 - decay) * value, i.e. ema += (1 - decay) * (value - ema), as TF
        torch._foreach_lerp_(mine, theirs, 1.0 - decay)
        for target, value in zip(mine_int, theirs_int, strict=True):
            target.copy_(value)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
