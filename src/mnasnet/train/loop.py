"""The training loop: one code path from one CPU process to many GPUs under ``torchrun``.

Run folder layout::

    config.yaml          the resolved configuration
    checkpoint.pt        the resumable state (every ``save_every`` steps and each epoch)
    metrics.jsonl/.csv   one row per epoch
    tensorboard/         scalars per step and per epoch
    best.safetensors     the best evaluated weights (EMA when on), our checkpoint format
    last.safetensors     the latest evaluated weights
    curves.png           loss, accuracy and learning-rate curves
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mnasnet.checkpoint import save_checkpoint
from mnasnet.data.datasets import (
    EpochSampler,
    ImageFolderDataset,
    ShardSampler,
    make_loader,
    resolve_dataset,
    split_folder,
)
from mnasnet.data.preprocess import Preprocess, build_eval_transform
from mnasnet.data.transforms_train import CropParams, TrainTransform
from mnasnet.errors import DataError, MnasNetError
from mnasnet.train.config import TrainConfig, save_config
from mnasnet.train.distributed import DistributedContext, setup_distributed
from mnasnet.train.metrics import MetricsWriter
from mnasnet.train.recipe import (
    ModelEma,
    RMSpropTF,
    add_l2_gradient,
    learning_rate,
    smoothed_cross_entropy,
    split_decay_parameters,
)
from mnasnet.train.state import (
    CHECKPOINT_NAME,
    capture_rng,
    load_training_state,
    restore_rng,
    save_training_state,
)

__all__ = ["TrainResult", "TrainStep", "TrainingDivergedError", "train"]


class TrainingDivergedError(MnasNetError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    status: str  # "completed", "stopped" (max_steps) or "interrupted" (Ctrl-C / SIGTERM)
    epoch: int  # completed epochs
    step: int  # optimizer steps taken
    best_top1: float | None
    metrics: list[dict[str, Any]]
    checkpoint: Path | None
    model: nn.Module | None = None  # the evaluated/exported weights (the EMA when on)
    train_model: nn.Module | None = None  # the raw trained weights


# -- one optimizer step -----------------------------------------------------------------


class TrainStep:
    """Forward, backward and update for one optimizer step over ``accum_steps`` micro-batches.

    Holds what the step needs (model, optimiser, scaler, EMA) so that benchmarks can
    time exactly the loop's step.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        config: TrainConfig,
        device: torch.device,
        context: DistributedContext | None = None,
    ) -> None:
        self.config = config
        self.device = device
        self.context = context or DistributedContext(device=device)
        self.module = model  # the bare model (EMA, checkpoints, evaluation)
        self.decay_params, _ = split_decay_parameters(model)
        params = [p for p in model.parameters() if p.requires_grad]
        if config.optimizer == "rmsprop_tf":
            self.optimizer = RMSpropTF(
                params, lr=0.0, decay=config.rmsprop_decay, momentum=config.momentum, epsilon=config.epsilon
            )
        else:
            self.optimizer = torch.optim.SGD(params, lr=0.0, momentum=config.momentum, nesterov=config.momentum > 0)
        if config.amp == "fp16" and device.type != "cuda":
            raise ValueError("--amp fp16 needs a CUDA GPU (it uses a gradient scaler); use --amp bf16 on CPU")
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

    def prepare(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.device, non_blocking=True)
        if self.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, targets.to(self.device, non_blocking=True)

    def __call__(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]], lr: float) -> tuple:
        """Runs one optimizer step; returns (sum of micro-batch losses, correct predictions), as tensors."""
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        last = len(micro_batches) - 1
        for index, (images, targets) in enumerate(micro_batches):
            # skip the gradient all-reduce on all but the last micro-batch
            sync = self.ddp_model.no_sync() if self.context.enabled and index < last else contextlib.nullcontext()
            with sync:
                with self.autocast():
                    logits = self.forward_model(images)
                loss = compute_loss(logits, targets, self.config.label_smoothing)
                self.scaler.scale(loss / len(micro_batches)).backward()
            loss_sum += loss.detach()
            correct += (logits.detach().argmax(1) == targets).sum()
        self.scaler.unscale_(self.optimizer)
        # the reference's L2 loss term, added as its gradient (unscaled, once per step)
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
        return loss_sum, correct

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


def compute_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    return smoothed_cross_entropy(logits, targets, label_smoothing)


# -- building the run -------------------------------------------------------------------


def _load_pretrained(weights: str) -> nn.Module:
    path = Path(weights).expanduser()
    if path.exists() or path.suffix == ".safetensors":
        from mnasnet.checkpoint import load_model

        return load_model(path)
    try:
        from mnasnet.weights import load_weights
    except ImportError:
        raise MnasNetError(f"cannot load weights {weights!r}: no such file and no weights registry") from None
    return load_weights(weights)


def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """A fresh model, or a pretrained one with a new classifier when ``config.weights`` is set."""
    if config.weights:
        model = _load_pretrained(config.weights)
        if model.config.num_classes != num_classes:
            model.reset_classifier(num_classes)
        model.config = dataclasses.replace(
            model.config,
            resolution=config.resolution,
            dropout=config.dropout if config.dropout is not None else model.config.dropout,
        )
        model.dropout.p = model.config.dropout
        if config.bn_momentum is not None:
            model.config = dataclasses.replace(model.config, bn_momentum=config.bn_momentum)
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.momentum = config.bn_momentum
        return model
    from mnasnet.model import create_model

    torch.manual_seed(config.seed)  # the same initial weights on every rank
    return create_model(
        config.arch,
        width_multiplier=config.width,
        num_classes=num_classes,
        resolution=config.resolution,
        drop_path_rate=config.drop_path_rate,
        **({"dropout": config.dropout} if config.dropout is not None else {}),
        **({"bn_momentum": config.bn_momentum} if config.bn_momentum is not None else {}),
    )


def _eval_preprocess(config: TrainConfig, model: nn.Module) -> Preprocess:
    pretrained = getattr(model, "preprocess", None)
    if pretrained is not None:
        # keep the backbone's normalisation and interpolation, at the training resolution
        return Preprocess.for_resolution(
            config.resolution, mean=pretrained.mean, std=pretrained.std, interpolation=pretrained.interpolation
        )
    return Preprocess.for_resolution(config.resolution)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[dict[str, Any]]:
    """Turns the first Ctrl-C / SIGTERM into a request to save and stop; a second Ctrl-C aborts."""
    request: dict[str, Any] = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, _frame):
        if request["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        request["signal"] = signum
        print("\nstopping: saving a checkpoint (Ctrl-C again to abort without saving)", file=sys.stderr)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@torch.no_grad()
def validate(model: nn.Module, loader, step: TrainStep) -> dict[str, float]:
    """Loss, top-1 and top-5 (percent) over the rank-sharded validation loader, reduced over ranks."""
    model.eval()
    totals = torch.zeros(4, device=step.device, dtype=torch.float64)  # loss, top1, top5, n
    for images, targets in loader:
        images, targets = step.prepare(images, targets)
        with step.autocast():
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top == targets[:, None]
        totals[0] += F.cross_entropy(logits, targets, reduction="sum").double()
        totals[1] += hits[:, 0].sum()
        totals[2] += hits.any(dim=1).sum()
        totals[3] += targets.numel()
    step.context.all_reduce_sum(totals)
    loss, top1, top5, n = totals.tolist()
    n = max(n, 1.0)
    return {"val_loss": loss / n, "val_top1": 100.0 * top1 / n, "val_top5": 100.0 * top5 / n, "val_n": int(n)}


# -- the loop ----------------------------------------------------------------------------


def train(config: TrainConfig, *, resume: bool = False, progress: bool = True) -> TrainResult:
    """Trains (or fine-tunes) a MnasNet as ``config`` says; see the module docstring for the outputs.

    Under ``torchrun`` every rank calls this; only rank 0 writes files.

    Raises:
        DataError: the dataset is missing, empty or too small for one batch.
        CheckpointError: ``resume`` without a readable checkpoint in the run folder.
        TrainingDivergedError: the loss became NaN/inf (the last good checkpoint is kept).
    """
    config.validate()
    if config.recipe == "finetune" and not config.weights:
        raise ValueError("the finetune recipe needs pretrained weights: pass --weights NAME|PATH")
    context = setup_distributed(config.device)
    try:
        return _Run(config, context, resume=resume, progress=progress).run()
    finally:
        context.shutdown()


class _Run:
    def __init__(self, config: TrainConfig, context: DistributedContext, *, resume: bool, progress: bool):
        self.config, self.context, self.progress = config, context, progress
        self.run_dir = Path(config.output)
        self.checkpoint_path = self.run_dir / CHECKPOINT_NAME
        device = context.device
        state = load_training_state(self.checkpoint_path) if resume else None
        if not resume and self.checkpoint_path.exists():
            raise MnasNetError(
                f"{self.run_dir} already holds a run; pass --resume to continue it or choose another --output"
            )

        root = resolve_dataset(config.data)
        crop = CropParams(
            min_object_covered=config.crop_min_object_covered,
            aspect_ratio_range=tuple(config.crop_aspect_ratio),
            area_range=(config.crop_min_area, 1.0),
            max_attempts=config.crop_attempts,
        )
        # the transform needs the model's normalisation, the model needs the class count
        self.train_set = ImageFolderDataset(split_folder(root, "train"))
        self.classes = self.train_set.classes
        model = build_model(config, len(self.classes))
        self.preprocess = _eval_preprocess(config, model)
        model.preprocess, model.labels = self.preprocess, list(self.classes)
        if config.zero_init_head:
            # uniform(+-1/sqrt(classes)) gives logits of several units with few classes;
            # a zero head starts every class at equal odds and learns much faster
            nn.init.zeros_(model.classifier.weight)
            nn.init.zeros_(model.classifier.bias)
        model.to(device)
        if config.channels_last:
            model.to(memory_format=torch.channels_last)

        self.train_set.train_transform = TrainTransform(
            config.resolution, crop=crop, hflip=config.hflip, mean=self.preprocess.mean, std=self.preprocess.std
        )
        self.val_set = ImageFolderDataset(
            split_folder(root, "val"), transform=build_eval_transform(self.preprocess), classes=self.classes
        )
        self.sampler = EpochSampler(
            len(self.train_set), seed=config.seed, rank=context.rank, world_size=context.world_size
        )
        pin = device.type == "cuda"
        per_rank = self.sampler.per_rank
        self.drop_last = per_rank >= config.batch_size
        micro_per_epoch = per_rank // config.batch_size if self.drop_last else 1
        self.steps_per_epoch = micro_per_epoch // config.accum_steps
        if self.steps_per_epoch == 0:
            raise DataError(
                f"the training set ({len(self.train_set)} images over {context.world_size} process(es)) is too "
                f"small for batch {config.batch_size} x {config.accum_steps} accumulation steps"
            )
        self.train_loader = make_loader(
            self.train_set,
            self.sampler,
            batch_size=config.batch_size,
            workers=config.workers,
            drop_last=self.drop_last,
            pin_memory=pin,
        )
        val_sampler = ShardSampler(len(self.val_set), rank=context.rank, world_size=context.world_size)
        self.val_loader = make_loader(
            self.val_set, val_sampler, batch_size=config.batch_size, workers=config.workers, pin_memory=pin
        )

        self.global_batch = config.batch_size * config.accum_steps * context.world_size
        self.peak_lr = config.lr if config.lr is not None else config.base_lr * self.global_batch / config.base_batch
        self.step = TrainStep(model, config=config, device=device, context=context)

        self.epoch, self.step_in_epoch, self.best_top1 = 0, 0, None
        self.running = {"loss": 0.0, "correct": 0, "seen": 0, "micro": 0, "time": 0.0}
        # dropout masks: a different stream per rank
        torch.manual_seed(config.seed * 1000 + context.rank + 1)
        if state is not None:
            self._restore(state)

        self.writer = None
        if context.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, self.run_dir / "config.yaml", extra=self._resolved())
            self.writer = MetricsWriter(
                self.run_dir, tensorboard=config.tensorboard, resume_epoch=self.epoch if resume else None
            )

    def _resolved(self) -> dict[str, Any]:
        return {
            "peak_lr": self.peak_lr,
            "global_batch": self.global_batch,
            "world_size": self.context.world_size,
            "steps_per_epoch": self.steps_per_epoch,
            "num_classes": len(self.classes),
            "train_images": len(self.train_set),
            "val_images": len(self.val_set),
            "device": str(self.context.device),
        }

    # -- checkpoints ----------------------------------------------------------------------

    def _save(self, reason: str) -> None:
        rng = capture_rng()
        if self.context.enabled:
            gathered: list[Any] = [None] * self.context.world_size
            torch.distributed.all_gather_object(gathered, rng)
        else:
            gathered = [rng]
        if not self.context.is_main:
            return
        state = {
            **self.step.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "running": dict(self.running),
            "best_top1": self.best_top1,
            "rng": gathered,
            "config": self.config.to_dict(),
            "layout": [self.context.world_size, self.config.batch_size, self.config.accum_steps],
            "reason": reason,
        }
        save_training_state(self.checkpoint_path, state)

    def _restore(self, state: dict[str, Any]) -> None:
        self.step.load_state_dict(state)
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        self.best_top1 = state.get("best_top1")
        self.running = dict(state["running"])
        layout = [self.context.world_size, self.config.batch_size, self.config.accum_steps]
        if list(state["layout"]) != layout and self.step_in_epoch:
            print(
                f"warning: resuming with a different processes/batch/accumulation layout {layout} "
                f"(was {list(state['layout'])}); epoch {self.epoch + 1} restarts from its beginning",
                file=sys.stderr,
            )
            self.step_in_epoch = 0
            self.running = {"loss": 0.0, "correct": 0, "seen": 0, "micro": 0, "time": 0.0}
        rngs = state["rng"]
        if len(rngs) == self.context.world_size:
            restore_rng(rngs[self.context.rank])

    def _check_finite(self, loss_total: torch.Tensor) -> None:
        value = float(loss_total)
        # every rank takes part in the vote, so all stop at the same step
        if self.context.any(not math.isfinite(value)):
            last = ""
            if self.checkpoint_path.exists():
                last = f"; the last good checkpoint is {self.checkpoint_path}"
            raise TrainingDivergedError(
                f"loss became {value} at step {self.step.step_count} (epoch {self.epoch + 1}); "
                f"stopped{last}. Try a lower learning rate (--lr/--base-lr) or --amp none"
            )

    def _save_weights(self, name: str, metrics: dict[str, Any]) -> None:
        if self.context.is_main:
            save_checkpoint(
                self.step.eval_model(),
                self.run_dir / name,
                preprocess=self.preprocess,
                labels=list(self.classes),
                extra={"epoch": self.epoch, "step": self.step.step_count, **metrics},
            )

    # -- epochs ---------------------------------------------------------------------------

    def lr_at(self, step_count: int) -> float:
        """The learning rate after ``step_count`` optimizer steps (epochs may be fractional)."""
        config = self.config
        return learning_rate(
            step_count / self.steps_per_epoch,
            peak=self.peak_lr,
            total_epochs=config.epochs,
            warmup_epochs=config.warmup_epochs,
            schedule=config.schedule,
            decay_rate=config.decay_rate,
            decay_epochs=config.decay_epochs,
            min_lr=config.min_lr,
        )

    def run(self) -> TrainResult:
        status = "completed"
        with _stop_on_signals() as stop:
            try:
                while self.epoch < self.config.epochs:
                    outcome = self._train_epoch(stop)
                    if outcome != "epoch_done":
                        status = outcome
                        break
                    self._end_epoch()
            finally:
                if self.writer is not None:
                    self.writer.close()
        if status == "completed" and self.context.is_main and self.config.plot:
            from mnasnet.train.plot import plot_run

            with contextlib.suppress(ImportError):  # matplotlib is an optional extra
                plot_run(self.run_dir)
        metrics = self.writer.rows if self.writer is not None else []
        return TrainResult(
            self.run_dir,
            status,
            self.epoch,
            self.step.step_count,
            self.best_top1,
            list(metrics),
            self.checkpoint_path if self.checkpoint_path.exists() else None,
            model=self.step.eval_model(),
            train_model=self.step.module,
        )

    def _train_epoch(self, stop: dict[str, Any]) -> str:
        config, step = self.config, self.step
        accum = config.accum_steps
        self.sampler.set_epoch(self.epoch, start=self.step_in_epoch * accum * config.batch_size)
        step.set_train_mode()
        loader = iter(self.train_loader)
        pending_loss = torch.zeros((), device=self.context.device)
        pending_correct = torch.zeros((), device=self.context.device, dtype=torch.long)
        bar = None
        if self.progress and self.context.is_main:
            from tqdm import tqdm

            bar = tqdm(
                total=self.steps_per_epoch,
                initial=self.step_in_epoch,
                desc=f"epoch {self.epoch + 1}/{config.epochs}",
                file=sys.stderr,
                dynamic_ncols=True,
                leave=False,
            )
        started, images_since = time.perf_counter(), 0
        try:
            while self.step_in_epoch < self.steps_per_epoch:
                micro = [step.prepare(*next(loader)) for _ in range(accum)]
                lr = self.lr_at(step.step_count)
                loss_sum, correct = step(micro, lr)
                pending_loss += loss_sum
                pending_correct += correct
                seen = sum(images.shape[0] for images, _ in micro)
                self.step_in_epoch += 1
                self.running["seen"] += seen
                self.running["micro"] += accum
                images_since += seen
                at_log = step.step_count % config.log_every == 0
                at_limit = config.max_steps is not None and step.step_count >= config.max_steps
                at_save = config.save_every > 0 and step.step_count % config.save_every == 0 and not at_limit
                if at_log or at_save or at_limit or self.step_in_epoch == self.steps_per_epoch:
                    # one host sync per log interval: NaN check, progress and TensorBoard
                    self._check_finite(pending_loss)
                    self.running["loss"] += float(pending_loss)
                    self.running["correct"] += int(pending_correct)
                    pending_loss.zero_()
                    pending_correct.zero_()
                    elapsed = time.perf_counter() - started
                    self.running["time"] += elapsed
                    rate = images_since * self.context.world_size / max(elapsed, 1e-9)
                    started, images_since = time.perf_counter(), 0
                    mean_loss = self.running["loss"] / max(self.running["micro"], 1)
                    if bar is not None:
                        bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.3g}", img_s=f"{rate:.0f}", refresh=False)
                    if self.writer is not None:
                        self.writer.log_step(step.step_count, {"loss": mean_loss, "lr": lr, "images_per_sec": rate})
                if bar is not None:
                    bar.update(1)
                if at_save:
                    self._save("every_n_steps")
                if at_limit:
                    self._save("max_steps")
                    return "stopped"
                requested = stop["signal"] is not None
                if self.context.enabled and (at_log or at_save):
                    requested = self.context.any(requested)
                elif self.context.enabled:
                    requested = False  # all ranks must stop at the same step: decide only at syncs
                if requested:
                    self._save("interrupted")
                    return "interrupted"
        finally:
            if bar is not None:
                bar.close()
            del loader
        return "epoch_done"

    def _end_epoch(self) -> None:
        config, step = self.config, self.step
        totals = torch.tensor(
            [
                self.running["loss"],
                float(self.running["correct"]),
                float(self.running["seen"]),
                float(self.running["micro"]),
            ],
            dtype=torch.float64,
            device=self.context.device,
        )
        self.context.all_reduce_sum(totals)
        loss, correct, seen, micro = totals.tolist()
        epoch_time = self.running["time"]
        self.epoch += 1
        row: dict[str, Any] = {
            "epoch": self.epoch,
            "step": step.step_count,
            "train_loss": loss / max(micro, 1),
            "lr": self.lr_at(step.step_count),
            "images_per_sec": seen / max(epoch_time, 1e-9),
            "epoch_time": epoch_time,
        }
        row["train_top1"] = 100.0 * correct / max(seen, 1)
        if self.epoch % config.eval_every == 0 or self.epoch == config.epochs:
            row.update(validate(step.eval_model(), self.val_loader, step))
            step.set_train_mode()
            if self.best_top1 is None or row["val_top1"] > self.best_top1:
                self.best_top1 = row["val_top1"]
                self._save_weights("best.safetensors", {"val_top1": row["val_top1"], "val_top5": row["val_top5"]})
            self._save_weights("last.safetensors", {"val_top1": row["val_top1"], "val_top5": row["val_top5"]})
        else:
            self._save_weights("last.safetensors", {})
        self.step_in_epoch = 0
        self.running = {"loss": 0.0, "correct": 0, "seen": 0, "micro": 0, "time": 0.0}
        if self.writer is not None:
            self.writer.log_epoch(row)
        self._save("epoch")
