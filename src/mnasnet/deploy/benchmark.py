"""Latency and throughput of one model on every runtime, with the context that makes numbers comparable.

Every row records the device, the thread count and the library versions it was
measured with; batch-1 rows give median and p90 latency, larger batches give
throughput (images per second, from the median batch time).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnasnet.deploy.common import open_model
from mnasnet.deploy.quantize import DeployError
from mnasnet.extras import require
from mnasnet.limits import check_batch_size
from mnasnet.model import MnasNet
from mnasnet.runtime import Predictor, TorchPredictor

__all__ = ["RUNTIMES", "BenchmarkRow", "benchmark", "environment", "format_table", "time_predictor"]

RUNTIMES = ("pytorch", "onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8")
# Published top-1 of MnasNet-A1 by width at 224 (the MnasNet paper and the tensorflow/tpu MnasNet README).
PUBLISHED_A1_TOP1 = {0.35: 64.1, 0.5: 68.9, 0.75: 73.3, 1.0: 75.2, 1.4: 77.2}


@dataclasses.dataclass
class BenchmarkRow:
    runtime: str
    batch: int
    median_ms: float
    p90_ms: float
    images_per_s: float
    threads: int
    device: str
    versions: dict[str, str]
    model: str
    repeats: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def device_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def environment() -> dict[str, str]:
    """Library versions a latency depends on (those that are installed)."""
    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for module, name in (("onnxruntime", "onnxruntime"), ("ai_edge_litert", "ai-edge-litert")):
        try:
            from importlib.metadata import version

            versions[name] = version(name) if name != "onnxruntime" else __import__(module).__version__
        except Exception:  # not installed: leave it out
            continue
    return versions


def time_predictor(run: Callable[[], Any], *, repeats: int, warmup: int, min_seconds: float = 0.0) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``run`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - started < min_seconds:
        begin = time.perf_counter()
        run()
        times.append(time.perf_counter() - begin)
    return times


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def measure(
    predictor: Predictor, runtime: str, batch: int, *, threads: int, repeats: int, warmup: int, model_name: str,
    versions: dict[str, str], device: str, resolution: int,
) -> BenchmarkRow:  # fmt: skip
    images = np.random.default_rng(0).standard_normal((batch, 3, resolution, resolution)).astype(np.float32)
    times = time_predictor(lambda: predictor.predict_logits(images), repeats=repeats, warmup=warmup)
    median = statistics.median(times)
    return BenchmarkRow(
        runtime=runtime,
        batch=batch,
        median_ms=median * 1000,
        p90_ms=_percentile(times, 90) * 1000,
        images_per_s=batch / median,
        threads=threads,
        device=device,
        versions=versions,
        model=model_name,
        repeats=len(times),
    )


def build_predictor(runtime: str, model: MnasNet, workdir: Path, *, threads: int, calibration, batch: int) -> Predictor:
    """A predictor for ``runtime`` (exporting ``model`` into ``workdir`` when needed)."""
    from mnasnet.deploy.export_onnx import export_onnx
    from mnasnet.deploy.export_tflite import export_tflite
    from mnasnet.deploy.runtimes import LiteRTPredictor, OnnxPredictor

    if runtime == "pytorch":
        torch.set_num_threads(threads)
        return TorchPredictor(model)
    fmt, precision = runtime.split("-")
    int8 = precision == "int8"
    path = workdir / f"{runtime}-b{batch}.{'onnx' if fmt == 'onnx' else 'tflite'}"
    if not path.exists():
        if fmt == "onnx":
            export_onnx(model, path, int8=int8, calibration=calibration if int8 else None, batch="dynamic")
        else:
            export_tflite(model, path, int8=int8, calibration=calibration if int8 else None, batch=batch)
    return OnnxPredictor(path, threads=threads) if fmt == "onnx" else LiteRTPredictor(path, threads=threads)


def benchmark(
    weights: str | os.PathLike | MnasNet,
    *,
    runtimes: Sequence[str] = RUNTIMES,
    threads: int = 2,
    batches: Sequence[int] = (1, 32),
    calibration: str | os.PathLike | np.ndarray | None = "digits",
    repeats: int = 30,
    warmup: int = 5,
    workdir: str | os.PathLike | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[BenchmarkRow]:
    """Measures ``weights`` (a model, checkpoint, registry name, or an exported file) on each runtime.

    Exported files are benchmarked only on their own runtime. Batches above 1 run
    ``max(3, repeats // 4)`` times (each is already many images).

    Raises:
        DeployError: an unknown runtime.
    """
    unknown = [name for name in runtimes if name not in RUNTIMES]
    if unknown:
        raise DeployError(f"unknown runtime {unknown[0]!r}; choose from {', '.join(RUNTIMES)}")
    batches = [check_batch_size(batch) for batch in batches]
    if not batches:
        raise DeployError("give at least one batch size")
    device, versions = device_name(), environment()
    rows = []
    suffix = Path(str(weights)).suffix.lower() if not isinstance(weights, MnasNet) else ""
    if suffix in (".onnx", ".tflite"):
        from mnasnet.deploy.runtimes import LiteRTPredictor, OnnxPredictor

        cls = OnnxPredictor if suffix == ".onnx" else LiteRTPredictor
        predictor = cls(weights, threads=threads)
        for batch in batches:
            rows.append(
                measure(predictor, predictor.name, batch, threads=threads, repeats=_repeats(repeats, batch),
                        warmup=warmup, model_name=Path(weights).name, versions=versions, device=device,
                        resolution=predictor.preprocess.resolution)
            )  # fmt: skip
        return rows
    model = open_model(weights)
    name = model_label(model)
    with tempfile.TemporaryDirectory(prefix="mnasnet-bench-") as temp:
        folder = Path(workdir) if workdir is not None else Path(temp)
        folder.mkdir(parents=True, exist_ok=True)
        for runtime in runtimes:
            for batch in batches:
                if progress:
                    progress(f"{runtime} batch {batch}")
                # TFLite files are exported at batch 1 and resized by the predictor
                file_batch = 1 if runtime.startswith("tflite") else batch
                predictor = build_predictor(
                    runtime, model, folder, threads=threads, calibration=calibration, batch=file_batch
                )
                rows.append(
                    measure(predictor, runtime, batch, threads=threads, repeats=_repeats(repeats, batch),
                            warmup=warmup if batch == 1 else 1, model_name=name, versions=versions, device=device,
                            resolution=model.config.resolution)
                )  # fmt: skip
    return rows


def _repeats(repeats: int, batch: int) -> int:
    # a large batch is already many images per timed run
    return repeats if batch == 1 else max(3, repeats // 4)


def model_label(model: MnasNet) -> str:
    config = model.config
    width = f" x{config.width_multiplier:g}" if config.width_multiplier else ""
    return f"{config.arch or 'custom'}{width} @{config.resolution}"


def format_table(rows: Sequence[BenchmarkRow]) -> str:
    """A plain-text table, one row per runtime and batch, then the shared context."""
    header = f"{'runtime':<14} {'batch':>5} {'median ms':>10} {'p90 ms':>9} {'images/s':>9}"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row.runtime:<14} {row.batch:>5} {row.median_ms:>10.2f} {row.p90_ms:>9.2f} {row.images_per_s:>9.1f}"
        )
    if rows:
        first = rows[0]
        versions = ", ".join(f"{key} {value}" for key, value in first.versions.items())
        lines.append(f"model {first.model}; {first.threads} threads on {first.device}; {versions}")
    return "\n".join(lines)


def plot_latency_accuracy(
    widths: Sequence[float],
    out: str | os.PathLike,
    *,
    runtimes: Sequence[str] = ("pytorch", "tflite-int8"),
    threads: int = 2,
    resolution: int = 224,
    calibration="digits",
    repeats: int = 20,
) -> list[dict[str, Any]]:
    """Batch-1 latency of MnasNet-A1 at each width against its published top-1, drawn to ``out`` (PNG).

    Latency does not depend on the weight values, so each width is a freshly built
    model; accuracy is the published figure for that width.
    """
    matplotlib = require("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mnasnet.fileio import atomic_path
    from mnasnet.model import create_model

    missing = [width for width in widths if width not in PUBLISHED_A1_TOP1]
    if missing:
        raise DeployError(f"no published accuracy for width {missing[0]}; choose from {sorted(PUBLISHED_A1_TOP1)}")
    points = []
    for width in widths:
        model = create_model("a1", width_multiplier=width, resolution=resolution).eval()
        for row in benchmark(model, runtimes=runtimes, threads=threads, batches=(1,), calibration=calibration,
                             repeats=repeats):  # fmt: skip
            points.append({"width": width, "runtime": row.runtime, "median_ms": row.median_ms,
                           "top1": PUBLISHED_A1_TOP1[width], "device": row.device, "threads": row.threads})  # fmt: skip
    figure, axes = plt.subplots(figsize=(6, 4))
    for runtime in runtimes:
        mine = [p for p in points if p["runtime"] == runtime]
        axes.plot([p["median_ms"] for p in mine], [p["top1"] for p in mine], "o-", label=runtime)
        for p in mine:
            axes.annotate(f"x{p['width']:g}", (p["median_ms"], p["top1"]), fontsize=8)
    axes.set_xlabel(f"batch-1 latency, ms ({threads} threads, {points[0]['device']})" if points else "latency, ms")
    axes.set_ylabel("ImageNet top-1 (published), %")
    axes.set_title(f"MnasNet-A1 at {resolution}: latency vs accuracy")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    with atomic_path(out) as temp:
        figure.savefig(temp, format="png", dpi=120)
    plt.close(figure)
    return points
