"""Time the CI's aarch64 smoke test from an empty cache: what a fresh CI machine does.

Runs the two commands of ``.ci/run`` (``make_rootfs.sh --unpacked debian12`` then
``run_suite.sh --unpacked --quick``) with ``BCEDGE_ARM64_CACHE`` set to a new, empty
folder, and records their wall time, the CPU time they used (user + sys of every child,
the emulated processes included), each step's wall and CPU seconds (the scripts'
``timings.txt``), how much CPU every *other* process used meanwhile and the load average,
so that a figure taken on a shared machine says how shared it was.

    sudo .venv/bin/python benchmarks/arm64/time_ci_smoke.py --cache /tmp/arm64-cold \\
        --json benchmarks/results/arm64_ci_cold.json [--note TEXT]

The cache folder must not exist or be empty (a warm cache is not a cold build). The
record is a set-up time, not a speed figure of bcedge: the emulated steps run under qemu.
Exit status: the first failing command's, else 0; 2 when the cache folder is not empty.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # bcedge from this checkout when run with another interpreter

from bcedge.bench import machine_info, source_state  # noqa: E402
from bcedge.bench.load import LoadMeter, machine_cpu_s  # noqa: E402
from bcedge.imageio import atomic_write_bytes  # noqa: E402

HERE = Path(__file__).resolve().parent
#: The commands of .ci/run's aarch64 step, in order (run from the repository root).
COMMANDS = (
    ("make_rootfs", ["bash", str(HERE / "make_rootfs.sh"), "--unpacked", "debian12"]),
    ("run_suite_quick", ["bash", str(HERE / "run_suite.sh"), "--unpacked", "--quick"]),
)


def _children_cpu_s() -> float:
    """CPU seconds (user + sys) of every child process this process has waited for."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _kv(path: Path) -> dict[str, float]:
    """``name=seconds`` lines of a ``timings.txt`` (missing file: empty)."""
    if not path.is_file():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k: float(v) for k, v in pairs}


def run_timed(name: str, cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``cmd`` from the repository root; its exit code, wall/CPU seconds and the machine's load meanwhile."""
    meter = LoadMeter()
    cpu0, machine0, load0 = _children_cpu_s(), machine_cpu_s(), os.getloadavg()[0]
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, cwd=REPO, env=env, check=False).returncode
    wall = time.perf_counter() - t0
    cpu = _children_cpu_s() - cpu0
    # LoadMeter.fields with this command's CPU (its children's) as "own": others' share of the machine.
    fields = meter.fields(wall, cpu, machine0, machine_cpu_s(), os.cpu_count() or 1, round(load0, 2))
    return {
        "command": name,
        "rc": rc,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "others_cpu_share": fields["others_cpu_share"],
        "busy": fields["busy"],
        "load_avg_1min_before": fields["load_avg_1min_before"],
        "load_avg_1min_after": round(os.getloadavg()[0], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True, help="an empty (or new) BCEDGE_ARM64_CACHE folder")
    parser.add_argument("--json", type=Path, required=True, help="where the record goes")
    parser.add_argument("--note", action="append", default=[], help="a line for the record (repeatable)")
    args = parser.parse_args()
    if args.cache.exists() and any(args.cache.iterdir()):
        print(f"error: {args.cache} is not empty: a cold build needs an empty cache", file=sys.stderr)
        return 2
    env = dict(os.environ, BCEDGE_ARM64_CACHE=str(args.cache.resolve()))
    # The checkout the commands run from, taken before they start (others may commit meanwhile).
    source = source_state(REPO)
    rows = []
    for name, cmd in COMMANDS:
        rows.append(run_timed(name, cmd, env))
        if rows[-1]["rc"] != 0:
            break
    base = args.cache.resolve() / "debian12-unpacked"
    record = {
        "kind": "arm64-ci-smoke-cold",
        "note": "Set-up and smoke-test time of .ci/run's aarch64 step from an empty cache; the emulated "
        "steps run under qemu-user: not device timings, not speed figures.",
        "notes": args.note,
        "commands": rows,
        "total_wall_s": round(sum(r["wall_s"] for r in rows), 1),
        "total_cpu_s": round(sum(r["cpu_s"] for r in rows), 1),
        "passed": len(rows) == len(COMMANDS) and all(r["rc"] == 0 for r in rows),
        "steps_make_rootfs": _kv(base / "timings.txt"),
        "steps_quick_suite": _kv(base / "out" / "quick" / "timings.txt"),
        "host": machine_info(),
        "source": source,
    }
    atomic_write_bytes(args.json, (json.dumps(record, indent=2) + "\n").encode())
    print(json.dumps({k: record[k] for k in ("commands", "total_wall_s", "total_cpu_s", "passed")}, indent=2))
    return next((r["rc"] for r in rows if r["rc"] != 0), 0)


if __name__ == "__main__":
    sys.exit(main())
