"""Float, post-training int8 (PTQ) and quantisation-aware int8 (QAT) COCO AP50 of a detector, side by side.

From one float detector checkpoint of a detection dataset (default the built-in ``faces-coins``), for
per-channel and per-tensor weights:

* PTQ: ``export_detector_tflite(float, int8=True, calibration=DATA)``, the exporter's own calibration;
* QAT: ``train_detector_qat`` (``mnasnet detect train --qat``) from the same float checkpoint, then
  ``export_detector_tflite(qat_best, int8=True)``, calibrating nothing;

and every number is pycocotools' AP50 (through :func:`mnasnet.detection.evaluate.evaluate_detector`) on
the validation split: the float checkpoint in PyTorch, the int8 files in LiteRT.

    python benchmarks/qat_detection.py --weights runs/det/best.safetensors            # faces-coins
    python benchmarks/qat_detection.py --weights ... --qat-epochs 4 --threads 2 --keep /tmp/qatdet/bench
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from mnasnet.detection.evaluate import evaluate_detector
from mnasnet.detection.export import export_detector_tflite
from mnasnet.tasks.detection_qat import QAT_SETTINGS, detection_qat_config, train_detector_qat


def ap50(weights: Path, data: str) -> float:
    return 100 * evaluate_detector(weights, data, progress=False)["AP50"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True, help="a float detector checkpoint of --data")
    parser.add_argument("--data", default="faces-coins")
    parser.add_argument("--qat-epochs", type=int, default=QAT_SETTINGS["epochs"])
    parser.add_argument("--qat-lr", type=float, default=QAT_SETTINGS["lr"])
    parser.add_argument("--keep", type=Path, help="write the runs and files here (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mnasnet-qat-det-bench-") as workdir:
        work = args.keep or Path(workdir)
        work.mkdir(parents=True, exist_ok=True)
        # the QAT runs first, then every export and evaluation
        qat_runs = {}
        for per_channel in (True, False):
            name = "per-channel" if per_channel else "per-tensor"
            settings = {"per_tensor": not per_channel, "epochs": args.qat_epochs, "lr": args.qat_lr}
            config = detection_qat_config(args.data, weights=str(args.weights), output=str(work / f"qat_{name}"),
                                          **settings)  # fmt: skip
            qat_runs[name] = train_detector_qat(config, progress=False).run_dir / "best.safetensors"
            print(f"{name}: QAT trained", file=sys.stderr, flush=True)
        float_ap50 = ap50(args.weights, args.data)
        rows = []
        for name, qat_weights in qat_runs.items():
            per_tensor = name == "per-tensor"
            ptq = export_detector_tflite(args.weights, work / f"ptq_{name}.tflite", int8=True,
                                         calibration=args.data, per_tensor=per_tensor)  # fmt: skip
            qat = export_detector_tflite(qat_weights, work / f"qat_{name}.tflite", int8=True, per_tensor=per_tensor)
            rows.append((name, ap50(ptq, args.data), ap50(qat, args.data)))
            print(f"{name}: PTQ {rows[-1][1]:.2f}  QAT {rows[-1][2]:.2f}", file=sys.stderr, flush=True)
    print(f"{args.weights} on {args.data} (val split, pycocotools AP50 x 100); QAT {args.qat_epochs} epochs, "
          f"lr {args.qat_lr}")  # fmt: skip
    print(f"{'weights':<12} {'float':>7} {'PTQ int8':>9} {'QAT int8':>9} {'PTQ loss':>9} {'recovered':>10}")
    for name, ptq_ap50, qat_ap50 in rows:
        loss = float_ap50 - ptq_ap50
        recovered = (qat_ap50 - ptq_ap50) / loss if loss > 0 else float("nan")
        print(f"{name:<12} {float_ap50:7.2f} {ptq_ap50:9.2f} {qat_ap50:9.2f} {loss:9.2f} {recovered:10.0%}")
    print(f"wall time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
