"""Float, post-training int8 (PTQ) and quantisation-aware int8 (QAT) top-1, side by side, on the built-in photos.

The model is MnasNet-small x0.35 at 32 px (depthwise-heavy, low width) on ``photos`` (which of ten
photographs a patch comes from; see :mod:`mnasnet.data.photos`). For per-channel and per-tensor weights:

* PTQ: ``export_tflite(float, int8=True, calibration="photos")``, the exporter's own calibration;
* QAT: ``train_qat`` (the finetune recipe with fake quantisation) from the same float checkpoint, then
  ``export_tflite(qat_best, int8=True)``, calibrating nothing;

and every int8 number is LiteRT running the exported file on the 400 validation patches.
Target: where PTQ loses at least 1 point, QAT recovers at least half of the loss and ends within
0.5 points of float.

    python benchmarks/qat.py                                   # trains the float model first (~10 min)
    python benchmarks/qat.py --float-weights runs/photos/best.safetensors
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from mnasnet.deploy import export_tflite
from mnasnet.evaluate import evaluate
from mnasnet.train import load_config, train, train_qat

FLOAT_SETTINGS = {
    "data": "photos", "arch": "small", "width": 0.35, "resolution": 32, "batch_size": 32, "warmup_epochs": 1.0,
    "bn_momentum": 0.1, "ema_decay": 0.99, "dropout": 0.0, "crop_min_area": 0.5, "zero_init_head": True,
}  # fmt: skip


def train_float(output: Path, epochs: int) -> Path:
    settings = {**FLOAT_SETTINGS, "epochs": epochs, "output": str(output), "workers": 0, "tensorboard": False}
    train(load_config("paper", overrides={**settings, "plot": False}), progress=False)
    return output / "best.safetensors"


def train_int8_qat(weights: Path, output: Path, *, per_channel: bool, epochs: int, lr: float) -> Path:
    settings = {"qat": True, "per_tensor": not per_channel, "weights": str(weights), "data": "photos",
                "resolution": 32, "epochs": epochs, "batch_size": 32, "lr": lr, "crop_min_area": 0.5,
                "output": str(output), "workers": 0, "tensorboard": False, "plot": False}  # fmt: skip
    train_qat(load_config(overrides=settings), progress=False)
    return output / "best.safetensors"


def top1(weights: Path) -> float:
    return evaluate(weights, "photos")["top1"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--float-weights", type=Path, help="a float checkpoint of photos (default: train one)")
    parser.add_argument("--float-epochs", type=int, default=40)
    parser.add_argument("--qat-epochs", type=int, default=4)
    parser.add_argument("--qat-lr", type=float, default=0.001)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mnasnet-qat-bench-") as workdir:
        work = Path(workdir)
        weights = args.float_weights or train_float(work / "float", args.float_epochs)
        float_top1 = top1(weights)
        rows = []
        for per_channel in (True, False):
            name = "per-channel" if per_channel else "per-tensor"
            ptq = export_tflite(weights, work / f"ptq_{name}.tflite", int8=True, calibration="photos",
                                per_channel=per_channel)  # fmt: skip
            qat_weights = train_int8_qat(weights, work / f"qat_{name}", per_channel=per_channel,
                                         epochs=args.qat_epochs, lr=args.qat_lr)  # fmt: skip
            qat = export_tflite(qat_weights, work / f"qat_{name}.tflite", int8=True, per_channel=per_channel)
            rows.append((name, top1(ptq), top1(qat)))
            print(f"{name}: PTQ {rows[-1][1]:.2f}%  QAT {rows[-1][2]:.2f}%", file=sys.stderr, flush=True)
    print(f"MnasNet-small x0.35, 32 px, built-in photos (400 val patches); float top-1 {float_top1:.2f}%")
    print(f"{'weights':<12} {'float':>7} {'PTQ int8':>9} {'QAT int8':>9} {'PTQ loss':>9} {'recovered':>10}")
    failed = False
    for name, ptq_top1, qat_top1 in rows:
        loss = float_top1 - ptq_top1
        recovered = (qat_top1 - ptq_top1) / loss if loss > 0 else float("nan")
        print(f"{name:<12} {float_top1:7.2f} {ptq_top1:9.2f} {qat_top1:9.2f} {loss:9.2f} {recovered:10.0%}")
        if loss >= 1.0 and (recovered < 0.5 or float_top1 - qat_top1 > 0.5):
            failed = True
    print(f"wall time {time.perf_counter() - started:.0f} s; target (PTQ loss >= 1: QAT recovers >= half, "
          f"within 0.5 of float): {'missed' if failed else 'met'}")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
