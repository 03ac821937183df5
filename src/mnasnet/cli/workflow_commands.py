"""``mnasnet demo``: the whole workflow on the built-in dataset, ending in a report."""

from __future__ import annotations

import argparse

from mnasnet.cli.options import add_threads_flag
from mnasnet.workflow import WorkflowConfig, default_output

QUICK = {
    "epochs": 1, "benchmark_repeats": 5, "calibration_images": 32, "held_out_images": 2,
    "qat_epochs": 1, "detection_epochs": 1, "detection_max_steps": 40, "detection_eval_images": 16,
    "search_trials": 2, "search_epochs": 1,
}  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults = WorkflowConfig()
    demo = subparsers.add_parser(
        "demo",
        help="train, evaluate, export, quantise, benchmark and classify on the built-in dataset; write a report",
        description="Runs the whole MnasNet workflow on the built-in dataset and writes a Markdown report with "
        "accuracy per format, latency per runtime, the NPU check, plots and the exported files.",
    )
    demo.add_argument("--output", default=default_output(), help="report folder (default: %(default)s)")
    demo.add_argument("--data", default=defaults.data, help="dataset folder or built-in name (default: %(default)s)")
    demo.add_argument("--arch", default=defaults.arch, help="architecture (default: %(default)s)")
    demo.add_argument("--width", type=float, default=defaults.width, help="width multiplier")
    demo.add_argument("--resolution", type=int, default=defaults.resolution, help="input size (default: %(default)s)")
    demo.add_argument("--epochs", type=int, default=defaults.epochs, help="training epochs (default: %(default)s)")
    demo.add_argument("--batch-size", type=int, default=defaults.batch_size)
    add_threads_flag(demo, "training, export and the benchmark")
    demo.add_argument("--quick", action="store_true", help="a few training steps and short benchmarks (a smoke test)")
    demo.add_argument("--no-qat", dest="qat", action="store_false", help="leave out quantisation-aware training")
    demo.add_argument("--no-detection", dest="detection", action="store_false", help="leave out object detection")
    demo.add_argument("--no-search", dest="search", action="store_false", help="leave out the architecture search")
    demo.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from mnasnet.workflow import run_workflow

    config = WorkflowConfig(
        output=args.output, data=args.data, arch=args.arch, width=args.width, resolution=args.resolution,
        epochs=args.epochs, batch_size=args.batch_size, threads=args.threads, qat=args.qat,
        detection=args.detection, search=args.search,
    )  # fmt: skip
    if args.quick:
        config = WorkflowConfig(**{**config.__dict__, **QUICK})
    report = run_workflow(config)
    print(f"report: {report}")
    return 0
