"""How many CPUs this process may use, and the thread count a backend gets when none is asked for.

One place for ``bcedge infer``, ``bcedge serve`` and ``bcedge benchmark`` (issue #14 item 4):
with no ``--threads`` (serve: no ``[model] threads``) the backend gets every CPU this process
may run on, not the inference library's own default (LiteRT's is one thread).

Also the CPU model and flags (one reader of ``/proc/cpuinfo`` for the benchmark record and the
artifact choice's machine fingerprint). Cheap to import (standard library only): the CLI calls
it before anything heavy is loaded.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

#: cgroup v2 CPU quota of this process's cgroup ("max 100000" or "200000 100000").
_CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
#: CPU flags that decide which kernels a runtime can use (x86: AVX-512, VNNI, AMX, BF16, FP16; ARM:
#: dot product, FP16, i8mm, SVE), named in benchmark records and in the artifact choice's machine.
SIMD_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "amx_int8",
    "avx512_bf16",
    "amx_bf16",
    "avx512_fp16",
    "asimd",
    "asimddp",
    "asimdhp",
    "i8mm",
    "bf16",
    "sve",
)


def _cgroup_cpu_limit(path: Path = _CGROUP_CPU_MAX) -> int | None:
    """CPUs allowed by a cgroup v2 quota (``docker --cpus 2``), rounded up; None when unlimited or unknown.

    The affinity mask of a container limited by quota still lists every host CPU, so
    without this a 2-CPU container on a 64-core host would start 64 threads that share
    2 CPUs of time.
    """
    try:
        quota, period = path.read_text(encoding="ascii").split()[:2]
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if quota == "max":
        return None
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    if q <= 0 or p <= 0:
        return None
    return max(1, math.ceil(q / p))


def usable_cpus() -> int:
    """CPUs this process may run on: the affinity mask (``taskset``, cpusets), capped by a cgroup quota.

    Falls back to ``os.cpu_count()`` where the OS has no affinity call (macOS, Windows), and to 1
    when even that is unknown.

    Returns:
        An integer >= 1.
    """
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        n = min(n, limit)
    return max(1, n)


def default_threads(threads: int | None = None, *, share: int = 1) -> int:
    """The backend thread count to use: ``threads`` when given, else the usable CPUs split ``share`` ways.

    Args:
        threads: what the user asked for (``--threads`` / ``[model] threads``); None: not asked.
        share: how many processes run a model at once on these CPUs (``bcedge serve``'s
            ``[worker] processes``), so that together they use every CPU without oversubscribing.

    Returns:
        An integer >= 1: ``threads`` unchanged, or ``max(1, usable_cpus() // share)``.
    """
    if threads is not None:
        return threads
    return max(1, usable_cpus() // max(1, share))


def cpu_model_and_flags() -> tuple[str | None, set[str]]:
    """The CPU model and its feature flags from ``/proc/cpuinfo`` (x86 ``flags``, ARM ``Features``).

    Returns:
        (model, flags): the first ``model name`` / ``Hardware`` / ``cpu model`` value (None when
        there is none) and the first core's flags as a set (empty when unreadable).
    """
    model: str | None = None
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "hardware", "cpu model") and not model:
                model = value.strip()
            elif key in ("flags", "features") and not flags:
                flags = set(value.split())
    return model, flags
