"""Inference speed of our MnasNet against timm's, side by side in one run.

    .venv/bin/python benchmarks/model_speed.py [--arch a1] [--threads 2] [--rounds 5]

Three models run in eval mode under torch.inference_mode on the same inputs,
interleaved round by round so that machine noise hits all alike: ours as built
(plain modules, like timm's), ours after ``mnasnet.fuse_model`` (BN folded into
real convs, channels-last), and timm's eager model. Prints the median latency
of each and the ratios timm/ours (> 1 means ours is faster). Targets: fused
>= 2x timm at batch 1 and 32; plain about 1x.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import mnasnet  # noqa: E402
from mnasnet.fuse import fuse_model  # noqa: E402

from oracles import import_timm  # noqa: E402

TIMM_NAMES = {"a1": "semnasnet_100", "b1": "mnasnet_100", "small": "mnasnet_small"}


def time_call(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        for _ in range(repeats):
            model(x)
        return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="a1", choices=sorted(TIMM_NAMES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--resolution", type=int, default=224)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    timm = import_timm()
    plain = mnasnet.create_model(args.arch).eval()
    fused = fuse_model(plain)
    theirs = timm.create_model(TIMM_NAMES[args.arch]).eval()
    print(
        f"MnasNet-{args.arch} vs timm {TIMM_NAMES[args.arch]}, {args.resolution}px, {args.threads} threads, "
        f"torch {torch.__version__}, timm {timm.__version__}"
    )
    print(f"{'batch':>5} {'fused ms':>9} {'plain ms':>9} {'timm ms':>9} {'timm/fused':>11} {'timm/plain':>11}")
    for batch, repeats in ((1, 20), (32, 2)):
        x = torch.randn(batch, 3, args.resolution, args.resolution)
        models = {"fused": fused, "plain": plain, "timm": theirs}
        for model in models.values():  # warm-up: first calls allocate and pick kernels
            time_call(model, x, 2)
        times = {name: [] for name in models}
        for _ in range(args.rounds):
            for name, model in models.items():
                times[name].append(time_call(model, x, repeats))
        ms = {name: statistics.median(values) * 1e3 for name, values in times.items()}
        print(
            f"{batch:>5} {ms['fused']:>9.1f} {ms['plain']:>9.1f} {ms['timm']:>9.1f} "
            f"{ms['timm'] / ms['fused']:>11.2f} {ms['timm'] / ms['plain']:>11.2f}"
        )


if __name__ == "__main__":
    main()
