"""Ethos-U readiness: Vela places every operator of our int8 A1 and B1 files on the NPU."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mnasnet.deploy import export_tflite  # noqa: E402
from mnasnet.deploy.npu import operator_counts, vela_report  # noqa: E402
from mnasnet.errors import CheckpointError  # noqa: E402
from test_export import make_checkpoint  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("accelerator", ["ethos-u65-256", "ethos-u55-128"])
def test_a1_int8_runs_entirely_on_the_npu(tflite_int8, accelerator):
    report = vela_report(tflite_int8, accelerator)
    assert report.cpu_operators == 0, report.format()
    assert report.cpu_fallback == []
    assert report.npu_operators >= sum(report.operators.values())  # Vela may split ops, never merge them away
    # The SE blocks are there, in their NPU form: pooled squeeze, sigmoid gate, broadcast multiply.
    assert report.operators["MEAN"] == report.operators["LOGISTIC"] + 1
    assert report.operators["MUL"] == report.operators["LOGISTIC"] > 0
    assert report.inference_time_ms is not None and report.inference_time_ms > 0


@pytest.mark.slow
def test_b1_per_tensor_int8_runs_entirely_on_the_npu(tmp_path, photo_batch, photo_folder):
    checkpoint = make_checkpoint(tmp_path / "b1.safetensors", "b1", photo_batch)
    # a few calibration images: what is checked is where the operators run, not the int8 accuracy
    out = export_tflite(checkpoint, tmp_path / "b1_int8.tflite", int8=True, calibration=photo_folder,
                        calibration_limit=4, per_channel=False)  # fmt: skip
    operators = operator_counts(out)
    assert "LOGISTIC" not in operators and operators["ADD"] > 0  # B1: no SE, residual adds in int8
    report = vela_report(out, "ethos-u65-256")
    assert report.cpu_operators == 0, report.format()


def test_npu_report_cli_and_bad_file(tflite_int8, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mnasnet", "npu-report", str(tflite_int8), "--accelerator", "ethos-u65-256"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "CPU fallback operators: 0" in result.stdout and "ms/inference" in result.stdout
    corrupt = tmp_path / "corrupt.tflite"
    corrupt.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a TFLite file"):
        vela_report(corrupt)


@pytest.mark.slow
def test_target_picks_average_pooling_which_also_runs_entirely_on_the_npu(
    a1_checkpoint,
    photo_folder,
    photo_batch,
    tflite_int8,
    tmp_path,
):
    from mnasnet.cli import main
    from mnasnet.runtime import load_predictor

    out = tmp_path / "a1_npu.tflite"
    assert main(["export", "--weights", str(a1_checkpoint), "--int8", "--calibration", str(photo_folder),
                 "--target", "ethos-u65-256", str(out)]) == 0  # fmt: skip
    pooled, meaned = operator_counts(out), operator_counts(tflite_int8)
    # the same global means, as AVERAGE_POOL_2D instead of MEAN (one per SE block, one in the head)
    assert "MEAN" not in pooled and pooled["AVERAGE_POOL_2D"] == meaned["MEAN"] == meaned["LOGISTIC"] + 1
    report = vela_report(out, "ethos-u65-256")
    assert report.cpu_operators == 0, report.format()
    # same arithmetic: both int8 files rank the photos alike
    pooled_logits, meaned_logits = load_predictor(out)(photo_batch), load_predictor(tflite_int8)(photo_batch)
    agreement = (pooled_logits.argmax(1) == meaned_logits.argmax(1)).mean()
    assert agreement >= 0.8, agreement
