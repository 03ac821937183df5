"""Proxy training: each candidate trained briefly through the training engine, scored on a held-out split.

The built-in proxy is the ``photos-search`` dataset (sixteen photographs; 2,560 training and
1,600 validation patches, the validation ones from held-out cells spread over each photo;
:mod:`mnasnet.data.photos_search`) at 64 pixels, 2 epochs of momentum SGD, scored once after
the last epoch: a task where accuracy is far from saturated, so wider networks score higher,
and a resolution where an Ethos-U NPU's estimated latencies differ by a factor of several
across the A1 width family. Trained channels-last (half the step time of the default layout
here), one candidate costs about 15 (A1 x0.35) to 40 (x1.0) CPU-seconds on one thread.

Its weakness is noise. One training's top-1 varies by 4 to 5 points from seed to seed (A1 over six
seeds, mean (std): x0.35 52.2 (4.6), x0.5 57.7 (3.4), x0.75 63.5 (5.5), x1.0 61.9 (5.7)), about as much
as one width step. Changing the schedule did not shrink it (x0.5, six seeds: lr 0.02 std 2.7 but
7 points lower; lr 0.1 9.6; EMA weights 3.2; 4 epochs 4.5; a milder crop without label smoothing
5.5); four times as many, smaller held-out cells steadied x1.0 (2.0) but not x0.5 (4.5), so
the dataset is unchanged. What does shrink it is averaging:
``repeats=N`` trains each candidate under N seeds and scores their mean, dividing the std by about
sqrt(N) at N times the cost. With ``repeats=2`` (three seed pairs each): x0.35 52.1 (3.2), x0.5 58.5
(2.3), x0.75 60.0 (4.1), x1.0 66.7 (0.4).
Rank stability (the ``rank`` stage: the family and four random samples of the space, one seed):
Kendall tau 0.71 (p 0.014) between this proxy and a training twice as long.

A candidate is trained by :func:`train_candidate`: the classification task of
:mod:`mnasnet.tasks.classification`, the model built from a blocks file
(:mod:`mnasnet.search.blocks_file`) exactly as ``mnasnet train --blocks-file`` builds it.

The module also holds the command line's latency targets (:func:`make_backend`) and
:class:`MacsBackend`, an analytic latency for quick searches and tests.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Any

from mnasnet.arch import ARCHS, format_block, parse_arch, scale_blocks
from mnasnet.errors import ConfigError
from mnasnet.limits import MAX_PROXY_REPEATS, MAX_SEED
from mnasnet.search.blocks_file import write_blocks_file
from mnasnet.search.latency import (
    CommandBackend,
    LatencyBackend,
    LatencyError,
    LatencyResult,
    LiteRTBackend,
    LookupTableBackend,
    OnnxRuntimeBackend,
    VelaBackend,
)
from mnasnet.search.space import Candidate

__all__ = [
    "A1_WIDTHS",
    "MacsBackend",
    "ProxySettings",
    "TARGETS",
    "a1_family",
    "candidate_profile",
    "make_backend",
    "train_candidate",
]

A1_WIDTHS = (0.35, 0.5, 0.75, 1.0)
_REPEAT_SEED_STRIDE = 1_000_003  # a repeat's seed: far from every other trial's (theirs differ by the trial id)
TARGETS = ("vela:ACCELERATOR", "litert-int8", "litert-fp32", "onnxruntime", "macs", "table:TARGET", 'command:"..."')


@dataclasses.dataclass
class ProxySettings:
    """How each candidate is trained: the data and a short schedule (defaults: the built-in ``photos-search`` proxy)."""

    data: str = "photos-search"
    epochs: int = 2
    batch_size: int = 32
    lr: float = 0.05
    optimizer: str = "sgd"  # momentum SGD learns fastest in a few epochs (RMSProp stays near chance)
    schedule: str = "cosine"
    warmup_epochs: float = 0.3
    weight_decay: float = 1e-5
    label_smoothing: float = 0.1
    crop_min_area: float = 0.25
    hflip: bool = True
    ema_decay: float = 0.0  # an average of the weights (and BN statistics) scored instead of the last ones
    final_eval_only: bool = True  # score the last epoch only: evaluating the large validation split costs time
    device: str = "auto"  # under Ray, a trial without --gpus-per-trial sees no GPU
    # Trainings per candidate under different seeds, scored by their mean: one short training's
    # seed-to-seed std (about 4 points here) shrinks by sqrt(repeats), at repeats times the cost.
    repeats: int = 1

    def __post_init__(self) -> None:
        repeats = self.repeats
        if isinstance(repeats, bool) or not isinstance(repeats, int) or not 1 <= repeats <= MAX_PROXY_REPEATS:
            raise ConfigError(f"repeats must be an integer from 1 to {MAX_PROXY_REPEATS}, got {repeats!r}")

    def train_config(self, blocks_file: Path, resolution: int, output: Path, seed: int):
        """The :class:`~mnasnet.train.config.TrainConfig` of one proxy training."""
        from mnasnet.train.config import TrainConfig

        return TrainConfig(
            data=self.data,
            blocks_file=str(blocks_file),
            resolution=resolution,
            output=str(output),
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            optimizer=self.optimizer,
            schedule=self.schedule,
            warmup_epochs=self.warmup_epochs,
            weight_decay=self.weight_decay,
            label_smoothing=self.label_smoothing,
            # the digits recipe's choices for small sets: a zero head, fast BN statistics, no dropout
            zero_init_head=True,
            bn_momentum=0.1,
            ema_decay=self.ema_decay,
            dropout=0.0,
            crop_min_area=self.crop_min_area,
            hflip=self.hflip,
            eval_every=self.epochs if self.final_eval_only else 1,
            workers=0,  # a trial is one process: its CPUs are the search's to schedule
            channels_last=True,  # oneDNN's layout: about half the step time of the default one at 64 pixels
            device=self.device,
            seed=seed,
            save_every=0,
            tensorboard=False,
            plot=False,
        ).validate()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProxySettings:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown proxy setting {unknown[0]!r}; use {', '.join(sorted(known))}")
        return cls(**data)


def a1_family(resolution: int, widths: tuple[float, ...] = A1_WIDTHS) -> dict[str, Candidate]:
    """MnasNet-A1 at each width multiplier, as candidates at ``resolution`` (``a1_x0.35``, ...)."""
    family = {}
    for width in widths:
        specs = scale_blocks(parse_arch(ARCHS["a1"].blocks), None if width == 1.0 else width, None)
        blocks = tuple(format_block(spec) for spec in specs)
        family[f"a1_x{width:g}"] = Candidate(blocks=blocks, resolution=resolution, width_multiplier=width)
    return family


def candidate_profile(candidate: Candidate, num_classes: int = 1000) -> dict[str, int]:
    """Parameters and multiply-adds of the candidate with a ``num_classes`` classifier."""
    from mnasnet.profile import profile_model

    model = dataclasses.replace(candidate, num_classes=num_classes).build_model()
    profile = profile_model(model, candidate.resolution)
    return {"params": int(profile.params), "macs": int(profile.macs)}


def train_candidate(candidate: Candidate, trial_dir: Path, proxy: ProxySettings, seed: int) -> dict[str, Any]:
    """Trains ``candidate`` with the proxy schedule into ``trial_dir`` (emptied first: a retried trial starts over).

    With ``proxy.repeats`` > 1 the candidate is trained that many times, under ``seed`` and seeds derived
    from it, into ``train``, ``train-2``, ...; its score is their mean.

    Returns:
        ``accuracy`` (the validation top-1 as a fraction; the mean over repeats), ``accuracies`` (one
        per repeat), ``checkpoint`` (the weights of the best-scoring repeat), ``params`` and ``macs``
        (with the dataset's classifier), ``epochs``, ``seconds`` (all repeats).

    Raises:
        whatever training raises (the driver records it as the trial's failure).
    """
    from mnasnet.profile import profile_model
    from mnasnet.tasks.classification import train

    trial_dir = Path(trial_dir)
    shutil.rmtree(trial_dir, ignore_errors=True)
    trial_dir.mkdir(parents=True)
    blocks_file = write_blocks_file(trial_dir / "arch.blocks", candidate)
    start = time.perf_counter()
    results = []
    for index in range(proxy.repeats):
        output = trial_dir / ("train" if index == 0 else f"train-{index + 1}")
        repeat_seed = (seed + index * _REPEAT_SEED_STRIDE) % (MAX_SEED + 1)
        result = train(proxy.train_config(blocks_file, candidate.resolution, output, repeat_seed), progress=False)
        if result.best_top1 is None:
            raise ConfigError("the proxy training ended before its first evaluation")
        results.append(result)
    seconds = time.perf_counter() - start
    accuracies = [result.best_top1 / 100.0 for result in results]
    best = results[accuracies.index(max(accuracies))]
    profile = profile_model(best.model, candidate.resolution)
    return {
        "accuracy": sum(accuracies) / len(accuracies),
        "accuracies": accuracies,
        "checkpoint": str(best.run_dir / "best.safetensors"),
        "params": int(profile.params),
        "macs": int(profile.macs),
        "epochs": best.epoch,
        "seconds": round(seconds, 3),
    }


# -- latency targets --------------------------------------------------------------------------


class MacsBackend(LatencyBackend):
    """An analytic latency: the candidate's multiply-adds at ``macs_per_ms`` (default 1 GMAC/s).

    Not a device: a stand-in for quick searches, demos and tests where exporting each
    candidate would cost more than training it.
    """

    kind = "macs"

    def __init__(self, macs_per_ms: float = 1e6, *, cache_dir: str | os.PathLike | bool | None = False) -> None:
        if not macs_per_ms > 0:
            raise LatencyError(f"macs_per_ms must be positive, got {macs_per_ms!r}")
        super().__init__(cache_dir=cache_dir)
        self.macs_per_ms = float(macs_per_ms)

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "macs_per_ms": self.macs_per_ms}

    def _measure(self, candidate: Candidate) -> LatencyResult:
        macs = candidate_profile(candidate)["macs"]
        return LatencyResult(ms=macs / self.macs_per_ms, feasible=True, details={"macs": macs})


def make_backend(target: str, *, cache_dir: str | os.PathLike | None = None) -> LatencyBackend:
    """The latency backend a ``--target`` names.

    ``vela:ethos-u65-256`` (any Vela accelerator), ``litert-int8``, ``litert-fp32``,
    ``onnxruntime``, ``macs`` (analytic, 1 GMAC/s), ``table:TARGET`` (per-block lookup
    table filled from TARGET) or ``command:TEMPLATE`` (a shell command with ``{model}``).

    Raises:
        LatencyError: an unknown target or a bad setting.
    """
    if not isinstance(target, str) or not target.strip():
        raise LatencyError(f"a latency target is one of {', '.join(TARGETS)}; got {target!r}")
    kind, _, rest = target.partition(":")
    if kind == "vela":
        if not rest.strip():
            raise LatencyError(f"latency target {target!r} names no accelerator; e.g. vela:ethos-u65-256")
        return VelaBackend(rest, cache_dir=cache_dir)
    if kind == "table" and rest:
        return LookupTableBackend(make_backend(rest, cache_dir=cache_dir))
    if kind == "command" and rest:
        return CommandBackend(rest, cache_dir=cache_dir)
    if not rest:
        if kind in ("litert-int8", "litert-fp32"):
            return LiteRTBackend(int8=kind == "litert-int8", cache_dir=cache_dir)
        if kind == "onnxruntime":
            return OnnxRuntimeBackend(cache_dir=cache_dir)
        if kind == "macs":
            return MacsBackend()
    raise LatencyError(f"unknown latency target {target!r}; choose from {', '.join(TARGETS)}")
