"""Latency backends: Vela against its own CSV, LiteRT / ONNX Runtime against timing the file directly,
the lookup table against torch's FLOP counter and end-to-end runs, a user's command against a stand-in board."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
import time
from importlib import metadata

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mnasnet.errors import MnasNetError
from mnasnet.search.latency import (
    CandidateExporter,
    CommandBackend,
    LatencyBackend,
    LatencyCache,
    LatencyError,
    LatencyResult,
    LiteRTBackend,
    LookupTableBackend,
    OnnxRuntimeBackend,
    VelaBackend,
    measure_error,
)
from mnasnet.search.space import Candidate, parse_space

# Tiny candidates keep exports to a second or a few.
TINY = Candidate(("r1_k3_s11_e1_i8_o8", "r2_k5_s22_e3_i8_o16_se0.25"), resolution=64)
REFERENCE = Candidate(("r1_k3_s11_e1_i8_o8", "r1_k3_s22_e6_i8_o16"), resolution=64)
TINY_SPACE = {
    "stem_filters": 8,
    "stages": [{"repeats": 1, "filters": 8, "stride": 1}, {"repeats": 2, "filters": 16, "stride": 2}],
    "choices": {"expand_ratio": [1, 3], "filters": [1.0, 2.0]},
    "resolution": [64, 96],
}


@pytest.fixture(scope="module")
def exporter(tmp_path_factory):
    return CandidateExporter(tmp_path_factory.mktemp("exports"))


# -- a user's command -----------------------------------------------------------------------------

BOARD = """
import os, sys, time
args = dict(arg.split("=", 1) for arg in sys.argv[1:])
with open(args["--log"], "a") as log:
    log.write(args["--graph"] + "\\n")
mode = args.get("--mode", "ok")
if mode == "fail":
    print("board unreachable: connection refused", file=sys.stderr)
    sys.exit(3)
if mode == "sleep":
    time.sleep(30)
size = os.path.getsize(args["--graph"])
if mode == "us":
    print(f"Inference timings in us: Init: 1200, First inference: 5000, Inference (avg): {size / 10:.1f}")
elif mode == "silent":
    print("done")
else:
    print(f"threads {args['--threads']}: warm-up 12.5 ms\\nInference (avg): {size / 1000:.3f} ms")
"""


@pytest.fixture
def board(tmp_path):
    script = tmp_path / "board.py"
    script.write_text(textwrap.dedent(BOARD))
    log = tmp_path / "calls.log"

    def template(mode="ok"):
        return f"{sys.executable} {script} --graph={{model}} --threads={{threads}} --log={log} --mode={mode}"

    return template, log


def _calls(log):
    return log.read_text().splitlines() if log.exists() else []


def test_command_backend_reads_the_boards_latency_and_caches_it(board, exporter, tmp_path):
    template, log = board
    cache = tmp_path / "cache"
    backend = CommandBackend(template(), fmt="onnx-fp32", threads=2, exporter=exporter, cache_dir=cache)
    result = backend.measure(TINY)
    path = exporter.path(TINY, "onnx-fp32")
    assert not result.failed and result.feasible
    assert result.ms == pytest.approx(round(os.path.getsize(path) / 1000, 3))  # the last "<number> ms", not 12.5
    assert _calls(log) == [str(path)]
    # cached: on disk as JSON lines, read back by a fresh backend with the same identity
    again = CommandBackend(template(), fmt="onnx-fp32", threads=2, exporter=exporter, cache_dir=cache)
    repeat = again.measure(TINY)
    assert repeat.cached and repeat.ms == result.ms and len(_calls(log)) == 1
    lines = [json.loads(line) for line in next(cache.glob("command-*.jsonl")).read_text().splitlines()]
    assert [line["arch_hash"] for line in lines] == [TINY.arch_hash]
    assert lines[0]["identity"]["threads"] == 2 and lines[0]["candidate"]["blocks"] == list(TINY.blocks)
    # another thread count is another identity: measured again, into another file
    CommandBackend(template(), fmt="onnx-fp32", threads=1, exporter=exporter, cache_dir=cache).measure(TINY)
    assert len(_calls(log)) == 2 and len(list(cache.glob("command-*.jsonl"))) == 2


def test_command_backend_with_a_regex_in_microseconds(board, exporter):
    template, _ = board
    backend = CommandBackend(
        template("us"), fmt="onnx-fp32", regex=r"Inference \(avg\): ([\d.]+)", scale=1e-3,
        exporter=exporter, cache_dir=False,
    )  # fmt: skip
    size = os.path.getsize(exporter.export(TINY, "onnx-fp32"))
    assert backend.measure(TINY).ms == pytest.approx(round(size / 10, 1) / 1000)


def test_failing_commands_are_failed_trials_not_crashes(board, exporter, tmp_path):
    template, log = board
    failing = CommandBackend(template("fail"), fmt="onnx-fp32", exporter=exporter, cache_dir=tmp_path / "cache")
    result = failing.measure(TINY)
    assert result.failed and result.ms is None and not result.feasible
    assert "exited with status 3" in result.error and "board unreachable" in result.details["stderr_tail"]
    failing.measure(TINY)
    assert len(_calls(log)) == 2  # a failure is not cached: the next call tries again
    slow = CommandBackend(template("sleep"), fmt="onnx-fp32", timeout_s=0.5, exporter=exporter, cache_dir=False)
    started = time.perf_counter()
    result = slow.measure(TINY)
    assert result.failed and "timed out after 0.5 s" in result.error and time.perf_counter() - started < 10
    silent = CommandBackend(template("silent"), fmt="onnx-fp32", exporter=exporter, cache_dir=False)
    assert "no latency matching" in silent.measure(TINY).error


@pytest.mark.parametrize(
    ("template", "options", "message"),
    [
        ("benchmark_model --graph=model.tflite", {}, "needs {model}"),
        ("ssh {device} benchmark_model --graph={model}", {}, "unknown field {device}"),
        ("run {model", {}, "bad command template"),
        ("run {model}", {"regex": "([0-9]+"}, "bad latency regex"),
        ("run {model}", {"regex": "[0-9]+ ms"}, "needs a group"),
        ("run {model}", {"fmt": "tflite-int4"}, "unknown model format"),
    ],
)
def test_bad_command_settings_raise_one_clear_error(template, options, message):
    with pytest.raises(LatencyError, match=message) as info:
        CommandBackend(template, cache_dir=False, **options)
    assert isinstance(info.value, MnasNetError)


def test_cache_skips_a_torn_last_line(tmp_path):
    cache = LatencyCache(tmp_path)
    cache.put("k", "abc", {"result": {"ms": 1.5}})
    with (tmp_path / "k.jsonl").open("a") as handle:
        handle.write('{"arch_hash": "def", "resu')  # a writer killed mid-line
    assert LatencyCache(tmp_path).get("k", "abc") == {"arch_hash": "abc", "result": {"ms": 1.5}}
    assert LatencyCache(tmp_path).get("k", "def") is None


# -- Vela -----------------------------------------------------------------------------------------


def _vela_csv_ms(path, accelerator, output_dir):
    """Runs Vela itself and reads the estimate from the summary CSV it always writes."""
    command = [
        sys.executable, "-c", "import sys; from ethosu.vela.vela import main; sys.exit(main())",
        str(path), "--accelerator-config", accelerator, "--output-dir", str(output_dir),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    summary = next(output_dir.glob("*_summary_*.csv"))
    return float(next(csv.DictReader(summary.open()))["inference_time"]) * 1000


@pytest.mark.slow
def test_vela_backend_gives_velas_own_estimate(exporter, tmp_path):
    for accelerator in ("ethos-u55-128", "ethos-u65-256"):
        backend = VelaBackend(accelerator, pooling="mean", exporter=exporter, cache_dir=tmp_path / "cache")
        result = backend.measure(TINY)
        assert not result.failed and result.feasible, result
        assert result.details["cpu_operators"] == 0
        expected = _vela_csv_ms(exporter.path(TINY, "tflite-int8"), accelerator, tmp_path / accelerator)
        assert result.ms == pytest.approx(expected, rel=1e-6)
        identity = backend.identity()
        assert identity["vela"] == metadata.version("ethos-u-vela") and identity["accelerator"] == accelerator
    assert len(list((tmp_path / "cache").glob("vela-*.jsonl"))) == 2


def test_vela_cpu_fallback_is_infeasible_or_penalised():
    from mnasnet.deploy.npu import NpuReport

    report = NpuReport(
        file="m.tflite", accelerator="ethos-u55-128", system_config="", cpu_operators=2, npu_operators=30,
        cpu_fallback=[("ADD", "t1", "float"), ("MEAN", "t2", "axis")], operators={}, inference_time_ms=3.0,
        macs=None, sram_kib=None, dram_kib=None,
    )  # fmt: skip
    strict = VelaBackend(cache_dir=False).result_from_report(report)
    assert not strict.feasible and strict.ms == 3.0 and strict.details["cpu_fallback"] == ["ADD", "MEAN"]
    lenient = VelaBackend(cpu_fallback="penalty", penalty_ms=0.5, cache_dir=False).result_from_report(report)
    assert lenient.feasible and lenient.ms == pytest.approx(4.0)
    with pytest.raises(LatencyError, match="unknown accelerator"):
        VelaBackend("ethos-u99-1", cache_dir=False)
    with pytest.raises(LatencyError, match="cpu_fallback"):
        VelaBackend(cpu_fallback="ignore", cache_dir=False)


# -- runtimes on this machine ---------------------------------------------------------------------


@pytest.mark.slow
def test_litert_int8_with_reference_matches_timing_the_file(exporter, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    backend = LiteRTBackend(int8=True, reference=REFERENCE, repeats=15, exporter=exporter, cache_dir=tmp_path)
    result = backend.measure(TINY)
    assert not result.failed and result.feasible, result
    details = result.details
    assert result.ms == pytest.approx(details["raw_ms"] / details["reference_ms"] * details["reference_calibrated_ms"])
    # The file timed is a real int8 model that LiteRT's own interpreter runs (times are not asserted:
    # they are noise on a shared machine; benchmarks/ compares them).
    interpreter = Interpreter(model_path=str(exporter.path(TINY, "tflite-int8")), num_threads=1)
    interpreter.allocate_tensors()
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert np.isfinite(details["raw_ms"]) and details["raw_ms"] > 0
    # The calibrated reference is stored with the cache, so later sessions share its scale.
    fresh = LiteRTBackend(int8=True, reference=REFERENCE, exporter=exporter, cache_dir=tmp_path)
    assert fresh.reference_ms() == backend.reference_ms()
    assert fresh.measure(TINY).cached


@pytest.mark.slow
def test_litert_fp32_and_onnxruntime_time_the_file(exporter):
    import onnxruntime as ort

    fp32 = LiteRTBackend(int8=False, reference=None, repeats=10, exporter=exporter, cache_dir=False).measure(TINY)
    assert not fp32.failed and fp32.ms > 0 and "reference_ms" not in fp32.details
    onnx = OnnxRuntimeBackend(reference=None, repeats=15, exporter=exporter, cache_dir=False).measure(TINY)
    assert not onnx.failed, onnx
    assert np.isfinite(onnx.ms) and onnx.ms > 0
    # the timed file is a float model ONNX Runtime runs to the candidate's logits shape
    session = ort.InferenceSession(str(exporter.path(TINY, "onnx-fp32")))
    feed = {session.get_inputs()[0].name: np.zeros((1, 3, 64, 64), np.float32)}
    assert session.run(None, feed)[0].ndim == 2


def test_runtime_settings_are_checked():
    with pytest.raises(LatencyError, match="threads >= 1"):
        LiteRTBackend(threads=0, cache_dir=False)


# -- lookup table ---------------------------------------------------------------------------------


class FlopBackend(LatencyBackend):
    """'Latency' = multiply-adds torch's FLOP counter sees in the whole network (an additive cost)."""

    kind = "flops"

    def _measure(self, candidate):
        model = candidate.build_model().eval()
        size = candidate.resolution
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(1, 3, size, size))
        return LatencyResult(ms=counter.get_total_flops() / 2e6, feasible=True)


def test_lookup_table_sums_blocks_exactly_for_an_additive_cost(tmp_path):
    space = parse_space(TINY_SPACE)
    rng = np.random.default_rng(3)
    candidates = [space.sample(rng) for _ in range(4)]
    source = FlopBackend(cache_dir=tmp_path)
    table = LookupTableBackend(source)
    report = measure_error(table, source, candidates)
    assert report["max"] < 1e-9 and len(report["rows"]) == 4
    # every term is one stem, a block in its input context, or the head
    assert all(key.split(":")[0] in ("stem", "block", "head") for key in table.table.entries)
    path = tmp_path / "table.json"
    table.table.save(path)
    reloaded = LookupTableBackend(source, type(table.table).load(path))
    assert reloaded.measure(candidates[0]).ms == pytest.approx(report["rows"][0]["measured_ms"])
    # A table filled from the whole space already holds every term of any candidate of it.
    full = LookupTableBackend(source)
    full.fill(space)
    count = len(full.table.entries)
    for candidate in [space.sample(rng) for _ in range(20)]:
        assert full.measure(candidate).ms == pytest.approx(source.measure(candidate).ms, rel=1e-9)
    assert len(full.table.entries) == count
    with pytest.raises(LatencyError, match="another backend"):
        LookupTableBackend(FlopBackend(cache_dir=False), type(table.table)(identity={"backend": "vela"}))


@pytest.mark.slow
def test_lookup_table_against_end_to_end_onnxruntime(exporter):
    backend = OnnxRuntimeBackend(reference=None, repeats=15, exporter=exporter, cache_dir=False)
    table = LookupTableBackend(backend)
    report = measure_error(table, backend, [TINY])
    # Dispatch overhead per operator and cache effects are not additive; on tiny models the sum is rough.
    assert report["rows"][0]["measured_ms"] > 0 and report["max"] < 1.5
