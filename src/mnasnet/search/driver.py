"""The MNAS search driver: our controller proposes, Ray runs proxy trainings and latency measurements.

Ray core, not Ray Tune: the controller lives in this (the driver) process and the
driver decides when it proposes, which is what makes a search exactly resumable
(see :mod:`mnasnet.search.controllers`). Ray schedules the work:

- each trial's proxy training is a remote task (``num_cpus``/``num_gpus`` per trial,
  ``max_retries``: a worker that dies loses only its in-flight trial, which Ray runs again);
- each trial's latency is a separate remote task that may ask for a custom resource
  (``latency_resources={"board": 1}`` runs it only on the node attached to the board);
- ``address=None`` starts Ray embedded in this process, with no set-up; an address
  (``auto``, ``ray://host:10001``) joins an existing cluster.

Scheduling rule: ``parallel`` trials are in flight; each finished trial is observed, in
finishing order, and immediately followed by the next proposal. So proposal ``k`` is
made after ``k - parallel + 1`` observations, whatever happens in between. With
``parallel=1`` a search is a pure function of its settings.

Run folder::

    .lock            held while a search writes the folder (a second one is refused)
    search.json      settings, the space's fingerprint, every proposal made (atomic)
    trials.jsonl     one line per finished trial, appended and fsync'd
    trials/<id>/     each trial's blocks file and proxy training run
    pareto.json      the accuracy-latency front, with block strings
    pareto.png       every trial, the front and the A1 width family
    front/           the front's blocks files and proxy checkpoints
    report.md        settings, counts, the front, the family, how to retrain

``resume=True`` replays the controller from ``trials.jsonl``, re-submits the trials
that were in flight and runs no finished trial again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mnasnet.errors import MnasNetError
from mnasnet.fileio import atomic_write_text
from mnasnet.limits import MAX_SEED, MAX_TRIALS
from mnasnet.search.blocks_file import write_blocks_file
from mnasnet.search.controllers import ControllerError, make_controller, replay
from mnasnet.search.proxy import A1_WIDTHS, ProxySettings, a1_family, make_backend, train_candidate
from mnasnet.search.reward import Reward
from mnasnet.search.space import Candidate, SearchSpace, load_space

__all__ = ["SearchError", "SearchResult", "SearchSettings", "read_trials", "run_search", "search_space"]

TRIALS_NAME = "trials.jsonl"
STATE_NAME = "search.json"
STATE_VERSION = 1
# settings that may change when a search is resumed: they alter no finished trial
_RESUMABLE_CHANGES = ("trials",)


class SearchError(MnasNetError, ValueError):
    """A search setting that cannot work, or a run folder that cannot be resumed as asked."""


@dataclasses.dataclass
class SearchSettings:
    """Everything that defines a search (saved in ``search.json``; a resumed search must match it).

    Args:
        data: the proxy's dataset (a folder or a built-in name); overrides ``proxy.data``.
        space: a built-in space (``a1``, ``mobilenetv2``) or a YAML file.
        resolution: the input size searched (replaces the space's resolutions).
        width_multipliers: replaces the space's width multipliers.
        target: the latency target (see :func:`mnasnet.search.proxy.make_backend`).
        latency_ms: the reward's target latency T.
        reward: ``soft``, ``hard`` or ``tunas``.
        trials: how many candidates to train (the family references come on top).
        controller / controller_options: see :func:`mnasnet.search.controllers.make_controller`.
        seed: fixes the controller's proposals and the trials' training seeds.
        parallel: trials in flight at once.
        reference_widths: the A1 widths trained and measured as reference points (empty: none).
        proxy: the proxy training's settings (:class:`~mnasnet.search.proxy.ProxySettings` fields).
        cpus_per_trial / gpus_per_trial: Ray resources of each proxy training.
        latency_resources: extra Ray resources a latency task needs, e.g. ``{"board": 1}``.
        max_retries: how often Ray re-runs a task whose worker died.
        latency_cache: the latency cache folder (default: the user cache).
    """

    data: str = ProxySettings.data
    space: str = "a1"
    resolution: int | None = 64
    width_multipliers: tuple[float, ...] | None = None
    target: str = "vela:ethos-u65-256"
    latency_ms: float = 1.0
    reward: str = "soft"
    trials: int = 100
    controller: str = "evolution"
    controller_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    seed: int = 0
    parallel: int = 2
    reference_widths: tuple[float, ...] = A1_WIDTHS
    proxy: dict[str, Any] = dataclasses.field(default_factory=dict)
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    latency_resources: dict[str, float] = dataclasses.field(default_factory=dict)
    max_retries: int = 2
    latency_cache: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["reference_widths"] = list(self.reference_widths)
        if self.width_multipliers is not None:
            data["width_multipliers"] = list(self.width_multipliers)
        return data

    def proxy_settings(self) -> ProxySettings:
        return ProxySettings.from_dict({**self.proxy, "data": self.data})

    def check(self, *, local: bool = True, proxy_data: bool = True) -> None:
        """Raises SearchError (or the piece's own error) for the first setting that cannot work.

        Everything that would otherwise fail inside every trial is refused here, before Ray starts or
        the run folder is touched: a missing proxy dataset, a proxy training setting (lr, device,
        batch size) that cannot work, an absurd resolution or seed, a latency cache path that is a
        file. Paths are checked only when ``local`` (an embedded Ray): a cluster's workers may see
        folders this machine does not. ``proxy_data=False`` skips the dataset (a custom trainer may read none).
        """
        from mnasnet.data.datasets import BUILTIN_DATASETS, resolve_dataset
        from mnasnet.limits import MAX_RESOLUTION, check_batch_size

        positive_ints = {"trials": (self.trials, MAX_TRIALS), "parallel": (self.parallel, MAX_TRIALS)}
        for name, (value, limit) in positive_ints.items():
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
                raise SearchError(f"{name} must be an integer from 1 to {limit}, got {value!r}")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise SearchError(f"max_retries must be a non-negative integer, got {self.max_retries!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise SearchError(f"seed must be an integer from 0 to {MAX_SEED}, got {self.seed!r}")
        resources = (self.cpus_per_trial, self.gpus_per_trial)
        if any(
            isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) for v in resources
        ) or not (self.cpus_per_trial > 0 and self.gpus_per_trial >= 0):
            raise SearchError("cpus_per_trial must be positive and gpus_per_trial non-negative (finite numbers)")
        if any(not (isinstance(w, int | float) and w > 0) for w in self.reference_widths):
            raise SearchError(f"reference widths must be positive numbers, got {list(self.reference_widths)}")
        resolution = self.resolution
        if resolution is not None and (
            isinstance(resolution, bool) or not isinstance(resolution, int) or not 32 <= resolution <= MAX_RESOLUTION
        ):
            raise SearchError(f"resolution must be an integer from 32 to {MAX_RESOLUTION}, got {resolution!r}")
        cache = Path(self.latency_cache).expanduser() if isinstance(self.latency_cache, str) else None
        if local and cache is not None and cache.exists() and not cache.is_dir():
            raise SearchError(f"latency cache {self.latency_cache} is a file, not a folder")
        Reward(self.reward, self.latency_ms)
        proxy = self.proxy_settings()
        if local and proxy_data and str(proxy.data) not in BUILTIN_DATASETS:
            resolve_dataset(proxy.data)  # a folder: must exist (built-ins are fetched by the trials)
        check_batch_size(proxy.batch_size, "the proxy's batch_size")
        make_backend(self.target, cache_dir=self.latency_cache)
        space = search_space(self)
        make_controller(self.controller, space, self.seed, **self.controller_options)
        # one candidate's training settings, validated as a trial would build them
        candidate = space.decode([0] * len(space.decisions))
        with tempfile.TemporaryDirectory(prefix="mnasnet-check-") as folder:
            blocks = write_blocks_file(Path(folder) / "check.blocks", candidate)
            proxy.train_config(blocks, candidate.resolution, Path(folder) / "train", self.seed)


def search_space(settings: SearchSettings) -> SearchSpace:
    """The settings' space, with its resolution and widths replaced where the settings give them."""
    space = load_space(settings.space)
    if settings.resolution is None and settings.width_multipliers is None:
        return space
    return SearchSpace(
        space.stages,
        stem_filters=space.stem_filters,
        width_multipliers=settings.width_multipliers or space.width_multipliers,
        resolutions=(settings.resolution,) if settings.resolution else space.resolutions,
        name=space.name,
    )


def _space_fingerprint(space: SearchSpace) -> str:
    text = json.dumps([[d.name, [str(c) for c in d.choices]] for d in space.decisions])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass
class SearchResult:
    run_dir: Path
    trials: list[dict[str, Any]]  # every finished search trial, in finishing order
    references: list[dict[str, Any]]  # the A1 width family
    front: list[dict[str, Any]]
    seconds: float


# -- the run folder ---------------------------------------------------------------------------


def read_trials(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record of ``trials.jsonl`` (search trials and references), skipping a torn last line."""
    path = Path(run_dir) / TRIALS_NAME
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the driver was killed mid-write; that trial was not finished
    return records


def _drop_torn_line(run_dir: Path) -> None:
    """Cuts a last line a killed driver left half-written, so the next record starts on its own line."""
    path = run_dir / TRIALS_NAME
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


def _append_trial(run_dir: Path, record: dict[str, Any]) -> None:
    with (run_dir / TRIALS_NAME).open("a") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


class _State:
    """``search.json``: the settings and every proposal made, rewritten atomically after each proposal."""

    def __init__(self, run_dir: Path, settings: SearchSettings, fingerprint: str) -> None:
        self.path = run_dir / STATE_NAME
        self.settings, self.fingerprint = settings, fingerprint
        self.proposals: list[list[int]] = []

    def save(self) -> None:
        data = {
            "version": STATE_VERSION,
            "settings": self.settings.to_dict(),
            "space_fingerprint": self.fingerprint,
            "proposals": self.proposals,
        }
        atomic_write_text(self.path, json.dumps(data))

    def load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
            saved, fingerprint, proposals = data["settings"], data["space_fingerprint"], data["proposals"]
        except (OSError, ValueError, KeyError, TypeError):
            raise SearchError(f"{self.path} is missing or unreadable: nothing to resume") from None
        current = self.settings.to_dict()
        changed = sorted(
            k for k in set(saved) | set(current) if k not in _RESUMABLE_CHANGES and saved.get(k) != current.get(k)
        )
        if changed:
            details = "; ".join(f"{k}: {saved.get(k)!r} then, {current.get(k)!r} now" for k in changed[:3])
            raise SearchError(f"cannot resume {self.path.parent} with different settings ({details})")
        if fingerprint != self.fingerprint:
            raise SearchError(f"cannot resume {self.path.parent}: the search space file has changed since")
        self.proposals = [list(choices) for choices in proposals]


# -- remote work ----------------------------------------------------------------------------------


def _train_trial(trainer: Callable, candidate: dict, trial_dir: str, proxy: ProxySettings, seed: int, threads: int):
    """One proxy training, in a Ray worker; a failure comes back as a record, never as an exception."""
    import torch

    torch.set_num_threads(max(1, threads))
    started = time.perf_counter()
    try:
        return {"status": "ok", **trainer(Candidate.from_dict(candidate), Path(trial_dir), proxy, seed)}
    except Exception as error:  # NaN, out of memory, a broken candidate: recorded, the search goes on
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return {
            "status": "failed",
            "error": f"{type(error).__name__}: {first}"[:500],
            "seconds": round(time.perf_counter() - started, 3),
        }


def _measure_latency(target: str, cache_dir: str | None, candidate: dict) -> dict[str, Any]:
    """One latency measurement, in a Ray worker (possibly on the node attached to the board)."""
    try:
        result = make_backend(target, cache_dir=cache_dir).measure(Candidate.from_dict(candidate))
    except Exception as error:
        return {"ms": None, "feasible": False, "error": f"{type(error).__name__}: {error}"[:500]}
    return {"ms": result.ms, "feasible": result.feasible, "error": result.error}


def _init_ray(address: str | None, num_cpus: int | None, resources: dict[str, float]) -> bool:
    """Starts (or joins) Ray unless this process already did; True when this call started it."""
    from mnasnet.extras import require

    ray = require("ray")  # one line naming `pip install 'mnasnet[search]'` when missing

    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": False}
    if address is None:
        # embedded, this machine is the board's host: one measurement at a time per resource unit
        options |= {"num_cpus": num_cpus, "resources": {k: float(v) for k, v in resources.items()}}
    try:
        with warnings.catch_warnings():  # its time-out warning would only repeat the error below
            warnings.filterwarnings("ignore", message="Ray Client connection timed out")
            ray.init(address=address, **options)
    except ConnectionError as error:  # Ray's client raises the builtin when the address does not answer
        if address is None:
            raise
        raise SearchError(f"cannot reach the Ray cluster at {address} ({error})") from None
    return True


# -- the driver -------------------------------------------------------------------------------------


class _Driver:
    def __init__(self, settings: SearchSettings, run_dir: Path, trainer: Callable, progress: bool) -> None:
        import ray

        self.ray = ray
        self.settings, self.run_dir, self.trainer, self.progress = settings, run_dir, trainer, progress
        self.space = search_space(settings)
        self.reward = Reward(settings.reward, settings.latency_ms)
        self.failed_reward = -1.0 if settings.reward == "tunas" else 0.0
        self.state = _State(run_dir, settings, _space_fingerprint(self.space))
        self.proxy = settings.proxy_settings()
        self.train_task = ray.remote(_train_trial).options(
            num_cpus=settings.cpus_per_trial, num_gpus=settings.gpus_per_trial, max_retries=settings.max_retries
        )
        self.latency_task = ray.remote(_measure_latency).options(
            num_cpus=1, resources=settings.latency_resources or None, max_retries=settings.max_retries
        )
        self.pending: dict[Any, tuple[str, str]] = {}  # object ref -> (trial key, "train" | "latency")
        self.partial: dict[str, dict[str, Any]] = {}  # trial key -> {"trial": ..., "train": ..., "latency": ...}
        self.finished: list[dict[str, Any]] = []
        self.references: list[dict[str, Any]] = []
        self.started = time.perf_counter()

    # -- bookkeeping -------------------------------------------------------------------------

    def start(self, resume: bool) -> None:
        if resume:
            _drop_torn_line(self.run_dir)
        records = read_trials(self.run_dir)
        if resume:
            self.state.load()
        elif records or self.state.path.exists():
            raise SearchError(f"{self.run_dir} already holds a search; pass --resume to continue it")
        self.finished = [r for r in records if r.get("kind") == "search"]
        self.references = [r for r in records if r.get("kind") == "reference"]
        options = self.settings.controller_options
        observed = [(r["choices"], r["reward"]) for r in self.finished]
        try:
            self.controller = replay(
                self.settings.controller,
                self.space,
                self.settings.seed,
                observed,
                proposals_made=max(len(self.state.proposals), len(observed)),
                **options,
            )
        except ControllerError as error:
            raise SearchError(f"cannot replay {self.run_dir / TRIALS_NAME}: {error}") from None
        done = {r["trial_id"] for r in self.finished}
        for trial_id, choices in enumerate(self.state.proposals):
            if trial_id not in done and trial_id < self.settings.trials:
                self._submit(trial_id, choices)  # in flight when the last driver stopped
        self._submit_references()
        self._top_up()

    def _top_up(self) -> None:
        """Proposes until ``parallel`` trials are in flight (or the budget is spent)."""
        settings = self.settings
        while True:
            made = self.controller.proposals_made
            if made >= settings.trials or made >= len(self.finished) + settings.parallel:
                return
            choices = self.controller.propose()
            self.state.proposals.append([int(c) for c in choices])
            self.state.save()
            self._submit(made, choices)

    def _submit_references(self) -> None:
        done = {r["name"] for r in self.references}
        resolution = self.space.resolutions[0]
        for name, candidate in a1_family(resolution, tuple(self.settings.reference_widths)).items():
            if name not in done:
                self._launch(name, {"kind": "reference", "name": name}, candidate, seed=self.settings.seed)

    def _submit(self, trial_id: int, choices: list[int]) -> None:
        candidate = self.space.decode(list(choices))
        trial = {"kind": "search", "trial_id": trial_id, "choices": [int(c) for c in choices]}
        self._launch(f"{trial_id:05d}", trial, candidate, seed=self.settings.seed * 100_003 + trial_id)

    def _launch(self, key: str, trial: dict[str, Any], candidate: Candidate, *, seed: int) -> None:
        trial = {**trial, "blocks": list(candidate.blocks), "resolution": candidate.resolution}
        trial |= {"width_multiplier": candidate.width_multiplier, "arch_hash": candidate.arch_hash, "seed": seed}
        trial_dir = self.run_dir / "trials" / key
        threads = max(1, int(self.settings.cpus_per_trial))
        data = candidate.to_dict()
        train_ref = self.train_task.remote(self.trainer, data, str(trial_dir), self.proxy, seed, threads)
        latency_ref = self.latency_task.remote(self.settings.target, self.settings.latency_cache, data)
        self.partial[key] = {"trial": trial}
        self.pending[train_ref] = (key, "train")
        self.pending[latency_ref] = (key, "latency")

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        while self.pending:
            ready, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=30.0)
            for ref in ready:
                key, part = self.pending.pop(ref)
                try:
                    value = self.ray.get(ref)
                except self.ray.exceptions.RayError as error:  # the worker died more often than retried
                    name = type(error).__name__
                    value = {
                        "status": "failed",
                        "error": f"{name}: worker lost after {self.settings.max_retries} retries",
                    }
                    if part == "latency":
                        value = {"ms": None, "feasible": False, "error": value["error"]}
                self.partial[key][part] = value
                if "train" in self.partial[key] and "latency" in self.partial[key]:
                    self._finish(key, self.partial.pop(key))

    def _finish(self, key: str, parts: dict[str, Any]) -> None:
        record = self._record(parts)
        _append_trial(self.run_dir, record)
        if record["kind"] == "reference":
            self.references.append(record)
        else:
            self.finished.append(record)
            self.controller.observe(record["choices"], record["reward"])
            self._top_up()
        self._show(record)

    def _record(self, parts: dict[str, Any]) -> dict[str, Any]:
        trial, train, latency = parts["trial"], parts["train"], parts["latency"]
        record = {**trial, "status": train["status"], "accuracy": train.get("accuracy")}
        record |= {"latency_ms": latency["ms"], "feasible": latency["feasible"], "error": train.get("error")}
        record |= {key: train.get(key) for key in ("params", "macs", "epochs", "seconds")}
        if train.get("accuracies") and len(train["accuracies"]) > 1:
            record["accuracies"] = train["accuracies"]
        if train.get("checkpoint"):
            record["checkpoint"] = os.path.relpath(train["checkpoint"], self.run_dir)
        if record["status"] == "ok" and latency["ms"] is None:
            record |= {"status": "failed", "error": f"latency: {latency['error']}"}
        elif record["status"] == "ok" and not latency["feasible"]:
            record["status"] = "infeasible"
        if record["status"] == "ok" and not math.isfinite(record["accuracy"]):
            record |= {"status": "failed", "error": "accuracy is not a finite number"}
        ok = record["status"] == "ok"
        record["reward"] = self.reward(record["accuracy"], latency["ms"]) if ok else self.failed_reward
        record["finished"] = len(self.finished) + len(self.references)
        return record

    def _show(self, record: dict[str, Any]) -> None:
        if not self.progress:
            return
        name = record.get("name") or f"trial {record['trial_id']}"
        done = f"{len(self.finished)}/{self.settings.trials}"
        elapsed = time.perf_counter() - self.started
        if record["status"] == "ok":
            detail = f"acc {record['accuracy']:.3f}  {record['latency_ms']:.3f} ms  reward {record['reward']:.4f}"
        else:
            detail = f"{record['status']}: {record.get('error') or 'latency target not met on device'}"
        best = max((r["reward"] for r in self.finished if r["status"] == "ok"), default=None)
        best_text = f"  best {best:.4f}" if best is not None else ""
        print(f"[{done} {elapsed / 60:5.1f} min] {name}: {detail}{best_text}", file=sys.stderr, flush=True)


def run_search(
    settings: SearchSettings,
    output: str | os.PathLike,
    *,
    resume: bool = False,
    address: str | None = None,
    num_cpus: int | None = None,
    progress: bool = True,
    trainer: Callable | None = None,
) -> SearchResult:
    """Runs (or resumes) a search into the run folder ``output`` and writes its outputs there.

    Args:
        settings: the search (see :class:`SearchSettings`).
        output: the run folder.
        resume: continue the search in ``output``: no finished trial runs again.
        address: a Ray cluster to join; ``None`` starts Ray inside this process.
        num_cpus: the embedded Ray's CPUs (default: the machine's).
        progress: print a line per finished trial.
        trainer: ``trainer(candidate, trial_dir, proxy, seed) -> {"accuracy", ...}`` in place of
            :func:`~mnasnet.search.proxy.train_candidate` (a module-level function Ray workers can import).

    Raises:
        SearchError: a bad setting, a folder that already holds a search (without ``resume``),
            or a resume with other settings.
        RunLockedError: another search is writing into ``output``.
    """
    from mnasnet.engine.lock import RunLock
    from mnasnet.search.report import write_outputs

    settings.check(local=address is None, proxy_data=trainer is None)
    run_dir = Path(output)
    if run_dir.exists() and not run_dir.is_dir():
        raise SearchError(f"--output {run_dir} is a file, not a folder")
    if resume and not (run_dir / STATE_NAME).is_file():
        raise SearchError(f"{run_dir} holds no search to resume ({STATE_NAME} is missing)")
    # Ray first: a cluster that does not answer must not leave an empty run folder behind
    started_ray = _init_ray(address, num_cpus, settings.latency_resources)
    try:
        with RunLock(run_dir):
            driver = _Driver(settings, run_dir, trainer or train_candidate, progress)
            driver.start(resume)
            driver.state.save()
            driver.run()
            front = write_outputs(run_dir)
            seconds = time.perf_counter() - driver.started
            return SearchResult(run_dir, driver.finished, driver.references, front, seconds)
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def run_small_search(
    output: str | os.PathLike,
    *,
    data: str = "digits",
    trials: int = 4,
    target: str = "macs",
    resolution: int = 32,
    width_multiplier: float = 0.35,
    epochs: int = 2,
    controller: str = "evolution",
    reference_widths: tuple[float, ...] = (0.35,),
    num_cpus: int | None = 2,
    progress: bool = False,
) -> SearchResult:
    """The demo's search: a few small candidates (the A1 space at x0.35) on ``digits`` at 32 pixels.

    The latency is the analytic ``macs`` target (exporting each candidate for Vela would
    cost more than training it); the A1 x0.35 reference comes on top of ``trials``.
    """
    settings = SearchSettings(
        data=data,
        resolution=resolution,
        width_multipliers=(width_multiplier,),
        target=target,
        latency_ms=3.0,
        trials=trials,
        controller=controller,
        controller_options={"population_size": 2, "sample_size": 2} if controller == "evolution" else {},
        parallel=2,
        reference_widths=reference_widths,
        proxy={"epochs": epochs, "warmup_epochs": 0.2, "hflip": False},
        max_retries=1,
    )
    return run_search(settings, output, num_cpus=num_cpus, progress=progress)
