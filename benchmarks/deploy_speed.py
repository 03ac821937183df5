"""Deployment speed targets, measured side by side in one run (issue 5).

MnasNet-A1 x1.0 at 224 with 2 threads:

1. our fastest int8 path at batch 1 against LiteRT int8 (XNNPACK) of timm's
   ``semnasnet_100`` converted the plain way (litert-torch, PT2E per-channel,
   NCHW model as it is): ratio of batch-1 latencies;
2. our fastest fp32 path at batch 32 as a fraction of the multiply-add rate of a
   large fp32 matrix multiply (torch, same threads, same run).

The candidates are timed in interleaved rounds so that load from other
processes on the machine hits them alike. Weights are random (with realistic BN
statistics): speed does not depend on their values. Usage:

    python benchmarks/deploy_speed.py [--threads 2] [--rounds 5] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

A1_MACS = 311.6e6  # REFERENCE.md section 4
RESOLUTION = 224


def realistic_bn(model: torch.nn.Module, images: torch.Tensor) -> torch.nn.Module:
    """BN statistics from real images, so that int8 scales look like a trained model's."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(images)
    return model.eval()


def calibration_images(count: int) -> np.ndarray:
    from mnasnet.data.preprocess import Preprocess
    from mnasnet.deploy.quantize import load_calibration_images

    return load_calibration_images("digits", Preprocess.for_resolution(RESOLUTION), limit=count)


def timm_plain_int8(images: np.ndarray, path: Path) -> Path:
    """timm semnasnet_100 -> litert-torch PT2E per-channel int8, the way its docs show it."""
    import litert_torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from oracles import import_timm

    timm = import_timm()
    model = realistic_bn(timm.create_model("semnasnet_100", pretrained=False), torch.from_numpy(images[:64]))
    sample = (torch.from_numpy(images[:1]),)
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(model, sample).module(), quantizer)
    with torch.no_grad():
        for image in images:
            prepared(torch.from_numpy(image[None]))
    converted = convert_pt2e(prepared, fold_quantize=False)
    edge = litert_torch.convert(converted, sample, quant_config=QuantConfig(pt2e_quantizer=quantizer))
    edge.export(str(path))
    return path


def matmul_macs_per_s(threads: int, size: int = 2048, repeats: int = 10) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return size**3 / statistics.median(times)


def timed(run, repeats: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--repeats", type=int, default=20, help="batch-1 runs per candidate per round")
    parser.add_argument("--calibration-images", type=int, default=100)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    threads = args.threads
    torch.set_num_threads(threads)

    import mnasnet
    from mnasnet.deploy import export_onnx, export_tflite
    from mnasnet.deploy.benchmark import device_name, environment
    from mnasnet.deploy.runtimes import LiteRTPredictor, OnnxPredictor
    from mnasnet.runtime import TorchPredictor

    images = calibration_images(args.calibration_images)
    torch.manual_seed(0)
    model = realistic_bn(mnasnet.create_model("a1", resolution=RESOLUTION), torch.from_numpy(images[:64]))
    work = Path(tempfile.mkdtemp(prefix="deploy-speed-"))
    print(f"exporting into {work} ...", file=sys.stderr)
    files = {
        "litert-int8 (ours)": export_tflite(model, work / "a1_int8.tflite", int8=True, calibration=images),
        "litert-fp32": export_tflite(model, work / "a1_fp32.tflite"),
        "onnxruntime-int8": export_onnx(model, work / "a1_int8.onnx", int8=True, calibration=images),
        "onnxruntime-fp32": export_onnx(model, work / "a1_fp32.onnx"),
    }
    timm_file = timm_plain_int8(images, work / "timm_semnasnet_100_int8.tflite")
    predictors = {
        "pytorch-fp32": TorchPredictor(model),
        "litert-int8 (ours)": LiteRTPredictor(files["litert-int8 (ours)"], threads=threads),
        "onnxruntime-int8": OnnxPredictor(files["onnxruntime-int8"], threads=threads),
        "litert-fp32": LiteRTPredictor(files["litert-fp32"], threads=threads),
        "onnxruntime-fp32": OnnxPredictor(files["onnxruntime-fp32"], threads=threads),
    }
    from ai_edge_litert.interpreter import Interpreter

    # Two views of the int8 race. "invoke": the interpreter alone on an already-int8 tensor, what an
    # edge application does. Predictor: float NCHW in, float logits out, layout and (de)quantisation
    # in numpy, the same code for both files (timm's has no metadata; its NCHW layout is read off
    # the input shape).
    def invoke_only(path: Path):
        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        interpreter.allocate_tensors()
        tensor = interpreter.get_input_details()[0]
        image = np.zeros(tensor["shape"], dtype=tensor["dtype"])

        def run() -> None:
            interpreter.set_tensor(tensor["index"], image)
            interpreter.invoke()

        return run

    invokers = {
        "litert-int8 (ours) invoke": invoke_only(files["litert-int8 (ours)"]),
        "timm semnasnet_100 litert-int8 (plain) invoke": invoke_only(timm_file),
    }
    predictors["timm semnasnet_100 litert-int8 (plain)"] = LiteRTPredictor(timm_file, threads=threads)

    one = images[:1]
    batch32 = np.ascontiguousarray(np.resize(images, (32, *images.shape[1:])))
    int8_candidates = {"litert-int8 (ours)", "onnxruntime-int8"}
    timm_name = "timm semnasnet_100 litert-int8 (plain)"
    latency: dict[str, list[float]] = {name: [] for name in [*predictors, *invokers]}
    throughput: dict[str, list[float]] = {
        name: [] for name in predictors if name not in int8_candidates and name != timm_name
    }
    matmul: list[float] = []
    for round_index in range(args.rounds):
        print(f"round {round_index + 1}/{args.rounds}", file=sys.stderr)
        for name, run in invokers.items():
            latency[name] += timed(run, args.repeats)
        for name, predictor in predictors.items():
            latency[name] += timed(lambda p=predictor: p.predict_logits(one), args.repeats)
        for name in throughput:
            times = timed(lambda p=predictors[name]: p.predict_logits(batch32), 3, warmup=1)
            throughput[name].append(32 / statistics.median(times))
        matmul.append(matmul_macs_per_s(threads))

    medians = {name: statistics.median(values) * 1000 for name, values in latency.items()}
    p90 = {name: float(np.percentile(values, 90)) * 1000 for name, values in latency.items()}
    images_per_s = {name: statistics.median(values) for name, values in throughput.items()}
    matmul_rate = statistics.median(matmul)
    fastest_int8 = min(int8_candidates, key=medians.get)
    fastest_fp32 = max(images_per_s, key=images_per_s.get)
    timm_ms = medians[timm_name]
    invoke_ratio = medians[f"{timm_name} invoke"] / medians["litert-int8 (ours) invoke"]
    fraction = images_per_s[fastest_fp32] * A1_MACS / matmul_rate

    print(f"\nMnasNet-A1 x1.0 @{RESOLUTION}, {threads} threads, {device_name()}")
    print(", ".join(f"{key} {value}" for key, value in environment().items()))
    print(f"\n{'batch 1':<40} {'median ms':>10} {'p90 ms':>8}")
    for name in medians:
        print(f"{name:<40} {medians[name]:>10.2f} {p90[name]:>8.2f}")
    print(f"\n{'batch 32 (fp32)':<40} {'images/s':>10} {'GMAC/s':>8}")
    for name, rate in images_per_s.items():
        print(f"{name:<40} {rate:>10.1f} {rate * A1_MACS / 1e9:>8.1f}")
    print(f"{'fp32 matmul 2048^3 (torch)':<40} {'':>10} {matmul_rate / 1e9:>8.1f}")
    print(
        f"\ntarget 1: fastest int8 ({fastest_int8}) {medians[fastest_int8]:.2f} ms vs timm plain {timm_ms:.2f} ms: "
        f"{timm_ms / medians[fastest_int8]:.2f}x ({'met' if medians[fastest_int8] <= timm_ms else 'NOT met'})"
    )
    print(f"          interpreter alone (int8 tensor in): ours vs timm plain {invoke_ratio:.2f}x")
    print(
        f"target 2: fastest fp32 batch 32 ({fastest_fp32}) reaches {fraction:.1%} of the matmul MAC rate "
        f"({'met' if fraction >= 0.8 else 'NOT met'}, target 80%)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({
            "device": device_name(), "threads": threads, "versions": environment(),
            "latency_ms_median": medians, "latency_ms_p90": p90, "batch32_images_per_s": images_per_s,
            "matmul_macs_per_s": matmul_rate, "int8_speedup_vs_timm": timm_ms / medians[fastest_int8],
            "int8_invoke_speedup_vs_timm": invoke_ratio,
            "fp32_fraction_of_matmul": fraction,
        }, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
