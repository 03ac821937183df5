"""The benchmark records every number with its context; the CLI prints a table or JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mnasnet.deploy import DeployError  # noqa: E402
from mnasnet.deploy.benchmark import benchmark, format_table  # noqa: E402
from test_export import a1_checkpoint, onnx_fp32, photo_batch  # noqa: E402, F401


def test_rows_carry_device_threads_and_versions(a1_checkpoint):  # noqa: F811
    import onnxruntime
    import torch

    rows = benchmark(a1_checkpoint, runtimes=("pytorch",), threads=1, batches=(1, 4), repeats=3, warmup=1)
    assert [(row.runtime, row.batch) for row in rows] == [("pytorch", 1), ("pytorch", 4)]
    for row in rows:
        assert row.threads == 1 and row.device and row.versions["torch"] == torch.__version__
        assert row.versions["onnxruntime"] == onnxruntime.__version__
        assert row.p90_ms >= row.median_ms > 0 and row.images_per_s == pytest.approx(row.batch * 1000 / row.median_ms)
    table = format_table(rows)
    assert "median ms" in table and "1 threads" in table


def test_exported_file_and_bad_runtime(onnx_fp32, a1_checkpoint):  # noqa: F811
    result = subprocess.run(
        [sys.executable, "-m", "mnasnet", "benchmark", "--weights", str(onnx_fp32), "--batch", "1,2",
         "--repeats", "3", "--threads", "1", "--json"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["rows"]
    assert [(row["runtime"], row["batch"]) for row in rows] == [("onnxruntime-fp32", 1), ("onnxruntime-fp32", 2)]
    with pytest.raises(DeployError, match="unknown runtime"):
        benchmark(a1_checkpoint, runtimes=("tensorrt",))
