"""The main job end to end, in its reduced (--quick) configuration, as `make demo` runs it."""

import json
import re

import pytest
from PIL import Image

import mnasnet
from mnasnet.cli import main


@pytest.mark.slow
def test_demo_writes_a_report_with_measured_figures(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MNASNET_HOME", str(tmp_path / "home"))
    output = tmp_path / "report"
    assert main(["demo", "--quick", "--output", str(output)]) == 0
    assert f"report: {output / 'README.md'}" in capsys.readouterr().out

    report = (output / "README.md").read_text()
    results = json.loads((output / "results.json").read_text())
    files = ["model.safetensors", "model_fp32.onnx", "model_int8.onnx", "model_fp32.tflite", "model_int8.tflite",
             "model_int8_per_tensor.tflite"]  # fmt: skip
    for name in files:
        assert (output / "models" / name).stat().st_size > 10_000
        assert f"| `{name}` |" in report
        assert 0 <= results["accuracy"][name]["top1"] <= 100
    # float32 exports classify as PyTorch does; the evaluation set is the digits validation split
    torch_top1 = results["accuracy"]["model.safetensors"]["top1"]
    assert abs(results["accuracy"]["model_fp32.onnx"]["top1"] - torch_top1) < 0.5
    assert abs(results["accuracy"]["model_fp32.tflite"]["top1"] - torch_top1) < 0.5
    assert results["accuracy"]["model.safetensors"]["n"] > 300
    # every runtime measured, with real timings
    runtimes = {(row["file"], row["batch"]) for row in results["latency"]}
    assert ("model.safetensors", 32) in runtimes and ("model_int8.tflite", 1) in runtimes
    assert all(row["median_ms"] > 0 and row["images_per_s"] > 0 for row in results["latency"])
    # parameters and MACs of the trained model, as the profiler counts them
    model = mnasnet.load_model(output / "models" / "model.safetensors")
    assert results["params"] == sum(p.numel() for p in model.parameters())
    assert f"{results['params']:,} parameters" in report
    # Vela put every operator on the NPU
    assert re.search(r"\*\*\d+ operators on the NPU, 0 falling back to the CPU\*\*", report)
    # plots are real PNGs, and held-out images were classified
    for plot in ("training_curves.png", "latency_vs_accuracy.png"):
        with Image.open(output / plot) as image:
            assert image.format == "PNG" and image.size[0] > 300
    assert len(results["predictions"]) == 2 and all(p.get("top") for p in results["predictions"])

    # the extra sections ran, each with figures from outside yardsticks
    assert "error" not in results["qat"], results["qat"]
    from ai_edge_litert.interpreter import Interpreter

    for row in results["qat"]["rows"]:
        interpreter = Interpreter(model_path=str(output / "models" / row["file"]))
        assert interpreter.get_input_details()[0]["dtype"].__name__ == "int8"  # a full-integer file
        assert 0 <= row["qat_top1"] <= 100 and f"`{row['file']}`" in report
    detection = results["detection"]
    assert "error" not in detection, detection
    assert detection["metrics"]["n"] == 16 and 0 <= detection["int8_metrics"]["AP50"] <= 1  # pycocotools' figures
    assert detection["npu"]["cpu_operators"] == 0 and detection["npu"]["npu_operators"] > 50
    with Image.open(detection["drawn"]) as image:
        assert image.format in ("PNG", "JPEG") and image.size[0] > 100
    search = results["search"]
    assert "error" not in search, search
    trials = [json.loads(line) for line in (output / "search" / "trials.jsonl").read_text().splitlines()]
    assert sum(record["kind"] == "search" for record in trials) == 2
    assert json.loads((output / "search" / "pareto.json").read_text())
    for title in ("## Post-training int8 against quantisation-aware training", "## Object detection",
                  "## Architecture search"):  # fmt: skip
        assert title in report


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--epochs", "0"], "epochs must be an integer >= 1"),
        (["--arch", "bogus"], "unknown architecture 'bogus'"),
        (["--width", "-1"], "width must be a finite number > 0"),
        (["--resolution", "7"], "resolution must be an integer >= 8"),
        (["--batch-size", "0"], "batch_size must be an integer >= 1"),
        (["--data", "MISSING"], "dataset folder not found"),
        (["--output", "FILE"], "is a file, not a folder"),
    ],
)
def test_bad_demo_options_fail_in_one_line_before_writing_anything(tmp_path, capsys, arguments, message):
    output, afile = tmp_path / "report", tmp_path / "afile"
    afile.write_text("not a folder")
    replacements = {"MISSING": str(tmp_path / "missing"), "FILE": str(afile)}
    arguments = [replacements.get(argument, argument) for argument in arguments]
    if "--output" not in arguments:
        arguments = ["--output", str(output), *arguments]
    assert main(["demo", *arguments]) == 2
    error = capsys.readouterr().err.strip()
    # a progress line may come first ("[1/11] preparing the dataset ..."); one error line, no traceback
    assert "Traceback" not in error and error.splitlines()[-1].startswith("mnasnet demo: error: "), error
    assert message in error.splitlines()[-1] and sum("error" in line for line in error.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"] and afile.read_text() == "not a folder"
