"""glibc ``malloc`` settings for a process that runs the pipelined scan job (issue #14, "16 scans").

Why: a full-field scan's stages allocate and free arrays of 5-23 MB (the stored pixels, the upsampled
probabilities, the mask, the images written) on the pipeline's threads. With glibc's defaults every
thread allocates from an arena of its own, whose heaps are capped at 64 MB and trimmed whenever their
free top passes a threshold that starts at 128 KB, so those arrays come back as fresh pages on most
scans: page faults, the kernel zeroing those pages and, likely, ``munmap``'s TLB shootdowns
interrupting the thread on the other core. In exploratory runs (scripts not kept) two processes each
running scans one after the other did not slow each other down, while two threads of one process doing
the same work took ~25 % more CPU. Measured by ``benchmarks/ab_allocator.py``
(``benchmarks/results/ab_allocator.json``: the 16-scan job of ``bench_speed_done_when.py``, mass model,
dynamic-range INT8, batch 4, 2 threads; 8 child processes of each setting, alternating, 3 runs each;
2-core Intel Xeon, CPU flags avx2 avx512f avx512_vnni amx_int8): per scan 3,802 minor page faults and
107.6 ms of process CPU with glibc's defaults, 179 and 99.1 ms with :func:`tune_for_scans` applied at
start; the job's throughput 0.802 and 0.864 of the model alone's. One arena (the main heap, which grows
with ``brk``) plus higher mmap and trim thresholds keep those pages mapped from one scan to the next.
In exploratory runs (scripts not kept) either half alone gained less (the thresholds ~0.80-0.82, one
arena ~0.78), and the arena limit set after the pipeline's first threads had allocated gave ~0.81: it
must be set **before any other thread allocates**, so ``bcedge infer`` and ``bcedge demo`` call this
first thing (:func:`bcedge.cli.main`), and a Python program that runs
:func:`bcedge.scanjob.process_scans` on many scans should call it before importing NumPy.

The cost: freed memory stays with the process (up to 1 GiB of free heap top is kept), so its
resident size stays at its peak; the scan job bounds that peak (``--batch-size``). Not applied by
``bcedge serve`` (long-lived workers that handle one scan at a time), by ``bcedge batch``'s Ray workers
(tried through ``GLIBC_TUNABLES`` at their start, exploratory: 9.6-9.9 scans/s against 11.2-11.7 with
glibc's defaults, one worker, 96 scans in one block; the thresholds alone 11.3-11.9, no gain; a Ray
worker's own threads allocate all the time, and one arena makes them queue) or on a C library other
than glibc. ``BCEDGE_MALLOC=default``, ``MALLOC_ARENA_MAX`` or any ``glibc.malloc`` tunable in
``GLIBC_TUNABLES`` leaves glibc's settings alone (the user's choice wins).
"""

from __future__ import annotations

import os
import sys
from typing import Any

#: ``mallopt`` parameters (glibc's malloc.h) and the values set.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
SETTINGS = {
    "arena_max": (M_ARENA_MAX, 1),
    # glibc's largest allowed mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX): a 2944x1920 float32
    # image (23 MB) stays below it; larger blocks are still mapped and unmapped on their own.
    "mmap_threshold": (M_MMAP_THRESHOLD, 32 * 1024 * 1024),
    # 128 MB gave ~0.81-0.83 in exploratory runs: the free top between scans exceeds it.
    "trim_threshold": (M_TRIM_THRESHOLD, 1024 * 1024 * 1024),
}
ENV_OPT_OUT = "BCEDGE_MALLOC"

_applied: dict[str, Any] | None = None


def _libc() -> Any:
    """glibc's handle (``mallopt`` and ``gnu_get_libc_version``), or None on another C library or a
    Python built without ctypes (``bcedge infer`` then runs with glibc's settings, never exit 1)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - the symbol only glibc has
        return libc
    except (ImportError, OSError, AttributeError):
        return None


def tune_for_scans(libc_loader: Any = _libc) -> dict[str, Any]:
    """Apply :data:`SETTINGS` with ``mallopt`` once per process; later calls return the first result.

    Args:
        libc_loader: returns the C library handle or None (tests pass a fake).

    Returns:
        ``{"applied": {name: value}}`` when set, else ``{"skipped": why}``.
    """
    global _applied
    if _applied is not None:
        return _applied
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if os.environ.get(ENV_OPT_OUT, "").strip().lower() == "default":
        _applied = {"skipped": f"{ENV_OPT_OUT}=default"}
    elif "MALLOC_ARENA_MAX" in os.environ or "glibc.malloc." in tunables:
        _applied = {"skipped": "malloc settings given in the environment"}
    elif not sys.platform.startswith("linux"):
        _applied = {"skipped": f"not Linux ({sys.platform})"}
    else:
        libc = libc_loader()
        if libc is None:
            _applied = {"skipped": "not glibc"}
        else:
            done = {name: value for name, (param, value) in SETTINGS.items() if libc.mallopt(param, value) == 1}
            _applied = {"applied": done} if done else {"skipped": "mallopt refused every setting"}
    return _applied


__all__ = ["ENV_OPT_OUT", "SETTINGS", "tune_for_scans"]
