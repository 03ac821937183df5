"""The whole MnasNet workflow in one call: train, evaluate, export, quantise, benchmark, classify, report.

``mnasnet demo`` (and ``make demo``) runs this on the built-in dataset so that a
newcomer sees, on any CPU, everything the package does, with real measured
figures in a Markdown report.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mnasnet.errors import ConfigError
from mnasnet.extras import check_installed, require
from mnasnet.fileio import atomic_path, atomic_write_text

__all__ = ["WorkflowConfig", "run_workflow"]

EXPORTS = (
    # (file name, format, int8, per-channel)
    ("model_fp32.onnx", "onnx", False, True),
    ("model_int8.onnx", "onnx", True, True),
    ("model_fp32.tflite", "tflite", False, True),
    ("model_int8.tflite", "tflite", True, True),
    ("model_int8_per_tensor.tflite", "tflite", True, False),
)
# Optional packages the steps import, checked before training so that a missing one costs seconds, not a
# training run. Vela (ethosu) is left out: without it the report says the NPU check could not run.
REQUIRED_PACKAGES = ("matplotlib", "onnx", "onnxscript", "onnxruntime", "ai_edge_litert", "litert_torch", "torchao")


@dataclasses.dataclass
class WorkflowConfig:
    """What the demo trains and how long it measures. The defaults finish in minutes on 2 CPU cores."""

    output: str = "report"
    data: str = "digits"
    arch: str = "small"
    width: float | None = None
    resolution: int = 32
    epochs: int = 30
    batch_size: int = 32
    max_steps: int | None = None  # cut training short (the end-to-end test uses a few steps)
    threads: int = 2
    benchmark_repeats: int = 30
    calibration_images: int = 256
    held_out_images: int = 4
    npu: str = "ethos-u65-256"
    # the extra sections (mnasnet.workflow_sections); each can be left out
    qat: bool = True
    qat_epochs: int = 2
    detection: bool = True
    detection_epochs: int = 3
    detection_max_steps: int | None = None  # cut the detector's training short (--quick); None: max_steps
    detection_eval_images: int | None = 100  # None: the whole val split
    search: bool = True
    search_trials: int = 4
    search_epochs: int = 2


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _Steps:
    """Numbered progress lines with the time each step took."""

    def __init__(self, total: int) -> None:
        self.total, self.index = total, 0

    def run(self, title: str, action: Callable[[], Any]) -> Any:
        self.index += 1
        _log(f"[{self.index}/{self.total}] {title} ...")
        start = time.perf_counter()
        result = action()
        _log(f"[{self.index}/{self.total}] {title}: done in {time.perf_counter() - start:.1f} s")
        return result


def run_workflow(config: WorkflowConfig) -> Path:
    """Runs the workflow and returns the path of the Markdown report.

    Raises:
        MissingDependencyError: optional packages the steps need are missing (all named, before any work).
        MnasNetError: bad data, options or files (as the individual steps raise them).
    """
    from mnasnet.data.datasets import resolve_dataset

    builtin_data = ("sklearn",) if config.data == "digits" and not Path(config.data).exists() else ()
    check_installed(REQUIRED_PACKAGES + builtin_data, purpose="mnasnet demo")

    output = Path(config.output)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} is a file, not a folder")
    train_config = _train_config(config, output / "run")  # bad options fail here, before anything is written
    models = output / "models"
    steps = _Steps(8 + config.qat + config.detection + config.search)
    started = time.perf_counter()
    dataset = steps.run(f"preparing the dataset {config.data!r}", lambda: resolve_dataset(config.data))
    models.mkdir(parents=True, exist_ok=True)
    checkpoint, metrics = steps.run("training", lambda: _train(train_config))
    shutil.copy2(checkpoint, models / "model.safetensors")
    checkpoint = models / "model.safetensors"
    exports = steps.run("exporting ONNX and TFLite, float32 and int8", lambda: _export(config, checkpoint, models))
    accuracy = steps.run("evaluating every format", lambda: _evaluate_all(config, checkpoint, exports, dataset))
    latency = steps.run("benchmarking every runtime", lambda: _benchmark_all(config, checkpoint, exports))
    npu = steps.run(f"compiling the int8 TFLite for {config.npu}", lambda: _npu(config, models / "model_int8.tflite"))
    predictions = steps.run(
        "classifying held-out images with the int8 TFLite", lambda: _classify(config, exports, dataset)
    )
    sections = _run_sections(config, steps, output, checkpoint, accuracy)
    report = steps.run(
        "writing the report",
        lambda: _write_report(
            config,
            output,
            checkpoint,
            metrics,
            exports,
            accuracy,
            latency,
            npu,
            predictions,
            sections,
            time.perf_counter() - started,
        ),  # fmt: skip
    )
    _log(f"report written to {report}")
    return report


# -- steps --------------------------------------------------------------------------------


def _train_config(config: WorkflowConfig, run_dir: Path):
    """The classifier's training settings, validated (a ConfigError names the first bad one)."""
    from mnasnet.model import build_config
    from mnasnet.train.config import DIGITS_SETTINGS, load_config

    tuned = DIGITS_SETTINGS if config.data == "digits" else {}
    train_config = load_config(
        overrides={
            **tuned,
            "data": config.data,
            "arch": config.arch,
            "width": config.width,
            "resolution": config.resolution,
            "epochs": config.epochs,
            "batch_size": config.batch_size,
            "max_steps": config.max_steps,
            "output": str(run_dir),
            "workers": 0,
        },
        recipe="paper",
    )
    build_config(config.arch, width_multiplier=config.width)  # an unknown architecture or a bad width, named now
    return train_config


def _train(train_config) -> tuple[Path, list[dict[str, Any]]]:
    from mnasnet.train import train

    result = train(train_config, progress=sys.stderr.isatty())
    if result.status == "interrupted":  # Ctrl-C or SIGTERM: the engine saved and stopped; so does the demo
        raise KeyboardInterrupt
    best = result.run_dir / "best.safetensors"
    return (best if best.exists() else result.run_dir / "last.safetensors"), result.metrics


def _export(config: WorkflowConfig, checkpoint: Path, models: Path) -> dict[str, Path]:
    from mnasnet.deploy.export_onnx import export_onnx
    from mnasnet.deploy.export_tflite import export_tflite

    exports = {}
    for name, fmt, int8, per_channel in EXPORTS:
        export = export_onnx if fmt == "onnx" else export_tflite
        options = {"int8": int8, "per_channel": per_channel, "calibration_limit": config.calibration_images}
        if int8:
            options["calibration"] = config.data  # the exporters calibrate on its train split
        exports[name] = export(checkpoint, models / name, **options)
        _log(f"    {name}: {exports[name].stat().st_size / 1e3:.0f} kB")
    return exports


def _evaluate_all(
    config: WorkflowConfig, checkpoint: Path, exports: dict[str, Path], dataset: Path
) -> dict[str, dict[str, Any]]:
    from mnasnet.evaluate import evaluate

    results = {}
    for name, path in {"model.safetensors": checkpoint, **exports}.items():
        results[name] = evaluate(path, dataset, split="val", batch_size=64)
        _log(f"    {name}: top-1 {results[name]['top1']:.2f}%  top-5 {results[name]['top5']:.2f}%")
    return results


def _benchmark_all(config: WorkflowConfig, checkpoint: Path, exports: dict[str, Path]) -> list[dict[str, Any]]:
    from mnasnet.deploy.benchmark import benchmark

    rows = []
    for name, path in {"model.safetensors": checkpoint, **exports}.items():
        # TFLite graphs have a fixed batch of 1; the others are also measured at 32.
        batches = (1,) if name.endswith(".tflite") else (1, 32)
        runtimes = ("pytorch",) if name.endswith(".safetensors") else None
        kwargs = {"runtimes": runtimes} if runtimes else {}
        for row in benchmark(path, threads=config.threads, batches=batches, repeats=config.benchmark_repeats,
                             **kwargs):  # fmt: skip
            rows.append({"file": name, **row.to_dict()})
            _log(f"    {name} batch {row.batch}: {row.median_ms:.2f} ms median, {row.images_per_s:.0f} images/s")
    return rows


def _npu(config: WorkflowConfig, tflite: Path) -> dict[str, Any] | None:
    from mnasnet.deploy.npu import vela_report

    try:
        report = vela_report(tflite, config.npu)
    except Exception as error:  # the NPU check is informative; the report says why it is missing
        _log(f"    Vela could not compile the model: {error}")
        return {"error": str(error)}
    return report.to_dict()


def _classify(config: WorkflowConfig, exports: dict[str, Path], dataset: Path) -> list[dict[str, Any]]:
    from mnasnet.data.images import find_images
    from mnasnet.predict import predict_images
    from mnasnet.runtime import load_predictor

    images = find_images(dataset / "val")
    step = max(1, len(images) // config.held_out_images)
    chosen = images[::step][: config.held_out_images]
    predictor = load_predictor(exports["model_int8.tflite"])
    results = []
    for prediction in predict_images(predictor, chosen, topk=3, progress=False):
        data = prediction.to_dict()
        data["true_label"] = Path(data["image"]).parent.name
        results.append(data)
        top = data.get("top") or []
        guess = f"{top[0]['label']} ({top[0]['prob']:.2f})" if top else data.get("error")
        _log(f"    {Path(data['image']).name}: true {data['true_label']}, predicted {guess}")
    return results


def _run_sections(
    config: WorkflowConfig, steps: _Steps, output: Path, checkpoint: Path, accuracy: dict[str, dict]
) -> dict[str, dict[str, Any]]:
    """The extra sections the config asks for; a section that fails keeps its error for the report."""
    from mnasnet import workflow_sections as sections

    chosen: dict[str, tuple[str, Callable[[], dict[str, Any]]]] = {}
    if config.qat:
        ptq = {
            "float": accuracy["model.safetensors"]["top1"],
            "per-channel": accuracy["model_int8.tflite"]["top1"],
            "per-tensor": accuracy["model_int8_per_tensor.tflite"]["top1"],
        }
        chosen["qat"] = (
            "quantisation-aware training, per channel and per tensor",
            lambda: sections.qat_section(
                checkpoint,
                output / "models",
                data=config.data,
                resolution=config.resolution,
                epochs=config.qat_epochs,
                max_steps=config.max_steps,
                calibration_images=config.calibration_images,
                ptq_top1=ptq,
            ),  # fmt: skip
        )
    if config.detection:
        chosen["detection"] = (
            "object detection: training SSDLite on faces-coins, int8 export, NPU",
            lambda: sections.detection_section(
                output / "detection",
                epochs=config.detection_epochs,
                max_steps=config.detection_max_steps or config.max_steps,
                eval_limit=config.detection_eval_images,
                calibration_images=config.calibration_images,
                npu=config.npu,
                threads=config.threads,
            ),  # fmt: skip
        )
    if config.search:
        chosen["search"] = (
            "a small architecture search on Ray",
            lambda: sections.search_section(
                output / "search", trials=config.search_trials, epochs=config.search_epochs
            ),
        )
    results = {}
    for name, (title, action) in chosen.items():
        try:
            results[name] = steps.run(title, action)
        except Exception as error:  # noqa: BLE001  the classifier's report is measured already: keep it
            _log(f"    {name} failed: {type(error).__name__}: {error}")
            results[name] = {"error": f"{type(error).__name__}: {error}"}
    return results


# -- report -------------------------------------------------------------------------------


def _plot_latency_accuracy(latency: list[dict], accuracy: dict[str, dict], out: Path) -> None:
    matplotlib = require("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for row in latency:
        if row["batch"] != 1:
            continue
        top1 = accuracy[row["file"]]["top1"]
        axes.scatter(row["median_ms"], top1, s=50, label=f"{row['file']} ({row['runtime']})")
    # latencies span two orders of magnitude across runtimes
    axes.set_xscale("log")
    axes.legend(fontsize=7, loc="best")
    axes.set_xlabel(f"batch-1 latency, ms, log scale ({latency[0]['threads']} threads)")
    axes.set_ylabel("top-1 on the validation split, %")
    axes.set_title("latency vs accuracy of each export")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_path(out) as temp:
        figure.savefig(temp, format="png", dpi=120)
    plt.close(figure)


def _write_report(
    config: WorkflowConfig,
    output: Path,
    checkpoint: Path,
    metrics: list[dict[str, Any]],
    exports: dict[str, Path],
    accuracy: dict[str, dict],
    latency: list[dict],
    npu: dict[str, Any] | None,
    predictions: list[dict[str, Any]],
    sections: dict[str, dict[str, Any]],
    seconds: float,
) -> Path:
    from mnasnet.profile import profile_model
    from mnasnet.train.plot import plot_run
    from mnasnet.weights import load_weights

    model = load_weights(checkpoint)
    profile = profile_model(model)
    curves = plot_run(output / "run", output / "training_curves.png")
    _plot_latency_accuracy(latency, accuracy, output / "latency_vs_accuracy.png")
    files = {"model.safetensors": checkpoint, **exports}
    fp32_top1 = accuracy["model.safetensors"]["top1"]
    lines = [
        "# MnasNet workflow report",
        "",
        f"MnasNet-{model.config.arch}"
        + (f" x{config.width:g}" if config.width else "")
        + f" at {config.resolution}x{config.resolution}, trained on the `{config.data}` dataset "
        f"for {len(metrics)} epoch(s); {profile.params:,} parameters, {profile.macs / 1e6:.2f}M multiply-adds "
        f"per image. The whole workflow took {seconds / 60:.1f} minutes.",
        "",
        "## Accuracy per format (validation split)",
        "",
        "| file | top-1 % | top-5 % | change vs PyTorch | size kB |",
        "|---|---|---|---|---|",
    ]
    for name, path in files.items():
        result = accuracy[name]
        delta = result["top1"] - fp32_top1
        size_kb = path.stat().st_size / 1e3
        lines.append(f"| `{name}` | {result['top1']:.2f} | {result['top5']:.2f} | {delta:+.2f} | {size_kb:.0f} |")
    lines += [
        "",
        "## Latency per runtime",
        "",
        "| file | runtime | batch | median ms | p90 ms | images/s |",
        "|---|---|---|---|---|---|",
    ]
    for row in latency:
        lines.append(
            f"| `{row['file']}` | {row['runtime']} | {row['batch']} | {row['median_ms']:.2f} | {row['p90_ms']:.2f} | "
            f"{row['images_per_s']:.0f} |"
        )
    if latency:
        versions = ", ".join(f"{key} {value}" for key, value in latency[0]["versions"].items())
        lines += ["", f"Measured with {latency[0]['threads']} threads on {latency[0]['device']}; {versions}."]
    lines += ["", f"## Edge NPU ({config.npu}, Arm Vela)", ""]
    lines += _npu_lines(npu)
    lines += [
        "",
        "## Held-out images classified by `model_int8.tflite`",
        "",
        "| image | true | top-3 |",
        "|---|---|---|",
    ]
    for item in predictions:
        top = ", ".join(f"{entry['label']} {entry['prob']:.2f}" for entry in item.get("top") or [])
        lines.append(f"| `{Path(item['image']).name}` | {item['true_label']} | {top or item.get('error')} |")
    from mnasnet import workflow_sections

    section_lines = {
        "qat": ("Post-training int8 against quantisation-aware training", workflow_sections.qat_lines),
        "detection": ("Object detection", lambda result: workflow_sections.detection_lines(result, output)),
        "search": ("Architecture search", lambda result: workflow_sections.search_lines(result, output)),
    }
    for name, result in sections.items():
        title, render = section_lines[name]
        lines += ["", f"## {title}", "", *render(result)]
    lines += [
        "",
        "## Plots",
        "",
        f"![training curves]({curves.name})",
        "",
        "![latency vs accuracy](latency_vs_accuracy.png)",
        "",
        "Exported files are in `models/`; the training run (config, metrics, checkpoints) in `run/`.",
        "",
    ]
    report = output / "README.md"
    atomic_write_text(report, "\n".join(lines))
    summary = {"accuracy": accuracy, "latency": latency, "npu": npu, "predictions": predictions,
               "params": profile.params, "macs": profile.macs, "seconds": seconds, **sections}  # fmt: skip
    atomic_write_text(output / "results.json", json.dumps(summary, indent=2, default=str))
    return report


def _npu_lines(npu: dict[str, Any] | None) -> list[str]:
    if not npu or "error" in npu:
        return [f"Vela did not run: {npu.get('error') if npu else 'no int8 model'}."]
    estimate = f"{npu['inference_time_ms']:.3f} ms" if npu.get("inference_time_ms") is not None else "not given"
    lines = [
        f"`model_int8.tflite` compiled by Vela for {npu['accelerator']} ({npu['system_config']}): "
        f"**{npu['npu_operators']} operators on the NPU, {npu['cpu_operators']} falling back to the CPU**; "
        f"estimated inference time {estimate}.",
    ]
    for operator, tensor, reason in npu.get("cpu_fallback") or []:
        lines.append(f"- CPU: {operator} ({tensor}): {reason}")
    return lines


def default_output() -> str:
    return os.environ.get("MNASNET_REPORT", "report")
