"""Resident-set figures of this process: peak (``ru_maxrss`` / ``VmHWM``), current, and the peak reset."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MB (10^6 bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in kilobytes on Linux, bytes on macOS.
    return float(peak) / 1e6 if sys.platform == "darwin" else float(peak) * 1024 / 1e6


def current_rss_mb() -> float | None:
    """Current resident set size, MB, from ``/proc/self/statm`` (None where there is no /proc)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def _proc_peak_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    except (OSError, ValueError, IndexError):
        return None
    return None


def own_peak_rss_mb() -> tuple[float, str]:
    """This process's own peak RSS, MB, and where it came from (``VmHWM`` or ``ru_maxrss``).

    ``VmHWM`` (/proc/self/status) is the peak of the address space the process has had since
    its ``exec`` (or since :func:`reset_peak_rss`). ``ru_maxrss`` is not: Linux carries it
    across ``fork`` and ``exec``, so a worker spawned by a 700 MB parent reports >= 700 MB
    whatever it used itself; it is the fallback where there is no /proc (macOS).
    """
    peak = _proc_peak_mb()
    if peak is not None:
        return peak, "VmHWM"
    return peak_rss_mb(), "ru_maxrss"


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _proc_peak_mb() is not None
