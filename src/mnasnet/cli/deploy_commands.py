"""``mnasnet export``, ``mnasnet benchmark`` and ``mnasnet npu-report``: thin wrappers over mnasnet.deploy."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mnasnet.cli.options import add_threads_flag


def register(subparsers) -> None:
    export = subparsers.add_parser(
        "export",
        help="export weights to ONNX or TFLite (float32 or int8), with metadata",
        description="Export a checkpoint or registry weights to ONNX or TFLite. int8 is static post-training "
        "quantisation calibrated on real images through the weights' own preprocessing; TFLite int8 files have "
        "int8 input and output tensors and run entirely on an Ethos-U NPU.",
    )
    export.add_argument("out", metavar="OUT", help="the .onnx or .tflite file to write")
    export.add_argument("--weights", required=True, help="checkpoint (.safetensors) or registry name")
    export.add_argument("--format", choices=("onnx", "tflite"), help="default: from OUT's suffix")
    export.add_argument("--int8", action="store_true", help="full int8 quantisation (needs --calibration)")
    export.add_argument(
        "--calibration", metavar="DIR_OR_DATASET", help="folder of images (recursive) or a built-in dataset (digits)"
    )
    export.add_argument("--calibration-images", type=int, default=None, help="at most this many (default 200)")
    export.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor (default: per channel)")
    export.add_argument("--batch", default=None, help="batch size N or 'dynamic' (default: ONNX dynamic, TFLite 1)")
    export.add_argument("--layout", choices=("nchw", "nhwc"), help="input layout (default: ONNX nchw, TFLite nhwc)")
    export.add_argument(
        "--target", metavar="ACCELERATOR", help="also compile with Vela for this Ethos-U (e.g. ethos-u65-256)"
    )
    export.add_argument(
        "--pooling",
        choices=("mean", "avgpool"),
        help="TFLite global means: mean (faster on CPU) or avgpool (faster on an Ethos-U NPU); "
        "default: avgpool with --target, else mean",
    )
    export.add_argument("--eval-data", metavar="DATA", help="print float32 vs exported top-1 on this dataset")
    export.add_argument("--eval-limit", type=int, default=None, help="evaluate only this many images")
    add_threads_flag(export, "calibration and the --eval-data comparison")
    export.set_defaults(func=_export)

    bench = subparsers.add_parser(
        "benchmark",
        help="latency and throughput per runtime (PyTorch, ONNX Runtime, LiteRT; fp32 and int8)",
        description="Median and p90 latency at batch 1 and throughput at larger batches, per runtime, with "
        "device, threads and library versions recorded.",
    )
    bench.add_argument("--weights", required=True, help="checkpoint, registry name, or an exported .onnx/.tflite")
    bench.add_argument("--runtimes", default=None, help="comma-separated subset of: " + ", ".join(_runtimes()))
    add_threads_flag(bench, "every runtime measured")
    bench.add_argument("--batch", default="1,32", help="comma-separated batch sizes (default 1,32)")
    bench.add_argument("--repeats", type=int, default=30, help="timed runs at batch 1")
    bench.add_argument("--calibration", default="digits", help="images for the int8 exports (default: digits)")
    bench.add_argument("--plot", metavar="OUT.png", help="also draw A1 latency vs published top-1 across widths")
    bench.add_argument("--plot-widths", default="0.35,0.5,0.75,1.0,1.4", help="widths for --plot")
    bench.add_argument("--json", action="store_true", help="print the rows as JSON")
    bench.set_defaults(func=_benchmark)

    npu = subparsers.add_parser(
        "npu-report",
        help="which operators of an int8 TFLite file Vela puts on an Ethos-U NPU, and its estimated time",
    )
    npu.add_argument("file", metavar="FILE", help="int8 .tflite file")
    npu.add_argument(
        "--accelerator", default="ethos-u65-256,ethos-u55-128", help="comma-separated Vela accelerator configs"
    )
    npu.add_argument("--output-dir", help="keep Vela's compiled file and summary here")
    npu.add_argument("--json", action="store_true")
    npu.set_defaults(func=_npu_report)


def _runtimes() -> tuple[str, ...]:
    return ("pytorch", "onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8")


def _export(args: argparse.Namespace) -> int:
    from mnasnet.deploy import DeployError, export_onnx, export_tflite
    from mnasnet.deploy.common import check_calibration_given, check_export_packages, open_model

    out = Path(args.out)
    fmt = args.format or out.suffix.lower().lstrip(".")
    if fmt not in ("onnx", "tflite"):
        raise DeployError(f"cannot tell the format from {out.name}: give --format onnx|tflite or a .onnx/.tflite name")
    if args.format and out.suffix.lower() != f".{args.format}":
        raise DeployError(f"--format {args.format} writes a .{args.format} file, not {out.name}")
    if args.target and not (fmt == "tflite" and args.int8):
        raise DeployError("--target (an Ethos-U NPU) needs an int8 TFLite export: --format tflite --int8")
    if args.pooling and fmt != "tflite":
        raise DeployError("--pooling applies to TFLite exports")
    check_calibration_given(args.calibration, int8=args.int8)  # before opening (perhaps downloading) the weights
    if args.target:
        from mnasnet.deploy.npu import check_accelerator

        check_accelerator(args.target)  # a typo must not cost an int8 export first
    check_export_packages(fmt, args.int8)
    model = open_model(args.weights)
    options = {"int8": args.int8, "calibration": args.calibration, "per_channel": not args.per_tensor}
    if args.batch is not None:
        options["batch"] = args.batch
    if args.layout:
        options["layout"] = args.layout
    if args.calibration_images:
        options["calibration_limit"] = args.calibration_images
    if fmt == "tflite":
        options["pooling"] = args.pooling or ("avgpool" if args.target else "mean")
    exporter = export_onnx if fmt == "onnx" else export_tflite
    path = exporter(model, out, **options)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    if args.target:
        from mnasnet.deploy.npu import vela_report

        print(vela_report(path, args.target).format())
    if args.eval_data:
        from mnasnet.deploy.accuracy import compare_accuracy

        result = compare_accuracy(model, path, args.eval_data, limit=args.eval_limit)
        reference, exported = result["reference"], result["exported"]
        print(
            f"top-1 on {args.eval_data} ({exported['n']} images): pytorch float32 {reference['top1']:.2f}%, "
            f"{exported['runtime']} {exported['top1']:.2f}% (drop {result['top1_drop']:+.2f} points)"
        )
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    from mnasnet.deploy import DeployError
    from mnasnet.deploy.benchmark import RUNTIMES, benchmark, format_table, plot_latency_accuracy

    runtimes = tuple(name.strip() for name in args.runtimes.split(",")) if args.runtimes else RUNTIMES
    try:
        batches = tuple(int(value) for value in args.batch.split(","))
        widths = tuple(float(value) for value in args.plot_widths.split(","))
    except ValueError:
        raise DeployError(f"--batch and --plot-widths take comma-separated numbers, got {args.batch!r}") from None
    if any(batch < 1 for batch in batches):
        raise DeployError(f"batch sizes must be positive, got {args.batch!r}")
    progress = None if args.json else (lambda text: print(f"measuring {text}...", file=sys.stderr))
    rows = benchmark(args.weights, runtimes=runtimes, threads=args.threads, batches=batches,
                     calibration=args.calibration, repeats=args.repeats, progress=progress)  # fmt: skip
    points = None
    if args.plot:
        # one line per runtime and five widths each: the first two runtimes asked for keep it readable
        points = plot_latency_accuracy(
            widths, args.plot, runtimes=runtimes[:2], threads=args.threads, calibration=args.calibration
        )
    if args.json:
        print(json.dumps({"rows": [row.to_dict() for row in rows], "plot": points}, indent=1))
    else:
        print(format_table(rows))
        if args.plot:
            print(f"plot: {args.plot}")
    return 0


def _npu_report(args: argparse.Namespace) -> int:
    from mnasnet.deploy.npu import vela_report

    reports = [vela_report(args.file, name.strip(), output_dir=args.output_dir) for name in args.accelerator.split(",")]
    if args.json:
        print(json.dumps([report.to_dict() for report in reports], indent=1))
    else:
        print("\n".join(report.format() for report in reports))
    return 0
