"""The process around torch on a CPU: OpenMP's waiting and thread count, which must be set before
torch is first imported, and the C allocator's thresholds for long runs. No torch here, so the
entry points (the ``cellflux`` command, the plugin's worker) can call it before importing torch.

Why (docs/speed.md, The CPU path):

- OpenMP threads that finish a parallel region busy-wait for the next one by default. On a busy
  machine they spin on cores other processes need: a 2-thread demo forward took 1.2-2.0 s
  instead of 0.16-0.22 s with ``OMP_WAIT_POLICY=PASSIVE`` (issue 16). libgomp (torch's wheels)
  reads OMP_WAIT_POLICY, Intel's libiomp (conda builds) KMP_BLOCKTIME, when the library loads.
- Under a CPU quota (cgroup ``cpu.max``: containers, batch jobs) below the CPUs the process may
  run on, OpenMP starts a thread per CPU anyway and the threads take turns; OMP_NUM_THREADS is
  set to the quota.
- glibc serves each allocation above its mmap threshold (at most 32 MiB) with a fresh
  zero-filled mapping and returns freed heap tops above the trim threshold to the system, so a
  loop of same-sized forwards page-faults all its activations in again every time.
  :func:`keep_freed_memory` fixes the thresholds so they are reused instead.

A variable or malloc setting the user gave in the environment is never overridden.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
from pathlib import Path

OPENMP_WAIT = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
# glibc's mallopt parameters (malloc.h) and the values set: 32 MiB is the largest mmap threshold
# glibc accepts (HEAP_MAX_SIZE / 2 on 64-bit); freed memory is kept up to 1 GiB at the heap top.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 1 << 30
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cpu_quota(cpu_max: Path = CGROUP_CPU_MAX) -> float | None:
    """CPUs' worth of time the cgroup (v2) grants per period ("200000 100000" -> 2.0); None without a quota."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _affinity() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def usable_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The CPUs this process may run on (affinity), lowered to the cgroup quota (rounded up)."""
    cpus = _affinity()
    quota = cpu_quota(cpu_max)
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def prepare_openmp(environ: dict | None = None, *, passive_wait: bool = True, cpu_max: Path = CGROUP_CPU_MAX) -> dict[str, str]:
    """Set the OpenMP wait policy (OPENMP_WAIT, with ``passive_wait``) and, under a CPU quota below
    the usable CPUs, OMP_NUM_THREADS in ``environ``, each only if the user has not set it; returns
    what was set. Passive waiting is for a process that shares its cores (napari's GUI): on an idle
    machine it makes the demo's Generate about 1.5x slower, on a busy one 2.2x faster (docs/speed.md).
    Only before torch is imported, since the OpenMP runtime reads them when it loads: with
    ``environ`` None (``os.environ``) and torch already imported, nothing is changed (a Python
    caller who imported torch first sets them in the shell instead: docs/speed.md)."""
    if environ is None:
        if "torch" in sys.modules:
            return {}
        environ = os.environ
    wanted = dict(OPENMP_WAIT) if passive_wait else {}
    threads = usable_cpus(cpu_max)
    if threads < _affinity():
        wanted["OMP_NUM_THREADS"] = str(threads)
    changed = {k: v for k, v in wanted.items() if k not in environ}
    environ.update(changed)
    return changed


def user_malloc_settings(environ: dict | None = None) -> list[str]:
    """The glibc malloc settings the environment holds (MALLOC_*_ variables, glibc.malloc tunables)."""
    environ = os.environ if environ is None else environ
    named = [k for k in _MALLOC_ENV if k in environ]
    return named + (["GLIBC_TUNABLES"] if "glibc.malloc." in environ.get("GLIBC_TUNABLES", "") else [])


def keep_freed_memory(environ: dict | None = None) -> bool:
    """On glibc, fix the mmap threshold at 32 MiB and the trim threshold at 1 GiB (``mallopt``),
    so the activations of repeated forwards below 32 MiB are reused, not page-faulted in again
    (docs/speed.md: page faults, time and memory). Process-wide and idempotent; nothing is changed where
    the user set malloc options in the environment or the C library is not glibc. True if set."""
    if not sys.platform.startswith("linux") or user_malloc_settings(environ):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (musl's mallopt does nothing)
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
