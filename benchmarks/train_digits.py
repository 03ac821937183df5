"""Proof that the loop learns: MnasNet-small from scratch on the built-in digits, on a CPU.

Trains on scikit-learn's handwritten digits (the built-in ``digits`` dataset,
1437 train / 360 val images, upscaled to 32 px) with the paper's optimiser
(TF RMSProp, lr scaled from 0.016 per 256 images, L2, label smoothing, EMA) and
settings suited to a 10-class, few-minute run: a zero-initialised head, one
warmup epoch, faster BN/EMA averages, no dropout (the reference's for
MnasNet-small), milder crops and no flips (digits are not mirror-symmetric).
Prints the best EMA top-1 on the validation split and the wall time; exits 1
below the target.

    python benchmarks/train_digits.py            # target: >= 97% within 10 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

from mnasnet.train import load_config, train
from mnasnet.train.config import DIGITS_SETTINGS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--arch", default="small")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (1 is fastest on a loaded box)")
    parser.add_argument("--output", default=None, help="run folder (default: a temporary one)")
    parser.add_argument("--target", type=float, default=97.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    output = args.output or tempfile.mkdtemp(prefix="mnasnet-digits-")
    config = load_config(
        "paper",
        overrides={
            "data": "digits",
            "arch": args.arch,
            "resolution": args.resolution,
            "epochs": args.epochs,
            **DIGITS_SETTINGS,
            "workers": 0,
            "save_every": 0,
            "output": output,
        },
    )
    load_before = os.getloadavg()
    start = time.perf_counter()
    result = train(config, progress=sys.stderr.isatty())
    wall = time.perf_counter() - start
    load_after = os.getloadavg()
    last = result.metrics[-1]
    print(f"{args.arch} @ {args.resolution}px, {result.epoch} epochs, {result.step} steps, {args.threads} thread(s)")
    print(
        f"val top-1: best {result.best_top1:.2f}%, last {last['val_top1']:.2f}% (top-5 {last['val_top5']:.2f}%), "
        f"n={last['val_n']}"
    )
    print(
        f"wall time {wall:.0f} s; load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
        f"(on {os.cpu_count()} cores)"
    )
    print(f"run folder: {output}")
    return 0 if result.best_top1 >= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
