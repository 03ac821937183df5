"""One optimizer step: forward, loss and backward over the micro-batches, then the update, BN sync and EMA."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mnasnet.engine.config import EngineConfig
from mnasnet.engine.distributed import DistributedContext
from mnasnet.engine.ema import ModelEma
from mnasnet.engine.optim import RMSpropTF, add_l2_gradient, split_decay_parameters
from mnasnet.errors import ConfigError

if TYPE_CHECKING:
    from mnasnet.engine.task import Task

__all__ = ["TrainStep", "move_batch"]


def move_batch(batch: Any, device: torch.device, *, channels_last: bool = False) -> Any:
    """``batch`` with every tensor (inside lists, tuples and dicts too) on ``device``.

    With ``channels_last`` the 4-D floating tensors (images) also take that memory format.
    """
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.dim() == 4 and batch.is_floating_point():
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, Mapping):
        return {key: move_batch(value, device, channels_last=channels_last) for key, value in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(move_batch(value, device, channels_last=channels_last) for value in batch)
    return batch


class TrainStep:
    """Forward, backward and update for one optimizer step over ``accum_steps`` micro-batches.

    Holds what the step needs (model, optimiser, scaler, EMA) so that benchmarks can
    time exactly the loop's step. The task supplies the forward pass and the loss.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        task: Task,
        config: EngineConfig,
        device: torch.device,
        context: DistributedContext | None = None,
    ) -> None:
        self.task = task
        self.config = config
        self.device = device
        self.context = context or DistributedContext(device=device)
        self.module = model  # the bare model (EMA, checkpoints, evaluation)
        self.decay_params, no_decay = split_decay_parameters(model)
        params = [p for p in model.parameters() if p.requires_grad]
        if config.optimizer == "rmsprop_tf":
            self.optimizer = RMSpropTF(
                params, lr=0.0, decay=config.rmsprop_decay, momentum=config.momentum, epsilon=config.epsilon
            )
        elif config.optimizer == "adamw":
            # decoupled decay (scaled by the learning rate, not added to the gradient); BN parameters exempt
            groups = [
                {"params": self.decay_params, "weight_decay": config.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ]
            self.optimizer = torch.optim.AdamW(groups, lr=0.0, betas=(config.momentum, 0.999))
        else:
            self.optimizer = torch.optim.SGD(params, lr=0.0, momentum=config.momentum, nesterov=config.momentum > 0)
        if config.amp == "fp16" and device.type != "cuda":
            raise ConfigError("--amp fp16 needs a CUDA GPU (it uses a gradient scaler); use --amp bf16 on CPU")
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
        self.ema = ModelEma(model, config.ema_decay) if config.ema_decay > 0 else None
        self.buffers = [b for b in model.buffers() if b.is_floating_point() or b.dtype == torch.long]
        forward_model = model
        if self.context.enabled:
            # We broadcast rank 0's BN statistics after each step ourselves (so the EMA of
            # BN statistics is identical on every rank), not before each forward.
            ddp = nn.parallel.DistributedDataParallel
            # torch 2.13 renamed the option; older releases only know broadcast_buffers
            no_buffer_sync = (
                {"forward_sync_buffers": False}
                if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
                else {"broadcast_buffers": False}
            )
            forward_model = ddp(model, device_ids=[device] if device.type == "cuda" else None, **no_buffer_sync)
        self.ddp_model = forward_model
        self.forward_model = torch.compile(forward_model) if config.compile else forward_model
        self.step_count = 0

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def set_train_mode(self) -> None:
        self.module.train()
        if self.config.freeze_bn:
            for module in self.module.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def prepare(self, batch: Any) -> Any:
        """The batch on this step's device (images channels-last when configured)."""
        return move_batch(batch, self.device, channels_last=self.config.channels_last)

    def __call__(self, micro_batches: Sequence[Any], lr: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Runs one optimizer step; returns the sum of the micro-batch losses and of the task's statistics."""
        loss_sum = torch.zeros((), device=self.device)
        stats_sum: dict[str, torch.Tensor] = {}
        last = len(micro_batches) - 1
        for index, batch in enumerate(micro_batches):
            # skip the gradient all-reduce on all but the last micro-batch
            sync = self.ddp_model.no_sync() if self.context.enabled and index < last else contextlib.nullcontext()
            with sync:
                with self.autocast():
                    output = self.task.forward(self.forward_model, batch)
                loss, stats = self.task.loss(output, batch)
                self.scaler.scale(loss / len(micro_batches)).backward()
            loss_sum += loss.detach()
            for name, value in stats.items():
                value = value.detach()
                stats_sum[name] = stats_sum[name] + value if name in stats_sum else value
        self.scaler.unscale_(self.optimizer)
        # the reference's L2 loss term, added as its gradient (unscaled, once per step)
        if self.config.optimizer != "adamw":
            add_l2_gradient(self.decay_params, self.config.weight_decay)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_count += 1
        self.context.broadcast_tensors(self.buffers)
        if self.ema is not None:
            self.ema.update(self.module, step=self.step_count)
        return loss_sum, stats_sum

    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and exported: the EMA when it is on."""
        return self.ema.module if self.ema is not None else self.module

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.module.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step_count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step_count = int(state["step"])
