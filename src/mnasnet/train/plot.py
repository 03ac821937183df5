"""PNG curves of a run: loss, accuracy and learning rate per epoch, from ``metrics.jsonl``."""

from __future__ import annotations

import os
from pathlib import Path

from mnasnet.engine.metrics import read_metrics
from mnasnet.errors import MnasNetError
from mnasnet.extras import require
from mnasnet.fileio import atomic_path

__all__ = ["plot_run"]


def plot_run(run_dir: str | os.PathLike, output: str | os.PathLike | None = None) -> Path:
    """Draws ``RUN_DIR/curves.png`` (or ``output``) from the run's metrics and returns its path.

    Raises:
        MnasNetError: the folder has no metrics yet.
    """
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    if not rows:
        raise MnasNetError(f"no metrics to plot in {run_dir} (expected {run_dir / 'metrics.jsonl'})")
    matplotlib = require("matplotlib")

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    def series(key: str) -> tuple[list[float], list[float]]:
        pairs = [(row["epoch"], row[key]) for row in rows if row.get(key) is not None]
        return [x for x, _ in pairs], [y for _, y in pairs]

    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = (
        ("loss", (("train_loss", "train"), ("val_loss", "val"))),
        ("accuracy (%)", (("train_top1", "train top-1"), ("val_top1", "val top-1"), ("val_top5", "val top-5"))),
        ("learning rate", (("lr", "lr at epoch end"),)),
    )
    for axis, (title, keys) in zip(axes, panels, strict=True):
        for key, label in keys:
            xs, ys = series(key)
            if xs:
                axis.plot(xs, ys, marker="o" if len(xs) < 30 else None, label=label)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        if axis.has_data():
            axis.legend()
    figure.suptitle(f"{run_dir.name}: {len(rows)} epochs")
    figure.tight_layout()
    target = Path(output) if output is not None else run_dir / "curves.png"
    with atomic_path(target) as temp:
        figure.savefig(temp, format="png", dpi=100)
    plt.close(figure)
    return target
