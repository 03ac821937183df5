"""The demo's detection section: train a small detector on faces-coins briefly, score it, draw one image.

:func:`detection_demo` returns the figures and file paths the demo report shows; the
report itself (and the exports' AP per format) is assembled by :mod:`mnasnet.workflow`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

__all__ = ["detection_demo"]


def detection_demo(
    output_dir: str | os.PathLike,
    *,
    data: str = "faces-coins",
    epochs: int = 5,
    size: int | None = None,
    max_steps: int | None = None,
    eval_limit: int | None = None,
    threads: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Trains, evaluates and draws a small SSDLite detector in ``output_dir`` (a couple of CPU minutes).

    The built-in dataset's tuned settings, shortened to ``epochs`` (the full recipe is
    ``mnasnet detect train``); ``size`` overrides the tuned input size.

    Returns:
        ``{"checkpoint", "run_dir", "train_seconds", "epochs", "steps", "metrics" (the COCO dict of
        :func:`~mnasnet.detection.evaluate.evaluate_detector` on the val split), "latency_ms" (batch-1
        PyTorch, median), "drawn" (a val image with its detections drawn), "detections" (on it)}``.
    """
    import numpy as np
    import torch

    from mnasnet.detection.evaluate import evaluate_detector
    from mnasnet.detection.predict import detect_images, prepare_image, write_drawings
    from mnasnet.detection.runtime import load_detection_predictor
    from mnasnet.detection.synthetic import resolve_detection_dataset
    from mnasnet.tasks.detection import detection_config, train_detector

    if threads is not None:
        torch.set_num_threads(threads)
    output = Path(output_dir)
    root = resolve_detection_dataset(data)
    sized = {"size": size} if size is not None else {}  # default: the built-in dataset's tuned size
    config = detection_config(
        data,
        output=str(output / "run"),
        epochs=epochs,
        max_steps=max_steps,
        eval_every=epochs,
        **sized,
        workers=0,  # the demo has loaded JAX (the TFLite exporter) by now: forking a loader worker could deadlock
    )
    started = time.perf_counter()
    result = train_detector(config, progress=progress)
    train_seconds = time.perf_counter() - started
    if result.status == "interrupted":  # Ctrl-C or SIGTERM: the engine saved and stopped; so does the caller
        raise KeyboardInterrupt
    checkpoint = result.run_dir / "best.safetensors"
    if not checkpoint.is_file():  # stopped by max_steps before an evaluation: the engine saved the last weights
        checkpoint = result.run_dir / "last.safetensors"

    predictor = load_detection_predictor(checkpoint)
    metrics = evaluate_detector(predictor, data, limit=eval_limit)

    from mnasnet.data.images import load_image

    image_path = sorted((root / "images" / "val").iterdir())[0]
    prepared = prepare_image(load_image(image_path), predictor.config)
    batch = prepared.image[None]
    predictor.raw(batch)  # warm up
    timings = []
    for _ in range(10):
        begin = time.perf_counter()
        predictor.detect(batch, [prepared.original_size])
        timings.append(time.perf_counter() - begin)
    (found,) = detect_images(predictor, [image_path], score_threshold=0.3)
    (drawn,) = write_drawings([found], output / "drawn")
    return {
        "checkpoint": checkpoint,
        "run_dir": result.run_dir,
        "train_seconds": train_seconds,
        "epochs": result.epoch,
        "steps": result.step,
        "status": result.status,
        "metrics": metrics,
        "latency_ms": float(np.median(timings) * 1000),
        "drawn": drawn,
        "detections": [detection.to_dict() for detection in found.detections],
    }
