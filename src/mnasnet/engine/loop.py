"""The epoch loop: one code path from one CPU process to many GPUs under ``torchrun``.

Run folder layout (only rank 0 writes)::

    .lock                held while the run lives (see :mod:`mnasnet.engine.lock`)
    config.yaml          the task's resolved configuration, plus derived values
    checkpoint.pt        the resumable state (every ``save_every`` steps and each epoch)
    metrics.jsonl/.csv   one row per epoch
    tensorboard/         scalars per step and per epoch
    best.safetensors     the best evaluated weights (the EMA when on), as the task writes them
    last.safetensors     the latest weights (each epoch's, or where max_steps stopped the run)
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from mnasnet.data.datasets import EpochSampler, ShardSampler, make_loader
from mnasnet.engine.checkpoint import (
    CHECKPOINT_NAME,
    capture_rng,
    check_signature,
    load_training_state,
    restore_rng,
    save_training_state,
)
from mnasnet.engine.config import EngineConfig
from mnasnet.engine.distributed import DistributedContext, setup_distributed
from mnasnet.engine.lock import RunLock
from mnasnet.engine.metrics import MetricsWriter
from mnasnet.engine.optim import learning_rate
from mnasnet.engine.signals import stop_on_signals
from mnasnet.engine.step import TrainStep
from mnasnet.engine.task import Task
from mnasnet.errors import CheckpointError, DataError, MnasNetError
from mnasnet.fileio import atomic_write_text

__all__ = ["RunResult", "TrainingDivergedError", "fit"]


class TrainingDivergedError(MnasNetError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


@dataclasses.dataclass
class RunResult:
    run_dir: Path
    status: str  # "completed", "stopped" (max_steps) or "interrupted" (Ctrl-C / SIGTERM)
    epoch: int  # completed epochs
    step: int  # optimizer steps taken
    best: float | None  # the best value of the task's best_metric
    metrics: list[dict[str, Any]]
    checkpoint: Path | None
    model: nn.Module | None = None  # the evaluated/exported weights (the EMA when on)
    train_model: nn.Module | None = None  # the raw trained weights


def fit(task: Task, config: EngineConfig, *, resume: bool = False, progress: bool = True) -> RunResult:
    """Trains ``task`` as ``config`` says, into the run folder ``config.output``.

    Under ``torchrun`` every rank calls this; only rank 0 writes files. Nothing is
    written before the settings, the data, the model and the checkpoint to resume
    have been checked.

    Raises:
        ConfigError: a setting is out of range (a ValueError).
        DataError: the dataset is missing, empty or too small for one batch (or what the task raises).
        CheckpointError: ``resume`` without a readable checkpoint, or one of another model.
        RunLockedError: another run is writing into the same folder.
        TrainingDivergedError: the loss became NaN/inf (the last good checkpoint is kept).
    """
    config.validate()
    run_dir = Path(config.output)
    if run_dir.exists() and not run_dir.is_dir():
        raise MnasNetError(f"--output {run_dir} is a file, not a folder")
    context = setup_distributed(config.device)
    lock = RunLock(run_dir)
    try:
        return _Run(task, config, context, lock, resume=resume, progress=progress).run()
    finally:
        lock.release()
        context.shutdown()


def _on_all_ranks(context: DistributedContext, action) -> None:
    """Runs ``action`` on rank 0; if it raises a user error there, every rank raises it (none is left waiting)."""
    error: MnasNetError | None = None
    if context.is_main:
        try:
            action()
        except MnasNetError as caught:
            error = caught
    if context.any(error is not None):
        raise error or MnasNetError("the main process stopped the run (see its error)")


def _new_running() -> dict[str, Any]:
    return {"loss": 0.0, "seen": 0, "micro": 0, "time": 0.0, "stats": {}}


class _Run:
    def __init__(
        self,
        task: Task,
        config: EngineConfig,
        context: DistributedContext,
        lock: RunLock,
        *,
        resume: bool,
        progress: bool,
    ):
        self.task, self.config, self.context, self.progress = task, config, context, progress
        self.run_dir = Path(config.output)
        self.checkpoint_path = self.run_dir / CHECKPOINT_NAME
        device = context.device
        _on_all_ranks(context, lock.check)
        state = load_training_state(self.checkpoint_path) if resume else None
        if not resume and self.checkpoint_path.exists():
            raise MnasNetError(
                f"{self.run_dir} already holds a run; pass --resume to continue it or choose another --output"
            )

        task.setup(context)
        model = task.build_model()
        if state is not None:
            check_signature(self.checkpoint_path, state.get("signature"), task.signature())
        model.to(device)
        if config.channels_last:
            model.to(memory_format=torch.channels_last)
        self._make_loaders(task.train_dataset(), task.val_dataset())
        self.global_batch = config.batch_size * config.accum_steps * context.world_size
        self.peak_lr = config.lr if config.lr is not None else config.base_lr * self.global_batch / config.base_batch
        self.step = TrainStep(model, task=task, config=config, device=device, context=context)

        self.epoch, self.step_in_epoch, self.best = 0, 0, None
        self.running = _new_running()
        # dropout masks: a different stream per rank
        torch.manual_seed(config.seed * 1000 + context.rank + 1)
        if state is not None:
            self._restore(state)

        # everything is checked: from here on the run folder is ours
        _on_all_ranks(context, lock.acquire)
        self.writer = None
        if context.is_main:
            config_text = yaml.safe_dump({**task.config_dict(), "resolved": self._resolved()}, sort_keys=False)
            atomic_write_text(self.run_dir / "config.yaml", config_text)
            self.writer = MetricsWriter(
                self.run_dir, tensorboard=config.tensorboard, resume_epoch=self.epoch if resume else None
            )

    def _make_loaders(self, train_set, val_set) -> None:
        config, context = self.config, self.context
        self.train_set, self.val_set = train_set, val_set
        self.sampler = EpochSampler(len(train_set), seed=config.seed, rank=context.rank, world_size=context.world_size)
        per_rank = self.sampler.per_rank
        drop_last = per_rank >= config.batch_size
        micro_per_epoch = per_rank // config.batch_size if drop_last else 1
        self.steps_per_epoch = micro_per_epoch // config.accum_steps
        if self.steps_per_epoch == 0:
            raise DataError(
                f"the training set ({len(train_set)} samples over {context.world_size} process(es)) is too "
                f"small for batch {config.batch_size} x {config.accum_steps} accumulation steps"
            )
        options = {
            "workers": config.workers,
            "pin_memory": context.device.type == "cuda",
            "collate_fn": self.task.collate_fn,
        }
        self.train_loader = make_loader(
            train_set, self.sampler, batch_size=config.batch_size, drop_last=drop_last, **options
        )
        val_sampler = ShardSampler(len(val_set), rank=context.rank, world_size=context.world_size)
        self.val_loader = make_loader(val_set, val_sampler, batch_size=config.batch_size, **options)

    def _resolved(self) -> dict[str, Any]:
        return {
            "peak_lr": self.peak_lr,
            "global_batch": self.global_batch,
            "world_size": self.context.world_size,
            "steps_per_epoch": self.steps_per_epoch,
            **self.task.describe(),
            "device": str(self.context.device),
        }

    # -- checkpoints ----------------------------------------------------------------------

    def _layout(self) -> list[int]:
        return [self.context.world_size, self.config.batch_size, self.config.accum_steps]

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
            "best": self.best,
            "rng": gathered,
            "config": self.task.config_dict(),
            "signature": self.task.signature(),
            "layout": self._layout(),
            "reason": reason,
        }
        save_training_state(self.checkpoint_path, state)

    def _restore(self, state: dict[str, Any]) -> None:
        try:
            self.step.load_state_dict(state)
        except (RuntimeError, KeyError, ValueError) as error:
            first = str(error).strip().splitlines()[0]
            raise CheckpointError(f"cannot resume from {self.checkpoint_path}: {first}") from None
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        self.best = state.get("best", state.get("best_top1"))
        self.running = {**_new_running(), **state["running"]}
        layout = self._layout()
        if list(state["layout"]) != layout and self.step_in_epoch:
            print(
                f"warning: resuming with a different processes/batch/accumulation layout {layout} "
                f"(was {list(state['layout'])}); epoch {self.epoch + 1} restarts from its beginning",
                file=sys.stderr,
            )
            self.step_in_epoch = 0
            self.running = _new_running()
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
            info = {"epoch": self.epoch, "step": self.step.step_count, **metrics}
            self.task.save_weights(self.step.eval_model(), self.run_dir / name, info)

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

    def run(self) -> RunResult:
        status = "completed"
        with stop_on_signals() as stop:
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
        if status == "completed" and self.context.is_main:
            self.task.finish(self.run_dir)
        metrics = self.writer.rows if self.writer is not None else []
        return RunResult(
            self.run_dir,
            status,
            self.epoch,
            self.step.step_count,
            self.best,
            list(metrics),
            self.checkpoint_path if self.checkpoint_path.exists() else None,
            model=self.step.eval_model(),
            train_model=self.step.module,
        )

    def _progress_bar(self):
        if not (self.progress and self.context.is_main):
            return None
        from tqdm import tqdm

        return tqdm(
            total=self.steps_per_epoch,
            initial=self.step_in_epoch,
            desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
            file=sys.stderr,
            dynamic_ncols=True,
            leave=False,
        )

    def _train_epoch(self, stop: dict[str, Any]) -> str:
        config, step, task = self.config, self.step, self.task
        accum = config.accum_steps
        self.sampler.set_epoch(self.epoch, start=self.step_in_epoch * accum * config.batch_size)
        step.set_train_mode()
        loader = iter(self.train_loader)
        pending_loss = torch.zeros((), device=self.context.device)
        pending_stats: dict[str, torch.Tensor] = {}
        bar = self._progress_bar()
        started, samples_since = time.perf_counter(), 0
        try:
            while self.step_in_epoch < self.steps_per_epoch:
                micro = [step.prepare(next(loader)) for _ in range(accum)]
                lr = self.lr_at(step.step_count)
                loss_sum, stats = step(micro, lr)
                pending_loss += loss_sum
                for name, value in stats.items():
                    pending_stats[name] = pending_stats[name] + value if name in pending_stats else value
                seen = sum(task.count_samples(batch) for batch in micro)
                self.step_in_epoch += 1
                self.running["seen"] += seen
                self.running["micro"] += accum
                samples_since += seen
                at_log = step.step_count % config.log_every == 0
                at_limit = config.max_steps is not None and step.step_count >= config.max_steps
                at_save = config.save_every > 0 and step.step_count % config.save_every == 0 and not at_limit
                if at_log or at_save or at_limit or self.step_in_epoch == self.steps_per_epoch:
                    # one host sync per log interval: NaN check, progress and TensorBoard
                    self._check_finite(pending_loss)
                    self.running["loss"] += float(pending_loss)
                    totals = self.running["stats"]
                    for name, value in pending_stats.items():
                        totals[name] = totals.get(name, 0) + value.item()
                    pending_loss.zero_()
                    pending_stats.clear()
                    elapsed = time.perf_counter() - started
                    self.running["time"] += elapsed
                    rate = samples_since * self.context.world_size / max(elapsed, 1e-9)
                    started, samples_since = time.perf_counter(), 0
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
                    # mid-epoch, no evaluation wrote weights yet: a run cut short still leaves usable ones
                    self._save_weights("last.safetensors", {})
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
        names = sorted(self.running["stats"])
        running = self.running
        totals = torch.tensor(
            [running["loss"], float(running["seen"]), float(running["micro"]), *(running["stats"][n] for n in names)],
            dtype=torch.float64,
            device=self.context.device,
        )
        self.context.all_reduce_sum(totals)
        loss, seen, micro, *stat_values = totals.tolist()
        epoch_time = running["time"]
        self.epoch += 1
        row: dict[str, Any] = {
            "epoch": self.epoch,
            "step": step.step_count,
            "train_loss": loss / max(micro, 1),
            "lr": self.lr_at(step.step_count),
            "images_per_sec": seen / max(epoch_time, 1e-9),
            "epoch_time": epoch_time,
            **self.task.train_metrics(dict(zip(names, stat_values, strict=True)), int(seen)),
        }
        if self.epoch % config.eval_every == 0 or self.epoch == config.epochs:
            metrics = self.task.validate(step.eval_model(), self.val_loader, step)
            step.set_train_mode()
            row.update(metrics)
            value = metrics[self.task.best_metric]
            better = self.best is None or (value > self.best if self.task.higher_is_better else value < self.best)
            if better:
                self.best = value
                self._save_weights("best.safetensors", metrics)
            self._save_weights("last.safetensors", metrics)
        else:
            self._save_weights("last.safetensors", {})
        self.step_in_epoch = 0
        self.running = _new_running()
        if self.writer is not None:
            self.writer.log_epoch(row)
        self._save("epoch")
