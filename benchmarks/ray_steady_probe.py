"""What Ray's own processes cost while a ``bcedge batch`` run works: per-process CPU by phase, no model.

bcedge's local Ray start (:func:`bcedge.batch.localray.start_ray`), then a Ray Data actor pool of
``--workers`` actors that sleep ``--sleep`` s per block over ``--blocks`` one-row blocks (the scan
job's place, using no CPU), as ``bcedge batch`` builds it (one block in flight per actor for
several workers), then shutdown. This process and everything it starts run in one session; every
0.2 s each pid's CPU time (user+system, ``/proc/<pid>/stat``) is sampled, and at the end each pid's
CPU per phase is given to its role (its last command line: ``bench_batch.process_role``):

- ``start``: ``ray.init`` (GCS, raylet, agents, monitors, prestarted workers);
- ``setup``: from there to the pool's second output block (actors started, Ray Data's helper actors
  up, the first block slept);
- ``steady``: from the second output block to the last: what Ray's processes, the driver's
  scheduling loop and the idle actors spend per second while the actors work;
- ``shutdown``: ``ray.shutdown``.

``other_cpu_share`` is the CPU of every other process over the run (``/proc/stat``), of all cores.

Variants (``--variant``) compare a setting without changing bcedge: ``current`` (as bcedge starts
Ray), ``no-quiet-config`` (a local Ray with ``worker_niceness`` only: the code before metrics and
task events were switched off), ``poll-0.5`` (Ray Data's scheduling loop waiting 0.5 s for task
completions instead of its 0.1 s; a private constant, not shipped), ``no-prestart`` (no
prestarted workers).

Usage::

    python benchmarks/ray_steady_probe.py [--workers 2] [--blocks 10] [--sleep 5] [--variant current]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_batch import _busy_jiffies, _session_cpu, process_role

CLK = os.sysconf("SC_CLK_TCK")
VARIANTS = ("current", "no-quiet-config", "poll-0.5", "no-prestart")


class Sampler:
    """Last seen CPU ticks and command line of every pid of this session (sampled every 0.2 s)."""

    def __init__(self) -> None:
        self.sid = os.getsid(0)
        self.seen: dict[int, int] = {}
        self.cmds: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.snap()
            time.sleep(0.2)

    def snap(self) -> dict[int, int]:
        """Sample now; returns pid -> ticks so far."""
        for pid, (ticks, cmd) in _session_cpu(self.sid).items():
            self.seen[pid] = ticks
            if cmd:
                self.cmds[pid] = cmd
        return dict(self.seen)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def by_role(self, a: dict[int, int], b: dict[int, int]) -> dict[str, float]:
        """CPU seconds between samples ``a`` and ``b`` by role (each pid's role from its last command line)."""
        roles: dict[str, float] = {}
        for pid in set(a) | set(b):
            role = "driver" if pid == os.getpid() else process_role(self.cmds.get(pid, ""))
            roles[role] = roles.get(role, 0.0) + (b.get(pid, a.get(pid, 0)) - a.get(pid, 0)) / CLK
        return {k: round(v, 2) for k, v in sorted(roles.items(), key=lambda kv: -kv[1])}


def apply_variant(variant: str) -> None:
    """Change the one setting ``variant`` names (in this process only)."""
    from bcedge.batch import localray

    if variant == "no-quiet-config":
        localray.LOCAL_SYSTEM_CONFIG.clear()
        localray.LOCAL_SYSTEM_CONFIG["worker_niceness"] = localray.LOCAL_WORKER_NICENESS
    elif variant == "poll-0.5":
        from ray.data._internal.execution import streaming_executor_state

        streaming_executor_state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S = 0.5
    elif variant == "no-prestart":
        localray.LOCAL_SYSTEM_CONFIG.update({"enable_worker_prestart": False, "prestart_worker_first_driver": False})


class Sleeper:
    """A Ray Data actor that sleeps ``sleep_s`` per block (no CPU: the scan job's place)."""

    def __init__(self, sleep_s: float) -> None:
        self.sleep_s = sleep_s

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        time.sleep(self.sleep_s)
        return batch


def probe(workers: int, blocks: int, sleep_s: float, variant: str) -> dict[str, Any]:
    """One run; CPU by role per phase, wall per phase (see the module docstring)."""
    sampler = Sampler()
    t0, r0, busy0 = time.perf_counter(), sampler.snap(), _busy_jiffies()
    import pyarrow as pa
    import ray

    from bcedge.batch.localray import quiet_ray_data, start_ray

    apply_variant(variant)
    start_ray(None, workers, 256)
    t1, r1 = time.perf_counter(), sampler.snap()
    quiet_ray_data()
    ds = ray.data.from_arrow([pa.table({"i": [i]}) for i in range(blocks)])
    ds = ds.map_batches(
        Sleeper,
        fn_constructor_kwargs={"sleep_s": sleep_s},
        batch_size=None,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1 if workers > 1 else None),
        num_cpus=1,
    )
    tf, rf = t1, r1
    for n, _ in enumerate(ds.iter_batches(batch_size=None, batch_format="numpy"), start=1):
        if n == 2:  # every helper actor is up by now
            tf, rf = time.perf_counter(), sampler.snap()
    tl, rl = time.perf_counter(), sampler.snap()
    ray.shutdown()
    time.sleep(0.5)
    t3, r3, busy3 = time.perf_counter(), sampler.snap(), _busy_jiffies()
    sampler.stop()
    steady = sampler.by_role(rf, rl)
    total = sum(sampler.by_role(r0, r3).values())
    return {
        "variant": variant,
        "workers": workers,
        "blocks": blocks,
        "sleep_s": sleep_s,
        "wall_s": {
            "start": round(t1 - t0, 2),
            "setup": round(tf - t1, 2),
            "steady": round(tl - tf, 2),
            "shutdown": round(t3 - tl, 2),
        },
        "cpu_s": {
            "start": sampler.by_role(r0, r1),
            "setup": sampler.by_role(r1, rf),
            "steady": steady,
            "shutdown": sampler.by_role(rl, r3),
        },
        "steady_cores": round(sum(steady.values()) / (tl - tf), 3),
        "total_cpu_s": round(total, 2),
        "other_cpu_share": round(((busy3 - busy0) / CLK - total) / ((t3 - t0) * (os.cpu_count() or 1)), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--sleep", type=float, default=5.0, help="seconds each actor sleeps per block")
    parser.add_argument("--variant", choices=VARIANTS, default="current")
    args = parser.parse_args()
    print(json.dumps(probe(args.workers, args.blocks, args.sleep, args.variant), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
