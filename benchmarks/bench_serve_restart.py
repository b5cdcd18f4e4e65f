"""How long ``bcedge serve`` takes from its process start to an open port, by worker start method (issue #18).

After a ``kill -9`` every spooled scan waits for this: the node's own imports and recovery, and
its worker processes' imports and model loads. The workers are started either by the fork server
(the default: one interpreter imports what they need once, :mod:`bcedge.serve.preload`, then
forks each worker, which only loads the model) or by ``spawn`` (each worker imports everything
itself, in parallel); ``BCEDGE_SERVE_START_METHOD`` picks one. The two alternate (``--trials``
each, after one untimed start that warms the page cache), on an empty storage root, with the
model of ``--bundle`` and 2 worker processes, as in ``benchmarks/bench_serve_faults.py``.

Per start: seconds from ``Popen`` to the node's ``starting`` log line, to the last worker's
``ready`` line and to an open port; the CPU seconds the node and its child processes (workers,
fork server) had used by then; then the node is killed with SIGKILL and the next start waits
until every process of the previous one is gone. Reported with the machine (CPU flags), its
load, and the share of the machine's CPU that other processes used meanwhile
(``others_cpu_share``; a wall-clock figure is this machine's only when it is near 0).

Usage::

    python benchmarks/bench_serve_restart.py [--trials 4] [--bundle bcedge/mass_model] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import free_port, port_open, wait
from bench_serve_faults import children, cpu_seconds, log_events, machine_busy, others_cpu, write_node_config

from bcedge.bench import library_versions, machine_info, source_state
from bcedge.bundle import utc_now
from bcedge.serve.isolation import START_METHOD_ENV

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "serve_restart.json"
METHODS = ("forkserver", "spawn")


def one_start(work: Path, method: str, bundle: Path, index: int) -> dict[str, Any]:
    """Start a node on a fresh storage root, time it to an open port, then SIGKILL it and its children."""
    root, log = work / f"node{index}", work / f"node{index}.log"
    port = free_port()
    config = work / f"serve{index}.toml"
    write_node_config(config, port, root, bundle, free_port(), log)
    # Bytecode caching on, as an installed node has its .pyc files (see bench_serve_faults.py).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env[START_METHOD_ENV] = method
    t0_wall, t0 = time.time(), time.monotonic()
    node = subprocess.Popen(
        [sys.executable, "-m", "bcedge", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        env=env,
    )
    try:
        wait(lambda: port_open(port) or node.poll() is not None, "the node to listen", 300)
        port_s = time.monotonic() - t0
        if node.poll() is not None:
            raise SystemExit(f"the node did not start ({method}):\n{log.read_text(errors='replace')[-2000:]}")
        procs = [node.pid, *children(node.pid)]
        cpu = sum(cpu_seconds(p) or 0.0 for p in procs)
    finally:
        node.send_signal(signal.SIGKILL)
        node.wait(30)
    # Everything the node started must be gone before the next start (the fork server and the
    # workers die with the node): what is left would share the cores with the next one.
    wait(lambda: not any(cpu_seconds(p) is not None for p in procs[1:]), "the node's processes to die", 30)
    events = {k: [round(t - t0_wall, 3) for t in v] for k, v in log_events(log, t0_wall).items()}
    return {
        "method": method,
        "starting_s": events["node_starting"][0] if events["node_starting"] else None,
        "workers_ready_s": max(events["worker_ready"]) if events["worker_ready"] else None,
        "port_open_s": round(port_s, 3),
        "cpu_s_at_port_open": round(cpu, 2),
        "processes": len(procs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4, help="timed starts per method (alternating)")
    parser.add_argument("--bundle", type=Path, default=ROOT / "bcedge" / "mass_model")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    bundle = args.bundle.resolve()
    load_before = [round(v, 2) for v in os.getloadavg()]
    trials: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bcedge serve restart ") as tmp:
        work = Path(tmp)
        one_start(work, METHODS[0], bundle, 0)  # untimed: page cache, .pyc files, the choice cache
        others0, busy0 = others_cpu(), machine_busy()
        for i in range(args.trials):
            # ABAB... then BABA...: neither method always goes first after the other.
            order = METHODS if i % 2 == 0 else METHODS[::-1]
            for method in order:
                trials.append(one_start(work, method, bundle, len(trials) + 1))
                print(json.dumps(trials[-1]))
        others1, busy1 = others_cpu(), machine_busy()
    others_s = sum(v - others0.get(pid, 0.0) for pid, v in others1.items())
    summary = {}
    for method in METHODS:
        rows = [t for t in trials if t["method"] == method]
        summary[method] = {
            key: round(statistics.median(t[key] for t in rows if t[key] is not None), 3)
            for key in ("starting_s", "workers_ready_s", "port_open_s", "cpu_s_at_port_open")
        }
    report = {
        "benchmark": "bcedge serve restart by worker start method (issue #18)",
        "created": utc_now(),
        "machine": machine_info(),
        "load_before": load_before,
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "others_cpu_share": round(max(0.0, others_s) / max(1e-9, busy1[1] - busy0[1]), 3),
        "machine_busy_fraction": round((busy1[0] - busy0[0]) / max(1e-9, busy1[1] - busy0[1]), 3),
        "libraries": library_versions(extra=("pynetdicom", "highdicom", "pydicom")),
        "source": source_state(ROOT),
        "settings": {
            "trials_per_method": args.trials,
            "bundle": str(bundle.relative_to(ROOT)) if bundle.is_relative_to(ROOT) else str(bundle),
            "worker_processes": 2,
            "storage_root": "empty",
        },
        "median": summary,
        "trials": trials,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["median"], indent=2), f"others_cpu_share {report['others_cpu_share']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
