"""Start-up time of the ``mnasnet`` command: ``--help`` of the command and of a few sub-commands.

    .venv/bin/python benchmarks/startup.py [--repeats 5]

Each is run as a fresh subprocess (as a user would), ``--repeats`` times; prints
the median wall time and whether it meets the target of 0.3 s. For reference, it
also times ``python -c pass`` and ``python -c "import torch"``: the CLI should sit
near the first, far below the second.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

TARGET_S = 0.3
COMMANDS = (
    ["--help"],
    ["train", "--help"],
    ["evaluate", "--help"],
    ["predict", "--help"],
    ["export", "--help"],
    ["demo", "--help"],
)


def _median_seconds(argv: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    python = sys.executable
    print(f"median of {args.repeats} runs, seconds")
    for label, argv in (("python -c pass", [python, "-c", "pass"]), ("import torch", [python, "-c", "import torch"])):
        print(f"  {label:<28} {_median_seconds(argv, args.repeats):6.3f}   (reference)")
    worst = 0.0
    for command in COMMANDS:
        seconds = _median_seconds([python, "-m", "mnasnet", *command], args.repeats)
        worst = max(worst, seconds)
        verdict = "ok" if seconds <= TARGET_S else f"over the {TARGET_S} s target"
        print(f"  mnasnet {' '.join(command):<20} {seconds:6.3f}   {verdict}")
    return 0 if worst <= TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
