"""The Ray search driver: outputs, failures, a killed worker, a killed driver and ``--resume``.

One embedded Ray serves the module (Ray takes seconds to start). Most tests use
module-level stand-in trainers (Ray workers import this module through
PYTHONPATH) so that they test the driver, not training; one runs the real proxy
training on a tiny dataset, through the command line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from mnasnet.engine.lock import RunLock, RunLockedError  # noqa: E402
from mnasnet.errors import MnasNetError  # noqa: E402
from mnasnet.search.driver import SearchError, SearchSettings, read_trials, run_search  # noqa: E402
from mnasnet.search.space import load_space  # noqa: E402

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
TINY_SPACE = """\
name: tiny
stem_filters: 8
choices:
  expand_ratio: [1, 3]
  kernel_size: [3, 5]
  se_ratio: [0, 0.25]
  skip: [identity, none]
  filters: [1.0, 2.0]
  layers: [0, 1]
stages:
  - {repeats: 1, filters: 8, stride: 2}
  - {repeats: 1, filters: 16, stride: 2}
"""


# -- stand-in trainers (module level: Ray workers import them by name) ------------------------------


def _log_call(trial_dir: Path) -> None:
    run_dir = trial_dir.parent.parent
    with (run_dir / "calls.log").open("a") as handle:
        handle.write(f"{trial_dir.name}\n")


def fake_trainer(candidate, trial_dir, proxy, seed):
    """Deterministic accuracy from the architecture; logs every call to RUN/calls.log."""
    _log_call(trial_dir)
    return {"accuracy": 0.3 + 0.6 * int(candidate.arch_hash[:6], 16) / 16**6, "params": 1, "macs": 1, "seconds": 0}


def slow_trainer(candidate, trial_dir, proxy, seed):
    time.sleep(0.5)
    return fake_trainer(candidate, trial_dir, proxy, seed)


def crash_once_trainer(candidate, trial_dir, proxy, seed):
    """Kills its own worker process the first time any trial runs (marker file RUN/crashed)."""
    marker = trial_dir.parent.parent / "crashed"
    if trial_dir.name == "00001" and not marker.exists():
        marker.write_text(str(os.getpid()))
        _log_call(trial_dir)
        os.kill(os.getpid(), signal.SIGKILL)
    return fake_trainer(candidate, trial_dir, proxy, seed)


def nan_trainer(candidate, trial_dir, proxy, seed):
    if int(trial_dir.name) % 2 == 1:
        _log_call(trial_dir)
        raise FloatingPointError("the loss became NaN at step 3")
    return fake_trainer(candidate, trial_dir, proxy, seed)


# -- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    # Ray workers start from the raylet's environment: let them import this module
    paths = [str(TESTS), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    ray.init(num_cpus=2, resources={"board": 1}, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def space_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("space") / "tiny.yaml"
    path.write_text(TINY_SPACE)
    return path


def settings(space_file: Path, **overrides) -> SearchSettings:
    values = {
        "data": "unused",
        "space": str(space_file),
        "resolution": 32,
        "target": "macs",
        "latency_ms": 5.0,
        "trials": 6,
        "controller": "evolution",
        "controller_options": {"population_size": 2, "sample_size": 2},
        "parallel": 2,
        "reference_widths": (),
        "max_retries": 2,
    }
    return SearchSettings(**(values | overrides))


def search_records(run_dir: Path) -> list[dict]:
    return [r for r in read_trials(run_dir) if r["kind"] == "search"]


# -- tests -----------------------------------------------------------------------------------------------


def test_records_hold_what_a_trial_is(ray_cluster, space_file, tmp_path):
    run_dir = tmp_path / "run"
    result = run_search(settings(space_file, trials=4), run_dir, trainer=fake_trainer, progress=False)
    records = search_records(run_dir)
    assert sorted(r["trial_id"] for r in records) == [0, 1, 2, 3]
    space = load_space(space_file)
    for record in records:
        for key in ("blocks", "accuracy", "latency_ms", "reward", "params", "macs", "status"):
            assert key in record
        assert record["status"] == "ok"
        # the block strings are the decoded choices, the latency the analytic 1 ms per million MACs
        assert tuple(record["blocks"]) == space.decode(record["choices"]).blocks
        from mnasnet import create_model
        from mnasnet.profile import profile_model

        model = create_model(record["blocks"], stem_filters=8, num_classes=1000, resolution=32)
        assert record["latency_ms"] == pytest.approx(profile_model(model).macs / 1e6)
        # soft MNAS reward, paper eq. 2 with w = -0.07
        assert record["reward"] == pytest.approx(record["accuracy"] * (record["latency_ms"] / 5.0) ** -0.07)
    # the front: no successful trial beats a front member on both axes, and every trial off it is beaten
    front = json.loads((run_dir / "pareto.json").read_text())["front"]
    front_ids = {entry["trial_id"] for entry in front}
    assert front_ids == {entry["trial_id"] for entry in result.front}
    for record in records:
        beaten = any(o["accuracy"] > record["accuracy"] and o["latency_ms"] < record["latency_ms"] for o in records)
        assert beaten == (record["trial_id"] not in front_ids)
    assert (run_dir / "report.md").read_text().count("front/trial-") >= len(front)
    from PIL import Image

    assert Image.open(run_dir / "pareto.png").format == "PNG"
    assert not (run_dir / ".lock").exists()


def test_failed_trials_are_recorded_and_the_search_goes_on(ray_cluster, space_file, tmp_path):
    run_dir = tmp_path / "run"
    run_search(settings(space_file, trials=4), run_dir, trainer=nan_trainer, progress=False)
    records = {r["trial_id"]: r for r in search_records(run_dir)}
    assert set(records) == {0, 1, 2, 3}
    for trial_id in (1, 3):
        assert records[trial_id]["status"] == "failed"
        assert "FloatingPointError: the loss became NaN" in records[trial_id]["error"]
        assert records[trial_id]["reward"] == 0.0
    assert records[0]["status"] == records[2]["status"] == "ok"


def test_a_killed_worker_loses_only_its_trial_which_is_retried(ray_cluster, space_file, tmp_path):
    run_dir = tmp_path / "run"
    run_search(settings(space_file, trials=4), run_dir, trainer=crash_once_trainer, progress=False)
    assert (run_dir / "crashed").exists()  # the worker really died, mid-trial
    calls = (run_dir / "calls.log").read_text().split()
    assert calls.count("00001") == 2  # the lost attempt, then the retry
    records = search_records(run_dir)
    assert sorted(r["trial_id"] for r in records) == [0, 1, 2, 3]
    assert all(r["status"] == "ok" for r in records)


def test_latency_tasks_can_be_pinned_to_a_custom_resource(ray_cluster, space_file, tmp_path):
    # the cluster has one "board": latency tasks that ask for it run, one at a time
    run_dir = tmp_path / "run"
    run_search(
        settings(space_file, trials=2, latency_resources={"board": 1}), run_dir, trainer=fake_trainer, progress=False
    )
    assert all(r["latency_ms"] > 0 for r in search_records(run_dir))
    # a resource no node has: Ray reports the task as infeasible rather than running it anywhere
    from mnasnet.search.driver import _measure_latency

    task = ray.remote(_measure_latency).options(resources={"no-such-board": 1})
    ref = task.remote("macs", None, {"blocks": ["r1_k3_s11_e1_i8_o8"], "resolution": 32})
    ready, _ = ray.wait([ref], timeout=3)
    assert ready == []
    ray.cancel(ref, force=True)


def test_settings_and_folders_are_checked_before_any_work(ray_cluster, space_file, tmp_path):
    run_dir = tmp_path / "run"
    run_search(settings(space_file, trials=1), run_dir, trainer=fake_trainer, progress=False)
    with pytest.raises(SearchError, match="already holds a search"):
        run_search(settings(space_file, trials=1), run_dir, trainer=fake_trainer, progress=False)
    with pytest.raises(SearchError, match="different settings.*latency_ms"):
        run_search(settings(space_file, trials=1, latency_ms=9.0), run_dir, resume=True, trainer=fake_trainer)
    with pytest.raises(SearchError, match="no search to resume"):
        run_search(settings(space_file), tmp_path / "empty", resume=True, trainer=fake_trainer)
    with pytest.raises(MnasNetError, match="unknown latency target"):
        run_search(settings(space_file, target="tpu"), tmp_path / "x", trainer=fake_trainer)
    # the built-in trainer reads the proxy's dataset: a missing one is refused before any folder is made
    with pytest.raises(MnasNetError, match="dataset folder not found"):
        run_search(settings(space_file), tmp_path / "y")
    assert not any((tmp_path / name).exists() for name in ("x", "y", "empty"))
    with RunLock(run_dir), pytest.raises(RunLockedError):
        run_search(settings(space_file, trials=2), run_dir, resume=True, trainer=fake_trainer)


_DRIVER_SCRIPT = """\
import sys
sys.path.insert(0, {tests!r})
from test_search_driver import settings, slow_trainer
from mnasnet.search.driver import run_search
from pathlib import Path
run_search(settings(Path({space!r}), **{overrides!r}), {run!r}, trainer=slow_trainer, num_cpus=2, progress=False)
"""


@pytest.mark.slow
def test_a_killed_search_resumes_exactly_and_reruns_no_finished_trial(ray_cluster, space_file, tmp_path):
    overrides = {"trials": 6, "parallel": 1, "reference_widths": (0.5,)}
    killed = tmp_path / "killed"
    script = _DRIVER_SCRIPT.format(tests=str(TESTS), space=str(space_file), overrides=overrides, run=str(killed))
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(search_records(killed)) < 2:
            assert process.poll() is None, "the search ended before it could be killed"
            assert time.monotonic() < deadline, "the search made no progress"
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the driver and the Ray processes it started
        process.wait()
    with (killed / "trials.jsonl").open("a") as handle:
        handle.write('{"kind": "search", "trial_id": 99, "sta')  # as if killed mid-write
    finished_before = {r["trial_id"] for r in search_records(killed)}
    calls_before = len((killed / "calls.log").read_text().split())

    result = run_search(settings(space_file, **overrides), killed, resume=True, trainer=slow_trainer, progress=False)
    records = search_records(killed)
    assert sorted(r["trial_id"] for r in records) == list(range(6))
    lines = (killed / "trials.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # the torn line is gone, not glued to the next record
    rerun = (killed / "calls.log").read_text().split()[calls_before:]
    assert not {int(name) for name in rerun if name.isdigit()} & finished_before
    assert len([r for r in read_trials(killed) if r["kind"] == "reference"]) == 1
    assert len(result.trials) == 6

    # exact: the same proposals, in the same order, as a search never interrupted
    whole = tmp_path / "whole"
    run_search(settings(space_file, **overrides), whole, trainer=fake_trainer, progress=False)
    by_id = {r["trial_id"]: r["choices"] for r in records}
    assert [by_id[i] for i in range(6)] == [
        r["choices"] for r in sorted(search_records(whole), key=lambda r: r["trial_id"])
    ]


@pytest.mark.slow
def test_search_cli_with_the_real_proxy_then_retrain_a_front_member(ray_cluster, space_file, tmp_path):
    from mnasnet import create_model, load_model
    from mnasnet.cli import main
    from mnasnet.evaluate import evaluate
    from train_helpers import make_colour_dataset

    data = make_colour_dataset(tmp_path / "data", classes=2, per_class=12, val_per_class=6)
    run_dir = tmp_path / "run"
    argv = ["search", "--data", str(data), "--space", str(space_file), "--resolution", "32", "--target", "macs",
            "--latency-ms", "5", "--trials", "2", "--output", str(run_dir), "--controller", "random",
            "--reference-widths", "none", "--epochs", "1", "--batch-size", "8", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    records = search_records(run_dir)
    assert len(records) == 2 and all(r["status"] == "ok" for r in records)
    front = json.loads((run_dir / "pareto.json").read_text())["front"]
    member = front[0]
    # the front's checkpoint is the trained candidate: evaluated independently, it scores what the trial says
    model = load_model(run_dir / member["checkpoint"])
    assert sum(p.numel() for p in model.parameters()) == member["params"]
    assert evaluate(run_dir / member["checkpoint"], data)["top1"] == pytest.approx(100 * member["accuracy"])
    # `mnasnet train --blocks-file` builds that very architecture
    retrain = tmp_path / "retrain"
    argv = ["train", "--blocks-file", str(run_dir / member["blocks_file"]), "--data", str(data), "--epochs", "1",
            "--batch-size", "8", "--workers", "0", "--output", str(retrain), "--no-tensorboard", "--no-plot",
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    retrained = load_model(retrain / "best.safetensors")
    expected = create_model(member["blocks"], stem_filters=8, num_classes=2, resolution=32)
    assert retrained.config.blocks == expected.config.blocks
    assert retrained.config.resolution == 32  # taken from the blocks file
    # resuming the finished search with more trials runs only the new ones
    calls = (run_dir / "trials").iterdir()
    before = {path.name: path.stat().st_mtime_ns for path in calls}
    assert main(["search", "--output", str(run_dir), "--resume", "--trials", "3", "--quiet"]) == 0
    assert len(search_records(run_dir)) == 3
    after = {path.name: path.stat().st_mtime_ns for path in (run_dir / "trials").iterdir()}
    assert all(after[name] == stamp for name, stamp in before.items())
