"""A search's outputs from its ``trials.jsonl``: the Pareto front, its checkpoints, a plot and a report.

:func:`write_outputs` can be run at any time on a run folder (the driver calls it
when the search ends); it only reads ``trials.jsonl`` and ``search.json``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from mnasnet.fileio import atomic_path, atomic_write_text
from mnasnet.search.blocks_file import write_blocks_file
from mnasnet.search.space import Candidate

__all__ = ["beats_family", "pareto_front", "write_outputs"]

FRONT_KEYS = ("trial_id", "accuracy", "latency_ms", "reward", "params", "macs", "blocks", "resolution", "arch_hash")


def pareto_front(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The successful trials no other beats on both accuracy (higher) and latency (lower), by latency.

    One trial per architecture (its best accuracy) stands for repeats of the same network.
    """
    best: dict[str, dict[str, Any]] = {}
    for trial in trials:
        if trial.get("status") == "ok":
            seen = best.get(trial["arch_hash"])
            if seen is None or trial["accuracy"] > seen["accuracy"]:
                best[trial["arch_hash"]] = trial
    ordered = sorted(best.values(), key=lambda t: (t["latency_ms"], -t["accuracy"]))
    front, top = [], -1.0
    for trial in ordered:
        if trial["accuracy"] > top:
            front.append(trial)
            top = trial["accuracy"]
    return front


def beats_family(trial: dict[str, Any], references: list[dict[str, Any]], margin: float = 0.0) -> list[str]:
    """The references ``trial`` beats: at most their latency and more than ``margin`` more accurate."""
    return [
        ref["name"]
        for ref in references
        if ref.get("status") == "ok"
        and trial["latency_ms"] <= ref["latency_ms"]
        and trial["accuracy"] > ref["accuracy"] + margin
    ]


def _read(run_dir: Path) -> tuple[list[dict], list[dict], dict]:
    from mnasnet.search.driver import STATE_NAME, read_trials

    records = read_trials(run_dir)
    try:
        settings = json.loads((run_dir / STATE_NAME).read_text())["settings"]
    except (OSError, ValueError, KeyError):
        settings = {}
    trials = [r for r in records if r.get("kind") == "search"]
    references = [r for r in records if r.get("kind") == "reference"]
    return trials, references, settings


def _save_front(run_dir: Path, front: list[dict[str, Any]]) -> list[dict[str, Any]]:
    folder = run_dir / "front"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    entries = []
    for trial in front:
        name = f"trial-{trial['trial_id']:05d}"
        candidate = Candidate(blocks=tuple(trial["blocks"]), resolution=trial["resolution"])
        comment = f"trial {trial['trial_id']}: accuracy {trial['accuracy']:.4f}, {trial['latency_ms']:.4f} ms"
        write_blocks_file(folder / f"{name}.blocks", candidate, comment)
        entry = {key: trial.get(key) for key in FRONT_KEYS} | {"blocks_file": f"front/{name}.blocks"}
        source = run_dir / trial["checkpoint"] if trial.get("checkpoint") else None
        if source is not None and source.is_file():
            with atomic_path(folder / f"{name}.safetensors") as temp:
                shutil.copyfile(source, temp)
            entry["checkpoint"] = f"front/{name}.safetensors"
        entries.append(entry)
    return entries


def plot_search(run_dir: Path, trials: list[dict], references: list[dict], front: list[dict]) -> Path | None:
    """``pareto.png``: every trial, the front and the A1 width family; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ok = [t for t in trials if t.get("status") == "ok"]
    figure, axes = plt.subplots(figsize=(7, 5))
    axes.scatter([t["latency_ms"] for t in ok], [100 * t["accuracy"] for t in ok], s=14, c="0.6", label="trials")
    infeasible = [t for t in trials if t.get("status") == "infeasible" and t.get("latency_ms")]
    if infeasible:
        axes.scatter(
            [t["latency_ms"] for t in infeasible], [100 * t["accuracy"] for t in infeasible],
            s=14, marker="x", c="0.75", label="infeasible",
        )  # fmt: skip
    if front:
        axes.plot(
            [t["latency_ms"] for t in front], [100 * t["accuracy"] for t in front],
            "o-", c="tab:blue", ms=5, label="Pareto front",
        )  # fmt: skip
    family = sorted((r for r in references if r.get("status") == "ok"), key=lambda r: r["latency_ms"])
    if family:
        axes.plot(
            [r["latency_ms"] for r in family], [100 * r["accuracy"] for r in family],
            "s--", c="tab:red", ms=6, label="MnasNet-A1 width family",
        )  # fmt: skip
        for ref in family:
            axes.annotate(ref["name"].removeprefix("a1_"), (ref["latency_ms"], 100 * ref["accuracy"]), fontsize=8)
    axes.set_xlabel("latency (ms)")
    axes.set_ylabel("proxy top-1 (%)")
    axes.set_title(f"{run_dir.name}: {len(trials)} trials")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    out = run_dir / "pareto.png"
    with atomic_path(out) as temp:
        figure.savefig(temp, dpi=110, format="png")
    plt.close(figure)
    return out


def _fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _report(run_dir: Path, trials: list[dict], references: list[dict], front: list[dict], settings: dict) -> str:
    counts = {status: sum(t.get("status") == status for t in trials) for status in ("ok", "failed", "infeasible")}
    seconds = sum(t.get("seconds") or 0 for t in trials)
    lines = [
        f"# Search report: {run_dir.name}",
        "",
        f"{len(trials)} trials: {counts['ok']} ok, {counts['failed']} failed, {counts['infeasible']} infeasible; "
        f"{seconds / 60:.1f} min of proxy training.",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    for key in ("data", "space", "resolution", "target", "latency_ms", "reward", "controller", "trials", "seed"):
        lines.append(f"| {key} | {settings.get(key, '—')} |")
    lines += ["", "![Pareto front](pareto.png)", "", "## Pareto front", ""]
    lines += [
        "| trial | top-1 | latency (ms) | reward | params | MACs | beats | blocks file |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in front:
        beaten = ", ".join(beats_family(entry, references)) or "—"
        lines.append(
            f"| {entry['trial_id']} | {100 * entry['accuracy']:.2f} | {entry['latency_ms']:.4f} | "
            f"{entry['reward']:.4f} | {_fmt(entry.get('params'), ',')} | {_fmt(entry.get('macs'), ',')} | {beaten} | "
            f"`{entry['blocks_file']}` |"
        )
    if references:
        lines += ["", "## MnasNet-A1 width family (same proxy, same latency target)", ""]
        lines += ["| model | top-1 | latency (ms) | params | MACs |", "|---|---|---|---|---|"]
        for ref in sorted(references, key=lambda r: r["name"]):
            top1 = f"{100 * ref['accuracy']:.2f}" if ref.get("accuracy") is not None else ref.get("status")
            lines.append(
                f"| {ref['name']} | {top1} | {_fmt(ref.get('latency_ms'), '.4f')} | "
                f"{_fmt(ref.get('params'), ',')} | {_fmt(ref.get('macs'), ',')} |"
            )
    failed = [t for t in trials if t.get("status") == "failed"]
    if failed:
        lines += ["", "## Failed trials", ""]
        lines += [f"- trial {t['trial_id']}: {t.get('error')}" for t in failed[:20]]
    if front:
        example = front[-1]["blocks_file"]
        lines += [
            "",
            "## Retraining a front member at full budget",
            "",
            "```",
            f"mnasnet train --blocks-file {run_dir}/{example} --data {settings.get('data', 'DATA')} "
            "--output runs/retrain",
            "```",
        ]
    return "\n".join(lines) + "\n"


def write_outputs(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Writes ``pareto.json``, ``front/``, ``pareto.png`` and ``report.md``; returns the front."""
    run_dir = Path(run_dir)
    trials, references, settings = _read(run_dir)
    front = _save_front(run_dir, pareto_front(trials))
    atomic_write_text(run_dir / "pareto.json", json.dumps({"front": front, "references": references}, indent=1))
    plot_search(run_dir, trials, references, front)
    atomic_write_text(run_dir / "report.md", _report(run_dir, trials, references, front, settings))
    return front
