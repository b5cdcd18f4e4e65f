"""glibc ``malloc`` settings for a process that runs the pipelined scan job (issue #14, "16 scans").

Why: a full-field scan's stages allocate and free arrays of 5-23 MB (the stored pixels, the
upsampled probabilities, the mask, the images written) on the pipeline's threads. With glibc's
defaults every thread allocates from an arena of its own, whose heaps are capped at 64 MB and
trimmed whenever their free top passes a threshold that starts at 128 KB, so those arrays come back
as fresh pages on most scans: page faults, the kernel zeroing them, and ``munmap``'s TLB shootdowns,
which interrupt the thread on the other core. Two processes each running scans one after the other
did not slow each other down; two threads of one process doing the same work took ~25 % more CPU.
Measured with ``benchmarks/bench_speed_done_when.py``'s 16-scan job (2-core Xeon with AVX-512 VNNI,
the mass model's dynamic-range INT8, batch 4; alternating processes): process CPU per scan 102-113 ms
with glibc's defaults against 95-98 ms with :func:`tune_for_scans` applied at start, throughput 0.75-0.82 of
the model alone against 0.85-0.89. One arena (the main heap, which grows with ``brk``) plus higher
mmap and trim thresholds keep those pages mapped from one scan to the next. The thresholds alone
gave 0.80-0.82; one arena alone 0.78-0.79; the arena limit set after the pipeline's first threads had
allocated, 0.81: it must be set **before any other thread allocates**, so ``bcedge infer`` and
``bcedge demo`` call this first thing (:func:`bcedge.cli.main`), and a Python program that runs
:func:`bcedge.scanjob.process_scans` on many scans should call it before importing NumPy.

The cost: freed memory stays with the process (up to 1 GiB of free heap top is kept), so its
resident size stays at its peak; the scan job bounds that peak (``--batch-size``). Not applied by
``bcedge serve`` (long-lived workers that handle one scan at a time) or on a C library other than
glibc. ``BCEDGE_MALLOC=default``, ``MALLOC_ARENA_MAX`` or any ``glibc.malloc`` tunable in
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
    # 128 MB gave 0.81-0.83 in the same runs: free tops between scans exceed it.
    "trim_threshold": (M_TRIM_THRESHOLD, 1024 * 1024 * 1024),
}
ENV_OPT_OUT = "BCEDGE_MALLOC"

_applied: dict[str, Any] | None = None


def _libc() -> Any:
    """glibc's handle (``mallopt`` and ``gnu_get_libc_version``), or None on another C library."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - the symbol only glibc has
        return libc
    except (OSError, AttributeError):
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
