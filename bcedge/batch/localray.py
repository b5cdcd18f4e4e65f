"""Ray for one ``bcedge batch`` run: join a cluster or start a local Ray, quietly and cleanly.

::

    started = start_ray(address=None, workers=2, object_store_mb=256)   # False: Ray was already up
    quiet_ray_data()                                                     # no Ray Data bars or logs

A local Ray is ten processes besides the workers (GCS, raylet, dashboard API server and agent,
runtime-env agent, log monitor, autoscaler monitor, and Ray Data's three helper actors), each
importing Ray. On a 2-core machine what they spend while the scans run is taken from the scan
actors, so a local Ray is started with the settings that keep them quiet
(:data:`LOCAL_SYSTEM_CONFIG`; a cluster's own settings are never touched), and an attempt that
failed to start leaves none of its processes behind (:func:`start_ray`).
"""

from __future__ import annotations

import logging
from typing import Any

from bcedge.errors import BcedgeError, first_line

_log = logging.getLogger(__name__)

#: Tries to start a local Ray (see start_ray).
LOCAL_START_ATTEMPTS = 3
#: Niceness a local Ray adds to its workers (Ray's default 15: nice 15 gets ~3 % of a core against nice 0).
LOCAL_WORKER_NICENESS = 0
#: Ray system settings of a local Ray (``ray.init(_system_config=...)``).
#:
#: - ``worker_niceness``: the scan actors run at the niceness ``bcedge batch`` was started at, as
#:   ``bcedge infer`` does (Ray's default makes them 15 nicer than the driver).
#: - ``enable_metrics_collection`` off: every Ray process (driver, actors, raylet, GCS) would record
#:   and export metrics every few seconds to the dashboard agent for a Prometheus that a local run
#:   (no dashboard) never has.
#: - ``task_events_report_interval_ms`` 0: no task events from every worker to the GCS each second
#:   (they feed the dashboard and ``ray list tasks``; a run's progress is in its table instead).
LOCAL_SYSTEM_CONFIG: dict[str, Any] = {
    "worker_niceness": LOCAL_WORKER_NICENESS,
    "enable_metrics_collection": False,
    "task_events_report_interval_ms": 0,
}


class RayRunError(BcedgeError):
    """Ray failed: no cluster at the address, actors that kept dying, a lost object (exit code 4)."""

    exit_code = 4


def _children() -> set[int]:
    """PIDs of this process's descendants (a local Ray's processes are the driver's children)."""
    import psutil  # a dependency of Ray

    return {p.pid for p in psutil.Process().children(recursive=True)}


def _reap(pids: set[int], grace_s: float = 3.0) -> None:
    """Terminate ``pids`` (a failed start's processes), then kill what is left after ``grace_s``.

    ``ray.shutdown()`` after a failed local start does not stop that attempt's GCS, monitors and
    dashboard (the half-built node never became Ray's global node): they kept running beside the next
    attempt and after the run, loading the machine that had made the start time out (seen: three
    leftover sets on a loaded 2-core machine).
    """
    import psutil

    procs = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            proc.terminate()
            procs.append(proc)
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            continue


def start_ray(address: str | None, workers: int, object_store_mb: int) -> bool:
    """Connect to ``address`` or start a local Ray with ``workers`` CPUs; False when Ray was already up.

    Raises:
        RayRunError: no Ray at ``address``, or a local Ray that did not start in
            :data:`LOCAL_START_ATTEMPTS` tries (exit code 4).
    """
    import ray

    if ray.is_initialized():
        return False
    # Worker output is not forwarded: each scan's error is in its row, and a worker's exception
    # reaches the driver through Ray anyway; forwarded logs would interleave with the progress bar.
    common: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False}
    # A local Ray waits a fixed 30 s for its raylet to register (ray/_private/node.py); on a loaded
    # machine that can pass, so a local start is tried up to LOCAL_START_ATTEMPTS times.
    attempts = 1 if address else LOCAL_START_ATTEMPTS
    for attempt in range(1, attempts + 1):
        before = set() if address else _children()
        try:
            if address:
                ray.init(address=address, **common)
            else:
                # address="local": always a new in-process Ray, never a cluster someone started on this machine.
                store = object_store_mb * 1024 * 1024
                ray.init(
                    address="local",
                    num_cpus=workers,
                    object_store_memory=store,
                    _system_config=dict(LOCAL_SYSTEM_CONFIG),
                    **common,
                )
            break
        except Exception as exc:  # ConnectionError, RuntimeError, ValueError from a bad address, start timeouts
            ray.shutdown()
            if not address:
                _reap(_children() - before)
            if attempt == attempts:
                where = f" at {address}" if address else f" (tried {attempts} times)"
                raise RayRunError(f"cannot start or reach Ray{where}: {first_line(exc)}") from exc
            _log.warning("local Ray did not start (%s); trying again", first_line(exc))
    return True


def quiet_ray_data() -> None:
    """Ray Data without its own progress bars, start banner, stats log or INFO logs (the driver shows one bar)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # the driver shows one rich bar instead
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
