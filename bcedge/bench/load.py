"""What a timed section cost this process, and how busy the rest of the machine was meanwhile.

A latency figure is only comparable when the machine was quiet. :class:`LoadMeter` wraps a
timed section and records this process's CPU time (every thread: LiteRT's and ONNX Runtime's
pools run in-process) and the CPU time every *other* process used meanwhile, from the
machine-wide counters of ``/proc/stat`` (Linux; elsewhere only the own CPU time is known).
A section during which the others used more than :data:`BUSY_SHARE` of the machine's CPUs is
flagged ``busy``: its timings are not to be published as this machine's speed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

#: Share of the machine's CPU time other processes may use during a timed section before the
#: section counts as measured on a busy machine (0.10: a fifth of one core of a 2-core machine).
BUSY_SHARE = 0.10

_PROC_STAT = Path("/proc/stat")


def machine_cpu_s(path: Path = _PROC_STAT) -> float | None:
    """CPU seconds every process on the machine has used since boot (all CPUs; idle and iowait excluded).

    Returns:
        Seconds, or None where there is no ``/proc/stat``.
    """
    try:
        with path.open(encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    try:
        ticks = [int(v) for v in fields[1:]]
    except ValueError:
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: already inside user/nice]
    busy = sum(v for i, v in enumerate(ticks[:8]) if i not in (3, 4))
    return busy / os.sysconf("SC_CLK_TCK")


class LoadMeter:
    """Context manager: own CPU time and the others' CPU share during the ``with`` block.

    Attributes:
        result: after the block, :meth:`fields`'s dict.
    """

    def __init__(self, busy_share: float = BUSY_SHARE) -> None:
        self.busy_share = busy_share
        self.result: dict[str, Any] = {}

    def __enter__(self) -> LoadMeter:
        self._load0 = _loadavg()
        self._machine0 = machine_cpu_s()
        self._own0 = time.process_time()
        self._wall0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._wall0
        own = time.process_time() - self._own0
        machine1 = machine_cpu_s()
        self.result = self.fields(wall, own, self._machine0, machine1, os.cpu_count() or 1, self._load0)

    def fields(
        self,
        wall_s: float,
        own_cpu_s: float,
        machine0: float | None,
        machine1: float | None,
        cpus: int,
        load_avg_before: float | None,
    ) -> dict[str, Any]:
        """The row fields from the raw counters (separate so tests can feed counters).

        Returns:
            ``wall_ms``, ``cpu_ms`` (this process, all threads), ``cpu_utilisation`` (cpu / wall:
            ~threads kept busy), ``others_cpu_share`` (0-1 of every CPU of the machine; None
            without /proc/stat), ``busy`` (True / False / None when unknown) and
            ``load_avg_1min_before``.
        """
        others = None
        if machine0 is not None and machine1 is not None and wall_s > 0:
            # Counters tick at 100 Hz: clamp the rounding so a quiet machine reads 0, not -0.01.
            others = round(min(1.0, max(0.0, (machine1 - machine0 - own_cpu_s) / (wall_s * cpus))), 3)
        return {
            "wall_ms": round(wall_s * 1e3, 2),
            "cpu_ms": round(own_cpu_s * 1e3, 2),
            "cpu_utilisation": round(own_cpu_s / wall_s, 2) if wall_s > 0 else None,
            "others_cpu_share": others,
            "busy": None if others is None else others > self.busy_share,
            "load_avg_1min_before": load_avg_before,
        }


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None
