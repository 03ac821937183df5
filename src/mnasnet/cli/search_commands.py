"""``mnasnet search``: a thin wrapper over :func:`mnasnet.search.driver.run_search`. Imports nothing heavy."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from mnasnet.cli.options import positive_int
from mnasnet.errors import ConfigError
from mnasnet.limits import MAX_SEED

# flag destination -> SearchSettings field (the proxy's own settings are nested under "proxy")
_SETTINGS = ("data", "space", "resolution", "target", "latency_ms", "reward", "trials", "controller", "seed",
             "parallel", "cpus_per_trial", "gpus_per_trial", "max_retries", "latency_cache")  # fmt: skip
_PROXY = ("epochs", "batch_size", "lr", "device", "repeats")


def _number(text: str, *, zero: bool = False) -> float:
    """A finite float, positive (or non-negative with ``zero``): NaN and infinity are no resource or rate."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        kind = "a non-negative" if zero else "a positive"
        raise argparse.ArgumentTypeError(f"expected {kind} finite number, got {text!r}")
    return value


def _positive_number(text: str) -> float:
    return _number(text)


def _non_negative_number(text: str) -> float:
    return _number(text, zero=True)


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected a seed from 0 to {MAX_SEED}, got {text!r}")
    return value


def _resource(text: str) -> tuple[str, float]:
    name, _, amount = text.partition("=")
    try:
        value = float(amount or 1)
    except ValueError:
        value = -1.0
    if not name or not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected NAME or NAME=AMOUNT (a positive number), got {text!r}")
    return name, value


def _widths(text: str) -> list[float]:
    if text.strip().lower() == "none":
        return []
    from mnasnet.limits import MAX_WIDTH_MULTIPLIER

    try:
        values = [float(item) for item in text.split(",")]
    except ValueError:
        values = [0.0]
    if any(not 0 < value <= MAX_WIDTH_MULTIPLIER for value in values):
        raise argparse.ArgumentTypeError(f"expected widths such as 0.35,0.5,0.75,1.0 (or none), got {text!r}")
    return values


def register(subparsers) -> None:
    search = subparsers.add_parser(
        "search",
        help="platform-aware architecture search (MNAS) on Ray: proxy training x measured latency",
        description=(
            "Searches the MNAS space for the best accuracy-latency trade-off on a target device. Each candidate "
            "is trained briefly on --data and its latency measured on --target; a controller learns from the "
            "reward. Writes trials.jsonl, pareto.json, pareto.png, the front's checkpoints and report.md into "
            "--output. Runs on an embedded Ray (no set-up) or joins a cluster (--address). Retrain a front member "
            "with `mnasnet train --blocks-file RUN/front/trial-N.blocks`."
        ),
    )
    keep = argparse.SUPPRESS  # unset flags stay unset: a resumed search takes its saved settings
    search.add_argument("--output", required=True, help="run folder")
    search.add_argument("--resume", action="store_true", help="continue the search in --output")
    search.add_argument("--address", help="a Ray cluster to join (auto, ray://HOST:10001); default: embedded")
    search.add_argument("--num-cpus", type=positive_int, help="CPUs of the embedded Ray (default: all)")
    search.add_argument("--quiet", action="store_true", help="no line per finished trial")
    group = search.add_argument_group("search settings (saved with the run; a resumed search must match)")
    group.add_argument("--data", default=keep, help="proxy dataset: a folder or built-in name (default: photos-search)")
    group.add_argument(
        "--target",
        default=keep,
        help="latency target: vela:ethos-u65-256, litert-int8, litert-fp32, onnxruntime, macs, table:TARGET or "
        'command:"CMD {model}" (default: vela:ethos-u65-256)',
    )
    group.add_argument("--latency-ms", type=float, default=keep, help="the reward's target latency T (default: 1.0)")
    group.add_argument("--trials", type=positive_int, default=keep, help="candidates to train (default: 100)")
    group.add_argument("--controller", default=keep, help="random, evolution (default), reinforce or ppo")
    group.add_argument("--reward", default=keep, help="soft (default), hard or tunas")
    group.add_argument("--space", default=keep, help="search space: a1 (default), mobilenetv2 or a YAML file")
    group.add_argument("--resolution", type=positive_int, default=keep, help="input size searched (default: 64)")
    group.add_argument("--seed", type=_seed, default=keep, help="controller and training seed (default: 0)")
    group.add_argument("--parallel", type=positive_int, default=keep, help="trials in flight (default: 2)")
    group.add_argument(
        "--cpus-per-trial", type=_positive_number, default=keep, help="Ray CPUs per proxy training (default: 1)"
    )
    group.add_argument(
        "--gpus-per-trial", type=_non_negative_number, default=keep, help="Ray GPUs per proxy training (default: 0)"
    )
    group.add_argument(
        "--latency-resource",
        type=_resource,
        action="append",
        default=keep,
        metavar="NAME[=N]",
        help="a custom Ray resource latency tasks need, e.g. board (the node attached to the target board)",
    )
    group.add_argument("--max-retries", type=int, default=keep, help="re-runs of a task whose worker died (default: 2)")
    group.add_argument(
        "--reference-widths", type=_widths, default=keep, help="A1 widths trained as reference points (or none)"
    )
    group.add_argument("--latency-cache", default=keep, help="latency cache folder (default: the user cache)")
    proxy = search.add_argument_group("proxy training (each candidate)")
    # the defaults quoted are ProxySettings' (importing it here would import torch before --help)
    proxy.add_argument("--epochs", type=positive_int, default=keep, help="epochs per candidate (default: 2)")
    proxy.add_argument("--batch-size", type=positive_int, default=keep, help="batch size (default: 32)")
    proxy.add_argument("--lr", type=_positive_number, default=keep, help="peak learning rate (default: 0.05)")
    proxy.add_argument(
        "--repeats",
        type=positive_int,
        metavar="N",
        default=keep,
        help="trainings per candidate under different seeds, scored by their mean: less noise, N times the cost"
        " (default: 1)",
    )
    proxy.add_argument("--device", default=keep, help="auto (default: a GPU when the trial has one), cpu or cuda")
    search.set_defaults(func=_search)


def settings_from_args(args: argparse.Namespace):
    """The :class:`SearchSettings` the flags describe; on ``--resume`` the saved ones, with the flags on top."""
    from mnasnet.search.driver import STATE_NAME, SearchSettings

    values: dict = {}
    if args.resume:
        path = Path(args.output) / STATE_NAME
        try:
            values = json.loads(path.read_text())["settings"]
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            raise ConfigError(f"{args.output} holds no search to resume ({path} is missing or unreadable)") from None
        _check_saved_types(values, path)
    given = vars(args)
    values |= {name: given[name] for name in _SETTINGS if name in given}
    if "latency_resource" in given:
        values["latency_resources"] = dict(given["latency_resource"])
    if "reference_widths" in given:
        values["reference_widths"] = tuple(given["reference_widths"])
    proxy = dict(values.get("proxy", {}))
    proxy |= {name: given[name] for name in _PROXY if name in given}
    values["proxy"] = proxy
    for name in ("reference_widths", "width_multipliers"):
        if values.get(name) is not None:
            values[name] = tuple(values[name])
    known = {field for field in SearchSettings.__dataclass_fields__}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{args.output}: unknown search setting {unknown[0]!r} in {STATE_NAME}")
    return SearchSettings(**values)


# saved setting -> the JSON types it may have (a hand-edited or corrupt search.json must not crash the CLI)
_SAVED_TYPES = {
    "proxy": (dict,),
    "controller_options": (dict,),
    "latency_resources": (dict,),
    "reference_widths": (list,),
    "width_multipliers": (list, type(None)),
    "data": (str,),
    "space": (str,),
    "target": (str,),
    "reward": (str,),
    "controller": (str,),
    "latency_cache": (str, type(None)),
}


def _check_saved_types(values: object, path: Path) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: 'settings' must be a mapping, got {type(values).__name__}")
    for name, types in _SAVED_TYPES.items():
        if name in values and not isinstance(values[name], types):
            raise ConfigError(f"{path}: setting {name!r} has the wrong type ({type(values[name]).__name__})")
    resources = values.get("latency_resources", {})
    if any(not isinstance(v, int | float) or isinstance(v, bool) or not 0 < v < math.inf for v in resources.values()):
        raise ConfigError(f"{path}: latency_resources must map names to positive numbers, got {resources}")


def _search(args: argparse.Namespace) -> int:
    from mnasnet.search.driver import run_search

    settings = settings_from_args(args)
    result = run_search(
        settings, args.output, resume=args.resume, address=args.address, num_cpus=args.num_cpus,
        progress=not args.quiet,
    )  # fmt: skip
    ok = sum(trial["status"] == "ok" for trial in result.trials)
    print(f"{len(result.trials)} trials ({ok} ok) in {result.seconds / 60:.1f} min; {len(result.front)} on the front")
    for entry in result.front:
        print(
            f"  trial {entry['trial_id']}: top-1 {100 * entry['accuracy']:.2f}%  {entry['latency_ms']:.4f} ms  "
            f"{entry['blocks_file']}"
        )
    print(f"report: {Path(args.output) / 'report.md'}")
    return 0
