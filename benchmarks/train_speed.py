"""Training throughput (images/s): our loop's step against a plain eager PyTorch loop over timm's model.

Both sides train the same architecture on the same in-memory batch, side by side in
one process, in interleaved rounds (so background load hits both alike). Ours runs
the full recipe step (TF RMSProp, L2 term, label smoothing, EMA of weights and BN
statistics); the baseline is the textbook loop (torch RMSprop, cross entropy,
nothing else). Prints images/s per variant and the ratios to the baseline.

    python benchmarks/train_speed.py --arch small --resolution 96 --batch-size 32
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from mnasnet.engine import TrainStep  # noqa: E402
from mnasnet.model import create_model  # noqa: E402
from mnasnet.tasks.classification import ClassificationTask  # noqa: E402
from mnasnet.train import TrainConfig  # noqa: E402

TIMM_NAMES = {
    ("a1", 1.0): "semnasnet_100",
    ("b1", 1.0): "mnasnet_100",
    ("small", 1.0): "mnasnet_small",
    ("a1", 0.75): "semnasnet_075",
    ("b1", 0.5): "mnasnet_050",
    ("a1", 1.4): "semnasnet_140",
}


def timm_model(arch: str, width: float, num_classes: int):
    from oracles import import_timm

    timm = import_timm()
    return timm.create_model(TIMM_NAMES[(arch, width)], num_classes=num_classes)


def baseline_step(model, images, targets):
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, momentum=0.9, eps=1e-3)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images), targets, label_smoothing=0.1)
        loss.backward()
        optimizer.step()

    return step


def our_step(arch, width, images, targets, num_classes, **settings):
    model = create_model(
        arch, width_multiplier=None if width == 1.0 else width, num_classes=num_classes, resolution=images.shape[-1]
    )
    config = TrainConfig(arch=arch, **settings)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    task = ClassificationTask(config)  # only its loss is used: smoothed cross entropy and correct counts
    train_step = TrainStep(model, task=task, config=config.engine_config(), device=torch.device("cpu"))
    batch = [train_step.prepare((images, targets))]

    def step():
        train_step(batch, 1e-3)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="small", choices=sorted({a for a, _ in TIMM_NAMES}))
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--resolution", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.randn(args.batch_size, 3, args.resolution, args.resolution)
    targets = torch.randint(0, args.classes, (args.batch_size,))
    baseline = timm_model(args.arch, args.width, args.classes).train()
    variants = {
        "timm eager (baseline)": baseline_step(baseline, images, targets),
        "ours fp32": our_step(args.arch, args.width, images, targets, args.classes),
        "ours channels-last": our_step(args.arch, args.width, images, targets, args.classes, channels_last=True),
        "ours channels-last + bf16": our_step(
            args.arch, args.width, images, targets, args.classes, channels_last=True, amp="bf16"
        ),
    }
    for step in variants.values():  # warm-up: oneDNN primitive creation, allocator
        step()
        step()
    timings: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, step in variants.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            timings[name].append(args.batch_size * args.steps / (time.perf_counter() - start))
    print(
        f"{args.arch} x{args.width} @ {args.resolution}px, batch {args.batch_size}, {args.classes} classes, "
        f"{torch.get_num_threads()} threads, median of {args.rounds} rounds x {args.steps} steps"
    )
    base = statistics.median(timings["timm eager (baseline)"])
    for name, values in timings.items():
        rate = statistics.median(values)
        print(f"  {name:<28} {rate:8.1f} images/s   ratio {rate / base:5.2f}")


if __name__ == "__main__":
    main()
