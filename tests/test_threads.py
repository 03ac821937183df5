"""Thread counts from the CPUs a process may really use, OpenMP's wait policy, and --threads on every heavy command."""

import os
import subprocess
import sys

import pytest
import torch

from mnasnet.cli import build_parser, main
from mnasnet.errors import ConfigError, MnasNetError
from mnasnet.threads import MAX_THREADS, available_cpus, configure_threads, prepare_environment

HEAVY_COMMANDS = ("train", "evaluate", "predict", "export", "benchmark", "demo", "convert")
AFFINITY = len(os.sched_getaffinity(0))


def _cgroup_v2(root, text):
    (root / "cpu.max").write_text(text)
    return root


def _cgroup_v1(root, quota, period="100000"):
    (root / "cpu").mkdir()
    (root / "cpu" / "cpu.cfs_quota_us").write_text(quota)
    (root / "cpu" / "cpu.cfs_period_us").write_text(period)
    return root


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("50000 100000\n", 1), ("100000 100000\n", 1), ("150000 100000\n", 2), ("max 100000\n", None)],
)
def test_cgroup_v2_quota_caps_the_affinity(tmp_path, text, cpus):
    expected = AFFINITY if cpus is None else min(AFFINITY, cpus)
    assert available_cpus(_cgroup_v2(tmp_path, text)) == expected


@pytest.mark.parametrize(("quota", "cpus"), [("100000", 1), ("250000", 3), ("-1", None)])
def test_cgroup_v1_quota_caps_the_affinity(tmp_path, quota, cpus):
    expected = AFFINITY if cpus is None else min(AFFINITY, cpus)
    assert available_cpus(_cgroup_v1(tmp_path, quota)) == expected


def test_unreadable_or_missing_cgroup_files_fall_back_to_the_affinity(tmp_path):
    assert available_cpus(tmp_path / "absent") == AFFINITY
    assert available_cpus(_cgroup_v2(tmp_path, "garbage\n")) == AFFINITY


def test_cpu_affinity_is_honoured_not_the_host_core_count():
    # taskset's way: the child may run on one CPU only, whatever the host has
    code = "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
    code += "from mnasnet.threads import available_cpus; print(available_cpus())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"


def test_prepare_environment_sets_only_what_the_user_left_unset():
    environ = {"KMP_BLOCKTIME": "200"}
    prepare_environment(environ)
    assert environ == {"GOMP_SPINCOUNT": "500", "KMP_BLOCKTIME": "200"}
    environ = {"GOMP_SPINCOUNT": "7"}
    prepare_environment(environ)
    assert environ["GOMP_SPINCOUNT"] == "7"
    # libgomp would let our spin count override the user's wait policy: it is left out then
    environ = {"OMP_WAIT_POLICY": "ACTIVE"}
    prepare_environment(environ)
    assert environ == {"OMP_WAIT_POLICY": "ACTIVE", "KMP_BLOCKTIME": "0"}


def _openmp_settings(argv: list[str]) -> str:
    # GNU OpenMP prints the settings it read when it loads (OMP_DISPLAY_ENV): the yardstick is libgomp itself
    unset = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")
    env = {key: value for key, value in os.environ.items() if key not in unset}
    env["OMP_DISPLAY_ENV"] = "VERBOSE"
    run = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, check=True)
    if "OPENMP DISPLAY ENVIRONMENT" not in run.stderr:
        pytest.skip("this PyTorch build does not use GNU OpenMP")
    return run.stderr


@pytest.mark.slow
def test_the_cli_shortens_openmp_spin_waiting_before_torch_loads():
    # libgomp spins 300,000 times at a barrier by default, stealing the CPU a busy neighbour needs
    assert "GOMP_SPINCOUNT = '300000'" in _openmp_settings(["-c", "import torch; torch.ones(1) + 1"])
    cli = _openmp_settings(["-m", "mnasnet", "summary", "small", "--resolution", "32", "--json"])
    assert "GOMP_SPINCOUNT = '500'" in cli


@pytest.fixture
def restore_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def test_configure_threads_sets_pytorch(restore_threads, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert configure_threads(1) == 1 and torch.get_num_threads() == 1
    assert configure_threads(None) == 1  # a count below the CPUs available is kept
    torch.set_num_threads(available_cpus() + 3)  # as PyTorch counts on a host larger than the cgroup's quota
    assert configure_threads(None) == available_cpus() == torch.get_num_threads()


def test_omp_num_threads_is_left_to_pytorch(restore_threads, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # torchrun sets it per process
    torch.set_num_threads(3)
    assert configure_threads(None) == 3 == torch.get_num_threads()


@pytest.mark.parametrize("threads", [0, -2, 1.5, "2", True, MAX_THREADS + 1])
def test_configure_threads_refuses_nonsense(threads, restore_threads):
    with pytest.raises(ConfigError, match="threads") as error:
        configure_threads(threads)
    assert isinstance(error.value, MnasNetError)


def _subcommands():
    parser = build_parser()
    return next(action for action in parser._actions if action.dest == "command").choices


@pytest.mark.parametrize("command", HEAVY_COMMANDS)
def test_every_heavy_command_takes_threads(command):
    options = {option for action in _subcommands()[command]._actions for option in action.option_strings}
    assert "--threads" in options


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", str(MAX_THREADS + 1)])
@pytest.mark.parametrize(
    "argv",
    [["train"], ["evaluate", "--weights", "w", "--data", "d"], ["predict", "x.png", "--weights", "w"],
     ["export", "x.onnx", "--weights", "w"], ["benchmark", "--weights", "w"], ["demo"],
     ["convert", "a.pth", "b.safetensors", "--from", "timm"]],
    ids=lambda argv: argv[0],
)  # fmt: skip
def test_bad_thread_counts_are_one_argparse_error(argv, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--threads", value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --threads: expected a whole number of threads from 1 to {MAX_THREADS}, got '{value}'" in err
    assert "Traceback" not in err
