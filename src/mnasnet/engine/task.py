"""What a task supplies to the engine: data, model, loss, validation, weights files."""

from __future__ import annotations

import abc
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import Dataset

from mnasnet.engine.distributed import DistributedContext

if TYPE_CHECKING:
    from mnasnet.engine.step import TrainStep

__all__ = ["Task"]


class Task(abc.ABC):
    """A kind of training (classification, detection, a search proxy): everything but the loop.

    The engine calls, in this order: :meth:`setup` (read and check the data; raise here,
    before the run folder is touched), :meth:`build_model`, :meth:`train_dataset` and
    :meth:`val_dataset`; then per micro-batch :meth:`forward` (under autocast) and
    :meth:`loss`; per evaluation :meth:`validate` and :meth:`save_weights`.
    """

    #: the key of :meth:`validate`'s result that picks ``best.safetensors``
    best_metric: str = "val_loss"
    #: whether a larger ``best_metric`` is better (accuracy, mAP) or a smaller one (a loss)
    higher_is_better: bool = False
    #: how the loaders merge samples into a batch (``None``: PyTorch's default collate)
    collate_fn: Callable[[list[Any]], Any] | None = None

    @abc.abstractmethod
    def setup(self, context: DistributedContext) -> None:
        """Reads and checks the data. Every error a user can cause should be raised here."""

    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """The model to train, on the CPU; the engine moves it. Seed ``torch`` first: every rank must agree."""

    @abc.abstractmethod
    def train_dataset(self) -> Dataset:
        """The training set, indexed by ``(index, seed)``: the seed drives that sample's augmentation."""

    @abc.abstractmethod
    def val_dataset(self) -> Dataset:
        """The validation set, indexed by integers."""

    def forward(self, model: nn.Module, batch: Any) -> Any:
        """The model's output for a batch already on the device; by default ``model(batch[0])``."""
        return model(batch[0])

    @abc.abstractmethod
    def loss(self, output: Any, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The scalar loss to minimise and per-batch statistics to sum over the epoch (e.g. correct predictions).

        A detection task returns the sum of its loss terms and the terms themselves as statistics.
        """

    def count_samples(self, batch: Any) -> int:
        """How many samples a batch holds; by default the length of its first element."""
        return len(batch[0])

    def train_metrics(self, stats: dict[str, float], samples: int) -> dict[str, float]:
        """The epoch's training metrics from the summed statistics; by default each ``train_<name>`` per sample."""
        return {f"train_{name}": value / max(samples, 1) for name, value in stats.items()}

    @abc.abstractmethod
    def validate(self, model: nn.Module, loader: Any, step: TrainStep) -> dict[str, float]:
        """Metrics over this rank's shard of the validation set, reduced over ranks.

        ``step`` gives ``prepare(batch)`` (to the device), ``autocast()`` and
        ``context.all_reduce_sum(tensor)``. Must include :attr:`best_metric`.
        """

    @abc.abstractmethod
    def save_weights(self, model: nn.Module, path: Path, info: dict[str, Any]) -> None:
        """Writes evaluated weights (``best.safetensors`` / ``last.safetensors``) atomically.

        ``info`` holds ``epoch``, ``step`` and the latest validation metrics (none when this epoch was not evaluated).
        """

    @abc.abstractmethod
    def config_dict(self) -> dict[str, Any]:
        """The task's full configuration, saved as ``config.yaml`` and in the checkpoint."""

    def signature(self) -> dict[str, Any]:
        """What a resumed run must share with its checkpoint (architecture, class count...)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """Derived facts worth saving with the configuration (class count, dataset sizes)."""
        return {}

    def finish(self, run_dir: Path) -> None:  # noqa: B027  (an optional hook)
        """Called on the main process after a run completes (e.g. to draw its curves)."""
