"""What Ray Data adds to a ``bcedge batch`` run's fixed cost: a local Ray with W no-op actors run through a
Ray Data actor pool (as ``bcedge batch`` does) against the same W actors as plain Ray Core actors.

Each variant runs in a child process started in its own session; the CPU time of its whole process tree is
split by process role with ``bench_batch.CpuMeter`` (driver, actors, each of Ray's own processes). Both use
bcedge's local Ray start (:func:`bcedge.batch.run.start_ray`); the Ray Data one maps a no-op callable class
over ``2 * W`` one-row blocks (``ActorPoolStrategy(size=W)``), the Ray Core one creates W no-op actors and
calls each twice. The variants alternate (``--rounds`` pairs) so that a loaded machine weighs on both alike:
CPU times are comparable under load, wall times are not (``other_cpu_share`` says how busy it was).

This measures a decision the issue made (``bcedge batch`` is built on Ray Data), not bcedge code: Ray
Data's helper actors, its import (pandas among others) in the driver and in every actor, and its
scheduling loop, none of which a Ray Core actor pool has.

Usage::

    python benchmarks/ray_core_vs_data.py [--workers 2] [--rounds 2] [--out benchmarks/results/ray_core_vs_data.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_batch import run_measured, write_report  # noqa: E402

from bcedge.bench import library_versions, machine_info, source_state  # noqa: E402
from bcedge.bundle import utc_now  # noqa: E402


class _Noop:
    """A do-nothing Ray Data callable class (the actor pool without a model)."""

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        return batch


def child(kind: str, workers: int) -> int:
    """One variant in this process: local Ray start, W no-op actors ``kind`` (``data`` or ``core``), shutdown."""
    import ray

    from bcedge.batch.run import DEFAULT_OBJECT_STORE_MB, _quiet_ray_data, start_ray

    t0 = time.perf_counter()
    start_ray(None, workers, DEFAULT_OBJECT_STORE_MB)
    t1 = time.perf_counter()
    if kind == "data":
        _quiet_ray_data()  # imports ray.data, as bcedge batch does
        ds = ray.data.from_items([{"i": i} for i in range(2 * workers)], override_num_blocks=2 * workers)
        ds = ds.map_batches(_Noop, batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1)
        rows = sum(len(b["i"]) for b in ds.iter_batches(batch_size=None))
    else:
        noop = ray.remote(num_cpus=1)(_Noop)
        actors = [noop.remote() for _ in range(workers)]
        rows = len(ray.get([a.__call__.remote({"i": i}) for i, a in enumerate(actors * 2)]))
    t2 = time.perf_counter()
    ray.shutdown()
    print(json.dumps({"ray_start_s": round(t1 - t0, 2), "actors_s": round(t2 - t1, 2), "calls": rows}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ray_core_vs_data.json")
    parser.add_argument("--child", choices=("data", "core"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.workers)
    report: dict[str, Any] = {
        "created": utc_now(),
        "machine": machine_info(threads=[1]),
        "libraries": library_versions(extra=["ray", "pyarrow", "pandas"]),
        "source": source_state(ROOT),
        "workers": args.workers,
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="ray core vs data ") as tmp:
        for r in range(args.rounds):
            for kind in ("data", "core"):
                cmd = [sys.executable, __file__, "--child", kind, "--workers", str(args.workers)]
                done, load = run_measured(cmd, Path(tmp) / f"{kind}{r}.log")
                run = {"variant": kind, "round": r, **json.loads(done.stdout.strip().splitlines()[-1]), **load}
                report["runs"].append(run)
                print(json.dumps({k: run[k] for k in ("variant", "round", "wall_s", "own_cpu_s", "other_cpu_share")}))
                write_report(report, args.out)
    by = {k: [r["own_cpu_s"] for r in report["runs"] if r["variant"] == k] for k in ("data", "core")}
    report["mean_own_cpu_s"] = {k: round(sum(v) / len(v), 2) for k, v in by.items()}
    report["ray_data_extra_cpu_s"] = round(report["mean_own_cpu_s"]["data"] - report["mean_own_cpu_s"]["core"], 2)
    report["machine_after"] = {"load_avg": machine_info().get("load_avg")}
    write_report(report, args.out)
    print(json.dumps({k: report[k] for k in ("mean_own_cpu_s", "ray_data_extra_cpu_s")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
