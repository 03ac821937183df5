"""The demo's three extra sections: quantisation-aware training, object detection and a small architecture search.

Each section is one function that does the work and returns the figures the report shows, and one
``*_lines`` function that turns them into Markdown. :mod:`mnasnet.workflow` runs them after the
classifier's steps when :class:`~mnasnet.workflow.WorkflowConfig` asks for them. A section that fails
is reported as failed (its error in the report and in ``results.json``) instead of losing the
classifier's report that is already measured.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

__all__ = [
    "detection_lines",
    "detection_section",
    "qat_lines",
    "qat_section",
    "search_lines",
    "search_section",
]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- quantisation-aware training -------------------------------------------------------------


def qat_section(
    checkpoint: Path,
    output: Path,
    *,
    data: str,
    resolution: int,
    epochs: int,
    max_steps: int | None,
    calibration_images: int,
    ptq_top1: dict[str, float],
) -> dict[str, Any]:
    """Fine-tunes the demo's float classifier with fake quantisation, per channel and per tensor, and
    evaluates the int8 TFLite files written from the trained ranges (no calibration).

    ``ptq_top1`` holds the post-training int8 files' top-1 already measured (``"per-channel"``,
    ``"per-tensor"``) and ``"float"``.
    """
    from mnasnet.deploy.export_tflite import export_tflite
    from mnasnet.evaluate import evaluate
    from mnasnet.train import load_config, train_qat

    rows = []
    for per_channel in (True, False):
        name = "per-channel" if per_channel else "per-tensor"
        run = output / f"qat_{name}"
        settings = {
            "qat": True,
            "per_tensor": not per_channel,
            "weights": str(checkpoint),
            "data": data,
            "resolution": resolution,
            "epochs": epochs,
            "max_steps": max_steps,
            "batch_size": 32,
            "lr": 0.001,
            "crop_min_area": 0.5,
            "hflip": False,
            "output": str(run),
            "workers": 0,
            "tensorboard": False,
            "plot": False,
        }
        started = time.perf_counter()
        if train_qat(load_config(overrides=settings), progress=False).status == "interrupted":
            raise KeyboardInterrupt  # Ctrl-C or SIGTERM: the engine saved and stopped; so does the demo
        seconds = time.perf_counter() - started
        weights = run / "best.safetensors"
        if not weights.is_file():  # stopped by max_steps before an evaluation
            weights = run / "last.safetensors"
        tflite = export_tflite(
            weights, output / f"model_qat_int8{'' if per_channel else '_per_tensor'}.tflite", int8=True,
            per_channel=per_channel, calibration_limit=calibration_images,
        )  # fmt: skip
        top1 = evaluate(tflite, data, split="val", batch_size=64)["top1"]
        rows.append({"weights": name, "ptq_top1": ptq_top1[name], "qat_top1": top1, "file": tflite.name,
                     "qat_seconds": round(seconds, 1)})  # fmt: skip
        _log(f"    {name}: PTQ int8 {ptq_top1[name]:.2f}%, QAT int8 {top1:.2f}% ({seconds:.0f} s of QAT)")
    return {"float_top1": ptq_top1["float"], "epochs": epochs, "rows": rows}


def qat_lines(result: dict[str, Any]) -> list[str]:
    if "error" in result:
        return [f"QAT did not run: {result['error']}."]
    lines = [
        f"The float model fine-tuned for {result['epochs']} epoch(s) with fake quantisation (`mnasnet train --qat`), "
        "then exported to int8 TFLite from the trained ranges, calibrating nothing. Post-training int8 (PTQ) "
        "is the calibrated export above.",
        "",
        "| weight scales | float top-1 % | PTQ int8 top-1 % | QAT int8 top-1 % | file |",
        "|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['weights']} | {result['float_top1']:.2f} | {row['ptq_top1']:.2f} | {row['qat_top1']:.2f} | "
            f"`{row['file']}` |"
        )
    lines += [
        "",
        "On an easy set post-training int8 loses little and QAT has little to recover; "
        "`benchmarks/qat.py` measures a set where it does (the built-in `photos`).",
    ]
    return lines


# -- object detection --------------------------------------------------------------------------


def detection_section(
    output: Path,
    *,
    epochs: int,
    max_steps: int | None,
    eval_limit: int | None,
    calibration_images: int,
    npu: str,
    threads: int,
) -> dict[str, Any]:
    """Trains SSDLite on the built-in faces-coins briefly, exports it to int8 TFLite and checks it on the NPU.

    Returns :func:`~mnasnet.detection.demo.detection_demo`'s figures plus ``int8_metrics`` (COCO
    metrics of the int8 file), ``int8_file`` and ``npu`` (Vela's placement, or its error).
    """
    from mnasnet.deploy.npu import vela_report
    from mnasnet.detection.demo import detection_demo
    from mnasnet.detection.evaluate import evaluate_detector
    from mnasnet.detection.export import export_detector_tflite

    result = detection_demo(output, epochs=epochs, max_steps=max_steps, eval_limit=eval_limit, threads=threads)
    _log(f"    float: AP {result['metrics']['AP']:.3f}, AP50 {result['metrics']['AP50']:.3f}")
    int8_file = export_detector_tflite(
        result["checkpoint"], output / "detector_int8.tflite", int8=True, calibration="faces-coins",
        calibration_limit=calibration_images,
    )  # fmt: skip
    result["int8_file"] = int8_file
    result["int8_metrics"] = evaluate_detector(int8_file, "faces-coins", limit=eval_limit, progress=False)
    _log(f"    int8 TFLite: AP {result['int8_metrics']['AP']:.3f}, AP50 {result['int8_metrics']['AP50']:.3f}")
    try:
        result["npu"] = vela_report(int8_file, npu).to_dict()
    except Exception as error:  # informative, like the classifier's NPU check
        result["npu"] = {"error": str(error)}
    return result


def detection_lines(result: dict[str, Any], output: Path) -> list[str]:
    if "error" in result:
        return [f"Detection did not run: {result['error']}."]
    float_metrics, int8_metrics = result["metrics"], result["int8_metrics"]
    lines = [
        f"SSDLite on MnasNet-small, trained from scratch on the built-in `faces-coins` (faces and coins pasted on "
        f"photographs) for {result['epochs']} epoch(s), {result['train_seconds'] / 60:.1f} minutes: a short run "
        "for the demo; `mnasnet detect train` runs the full recipe. COCO metrics from pycocotools on "
        f"{float_metrics['n']} held-out images:",
        "",
        "| file | AP | AP50 | AP75 |",
        "|---|---|---|---|",
    ]
    for name, metrics in (("PyTorch checkpoint", float_metrics), (f"`{result['int8_file'].name}`", int8_metrics)):
        lines.append(f"| {name} | {metrics['AP']:.3f} | {metrics['AP50']:.3f} | {metrics['AP75']:.3f} |")
    npu = result.get("npu") or {}
    if "error" in npu:
        lines += ["", f"Vela did not compile the detector: {npu['error']}."]
    else:
        estimate = npu.get("inference_time_ms")
        lines += [
            "",
            f"The int8 detector on {npu['accelerator']} (Vela): **{npu['npu_operators']} operators on the NPU, "
            f"{npu['cpu_operators']} on the CPU**"
            + (f", estimated {estimate:.2f} ms per image" if estimate is not None else "")
            + "; box decoding and NMS run on the CPU.",
        ]
    drawn = Path(result["drawn"])
    lines += [
        "",
        f"PyTorch batch-1 latency {result['latency_ms']:.1f} ms; {len(result['detections'])} detections above "
        "0.3 on this held-out image:",
        "",
        f"![detections]({drawn.relative_to(output).as_posix()})",
    ]
    return lines


# -- architecture search ----------------------------------------------------------------------


def search_section(output: Path, *, trials: int, epochs: int) -> dict[str, Any]:
    """A few candidates of the MNAS space trained on ``digits`` (:func:`~mnasnet.search.driver.run_small_search`)."""
    from mnasnet.search.driver import run_small_search

    result = run_small_search(output, trials=trials, epochs=epochs)
    finished = [trial for trial in result.trials if trial.get("status") == "ok"]
    _log(f"    {len(finished)} of {len(result.trials)} candidates trained; front of {len(result.front)}")
    return {
        "run_dir": result.run_dir,
        "trials": result.trials,
        "references": result.references,
        "front": result.front,
        "seconds": result.seconds,
    }


def search_lines(result: dict[str, Any], output: Path) -> list[str]:
    if "error" in result:
        return [f"The search did not run: {result['error']}."]
    run_dir = Path(result["run_dir"])
    lines = [
        f"{len(result['trials'])} candidates of the MnasNet-A1 space at x0.35 (`mnasnet search`), each trained "
        f"briefly on `digits`, on Ray, in {result['seconds'] / 60:.1f} minutes. Latency here is the analytic "
        "multiply-add count at 1 GMAC/s; `--target vela:ethos-u65-256`, `litert-int8`, `onnxruntime` or "
        "`command:...` measure a real device.",
        "",
        "| candidate | status | top-1 % | latency ms | reward | MACs |",
        "|---|---|---|---|---|---|",
    ]
    for trial in [*result["references"], *result["trials"]]:
        name = trial.get("name") or f"trial {trial.get('trial_id')}"
        accuracy = trial.get("accuracy")
        latency, reward, macs = trial.get("latency_ms"), trial.get("reward"), trial.get("macs")
        lines.append(
            f"| {name} | {trial.get('status')} | {accuracy * 100:.1f} |" if accuracy is not None
            else f"| {name} | {trial.get('status')} | - |"
        )  # fmt: skip
        lines[-1] += f" {latency:.2f} |" if latency is not None else " - |"
        lines[-1] += f" {reward:.3f} |" if reward is not None else " - |"
        lines[-1] += f" {macs / 1e6:.1f}M |" if macs is not None else " - |"
    plots = sorted(run_dir.glob("*.png"))
    relative = run_dir.relative_to(output).as_posix()
    lines += ["", f"The run folder `{relative}/` holds `trials.jsonl`, `pareto.json` and the report."]
    if plots:
        lines += ["", f"![pareto]({plots[0].relative_to(output).as_posix()})"]
    return lines
