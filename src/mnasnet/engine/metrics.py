"""Per-epoch metrics: ``metrics.jsonl`` (the record), ``metrics.csv`` (for spreadsheets), TensorBoard."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

from mnasnet.fileio import atomic_write_text

__all__ = ["MetricsWriter", "read_metrics"]


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of ``RUN_DIR/metrics.jsonl`` (an empty list if there are none yet)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsWriter:
    """Appends one row per epoch; only the main process creates one."""

    def __init__(self, run_dir: str | os.PathLike, *, tensorboard: bool = True, resume_epoch: int | None = None):
        self.run_dir = Path(run_dir)
        self.rows = read_metrics(self.run_dir)
        if resume_epoch is not None:
            # an interrupted run may have logged an epoch its checkpoint does not cover
            self.rows = [row for row in self.rows if row.get("epoch", 0) <= resume_epoch]
        else:
            self.rows = []
        self._rewrite()
        self.tensorboard = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is an optional extra: say so once, keep training
                print(
                    "warning: tensorboard is not installed, no TensorBoard logs "
                    "(pip install 'mnasnet[train]'; metrics.jsonl and metrics.csv are still written)",
                    file=sys.stderr,
                )
                SummaryWriter = None
            if SummaryWriter is not None:
                self.tensorboard = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def _rewrite(self) -> None:
        atomic_write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in self.rows))
        keys: list[str] = []
        for row in self.rows:
            keys.extend(key for key in row if key not in keys)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.run_dir / "metrics.csv", buffer.getvalue() if keys else "")

    def log_epoch(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self._rewrite()
        if self.tensorboard is not None:
            step = row.get("step", row["epoch"])
            for key, value in row.items():
                if key not in ("epoch", "step") and isinstance(value, int | float):
                    self.tensorboard.add_scalar(f"epoch/{key}", value, step)
            self.tensorboard.flush()

    def log_step(self, step: int, values: dict[str, float]) -> None:
        if self.tensorboard is not None:
            for key, value in values.items():
                self.tensorboard.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
