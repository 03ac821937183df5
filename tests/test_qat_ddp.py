"""Quantisation-aware training under DDP: ``torchrun --nproc_per_node 2`` on the CPU (gloo).

The engine wraps the prepared fx ``GraphModule`` in DistributedDataParallel like any model (its
fake-quant ranges are buffers, broadcast from rank 0). Both the classifier (``mnasnet train --qat``)
and the detector (``mnasnet detect train --qat``) runs must complete, with one writer, and leave QAT
checkpoints that the int8 exporters take without calibration.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import mnasnet
from mnasnet.data.datasets import resolve_dataset
from mnasnet.data.photos import PHOTO_CLASSES
from mnasnet.deploy import export_tflite, read_metadata
from mnasnet.deploy.qat import read_qat_state

BIN = Path(sys.executable).parent
FLOAT_CLASSIFIER = Path(__file__).parent / "fixtures" / "qat_photos_small_x035_32px.safetensors"


def _torchrun(*arguments: str, port_offset: int) -> subprocess.CompletedProcess:
    port = str(29500 + (os.getpid() + port_offset) % 1000)
    command = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", port, "--no-python",
               str(BIN / "mnasnet"), *arguments]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def tiny_photos(tmp_path_factory):
    """4 training and 2 validation patches of each class of the built-in ``photos``."""
    source, root = resolve_dataset("photos"), tmp_path_factory.mktemp("ddp_photos")
    for split, count in {"train": 4, "val": 2}.items():
        for name in PHOTO_CLASSES:
            (root / split / name).mkdir(parents=True)
            for path in sorted((source / split / name).iterdir())[:count]:
                shutil.copy(path, root / split / name / path.name)
    return root


@pytest.mark.slow
def test_classifier_qat_under_torchrun_writes_an_exportable_qat_checkpoint(tiny_photos, tmp_path):
    output = tmp_path / "run"
    done = _torchrun("train", "--qat", "--weights", str(FLOAT_CLASSIFIER), "--data", str(tiny_photos),
                     "--resolution", "32", "--epochs", "1", "--batch-size", "8", "--lr", "1e-4",
                     "--warmup-epochs", "0", "--workers", "0", "--output", str(output),
                     "--no-tensorboard", "--no-plot", "--quiet", port_offset=0)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    # 40 images over 2 ranks of batch 8: 2 steps; one summary line (rank 0's)
    assert done.stdout.count("completed: 1 epoch(s), 2 steps") == 1, done.stdout
    resolved = yaml.safe_load((output / "config.yaml").read_text())["resolved"]
    assert resolved["world_size"] == 2 and resolved["global_batch"] == 16
    best = output / "best.safetensors"
    model = mnasnet.load_model(best)
    assert model.config.num_classes == len(PHOTO_CLASSES)
    state = read_qat_state(best)
    assert state is not None and state["per_channel"] is True
    tflite = export_tflite(best, tmp_path / "qat.tflite", int8=True)  # no calibration: the trained ranges
    metadata = read_metadata(tflite)
    assert metadata.precision == "int8" and metadata.quantization["calibration_images"] == 0


@pytest.mark.slow
def test_detector_qat_under_torchrun_completes(tmp_path):
    pytest.importorskip("pycocotools")
    pytest.importorskip("skimage")
    from mnasnet.detection.model import create_detector, load_detector, save_detector
    from mnasnet.detection.qat import read_detector_qat_state
    from mnasnet.detection.synthetic import SyntheticSettings, generate_faces_coins

    settings = SyntheticSettings(
        train_images=8, val_images=4, image_size=96, min_object_size=12, max_object_size=48, max_objects=3
    )
    data = generate_faces_coins(tmp_path / "fc", settings)
    detector = create_detector("ssdlite", arch="small", num_classes=3, size=64, labels=["background", "face", "coin"])
    weights = save_detector(detector.eval(), tmp_path / "float.safetensors")
    output = tmp_path / "run"
    done = _torchrun("detect", "train", "--qat", "--weights", str(weights), "--data", str(data), "--epochs", "1",
                     "--batch-size", "2", "--workers", "0", "--output", str(output), "--quiet",
                     port_offset=1)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    # 8 images over 2 ranks of batch 2: 2 steps
    assert done.stdout.count("completed: 1 epoch(s), 2 steps") == 1, done.stdout
    assert yaml.safe_load((output / "config.yaml").read_text())["resolved"]["world_size"] == 2
    last = output / "last.safetensors"
    assert load_detector(last).config.num_classes == 3
    assert read_detector_qat_state(last)["per_channel"] is True
