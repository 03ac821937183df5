"""Latency of candidate architectures, from several backends behind one cached interface.

Every backend answers :meth:`LatencyBackend.measure` with a :class:`LatencyResult`
and caches it on disk, one JSON line per architecture, in a file named after the
backend's identity (its kind, settings and library versions): a new Vela or LiteRT
version, another accelerator or thread count starts a new file instead of mixing
numbers. Lines are appended whole and a torn last line is skipped, so several
search workers can share one cache folder.

Backends:

* :class:`VelaBackend` — Arm Vela's estimate for an Ethos-U NPU, from the
  candidate's int8 TFLite file (random weights, random calibration images: the
  estimate depends on shapes, not values). Operators Vela leaves to the CPU make
  the candidate infeasible, or add a fixed penalty each.
* :class:`LiteRTBackend`, :class:`OnnxRuntimeBackend` — measured on this machine.
  A reference model is timed interleaved with the candidate, so a shared machine
  that slows down mid-search slows both: the reported latency is the candidate's
  time relative to the reference's, times the reference's calibrated time.
* :class:`LookupTableBackend` — sums per-block latencies measured in isolation by
  another backend (see :func:`measure_error` for how far that is from end to end).
* :class:`CommandBackend` — a user's command (``ssh board benchmark_model
  --graph={model}``) whose output holds the latency.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import re
import shlex
import statistics
import string
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from mnasnet.arch import ARCHS, BlockSpec, format_block, parse_arch, round_filters
from mnasnet.errors import MnasNetError
from mnasnet.fileio import atomic_write_text, cache_dir
from mnasnet.search.space import Candidate, SearchSpace

__all__ = [
    "CandidateExporter",
    "CommandBackend",
    "LatencyBackend",
    "LatencyCache",
    "LatencyError",
    "LatencyResult",
    "LatencyTable",
    "LiteRTBackend",
    "LookupTableBackend",
    "OnnxRuntimeBackend",
    "VelaBackend",
    "measure_error",
    "space_terms",
    "table_terms",
]

log = logging.getLogger(__name__)

FORMATS = ("tflite-int8", "tflite-fp32", "onnx-fp32")
# The default for CommandBackend: the last number followed by "ms" in the output.
DEFAULT_LATENCY_REGEX = r"([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)\s*ms\b"
# A1 at 224, the paper's model: timed beside every candidate to correct for drift.
DEFAULT_REFERENCE = Candidate(blocks=ARCHS["a1"].blocks, resolution=224)


class LatencyError(MnasNetError, ValueError):
    """A latency backend setting that cannot work (unknown format, bad command template, bad regex)."""


@dataclasses.dataclass
class LatencyResult:
    """One measurement.

    Attributes:
        ms: latency in milliseconds (``None`` when the measurement failed).
        feasible: whether the candidate can run as asked (e.g. entirely on the NPU).
        details: what the backend knows besides (raw times, operator counts, ...).
        error: why the measurement failed; failed results are not cached.
        cached: read from the cache rather than measured now (not stored).
    """

    ms: float | None
    feasible: bool
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: str | None = None
    cached: bool = False

    @property
    def failed(self) -> bool:
        return self.error is not None

    def to_dict(self) -> dict[str, Any]:
        return {"ms": self.ms, "feasible": self.feasible, "details": self.details, "error": self.error}


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def _mnasnet_version() -> str:
    import mnasnet

    return mnasnet.__version__


# -- cache ------------------------------------------------------------------------------------


class LatencyCache:
    """JSON lines in ``folder/<backend key>.jsonl``: ``{"arch_hash", "result", "candidate", "identity"}``."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self._loaded: dict[str, dict[str, dict]] = {}

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.jsonl"

    def _records(self, key: str) -> dict[str, dict]:
        if key not in self._loaded:
            records: dict[str, dict] = {}
            path = self._path(key)
            if path.is_file():
                for line in path.read_text().splitlines():
                    try:
                        record = json.loads(line)
                        records[record["arch_hash"]] = record
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue  # a line torn by an interrupted writer
            self._loaded[key] = records
        return self._loaded[key]

    def get(self, key: str, arch_hash: str) -> dict | None:
        return self._records(key).get(arch_hash)

    def put(self, key: str, arch_hash: str, record: dict) -> None:
        record = {"arch_hash": arch_hash, **record}
        self._records(key)[arch_hash] = record
        self.folder.mkdir(parents=True, exist_ok=True)
        # One write of one line in append mode: whole lines even with several writers.
        with self._path(key).open("a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")


# -- exports ----------------------------------------------------------------------------------


class CandidateExporter:
    """Exports candidates (random weights) to TFLite or ONNX files, once per architecture and format.

    Latency does not depend on weight values, so models are freshly initialised and
    int8 files are calibrated on a few random images.
    """

    def __init__(self, workdir: str | os.PathLike | None = None, *, calibration_images: int = 4, seed: int = 0) -> None:
        self._workdir = Path(workdir) if workdir is not None else None
        self.calibration_images = calibration_images
        self.seed = seed

    @property
    def workdir(self) -> Path:
        """The folder of the exported files; without one given, a temporary folder made on first use
        (a backend built only to check the settings leaves no folder behind)."""
        if self._workdir is None:
            self._temp = tempfile.TemporaryDirectory(prefix="mnasnet-search-")
            self._workdir = Path(self._temp.name)
        return self._workdir

    def path(self, candidate: Candidate, fmt: str, pooling: str = "mean") -> Path:
        suffix = "onnx" if fmt.startswith("onnx") else "tflite"
        return self.workdir / f"{candidate.arch_hash[:16]}-{fmt}-{pooling}.{suffix}"

    def export(self, candidate: Candidate, fmt: str, *, pooling: str = "mean") -> Path:
        """The candidate's file in ``fmt`` (``tflite-int8``, ``tflite-fp32``, ``onnx-fp32``)."""
        if fmt not in FORMATS:
            raise LatencyError(f"unknown model format {fmt!r}; choose from {', '.join(FORMATS)}")
        out = self.path(candidate, fmt, pooling)
        if out.is_file():
            return out
        import torch

        from mnasnet.deploy import export_onnx, export_tflite

        with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
            torch.manual_seed(int(candidate.arch_hash[:8], 16) + self.seed)
            model = candidate.build_model().eval()
        if fmt == "onnx-fp32":
            return export_onnx(model, out, batch=1)
        calibration = None
        if fmt == "tflite-int8":
            size = candidate.resolution
            generator = np.random.default_rng(self.seed)
            calibration = generator.standard_normal((self.calibration_images, 3, size, size)).astype(np.float32)
        return export_tflite(model, out, int8=calibration is not None, calibration=calibration, pooling=pooling)


# -- the interface ----------------------------------------------------------------------------


class LatencyBackend:
    """Measures a candidate's latency; results are cached on disk by architecture and backend identity.

    Subclasses set :attr:`kind`, extend :meth:`identity` and implement :meth:`_measure`.

    Args:
        cache_dir: the cache folder (default ``<mnasnet cache>/latency``); ``False`` keeps no cache.
    """

    kind = "backend"

    def __init__(self, *, cache_dir: str | os.PathLike | bool | None = None) -> None:
        if cache_dir is False:
            self.cache = None
        else:
            self.cache = LatencyCache(cache_dir_path(cache_dir))

    def identity(self) -> dict[str, Any]:
        """What a latency from this backend depends on besides the architecture."""
        return {"backend": self.kind}

    @cached_property
    def identity_key(self) -> str:
        text = json.dumps(self.identity(), sort_keys=True)
        return f"{self.kind}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"

    def measure(self, candidate: Candidate) -> LatencyResult:
        """The candidate's latency: from the cache, or measured now (and cached unless it failed)."""
        arch_hash = candidate.arch_hash
        if self.cache is not None:
            record = self.cache.get(self.identity_key, arch_hash)
            if record is not None:
                return LatencyResult(**record["result"], cached=True)
        try:
            result = self._measure(candidate)
        except NotImplementedError:
            raise
        except Exception as error:  # one broken candidate must not end a search of thousands
            log.warning("latency of %s failed: %s", arch_hash[:12], error)
            message = f"{type(error).__name__}: {error}".strip()
            return LatencyResult(ms=None, feasible=False, error=message)
        if self.cache is not None and not result.failed:
            record = {"result": result.to_dict(), "candidate": candidate.to_dict(), "identity": self.identity()}
            self.cache.put(self.identity_key, arch_hash, record)
        return result

    def measure_many(self, candidates: Iterable[Candidate]) -> list[LatencyResult]:
        return [self.measure(candidate) for candidate in candidates]

    def _measure(self, candidate: Candidate) -> LatencyResult:
        raise NotImplementedError


def cache_dir_path(folder: str | os.PathLike | None) -> Path:
    return Path(folder) if folder is not None else cache_dir() / "latency"


# -- Vela -------------------------------------------------------------------------------------

CPU_FALLBACK = ("infeasible", "penalty")


class VelaBackend(LatencyBackend):
    """Vela's estimated inference time on an Ethos-U NPU, from the candidate's int8 TFLite file.

    Args:
        accelerator: ``ethos-u55-128``, ``ethos-u65-256``, ... (Vela's ``--accelerator-config``).
        cpu_fallback: ``"infeasible"`` (default) marks a candidate with operators left to
            the CPU infeasible; ``"penalty"`` keeps it feasible and adds ``penalty_ms``
            per CPU operator (Vela does not time them).
        pooling: global means as ``"avgpool"`` (default, faster on Ethos-U) or ``"mean"``.
    """

    kind = "vela"

    def __init__(
        self,
        accelerator: str = "ethos-u55-128",
        *,
        cpu_fallback: str = "infeasible",
        penalty_ms: float = 1.0,
        pooling: str = "avgpool",
        exporter: CandidateExporter | None = None,
        cache_dir: str | os.PathLike | bool | None = None,
    ) -> None:
        from mnasnet.deploy.npu import ACCELERATORS

        if accelerator not in ACCELERATORS:
            raise LatencyError(f"unknown accelerator {accelerator!r}; choose from {', '.join(ACCELERATORS)}")
        if cpu_fallback not in CPU_FALLBACK:
            raise LatencyError(f"cpu_fallback must be one of {CPU_FALLBACK}, got {cpu_fallback!r}")
        if penalty_ms < 0:
            raise LatencyError(f"penalty_ms must not be negative, got {penalty_ms!r}")
        super().__init__(cache_dir=cache_dir)
        self.accelerator = accelerator
        self.cpu_fallback = cpu_fallback
        self.penalty_ms = penalty_ms
        self.pooling = pooling
        self.exporter = exporter or CandidateExporter()

    def identity(self) -> dict[str, Any]:
        return {
            **super().identity(),
            "accelerator": self.accelerator,
            "vela": _version("ethos-u-vela"),
            "litert-torch": _version("litert-torch"),
            "mnasnet": _mnasnet_version(),
            "pooling": self.pooling,
            "cpu_fallback": self.cpu_fallback,
            "penalty_ms": self.penalty_ms if self.cpu_fallback == "penalty" else None,
        }

    def _measure(self, candidate: Candidate) -> LatencyResult:
        from mnasnet.deploy.npu import vela_report

        path = self.exporter.export(candidate, "tflite-int8", pooling=self.pooling)
        report = vela_report(path, self.accelerator)
        return self.result_from_report(report)

    def result_from_report(self, report) -> LatencyResult:
        """Applies the CPU-fallback policy to a :class:`~mnasnet.deploy.npu.NpuReport`."""
        details = {
            "npu_ms": report.inference_time_ms,
            "cpu_operators": report.cpu_operators,
            "npu_operators": report.npu_operators,
            "cpu_fallback": sorted({op for op, _, _ in report.cpu_fallback}),
            "macs": report.macs,
            "sram_kib": report.sram_kib,
            "dram_kib": report.dram_kib,
            "system_config": report.system_config,
        }
        if report.inference_time_ms is None:
            return LatencyResult(ms=None, feasible=False, details=details, error="Vela wrote no time estimate")
        ms = report.inference_time_ms
        if report.cpu_operators and self.cpu_fallback == "penalty":
            return LatencyResult(ms=ms + self.penalty_ms * report.cpu_operators, feasible=True, details=details)
        return LatencyResult(ms=ms, feasible=report.cpu_operators == 0, details=details)


# -- runtimes on this machine -----------------------------------------------------------------


def _interleaved(
    run: Callable[[], Any], reference: Callable[[], Any] | None, *, warmup: int, repeats: int
) -> tuple[list[float], list[float]]:
    """Times ``run`` and ``reference`` alternately, so both see the same machine load."""
    for _ in range(warmup):
        run()
        if reference is not None:
            reference()
    times, reference_times = [], []
    for _ in range(repeats):
        begin = time.perf_counter()
        run()
        times.append(time.perf_counter() - begin)
        if reference is not None:
            begin = time.perf_counter()
            reference()
            reference_times.append(time.perf_counter() - begin)
    return times, reference_times


class _RuntimeBackend(LatencyBackend):
    """Median batch-1 latency on this machine, corrected for drift by an interleaved reference model."""

    fmt = "tflite-fp32"
    runtime_package = ""

    def __init__(
        self,
        *,
        threads: int = 1,
        warmup: int = 5,
        repeats: int = 20,
        reference: Candidate | None = DEFAULT_REFERENCE,
        reference_repeats: int = 50,
        exporter: CandidateExporter | None = None,
        cache_dir: str | os.PathLike | bool | None = None,
    ) -> None:
        if threads < 1 or warmup < 0 or repeats < 1:
            raise LatencyError(f"need threads >= 1, warmup >= 0, repeats >= 1; got {threads}, {warmup}, {repeats}")
        super().__init__(cache_dir=cache_dir)
        self.threads, self.warmup, self.repeats = threads, warmup, repeats
        self.reference = reference
        self.reference_repeats = reference_repeats
        self.exporter = exporter or CandidateExporter()
        self._reference_run: Callable[[], Any] | None = None
        self._reference_ms: float | None = None

    def identity(self) -> dict[str, Any]:
        from mnasnet.deploy.benchmark import device_name

        return {
            **super().identity(),
            "format": self.fmt,
            "runtime": f"{self.runtime_package} {_version(self.runtime_package)}",
            "threads": self.threads,
            "device": device_name(),
            "mnasnet": _mnasnet_version(),
            "reference": self.reference.arch_hash if self.reference is not None else None,
        }

    def _runner(self, path: Path) -> Callable[[], Any]:
        raise NotImplementedError

    def reference_ms(self) -> float | None:
        """The reference model's calibrated latency: measured once per cache, then reused."""
        if self.reference is None:
            return None
        if self._reference_ms is None:
            key = f"reference:{self.reference.arch_hash}"
            record = self.cache.get(self.identity_key, key) if self.cache is not None else None
            if record is not None:
                self._reference_ms = float(record["result"]["ms"])
            else:
                # Timed beside a second copy of itself: the same alternating regime as a measurement.
                twin = self._runner(self.exporter.export(self.reference, self.fmt))
                times, _ = _interleaved(
                    self._reference_runner(), twin, warmup=self.warmup, repeats=self.reference_repeats
                )
                self._reference_ms = statistics.median(times) * 1000
                if self.cache is not None:
                    result = LatencyResult(ms=self._reference_ms, feasible=True, details={"role": "reference"})
                    self.cache.put(
                        self.identity_key,
                        key,
                        {
                            "result": result.to_dict(),
                            "candidate": self.reference.to_dict(),
                            "identity": self.identity(),
                        },
                    )
        return self._reference_ms

    def _reference_runner(self) -> Callable[[], Any]:
        if self._reference_run is None:
            self._reference_run = self._runner(self.exporter.export(self.reference, self.fmt))
        return self._reference_run

    def _measure(self, candidate: Candidate) -> LatencyResult:
        run = self._runner(self.exporter.export(candidate, self.fmt))
        calibrated = self.reference_ms()
        reference = self._reference_runner() if self.reference is not None else None
        times, reference_times = _interleaved(run, reference, warmup=self.warmup, repeats=self.repeats)
        raw_ms = statistics.median(times) * 1000
        details: dict[str, Any] = {"raw_ms": raw_ms, "repeats": self.repeats, "threads": self.threads}
        if reference is None:
            return LatencyResult(ms=raw_ms, feasible=True, details=details)
        reference_now = statistics.median(reference_times) * 1000
        details |= {"reference_ms": reference_now, "reference_calibrated_ms": calibrated}
        return LatencyResult(ms=raw_ms / reference_now * calibrated, feasible=True, details=details)


class LiteRTBackend(_RuntimeBackend):
    """Batch-1 latency of the candidate's TFLite file (int8 or fp32) with LiteRT (XNNPACK) on this CPU.

    Args:
        int8: the full-integer file (default) or the float32 one.
        threads: LiteRT's thread count.
        warmup / repeats: untimed and timed runs; the median is reported.
        reference: timed interleaved with every candidate (``None``: report raw times).
    """

    kind = "litert"
    runtime_package = "ai-edge-litert"

    def __init__(self, *, int8: bool = True, **options: Any) -> None:
        self.fmt = "tflite-int8" if int8 else "tflite-fp32"
        super().__init__(**options)

    def _runner(self, path: Path) -> Callable[[], Any]:
        from mnasnet.deploy.runtimes import LiteRTPredictor

        predictor = LiteRTPredictor(path, threads=self.threads)
        interpreter, details = predictor.interpreter, predictor.input
        data = np.zeros(details["shape"], dtype=details["dtype"])
        interpreter.set_tensor(details["index"], data)
        return interpreter.invoke


class OnnxRuntimeBackend(_RuntimeBackend):
    """Batch-1 latency of the candidate's float32 ONNX file with ONNX Runtime on this CPU (see LiteRTBackend)."""

    kind = "onnxruntime"
    runtime_package = "onnxruntime"
    fmt = "onnx-fp32"

    def _runner(self, path: Path) -> Callable[[], Any]:
        from mnasnet.deploy.runtimes import OnnxPredictor

        predictor = OnnxPredictor(path, threads=self.threads)
        shape = predictor.session.get_inputs()[0].shape
        feed = {predictor.input_name: np.zeros([int(d) for d in shape], dtype=np.float32)}
        session = predictor.session
        return lambda: session.run(None, feed)


# -- a user's command ---------------------------------------------------------------------------


class CommandBackend(LatencyBackend):
    """Runs a user's command on the candidate's exported file and reads the latency from its output.

    ``template`` is a shell command with ``{model}`` (the file's path, shell-quoted)
    and optionally ``{threads}``; literal braces are doubled (``{{``). The latency is
    the last match of ``regex`` in the command's stdout, its first group, times
    ``scale`` (e.g. 0.001 when the tool prints microseconds). The default regex takes
    the last number followed by ``ms``. A command that fails, times out or prints no
    latency gives a failed result carrying its stderr tail; it is not cached.

    Args:
        fmt: the file to hand over: ``tflite-int8`` (default), ``tflite-fp32`` or ``onnx-fp32``.
        tag: a name for the device (a board's name and firmware): part of the cache identity.
    """

    kind = "command"

    def __init__(
        self,
        template: str,
        *,
        fmt: str = "tflite-int8",
        threads: int = 1,
        regex: str = DEFAULT_LATENCY_REGEX,
        scale: float = 1.0,
        timeout_s: float = 300.0,
        tag: str = "",
        exporter: CandidateExporter | None = None,
        cache_dir: str | os.PathLike | bool | None = None,
    ) -> None:
        fields = self._fields(template)
        if "model" not in fields:
            raise LatencyError(f"the command template needs {{model}}, got {template!r}")
        unknown = sorted(fields - {"model", "threads"})
        if unknown:
            raise LatencyError(
                f"unknown field {{{unknown[0]}}} in command template {template!r} (use {{model}}, {{threads}})"
            )
        try:
            pattern = re.compile(regex)
        except re.error as error:
            raise LatencyError(f"bad latency regex {regex!r}: {error}") from None
        if pattern.groups < 1:
            raise LatencyError(f"the latency regex needs a group around the number, got {regex!r}")
        if fmt not in FORMATS:
            raise LatencyError(f"unknown model format {fmt!r}; choose from {', '.join(FORMATS)}")
        if timeout_s <= 0 or scale <= 0:
            raise LatencyError(f"timeout_s and scale must be positive, got {timeout_s!r} and {scale!r}")
        try:
            shlex.split(template)  # the shell would fail on every candidate; say so once, now
        except ValueError as error:
            raise LatencyError(f"bad command template {template!r}: {error}") from None
        super().__init__(cache_dir=cache_dir)
        self.template, self.fmt, self.threads = template, fmt, threads
        self.pattern, self.scale, self.timeout_s, self.tag = pattern, scale, timeout_s, tag
        self.exporter = exporter or CandidateExporter()

    @staticmethod
    def _fields(template: str) -> set[str]:
        try:
            return {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
        except ValueError as error:
            raise LatencyError(f"bad command template {template!r}: {error}") from None

    def identity(self) -> dict[str, Any]:
        return {
            **super().identity(),
            "template": self.template,
            "format": self.fmt,
            "threads": self.threads,
            "regex": self.pattern.pattern,
            "scale": self.scale,
            "tag": self.tag,
            "mnasnet": _mnasnet_version(),
        }

    def command(self, path: Path) -> str:
        return self.template.format(model=shlex.quote(str(path)), threads=self.threads)

    def _measure(self, candidate: Candidate) -> LatencyResult:
        command = self.command(self.exporter.export(candidate, self.fmt))
        details: dict[str, Any] = {"command": command}
        try:
            result = subprocess.run(
                command, shell=True, capture_output=True, text=True, timeout=self.timeout_s, check=False
            )
        except subprocess.TimeoutExpired as expired:
            stderr = expired.stderr.decode(errors="replace") if isinstance(expired.stderr, bytes) else expired.stderr
            return self._failed(f"timed out after {self.timeout_s:g} s", stderr or "", details)
        details["returncode"] = result.returncode
        if result.returncode != 0:
            return self._failed(f"command exited with status {result.returncode}", result.stderr, details)
        matches = self.pattern.findall(result.stdout)
        if not matches:
            tail = _tail(result.stdout)
            return self._failed(f"no latency matching {self.pattern.pattern!r} in the output: {tail}", "", details)
        last = matches[-1]
        value = float(last[0] if isinstance(last, tuple) else last) * self.scale
        details["stdout_tail"] = _tail(result.stdout, 500)
        return LatencyResult(ms=value, feasible=True, details=details)

    @staticmethod
    def _failed(reason: str, stderr: str, details: dict[str, Any]) -> LatencyResult:
        tail = _tail(stderr)
        details["stderr_tail"] = tail
        return LatencyResult(ms=None, feasible=False, details=details, error=f"{reason}: {tail}" if tail else reason)


def _tail(text: str, limit: int = 2000) -> str:
    text = (text or "").strip()
    return text[-limit:]


# -- per-block lookup table -----------------------------------------------------------------------

# The probes' head: small, so that it costs little; whatever it costs cancels out (see table_terms).
_PROBE_HEAD, _PROBE_CLASSES = 8, 8
_MIN_PROBE_RESOLUTION = 8  # the smallest input MnasNetConfig accepts


def _spatial(size: int, stride: int) -> int:
    return -(-size // stride)  # "same" padding: ceil(size / stride)


def _block_key(spec: BlockSpec) -> str:
    """One block (repeats 1), its skip token kept only where a skip is possible."""
    can_skip = spec.strides == (1, 1) and spec.input_filters == spec.output_filters
    return format_block(dataclasses.replace(spec, repeats=1, id_skip=spec.id_skip or not can_skip))


def _probe(stem: int, resolution: int, blocks: Sequence[str] = (), *, passes: int = 1, real_head: bool = False):
    """A stem of ``stem`` filters, ``passes`` pass-through blocks, then ``blocks`` and a head.

    A model needs at least one block, so every probe starts with a cheap 1x1 depthwise
    block that keeps the channels (the pass-through); it cancels out of every difference.
    """
    passthrough = f"r1_k1_s11_e1_i{stem}_o{stem}_noskip"
    head = (1280, 1000) if real_head else (_PROBE_HEAD, _PROBE_CLASSES)
    return Candidate(
        blocks=(passthrough,) * passes + tuple(blocks),
        resolution=resolution,
        stem_filters=stem,
        head_filters=head[0],
        num_classes=head[1],
    )


Term = tuple[str, list[tuple[int, Candidate]]]


def _stem_term(stem: int, resolution: int) -> Term:
    probes = [(2, _probe(stem, resolution)), (-1, _probe(stem, resolution, passes=2))]
    return f"stem:{stem}@{resolution}", probes


def _block_term(block: BlockSpec, size: int) -> Term:
    key = _block_key(block)
    # the probe's stem turns a 2S x 2S input into the block's S x S input
    channels = block.input_filters
    return f"block:{key}@{size}", [(1, _probe(channels, 2 * size, [key])), (-1, _probe(channels, 2 * size))]


def _head_term(channels: int, size: int, resolution: int) -> Term:
    if 2 * size < _MIN_PROBE_RESOLUTION:
        raise LatencyError(
            f"resolution {resolution} is too small for a lookup table: the last stage's {size}x{size} maps "
            f"need probes of at least {_MIN_PROBE_RESOLUTION} pixels"
        )
    probes = [(1, _probe(channels, 2 * size, real_head=True)), (-1, _probe(channels, 2 * size))]
    return f"head:{channels}@{size}", probes


def table_terms(candidate: Candidate) -> list[Term]:
    """The terms a candidate's latency is summed from, each as signed probe networks.

    With P(...) a probe network (stem, pass-through block X, ..., small head h):
    ``stem`` is 2 P(stem, X, h) - P(stem, X, X, h) = stem + h; a block B with C input
    channels at size S is P(C at S, X, B, h) - P(C at S, X, h); ``head`` is the real head
    and classifier minus h. X cancels in each term and the small heads telescope away, so
    for a cost that adds up over layers (multiply-adds, a per-call overhead) the sum is exact.
    """
    if candidate.stem_filters is not None or (candidate.head_filters, candidate.num_classes) != (1280, 1000):
        raise LatencyError("a lookup table sums searched candidates, not probes")
    terms = [_stem_term(candidate.stem, candidate.resolution)]
    size = _spatial(candidate.resolution, 2)
    for spec in parse_arch(candidate.blocks):
        first = dataclasses.replace(spec, repeats=1)
        rest = dataclasses.replace(first, input_filters=spec.output_filters, strides=(1, 1))
        for block in [first] + [rest] * (spec.repeats - 1):
            terms.append(_block_term(block, size))
            size = _spatial(size, block.stride)
    terms.append(_head_term(parse_arch(candidate.blocks)[-1].output_filters, size, candidate.resolution))
    return terms


def space_terms(space: SearchSpace) -> dict[str, list[tuple[int, Candidate]]]:
    """Every distinct term of every candidate of ``space``: what a complete table holds."""
    terms: dict[str, list[tuple[int, Candidate]]] = {}
    for width, resolution in itertools.product(space.width_multipliers, space.resolutions):
        scale = None if width == 1.0 else width
        stem = round_filters(space.stem_filters, scale)
        terms.update([_stem_term(stem, resolution)])
        inputs, size = {stem}, _spatial(resolution, 2)
        for stage in space.stages:
            outputs = {round_filters(filters, scale) for filters in stage.filter_choices()}
            layers = stage.repeats + max(stage.layer_choices())
            options = itertools.product(
                inputs, outputs, stage.expand_ratio, stage.kernel_size, stage.se_ratio, stage.skip
            )
            for channels, filters, expand, kernel, se, skip in options:
                first = BlockSpec(
                    1, kernel, (stage.stride,) * 2, expand, channels, filters, se or None, skip == "identity"
                )
                terms.update([_block_term(first, size)])
                if layers > 1:
                    rest = dataclasses.replace(first, strides=(1, 1), input_filters=filters)
                    terms.update([_block_term(rest, _spatial(size, stage.stride))])
            inputs, size = outputs, _spatial(size, stage.stride)
        terms.update(_head_term(channels, size, resolution) for channels in inputs)
    return terms


@dataclasses.dataclass
class LatencyTable:
    """Per-term latencies (``stem:``, ``block:``, ``head:`` keys, in ms) measured by one backend."""

    identity: dict[str, Any]
    entries: dict[str, float] = dataclasses.field(default_factory=dict)
    feasible: dict[str, bool] = dataclasses.field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True))

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyTable:
        try:
            data = json.loads(Path(path).read_text())
            return cls(identity=data["identity"], entries=data["entries"], feasible=data["feasible"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise LatencyError(f"{path} is not a latency table ({error})") from None


class LookupTableBackend(LatencyBackend):
    """Sums per-block latencies measured in isolation by ``source`` (a fixed stem/head term included).

    Terms missing from the table are measured on demand (and cached by ``source``),
    so a table fills up as the search visits new blocks; :meth:`fill` measures every
    term of a list of candidates up front.
    """

    kind = "lookup-table"

    def __init__(
        self,
        source: LatencyBackend,
        table: LatencyTable | None = None,
        *,
        cache_dir: str | os.PathLike | bool | None = False,
    ) -> None:
        super().__init__(cache_dir=cache_dir)
        self.source = source
        self.table = table or LatencyTable(identity=source.identity())
        if self.table.identity != source.identity():
            raise LatencyError("the lookup table was measured by another backend (its identity differs)")

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "source": self.source.identity()}

    def _term(self, key: str, probes: list[tuple[int, Candidate]]) -> float:
        if key not in self.table.entries:
            total, feasible = 0.0, True
            for sign, probe in probes:
                result = self.source.measure(probe)
                if result.failed:
                    raise LatencyError(f"probe for {key} failed: {result.error}")
                total += sign * result.ms
                feasible = feasible and result.feasible
            self.table.entries[key] = total
            self.table.feasible[key] = feasible
        return self.table.entries[key]

    def fill(self, candidates: Iterable[Candidate] | SearchSpace) -> LatencyTable:
        """Measures every term of ``candidates``, or of every candidate of a search space."""
        if isinstance(candidates, SearchSpace):
            terms = space_terms(candidates)
        else:
            terms = dict(term for candidate in candidates for term in table_terms(candidate))
        for key, probes in terms.items():
            self._term(key, probes)
        return self.table

    def _measure(self, candidate: Candidate) -> LatencyResult:
        terms = table_terms(candidate)
        ms = sum(self._term(key, probes) for key, probes in terms)
        feasible = all(self.table.feasible[key] for key, _ in terms)
        return LatencyResult(ms=ms, feasible=feasible, details={"terms": len(terms)})


def measure_error(
    table: LookupTableBackend, backend: LatencyBackend, candidates: Sequence[Candidate]
) -> dict[str, Any]:
    """How far the table's sums are from end-to-end measurement: mean and max relative error.

    Returns:
        ``{"mean": ..., "max": ..., "rows": [{"arch_hash", "table_ms", "measured_ms", "error"}]}``
        where error is ``table_ms / measured_ms - 1``; failed measurements are left out.
    """
    rows = []
    for candidate in candidates:
        predicted, measured = table.measure(candidate), backend.measure(candidate)
        if predicted.failed or measured.failed:
            continue
        rows.append(
            {
                "arch_hash": candidate.arch_hash,
                "table_ms": predicted.ms,
                "measured_ms": measured.ms,
                "error": predicted.ms / measured.ms - 1.0,
            }
        )
    if not rows:
        raise LatencyError("no candidate could be measured both ways")
    errors = [abs(row["error"]) for row in rows]
    return {"mean": float(np.mean(errors)), "max": float(max(errors)), "rows": rows}
