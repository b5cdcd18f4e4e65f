"""Where the CPU of ``bcedge batch`` goes: CPU time per Ray process role against ``bcedge infer``.

Runs ``bcedge infer`` and ``bcedge batch`` (each in its own session) on the same mini-MIAS scans and
samples ``/proc/<pid>/stat`` of every process of the session every ``--period`` s, keeping each pid's
last CPU time (user+system; a process's CPU after its last sample is missed, at most one period).
Each pid is given a role from its command line (``bench_batch.process_role``: the driver,
``gcs_server``, ``raylet``, Ray's agents and monitors, the scan actor, Ray Data's stats actor and
location tracker, idle pool workers), so the extra CPU of ``batch`` over ``infer`` is split by who
spent it. Ratios hold on a loaded machine (CPU
time, not wall time); wall times are only indicative when ``busy``.

With ``--py-spy`` the driver and the actors are also sampled with py-spy (``--idle`` off: on-CPU
stacks only) and their top functions are kept.

Usage::

    BCEDGE_DATA=../shared/data python benchmarks/profile_batch.py [--scans 40] [--workers 1]
        [--extra-args "--batch-size 8"] [--py-spy] [--out benchmarks/results/batch_profile.json]
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_batch import CpuMeter, write_report  # noqa: E402

from bcedge.bench import library_versions, machine_info, source_state  # noqa: E402
from bcedge.bundle import utc_now  # noqa: E402


def _py_spy(pid: int, seconds: float, dest: Path) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        return None
    cmd = [exe, "record", "--pid", str(pid), "--format", "raw", "--rate", "50", "-d", str(int(seconds))]
    cmd += ["-o", str(dest)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _top_frames(raw: Path, n: int = 25) -> list[tuple[str, int]]:
    """Self-time of the leaf frames and inclusive counts of named bcedge/ray frames of a py-spy raw file."""
    leaf: collections.Counter[str] = collections.Counter()
    if not raw.exists():
        return []
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        leaf[frames[-1]] += int(count)
    return leaf.most_common(n)


def _inclusive(raw: Path, needles: list[str]) -> dict[str, int]:
    """Samples whose stack holds each needle (inclusive time), plus the total."""
    out: dict[str, int] = collections.Counter()
    if not raw.exists():
        return {}
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        out["_total"] += int(count)
        for needle in needles:
            if needle in stack:
                out[needle] += int(count)
    return dict(out)


SPY_NEEDLES = [
    "process_scans",
    "read_scan",
    "preprocess",
    "predict",
    "postprocess",
    "write_outputs",
    "commit (bcedge/batch/ledger.py",
    "iter_batches",
    "streaming_executor",
    "json",
    "import",
    "Segmenter",
]


def run(cmd: list[str], log: Path, period: float, spy_dir: Path | None) -> dict[str, Any]:
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
        meter = CpuMeter(period)
        meter.start(proc.pid)
        spies: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        if spy_dir is not None:
            spy_dir.mkdir(parents=True, exist_ok=True)
            dest = spy_dir / "driver.txt"
            spy = _py_spy(proc.pid, 600, dest)
            if spy:
                spies.append(("driver", spy, dest))
            watcher = threading.Thread(target=_spy_actors, args=(meter, spies, spy_dir), daemon=True)
            watcher.start()
        stdout, _ = proc.communicate()
    figures = meter.stop()
    figures["returncode"] = proc.returncode
    if proc.returncode != 0:
        figures["stderr_tail"] = log.read_text(errors="replace")[-1500:]
    for _name, spy, _dest in spies:
        try:
            spy.wait(timeout=20)
        except subprocess.TimeoutExpired:
            spy.terminate()
            spy.wait()
    if spies:
        figures["py_spy"] = {
            name: {"inclusive_samples": _inclusive(dest, SPY_NEEDLES), "top_leaf_frames": _top_frames(dest)}
            for name, _spy, dest in spies
        }
    try:
        figures["summary"] = json.loads(stdout) if stdout.strip().startswith("{") else None
    except json.JSONDecodeError:
        figures["summary"] = None
    return figures


def _spy_actors(meter: CpuMeter, spies: list[tuple[str, subprocess.Popen[bytes], Path]], spy_dir: Path) -> None:
    """Attach py-spy to every process that becomes a ScanWorker actor (once each)."""
    seen: set[int] = set()
    while not meter._stop.is_set():
        for pid, cmd in list(meter.cmd.items()):
            if pid not in seen and ("ScanWorker" in cmd or "MapWorker" in cmd):
                seen.add(pid)
                dest = spy_dir / f"actor-{pid}.txt"
                spy = _py_spy(pid, 600, dest)
                if spy:
                    spies.append((f"actor-{pid}", spy, dest))
        time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=40)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--bundle", type=Path, default=ROOT / "bcedge" / "mass_model")
    parser.add_argument("--extra-args", default="", help="more bcedge batch options (shell-quoted)")
    parser.add_argument("--skip-infer", action="store_true")
    parser.add_argument("--py-spy", action="store_true")
    parser.add_argument("--period", type=float, default=0.2)
    parser.add_argument("--label", default="")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "batch_profile.json")
    args = parser.parse_args()

    data = Path(os.environ.get("BCEDGE_DATA", ROOT.parent / "shared" / "data"))
    images = sorted((data / "mini-mias" / "images").glob("mdb*.png"))[: args.scans]
    report: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {"runs": []}
    entry: dict[str, Any] = {
        "created": utc_now(),
        "label": args.label,
        "machine": machine_info(threads=[1]),
        "libraries": library_versions(extra=["ray", "pyarrow"]),
        "source": source_state(ROOT),
        "scans": len(images),
        "bundle": str(args.bundle.relative_to(ROOT) if args.bundle.is_relative_to(ROOT) else args.bundle),
        "note": "CPU seconds by process role (sampled /proc, user+system); ratios hold under load, wall times do not",
    }
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="profile-batch-") as tmp:
        work = Path(tmp)
        manifest = work / "scans.csv"
        with open(manifest, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path"])
            w.writerows([[str(p)] for p in images])
        common = ["--model", str(args.bundle), "--threads", "1", "--outputs", "mask,json", "--json"]
        if not args.skip_infer:
            infer = [py, "-m", "bcedge", "infer", *map(str, images), "--out", str(work / "infer"), *common]
            entry["infer"] = run(infer, work / "infer.log", args.period, None)
            entry["infer"].pop("summary", None)
            print("infer", json.dumps({k: v for k, v in entry["infer"].items() if k != "py_spy"}), flush=True)
        batch = [py, "-m", "bcedge", "batch", str(manifest), "--out", str(work / "batch"), "--workers"]
        batch += [str(args.workers), *common, *shlex.split(args.extra_args)]
        entry["batch_command"] = f"bcedge batch --workers {args.workers} --threads 1 {args.extra_args}".strip()
        spy_dir = work / "spy" if args.py_spy else None
        res = run(batch, work / "batch.log", args.period, spy_dir)
        summary = res.pop("summary", None) or {}
        res["ray_start_s"] = round(summary.get("ray_start_s", 0.0), 2)
        res["processing_s"] = round(summary.get("processing_s", 0.0), 2)
        res["processed"] = summary.get("processed")
        entry["batch"] = res
        print("batch", json.dumps({k: v for k, v in res.items() if k != "py_spy"}), flush=True)
        if "infer" in entry and entry["infer"].get("own_cpu_s") and res.get("processed"):
            n = res["processed"]
            entry["own_cpu_s_per_scan"] = {
                "infer": round(entry["infer"]["own_cpu_s"] / n, 3),
                "batch": round(res["own_cpu_s"] / n, 3),
            }
    report["runs"].append(entry)
    write_report(report, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
