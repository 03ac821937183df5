"""The task-agnostic training engine: epochs, exact resume, DDP, AMP, EMA, signals, NaN guard, metrics, run lock.

The engine knows nothing about images or labels. A *task* (:class:`Task`) supplies
what differs between kinds of training; :func:`fit` runs it::

    from mnasnet.engine import EngineConfig, fit
    result = fit(MyTask(...), EngineConfig(output="runs/x", epochs=10, lr=0.01))

What a task supplies (see :class:`Task` for the exact methods):

- ``setup(context)``: read and check the data; every user error should be raised here,
  before the engine writes anything into the run folder.
- ``build_model()``: the ``nn.Module`` to train (seeded: every rank must build the same one).
- ``train_dataset()``: indexed by ``(index, seed)`` pairs; the seed drives that sample's
  augmentation, so a resumed run sees the very same crops. ``val_dataset()``: indexed by int.
  ``collate_fn``: how samples become a batch (detection: images plus a list of box targets).
- ``forward(model, batch)`` (under autocast; default ``model(batch[0])``) and
  ``loss(output, batch) -> (loss, stats)``: the scalar to minimise and per-batch
  statistics the engine sums over the epoch (correct predictions, a detection task's loss
  terms); ``train_metrics(stats, samples)`` turns the sums into the epoch's row.
- ``validate(model, loader, step) -> dict``, with ``best_metric`` (the key that picks
  ``best.safetensors``) and ``higher_is_better`` (accuracy, mAP: True; a loss: False).
- ``save_weights(model, path, info)``: writes ``best``/``last`` weights atomically.
- ``config_dict()`` (saved as ``config.yaml`` and in the checkpoint), ``signature()`` (what a
  resumed run must match: architecture, class count), ``describe()``, ``finish(run_dir)``.

The engine owns the rest: the epoch loop and learning-rate schedule, the optimizer (TF
RMSProp or SGD with the reference's L2 term), gradient accumulation, AMP, EMA, the
resumable checkpoint (an interrupted and resumed run ends bit-identical to an
uninterrupted one), DDP under ``torchrun`` (rank 0 writes, BN buffers broadcast),
Ctrl-C/SIGTERM (save and stop), the NaN guard, the progress bar, ``metrics.jsonl`` and
TensorBoard, and a lock on the run folder (a second run into it is refused).
"""

import importlib
from typing import TYPE_CHECKING, Any

from mnasnet.engine.config import EngineConfig

# Loaded on first use (PEP 562): the command line reads the training settings without PyTorch.
_LAZY = {
    "DistributedContext": "mnasnet.engine.distributed",
    "setup_distributed": "mnasnet.engine.distributed",
    "ModelEma": "mnasnet.engine.ema",
    "RunLock": "mnasnet.engine.lock",
    "RunLockedError": "mnasnet.engine.lock",
    "RunResult": "mnasnet.engine.loop",
    "TrainingDivergedError": "mnasnet.engine.loop",
    "fit": "mnasnet.engine.loop",
    "TrainStep": "mnasnet.engine.step",
    "Task": "mnasnet.engine.task",
}

if TYPE_CHECKING:
    from mnasnet.engine.distributed import DistributedContext, setup_distributed
    from mnasnet.engine.ema import ModelEma
    from mnasnet.engine.lock import RunLock, RunLockedError
    from mnasnet.engine.loop import RunResult, TrainingDivergedError, fit
    from mnasnet.engine.step import TrainStep
    from mnasnet.engine.task import Task


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'mnasnet.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "DistributedContext",
    "EngineConfig",
    "ModelEma",
    "RunLock",
    "RunLockedError",
    "RunResult",
    "Task",
    "TrainStep",
    "TrainingDivergedError",
    "fit",
    "setup_distributed",
]
