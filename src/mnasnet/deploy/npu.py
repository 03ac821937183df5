"""Ethos-U readiness: compile an int8 TFLite file with Arm's Vela and report what runs where.

Vela places every operator it supports on the NPU and leaves the rest to the
CPU (TFLite Micro). NXP's own int8 MnasNet keeps float ADDs, DEQUANTIZE/QUANTIZE
pairs and an NCHW MEAN, which fall back; the files ``mnasnet export`` writes run
entirely on the NPU.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from mnasnet.deploy.quantize import DeployError
from mnasnet.errors import CheckpointError
from mnasnet.extras import require

__all__ = ["ACCELERATORS", "NpuReport", "check_accelerator", "operator_counts", "vela_report"]

ACCELERATORS = ("ethos-u65-256", "ethos-u55-128", "ethos-u65-512", "ethos-u55-256", "ethos-u85-256")

_CPU_OP = re.compile(r"^Warning \(supported operators\) operator: (\w+), ofm: '(.*)'")
_COUNT = re.compile(r"^(CPU|NPU) operators = (\d+)")


@dataclasses.dataclass
class NpuReport:
    """What Vela made of one file for one accelerator.

    Attributes:
        cpu_operators / npu_operators: operator counts after Vela's graph rewrites.
        cpu_fallback: ``(operator type, output tensor, reason)`` of each operator left to the CPU.
        operators: operator types and counts of the input file.
        inference_time_ms: Vela's estimate of one inference on the NPU.
        macs, sram_kib, dram_kib: the estimate's multiply-adds and memory use.
    """

    file: str
    accelerator: str
    system_config: str
    cpu_operators: int
    npu_operators: int
    cpu_fallback: list[tuple[str, str, str]]
    operators: dict[str, int]
    inference_time_ms: float | None
    macs: int | None
    sram_kib: float | None
    dram_kib: float | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def format(self) -> str:
        lines = [
            f"{self.file} on {self.accelerator} ({self.system_config}):",
            f"  NPU operators: {self.npu_operators}   CPU fallback operators: {self.cpu_operators}",
        ]
        if self.inference_time_ms is not None:
            lines.append(
                f"  Vela estimate: {self.inference_time_ms:.3f} ms/inference "
                f"({1000 / self.inference_time_ms:.1f} fps), "
                f"{(self.macs or 0) / 1e6:.1f}M MACs, SRAM {self.sram_kib:.1f} KiB, DRAM {self.dram_kib:.1f} KiB"
            )
        lines.append("  input operators: " + ", ".join(f"{name} x{count}" for name, count in self.operators.items()))
        fallback = collections.Counter(op for op, _, _ in self.cpu_fallback)
        if fallback:
            lines.append("  on the CPU: " + ", ".join(f"{name} x{count}" for name, count in fallback.items()))
            reasons = sorted({reason for _, _, reason in self.cpu_fallback if reason})
            lines.extend(f"    reason: {reason}" for reason in reasons[:8])
        return "\n".join(lines)


def operator_counts(path: str | os.PathLike) -> dict[str, int]:
    """Operator types of a TFLite file and how often each occurs."""
    schema = require("ai_edge_litert.schema_py_generated")

    from mnasnet.deploy.metadata import _read_tflite_bytes

    model = schema.Model.GetRootAs(_read_tflite_bytes(path), 0)
    names = {value: key for key, value in vars(schema.BuiltinOperator).items() if not key.startswith("_")}
    counts: collections.Counter = collections.Counter()
    graph = model.Subgraphs(0)
    for index in range(graph.OperatorsLength()):
        code = model.OperatorCodes(graph.Operators(index).OpcodeIndex())
        counts[names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")] += 1
    return dict(counts.most_common())


def _parse_cpu_operations(stdout: str) -> list[tuple[str, str, str]]:
    fallback, lines = [], stdout.splitlines()
    for index, line in enumerate(lines):
        match = _CPU_OP.match(line)
        if match:
            reason = ""
            for follow in lines[index + 1 : index + 4]:
                if follow.startswith("Reason:") or follow.startswith(" - "):
                    # drop the tensor name so that one reason reads once, not once per tensor
                    reason = re.sub(r" \(.*\)$", "", follow.removeprefix("Reason:").strip())
                    break
            fallback.append((match.group(1), match.group(2), reason))
    return fallback


def check_accelerator(accelerator: str) -> str:
    """``accelerator`` if Vela can compile for it (Vela's own list when it is installed), else a DeployError.

    Commands that export first and compile after call this before the export, so a typo costs nothing.
    """
    names: tuple[str, ...] = ACCELERATORS
    try:
        from ethosu.vela.architecture_features import Accelerator

        names = tuple(Accelerator.member_list())
    except Exception:  # Vela missing or changed: fall back to the prefix check vela_report makes
        if isinstance(accelerator, str) and accelerator.startswith("ethos-u"):
            return accelerator
    if accelerator not in names:
        raise DeployError(f"unknown accelerator {accelerator!r}; try one of {', '.join(names)}")
    return accelerator


def vela_report(
    path: str | os.PathLike, accelerator: str = "ethos-u65-256", *, output_dir: str | os.PathLike | None = None
) -> NpuReport:
    """Compiles ``path`` with Vela for ``accelerator`` and reports NPU/CPU placement and estimated time.

    Args:
        output_dir: keep Vela's compiled ``*_vela.tflite`` and its summary here (default: discarded).

    Raises:
        CheckpointError: the file is not a TFLite file.
        DeployError: Vela is not installed, or fails on the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file not found: {path}")
    operators = operator_counts(path)
    if accelerator not in ACCELERATORS and not accelerator.startswith("ethos-u"):
        raise DeployError(f"unknown accelerator {accelerator!r}; try one of {', '.join(ACCELERATORS)}")
    require("ethosu.vela")
    workdir = Path(tempfile.mkdtemp(prefix="mnasnet-vela-"))
    try:
        command = [
            sys.executable, "-c", "import sys; from ethosu.vela.vela import main; sys.exit(main())",
            str(path), "--accelerator-config", accelerator, "--output-dir", str(workdir), "--show-cpu-operations",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        stdout = result.stdout + result.stderr
        counts: dict[str, int] = {}
        for line in stdout.splitlines():
            match = _COUNT.match(line)
            if match:
                counts[match.group(1)] = int(match.group(2))
        if result.returncode != 0 or "NPU" not in counts:
            tail = " ".join(stdout.strip().splitlines()[-2:])
            raise DeployError(f"Vela could not compile {path} for {accelerator}: {tail}")
        summary = next(workdir.glob("*_summary_*.csv"), None)
        row = next(csv.DictReader(summary.open()), {}) if summary else {}
        system = row.get("system_config", "")
        report = NpuReport(
            file=str(path),
            accelerator=accelerator,
            system_config=system,
            cpu_operators=counts.get("CPU", 0),
            npu_operators=counts["NPU"],
            cpu_fallback=_parse_cpu_operations(stdout),
            operators=operators,
            inference_time_ms=float(row["inference_time"]) * 1000 if row.get("inference_time") else None,
            macs=int(float(row["nn_macs"])) if row.get("nn_macs") else None,
            sram_kib=float(row["sram_memory_used"]) if row.get("sram_memory_used") else None,
            dram_kib=float(row["dram_memory_used"]) if row.get("dram_memory_used") else None,
        )
        if output_dir is not None:
            target = Path(output_dir)
            target.mkdir(parents=True, exist_ok=True)
            for produced in workdir.iterdir():
                shutil.copy2(produced, target / produced.name)
        return report
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
