"""Reads the yardstick tables out of tests/fixtures/reference.md (verbatim sections of the team's REFERENCE.md)."""

from __future__ import annotations

import re
from pathlib import Path

REFERENCE_MD = Path(__file__).resolve().parent / "fixtures" / "reference.md"  # copied from REFERENCE.md


def _section(text: str, number: int) -> str:
    match = re.search(rf"^## {number}\..*?(?=^## \d+\.|\Z)", text, flags=re.M | re.S)
    assert match, f"section {number} not found in REFERENCE.md"
    return match.group(0)


def _table_rows(section: str) -> list[list[str]]:
    rows = []
    for line in section.splitlines():
        if line.startswith("|") and not re.match(r"^\|[-| ]+\|$", line):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows[1:]  # drop the header


def reference_text() -> str:
    return REFERENCE_MD.read_text()


def architectures() -> dict[str, dict]:
    """Section 2: variant -> {stem, dropout, blocks}."""
    result = {}
    for name, stem, dropout, stages in _table_rows(_section(reference_text(), 2)):
        result[name] = {
            "stem": int(stem),
            "dropout": float(dropout),
            "blocks": [s.strip() for s in stages.split("·")],
        }
    return result


def sizes() -> list[tuple[str, float | None, int, float | None]]:
    """Section 4: (arch, width multiplier or None, params, MACs or None)."""
    result = []
    for model, params, macs in _table_rows(_section(reference_text(), 4)):
        parts = model.split()
        arch = parts[0]
        width = None
        if len(parts) > 1 and parts[1].startswith("x"):
            width = float(parts[1][1:])
        # "x1.0" is the reference default (no multiplier): filters as written
        if width == 1.0:
            width = None
        mac_match = re.match(r"([\d.]+)M", macs)
        result.append(
            (arch, width, int(params.replace(",", "")), float(mac_match.group(1)) * 1e6 if mac_match else None)
        )
    return result
