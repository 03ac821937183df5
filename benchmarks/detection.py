"""Detection, measured: learning on the built-in faces-coins, int8 against float32, and a side-by-side.

Part ``learning``: trains the built-in dataset's default configuration (``mnasnet detect train``'s
settings for ``faces-coins``) from scratch on this CPU and prints the held-out split's COCO AP and
AP50 after each evaluated epoch, with the wall-clock and process CPU time spent training so far
(evaluation excluded). The issue's bar: >= 0.5 AP50 within 10 minutes of training.

    python benchmarks/detection.py --part learning [--epochs N] [--size S] [--threads 2]

Part ``int8``: a faces-coins detector (``--weights``, or the defaults trained first) exported as ONNX
with NMS in the graph, TFLite float32 and TFLite int8 (calibrated on the training split); COCO AP and
AP50 of each on the val split (pycocotools), the int8 file's Vela placement on ethos-u65-256 and
ethos-u55-128. The issue's bar: int8 AP50 within 0.02 of float32.

Part ``side-by-side``: ours SSDLite on MnasNet-A1 at 320 and torchvision's
``ssdlite320_mobilenet_v3_large`` (random weights, BN statistics measured on faces-coins images), both
int8 TFLite (ours through ``export_detector_tflite``, torchvision's backbone + head converted the
plain way with litert-torch PT2E): parameters, multiply-adds, LiteRT batch-1 latency on 2 threads
(interleaved rounds), Vela's estimate on ethos-u65-256 and the CPU-fallback operators, and the ratios.

    python benchmarks/detection.py --part int8 [--weights runs/det/best.safetensors]
    python benchmarks/detection.py --part side-by-side

Each part is one function taking the parsed arguments; ``--part all`` runs every part in order.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path


def _cpu_seconds() -> float:
    """User + system time of this process and its finished children (the data-loading workers)."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def part_learning(args: argparse.Namespace) -> dict:
    """Train the faces-coins defaults; report AP/AP50 per evaluated epoch against training time."""
    from mnasnet.tasks import detection
    from mnasnet.tasks.detection import detection_config, train_detector

    overrides = {
        key: getattr(args, key)
        for key in (
            "epochs", "size", "arch", "lr", "batch_size", "anchor_scales", "width",
            "min_lr", "warmup_epochs", "ema_decay", "bn_momentum", "photometric", "zoom_out", "iou_crop",
            "channels_last", "optimizer", "weight_decay", "momentum", "stride8_map", "seed",
        )
        if getattr(args, key) is not None
    }  # fmt: skip
    if args.backbone_weights:
        overrides["weights"] = args.backbone_weights
    output = args.output or tempfile.mkdtemp(prefix="det-learning-")
    config = detection_config("faces-coins", output=str(Path(output) / "run"), eval_every=args.eval_every, **overrides)
    print(f"config: {json.dumps({k: v for k, v in config.to_dict().items() if v is not None})}", flush=True)

    clock = {"wall": 0.0, "cpu": 0.0, "wall_start": time.perf_counter(), "cpu_start": _cpu_seconds()}
    rows: list[dict] = []
    validate = detection.DetectionTask.validate

    def timed_validate(task, model, loader, step):
        # the time up to here is training; evaluation is not counted
        clock["wall"] += time.perf_counter() - clock["wall_start"]
        clock["cpu"] += _cpu_seconds() - clock["cpu_start"]
        metrics = validate(task, model, loader, step)
        row = {
            "step": step.step_count,
            "train_minutes": round(clock["wall"] / 60, 2),
            "train_cpu_minutes": round(clock["cpu"] / 60, 2),
            "AP": round(metrics["val_AP"], 4),
            "AP50": round(metrics.get("val_AP50", 0.0), 4),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        clock["wall_start"], clock["cpu_start"] = time.perf_counter(), _cpu_seconds()
        return metrics

    detection.DetectionTask.validate = timed_validate
    try:
        result = train_detector(config, progress=False)
    finally:
        detection.DetectionTask.validate = validate
    reached = next((row for row in rows if row["AP50"] >= 0.5), None)
    summary = {
        "part": "learning",
        "final_AP": rows[-1]["AP"] if rows else None,
        "final_AP50": rows[-1]["AP50"] if rows else None,
        "train_minutes": rows[-1]["train_minutes"] if rows else None,
        "first_AP50_at_least_0.5": reached,
        "within_10_minutes": reached is not None and reached["train_minutes"] <= 10,
        "epochs": result.epoch,
        "run_dir": str(result.run_dir),
    }
    print(json.dumps(summary), flush=True)
    return summary


# -- part int8: the int8 TFLite's AP50 against float32 (engineer B) -------------------------------


def _trained_detector(args: argparse.Namespace) -> Path:
    """``--weights``, or the faces-coins defaults trained here (``detect train``'s configuration)."""
    if args.weights:
        return Path(args.weights)
    from mnasnet.tasks.detection import detection_config, train_detector

    output = Path(args.output or tempfile.mkdtemp(prefix="det-int8-")) / "run"
    overrides = {key: getattr(args, key) for key in ("epochs", "size", "arch") if getattr(args, key)}
    print(f"training the faces-coins defaults into {output} (give --weights to skip)", flush=True)
    result = train_detector(detection_config("faces-coins", output=str(output), **overrides), progress=False)
    return result.run_dir / "best.safetensors"


def part_int8(args: argparse.Namespace) -> dict:
    """AP / AP50 on the faces-coins val split: PyTorch, ONNX with NMS, TFLite float32 and int8; Vela for int8."""
    from mnasnet.deploy.npu import vela_report
    from mnasnet.detection.evaluate import evaluate_detector
    from mnasnet.detection.export import export_detector_onnx, export_detector_tflite

    weights = _trained_detector(args)
    folder = Path(tempfile.mkdtemp(prefix="det-int8-files-"))
    files = {"pytorch": weights}
    started = time.perf_counter()
    files["onnx-nms"] = export_detector_onnx(weights, folder / "detector_nms.onnx", nms=True)
    files["tflite-fp32"] = export_detector_tflite(weights, folder / "detector.tflite")
    files["tflite-int8"] = export_detector_tflite(
        weights, folder / "detector_int8.tflite", int8=True, calibration="faces-coins",
        calibration_limit=args.calibration_images,
    )  # fmt: skip
    print(f"exports: {time.perf_counter() - started:.0f} s", flush=True)
    rows = {}
    for name, path in files.items():
        started = time.perf_counter()
        metrics = evaluate_detector(path, "faces-coins", split="val", progress=False)
        rows[name] = {
            "AP": round(metrics["AP"], 4),
            "AP50": round(metrics["AP50"], 4),
            "n": metrics["n"],
            "seconds": round(time.perf_counter() - started, 1),
        }
        print(json.dumps({"format": name, **rows[name]}), flush=True)
    npu = {}
    for accelerator in ("ethos-u65-256", "ethos-u55-128"):
        report = vela_report(files["tflite-int8"], accelerator)
        npu[accelerator] = {"cpu_fallback": report.cpu_operators, "vela_ms": report.inference_time_ms}
    gap = rows["tflite-fp32"]["AP50"] - rows["tflite-int8"]["AP50"]
    summary = {
        "part": "int8",
        "weights": str(weights),
        "formats": rows,
        "AP50_fp32_minus_int8": round(gap, 4),
        "within_0.02": abs(gap) <= 0.02,
        "npu": npu,
    }
    print(json.dumps(summary), flush=True)
    return summary


# -- part side-by-side: ours SSDLite-A1 vs torchvision ssdlite320_mobilenet_v3_large (engineer B) ------


def _import_torchvision():
    """torchvision's CUDA wheel imports on a CPU-only torch once its C++ ops are declared (tests/oracles.py)."""
    import torch

    try:
        library = torch.library.Library("torchvision", "DEF")
        library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.define(
            "qnms(Tensor qdets, Tensor qscores, Tensor dets_scale, Tensor dets_zero_point, "
            "Tensor scores_scale, Tensor scores_zero_point, float iou_threshold) -> Tensor"
        )
        _import_torchvision.library = library  # keep the registration alive
    except RuntimeError:
        pass  # already declared in this process
    import torchvision

    return torchvision


def _faces_coins_images(size: int, mean, std, count: int):
    """``count`` faces-coins training images at ``size``, normalised with ``mean``/``std``, float32 NCHW."""
    import numpy as np

    from mnasnet.detection.data import DetectionDataset, eval_transform, load_coco
    from mnasnet.detection.synthetic import resolve_detection_dataset

    data = load_coco(resolve_detection_dataset("faces-coins") / "train.json", check_image_sizes=False)
    dataset = DetectionDataset(data, eval_transform(size), mean=mean, std=std)
    return np.stack([dataset[index][0].numpy() for index in range(count)])


def _measure_bn(model, images) -> None:
    """BN statistics measured on real images (both networks have random weights): trained-like int8 ranges."""
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for module in norms:
            module.reset_running_stats()
            module.momentum = None
        model.train()(torch.from_numpy(images))
    model.eval()


def _torchvision_raw(model):
    """torchvision's SSDLite without its transform and post-processing: backbone + head, two outputs."""
    import torch

    class Raw(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone, self.head = model.backbone, model.head

        def forward(self, images):
            outputs = self.head(list(self.backbone(images).values()))
            return outputs["cls_logits"], outputs["bbox_regression"]

    return Raw().eval()


def _plain_pt2e_tflite(module, sample, calibration, path: Path) -> None:
    """litert-torch's documented PT2E recipe, nothing rewritten: export, prepare, calibrate, convert."""
    import contextlib
    import io

    import litert_torch
    import torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(module, (sample,)).module(), quantizer)
    with torch.no_grad():
        for index in range(len(calibration)):
            prepared(torch.from_numpy(calibration[index : index + 1]))
    converted = convert_pt2e(prepared, fold_quantize=False)
    with contextlib.redirect_stdout(io.StringIO()):
        edge = litert_torch.convert(converted, (sample,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
        edge.export(str(path))


def _multiply_adds(module, sample) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(sample)
    return counter.get_total_flops() // 2


def _interleaved_latency(paths: dict[str, Path], threads: int, rounds: int, runs: int) -> dict[str, float]:
    """Median batch-1 milliseconds per file, timed in alternating rounds so that load hits both alike."""
    import statistics

    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interpreters, inputs = {}, {}
    for name, path in paths.items():
        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        interpreter.allocate_tensors()
        detail = interpreter.get_input_details()[0]
        inputs[name] = (detail["index"], np.zeros(detail["shape"], dtype=detail["dtype"]))
        interpreters[name] = interpreter
        for _ in range(3):  # warm-up
            interpreter.set_tensor(*inputs[name])
            interpreter.invoke()
    timings: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, interpreter in interpreters.items():
            interpreter.set_tensor(*inputs[name])
            started = time.perf_counter()
            for _ in range(runs):
                interpreter.invoke()
            timings[name].append((time.perf_counter() - started) / runs * 1000)
    return {name: round(statistics.median(values), 3) for name, values in timings.items()}


def _vela_legacy(path: Path, accelerator: str) -> dict:
    """Vela's legacy compilation core: NPU/CPU operator counts and the estimate for the NPU part."""
    import csv
    import re
    import subprocess

    with tempfile.TemporaryDirectory(prefix="vela-legacy-") as workdir:
        command = [
            sys.executable, "-c", "import sys; from ethosu.vela.vela import main; sys.exit(main())", str(path),
            "--accelerator-config", accelerator, "--output-dir", workdir, "--debug-force-legacy-core",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        counts = dict(re.findall(r"^(CPU|NPU) operators = (\d+)", result.stdout, flags=re.MULTILINE))
        summary = next(Path(workdir).glob("*_summary_*.csv"), None)
        row = next(csv.DictReader(summary.open()), {}) if summary else {}
    return {
        "cpu_operators": int(counts["CPU"]) if "CPU" in counts else None,
        "npu_operators": int(counts["NPU"]) if "NPU" in counts else None,
        "npu_ms": round(float(row["inference_time"]) * 1000, 3) if row.get("inference_time") else None,
    }


def part_side_by_side(args: argparse.Namespace) -> dict:
    """Ours SSDLite-A1 at 320 vs torchvision ssdlite320_mobilenet_v3_large, both int8 TFLite, random weights."""
    import torch

    from mnasnet.deploy.npu import vela_report
    from mnasnet.deploy.quantize import DeployError
    from mnasnet.detection.export import export_detector_tflite
    from mnasnet.detection.model import create_detector

    torch.manual_seed(0)
    size, count = 320, args.calibration_images
    ours = create_detector("ssdlite", arch="a1", num_classes=91, size=size)
    ours_images = _faces_coins_images(size, ours.config.mean, ours.config.std, count)
    _measure_bn(ours, ours_images)
    torchvision = _import_torchvision()
    theirs = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=91
    )
    theirs_raw = _torchvision_raw(theirs)
    theirs_images = _faces_coins_images(size, (0.5,) * 3, (0.5,) * 3, count)  # its transform's normalisation
    _measure_bn(theirs_raw, theirs_images)

    folder = Path(args.output) if args.output else Path(tempfile.mkdtemp(prefix="det-side-by-side-"))
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"ours": folder / "ssdlite_a1_int8.tflite", "torchvision": folder / "ssdlite_mnv3_int8.tflite"}
    started = time.perf_counter()
    if not paths["ours"].is_file():  # a file kept in --output from an earlier run is reused
        export_detector_tflite(ours, paths["ours"], int8=True, calibration=ours_images)
    if not paths["torchvision"].is_file():
        _plain_pt2e_tflite(theirs_raw, torch.from_numpy(theirs_images[:1]), theirs_images, paths["torchvision"])
    print(f"int8 conversions: {time.perf_counter() - started:.0f} s", flush=True)

    sample = torch.zeros(1, 3, size, size)
    rows = {
        "ours": {"parameters": sum(p.numel() for p in ours.parameters()), "macs": _multiply_adds(ours.eval(), sample)},
        "torchvision": {
            "parameters": sum(p.numel() for p in theirs_raw.parameters()),
            "macs": _multiply_adds(theirs_raw, sample),
        },
    }
    latency = _interleaved_latency(paths, threads=2, rounds=args.rounds, runs=10)
    for name, path in paths.items():
        rows[name]["litert_int8_ms"] = latency[name]
        try:
            report = vela_report(path, "ethos-u65-256")
            rows[name].update(
                vela_u65_ms=round(report.inference_time_ms, 3) if report.inference_time_ms else None,
                cpu_fallback_u65=report.cpu_operators,
                cpu_fallback_ops=sorted({op for op, _, _ in report.cpu_fallback}),
            )
        except DeployError as error:  # Vela's default (regor) core refuses some files outright
            rows[name].update(vela_u65_ms=None, vela_error=str(error).split(": ", 1)[-1][:300])
        # Vela's legacy core compiles what regor refuses, leaving unsupported operators to the CPU
        rows[name]["legacy_core"] = _vela_legacy(path, "ethos-u65-256")
        print(json.dumps({"model": name, **rows[name]}), flush=True)
    ratio = {
        key: round(rows["ours"][key] / rows["torchvision"][key], 3)
        for key in ("parameters", "macs", "litert_int8_ms", "vela_u65_ms")
        if rows["ours"].get(key) and rows["torchvision"].get(key)
    }
    legacy = [rows[name]["legacy_core"].get("npu_ms") for name in ("ours", "torchvision")]
    if all(legacy):
        ratio["vela_u65_legacy_core_npu_ms"] = round(legacy[0] / legacy[1], 3)
    # accuracy per multiply-add from the published COCO APs (REFERENCE.md section 8) and the MACs measured here
    published_ap = {"ours": 23.0, "torchvision": 21.3}
    ap_per_gmac = {name: round(published_ap[name] / (rows[name]["macs"] / 1e9), 2) for name in rows}
    summary = {
        "part": "side-by-side",
        "models": rows,
        "ours_over_torchvision": ratio,
        "published_coco_AP": published_ap,
        "published_AP_per_measured_GMAC": ap_per_gmac,
        "faster_on_npu": bool(ratio.get("vela_u65_ms", ratio.get("vela_u65_legacy_core_npu_ms", 2)) < 1),
    }
    print(json.dumps(summary), flush=True)
    return summary


PARTS = {"learning": part_learning, "int8": part_int8, "side-by-side": part_side_by_side}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", default="learning", choices=[*PARTS, "all"])
    parser.add_argument("--output", help="folder for runs (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch threads (default: 2)")
    learning = parser.add_argument_group("learning")
    learning.add_argument("--epochs", type=int, help="default: the built-in dataset's")
    learning.add_argument("--size", type=int)
    learning.add_argument("--arch")
    learning.add_argument("--lr", type=float)
    learning.add_argument("--optimizer", choices=("sgd", "adamw", "rmsprop_tf"))
    learning.add_argument("--weight-decay", dest="weight_decay", type=float)
    learning.add_argument("--momentum", type=float, help="SGD momentum or AdamW's beta1")
    learning.add_argument("--width", type=float)
    learning.add_argument("--anchor-scales", dest="anchor_scales", type=float, nargs=2)
    learning.add_argument("--batch-size", dest="batch_size", type=int)
    learning.add_argument("--eval-every", dest="eval_every", type=int, default=1)
    learning.add_argument("--min-lr", dest="min_lr", type=float, help="where the cosine ends (default: 0)")
    learning.add_argument("--warmup-epochs", dest="warmup_epochs", type=float)
    learning.add_argument("--ema-decay", dest="ema_decay", type=float)
    learning.add_argument("--bn-momentum", dest="bn_momentum", type=float)
    learning.add_argument("--photometric", action=argparse.BooleanOptionalAction, default=None)
    learning.add_argument("--iou-crop", dest="iou_crop", action=argparse.BooleanOptionalAction, default=None)
    learning.add_argument("--channels-last", dest="channels_last", action=argparse.BooleanOptionalAction, default=None)
    learning.add_argument("--seed", type=int, help="initial weights and data order (default 0)")
    learning.add_argument("--backbone-weights", dest="backbone_weights", help="a classification checkpoint")
    learning.add_argument("--stride8-map", dest="stride8_map", action=argparse.BooleanOptionalAction, default=None)
    learning.add_argument("--zoom-out", dest="zoom_out", action=argparse.BooleanOptionalAction, default=None)
    deploy = parser.add_argument_group("int8 and side-by-side")
    deploy.add_argument("--weights", help="int8: a trained faces-coins detector (default: train the defaults here)")
    deploy.add_argument("--calibration-images", dest="calibration_images", type=int, default=64)
    deploy.add_argument("--rounds", type=int, default=7, help="side-by-side: interleaved latency rounds")
    args = parser.parse_args(argv)

    from mnasnet.threads import prepare_environment

    prepare_environment()  # passive OpenMP waits, before torch loads: spinning threads starve on a busy CPU
    import torch

    torch.set_num_threads(args.threads)
    for name, part in PARTS.items():
        if args.part in (name, "all"):
            part(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
