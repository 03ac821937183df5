"""Top-1 of an exported file next to the PyTorch model it came from."""

from __future__ import annotations

import os
from typing import Any

from mnasnet.model import MnasNet
from mnasnet.runtime import TorchPredictor

__all__ = ["compare_accuracy"]


def compare_accuracy(
    model: MnasNet, exported: str | os.PathLike, data: str | os.PathLike, *, limit: int | None = None
) -> dict[str, Any]:
    """Evaluates ``model`` (PyTorch, float32) and ``exported`` on the same images of ``data``.

    Returns:
        ``{"reference": {...}, "exported": {...}, "top1_drop": points}`` with the
        evaluator's ``top1``/``top5``/``n`` for each.
    """
    from mnasnet.evaluate import evaluate
    from mnasnet.runtime import load_predictor

    reference = evaluate(TorchPredictor(model), data, limit=limit)
    result = evaluate(load_predictor(exported), data, limit=limit)
    return {"reference": reference, "exported": result, "top1_drop": reference["top1"] - result["top1"]}
