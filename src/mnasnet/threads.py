"""How many CPU threads to use, and an OpenMP set-up that stays fast next to other busy processes.

Two things make PyTorch slow on a shared machine: taking the host's core count
when a container or ``taskset`` allows fewer CPUs, and OpenMP threads that
spin-wait at every barrier, burning the cores another process needs (training
2 epochs of ``digits`` next to one busy process took 12x longer with
``OMP_WAIT_POLICY=ACTIVE`` than quiet, and 3.2x with libgomp's default spin; ``benchmarks/contention.py``).
:func:`prepare_environment` must run before ``torch`` is imported, since
OpenMP reads its settings when it loads; the command line calls it first.

This module imports ``torch`` only inside :func:`configure_threads`.
"""

from __future__ import annotations

import math
import os
from collections.abc import MutableMapping
from pathlib import Path

from mnasnet.errors import ConfigError

__all__ = [
    "MAX_THREADS",
    "available_cpus",
    "cgroup_cpu_limit",
    "configure_threads",
    "prepare_environment",
    "thread_count",
]

CGROUP_ROOT = Path("/sys/fs/cgroup")
MAX_THREADS = 1024  # more is a typo, not a machine

# Set only where the user has not. GNU OpenMP (PyTorch's on Linux) spins 500 times at a barrier, then
# sleeps: its default of 300,000 spins steals the cores a busy neighbour needs, and no spin at all
# (OMP_WAIT_POLICY=PASSIVE) pays a wake-up at every small parallel region. benchmarks/contention.py,
# 2 epochs of digits on 2 cores, quiet / next to one busy process:
#   default 300k spins 10.5 / 33.5 s; 1,000 spins 11.9 / 23.0 s; 500 spins 13.9 / 20.6 s;
#   100 spins 17.4 / 19.3 s; PASSIVE 15.8-17.4 / 17.8-18.3 s.
# 500 keeps busy <= 1.5x quiet while losing less quiet speed than PASSIVE. Intel OpenMP: give the CPU
# back at once after a parallel region.
SPIN_COUNT = "500"
OPENMP_ENVIRONMENT = {"GOMP_SPINCOUNT": SPIN_COUNT, "KMP_BLOCKTIME": "0"}


_configured: int | None = None  # what configure_threads chose, for runtimes other than PyTorch


def prepare_environment(environ: MutableMapping[str, str] | None = None) -> None:
    """Sets the OpenMP variables of :data:`OPENMP_ENVIRONMENT` that the user has not set.

    Has an effect only if called before ``torch`` (or another OpenMP library) is imported.
    """
    environ = os.environ if environ is None else environ
    for name, value in OPENMP_ENVIRONMENT.items():
        # libgomp lets GOMP_SPINCOUNT override OMP_WAIT_POLICY: a user's policy must win
        if name == "GOMP_SPINCOUNT" and "OMP_WAIT_POLICY" in environ:
            continue
        environ.setdefault(name, value)


def available_cpus(cgroup_root: str | os.PathLike = CGROUP_ROOT) -> int:
    """CPUs this process may use: its CPU affinity, capped by the cgroup CPU quota; at least 1.

    Never the host's core count (a container limited to 2 CPUs on a 64-core host gets 2).
    """
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        count = os.cpu_count() or 1
    limit = cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        count = min(count, math.ceil(limit))
    return max(1, count)


def cgroup_cpu_limit(cgroup_root: str | os.PathLike = CGROUP_ROOT) -> float | None:
    """The CPU quota (in CPUs, e.g. 1.5) of cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``; None if unlimited."""
    root = Path(cgroup_root)
    limits = []
    for folder in _cgroup_folders(root):
        limit = _read_cpu_max(folder / "cpu.max")
        if limit is None:
            limit = _read_cfs_quota(folder / "cpu.cfs_quota_us", folder / "cpu.cfs_period_us")
        if limit is not None:
            limits.append(limit)
    return min(limits) if limits else None


def _cgroup_folders(root: Path) -> list[Path]:
    """The cgroup root, the v1 cpu controller folders, and this process's own v2 cgroup below the root."""
    folders = [root, root / "cpu", root / "cpu,cpuacct"]
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            hierarchy, _, path = line.partition("::")
            if hierarchy == "0" and path.strip("/"):
                folders.append(root / path.strip("/"))
    except OSError:
        pass
    return [folder for folder in folders if folder.is_dir()]


def _read_cpu_max(path: Path) -> float | None:
    try:
        quota, period = path.read_text().split()[:2]
        return int(quota) / int(period) if quota != "max" and int(period) > 0 and int(quota) > 0 else None
    except (OSError, ValueError):
        return None


def _read_cfs_quota(quota_path: Path, period_path: Path) -> float | None:
    try:
        quota, period = int(quota_path.read_text()), int(period_path.read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def check_thread_count(threads: object) -> int:
    """``threads`` as an int if it is a sensible thread count; else a :class:`ConfigError` naming it."""
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise ConfigError(f"threads must be a whole number from 1 to {MAX_THREADS}, got {threads!r}")
    return threads


def configure_threads(threads: int | None = None) -> int:
    """Sets PyTorch's intra-op thread count and returns it.

    Args:
        threads: the count; ``None`` keeps PyTorch's own choice (its count of physical cores, or
            ``$OMP_NUM_THREADS`` as set by the user or ``torchrun``) but never more than
            :func:`available_cpus` unless ``$OMP_NUM_THREADS`` asks for it.

    Raises:
        ConfigError: ``threads`` is not a whole number from 1 to :data:`MAX_THREADS`.
    """
    if threads is not None:
        check_thread_count(threads)
    import torch

    global _configured
    if threads is None:
        threads = torch.get_num_threads()
        if not os.environ.get("OMP_NUM_THREADS"):
            threads = min(threads, available_cpus())  # PyTorch counts the host's cores, not a cgroup's quota
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    _configured = threads
    return threads


def thread_count() -> int:
    """Threads for a runtime that takes a count (ONNX Runtime, LiteRT): the configured one, else available_cpus()."""
    return _configured or available_cpus()
