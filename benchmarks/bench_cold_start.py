"""Cold start: ``bcedge infer`` on one full-field scan vs the naive pydicom + OpenCV + LiteRT script.

Issue #14 item 8: a fresh ``bcedge infer --outputs json,mask`` process on one FFDM scan must take
no longer than ``benchmarks/naive_infer.py`` doing the same job in a fresh process (done when
the median ratio is <= 1.0). The scan is the 2944x1920 12-bit phantom of ``bench_infer.py``,
uncompressed; the model is ``bcedge infer``'s default (the bundled real-data model, ``--backend
auto``), and the naive script runs the artifact bcedge picked, at the same thread count
(bcedge's default: every usable CPU).

Each run is a new process (Python start, imports, model load, one scan, outputs written); the
two commands alternate, after one untimed run of each (file and page cache warm, as on a
device that has run before). Per run: wall time, the child's CPU time (user + system, from
``wait4`` in a small launcher process), its own peak RSS (see ``_LAUNCHER``), and the share
of the machine's CPUs that *other* processes used meanwhile (``/proc/stat``); a run where
others used more than ``--busy-share`` is flagged ``busy``, and the summary says whether any
was. Compare figures only from a quiet machine.

    python benchmarks/bench_cold_start.py [--runs 10] [--json benchmarks/results/cold_start.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _busy_cpu_s() -> float:
    """CPU seconds all processes have used (every /proc/stat column but idle and iowait)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = f.readline().split()[1:]
    return sum(int(v) for i, v in enumerate(fields) if i not in (3, 4)) / os.sysconf("SC_CLK_TCK")


#: Runs the command as its child and writes the child's rusage as JSON to the fd in argv[1]. The command's
#: ru_maxrss would otherwise start at this script's own peak: Linux carries a process's peak RSS
#: mark across fork and exec (``signal->maxrss``), so a child spawned by a 300 MB parent reports
#: >= 300 MB whatever it used (the 691.65 MB of every isolated benchmark row, issue #14 item 9).
#: A fresh ``python -S`` in between keeps that floor at its own ~10 MB.
_LAUNCHER = """
import json, os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, ru = os.wait4(pid, 0)
os.write(int(sys.argv[1]), json.dumps({"code": os.waitstatus_to_exitcode(status), "maxrss_kb": ru.ru_maxrss,
                        "cpu_s": ru.ru_utime + ru.ru_stime}).encode())
"""


def _child_env() -> dict[str, str]:
    """This environment, but with bytecode caching on: with PYTHONDONTWRITEBYTECODE set (as in some
    shells and CI), every module edited since its last .pyc is compiled again in every run, which
    an installed bcedge never does (~30 ms for bcedge/dicom.py alone). The untimed runs write them."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run_once(cmd: list[str], busy_share: float) -> dict[str, Any]:
    """One fresh process: wall ms, its CPU ms, its peak RSS MB, the others' CPU share, busy flag."""
    ncpu = len(os.sched_getaffinity(0))
    read_end, write_end = os.pipe()
    busy0, t0 = _busy_cpu_s(), time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-S", "-c", _LAUNCHER, str(write_end), *cmd],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        pass_fds=(write_end,),
        env=_child_env(),
    )
    os.close(write_end)
    _, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    with os.fdopen(read_end, "rb") as f:
        report = json.loads(f.read() or b"{}")
    if proc.returncode != 0 or report.get("code") != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {report.get('code')}: {stderr.decode(errors='replace')[-500:]}")
    own = float(report["cpu_s"])
    others = max(0.0, _busy_cpu_s() - busy0 - own) / (wall * ncpu)
    return {
        "wall_ms": round(wall * 1e3, 1),
        "cpu_ms": round(own * 1e3, 1),
        "peak_rss_mb": round(report["maxrss_kb"] / 1024, 1),
        "others_cpu_share": round(others, 2),
        "busy": others > busy_share,
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and min of wall and CPU ms over the runs of one command."""
    wall = [r["wall_ms"] for r in rows]
    cpu = [r["cpu_ms"] for r in rows]
    return {
        "wall_ms_median": round(statistics.median(wall), 1),
        "wall_ms_min": round(min(wall), 1),
        "cpu_ms_median": round(statistics.median(cpu), 1),
        "peak_rss_mb_median": round(statistics.median(r["peak_rss_mb"] for r in rows), 1),
        "busy_runs": sum(r["busy"] for r in rows),
        "runs": len(rows),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="timed runs of each command")
    parser.add_argument("--model", type=Path, default=None, help="bundle (default: bcedge infer's default)")
    parser.add_argument("--busy-share", type=float, default=0.1, help="others' CPU share that flags a run busy")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from bench_infer import make_scans

    from bcedge.bench.machine import library_versions, machine_info
    from bcedge.cpus import default_threads

    threads = default_threads()
    exe = Path(sys.executable).with_name("bcedge")
    bcedge_cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "bcedge"]
    with tempfile.TemporaryDirectory(prefix="bench cold start ") as tmp:
        folder = Path(tmp)
        scan = next(p for p, info in make_scans(folder) if (info["rows"], info["columns"]) == (2944, 1920))
        model = ["--model", str(args.model)] if args.model else []
        ours = [*bcedge_cmd, "infer", str(scan), *model, "--outputs", "json,mask", "--out", str(folder / "bcedge")]
        # The untimed first run also says which artifact auto picked, for the naive script.
        probe = subprocess.run([*ours, "--json"], capture_output=True, text=True, check=True, env=_child_env())
        info = json.loads(probe.stdout)["model"]
        if info.get("format") != "tflite":
            raise SystemExit(
                f"bcedge picked {info.get('artifact')} ({info.get('format')}); the naive script runs LiteRT"
            )
        artifact = Path(info["bundle"]) / info["artifact"]
        naive = [sys.executable, str(HERE / "naive_infer.py"), str(scan), str(artifact), str(folder / "naive")]
        naive += ["--threads", str(threads), "--threshold", str(json.loads(probe.stdout)["threshold"])]
        run_once(naive, args.busy_share)  # untimed: page cache
        load_before = os.getloadavg()
        runs: dict[str, list[dict[str, Any]]] = {"bcedge": [], "naive": []}
        for i in range(args.runs):
            for name, cmd in (
                (("bcedge", ours), ("naive", naive)) if i % 2 == 0 else (("naive", naive), ("bcedge", ours))
            ):
                runs[name].append(run_once(cmd, args.busy_share))
                print(f"{name} {runs[name][-1]}", file=sys.stderr)
    summary = {name: summarise(rows) for name, rows in runs.items()}
    ratio = summary["bcedge"]["wall_ms_median"] / summary["naive"]["wall_ms_median"]
    doc = {
        "script": "benchmarks/bench_cold_start.py",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "scan": "bcedge.phantom seed 21, L CC, 70 um, 12 bits, MONOCHROME2, cropped to 2944x1920, uncompressed",
        "model": info,
        "threads": threads,
        "commands": {"bcedge": ours, "naive": naive},
        "summary": summary,
        "ratio_wall_median": round(ratio, 3),
        "target": "ratio <= 1.0 (issue #14 item 8)",
        "measured_on_a_busy_machine": any(r["busy"] for rows in runs.values() for r in rows),
        "machine": {**machine_info([threads]), "load_avg_before": [round(v, 2) for v in load_before]},
        "libraries": library_versions(),
        "runs": runs,
    }
    text = json.dumps(doc, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(json.dumps({k: doc[k] for k in ("summary", "ratio_wall_median", "measured_on_a_busy_machine")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
