"""Inference speed (issue #6, item 6): what a scan costs around the model, the DICOM SEG, and cold start.

For a 2944x1920 and a 3328x2560 12-bit full-field phantom (``bcedge.phantom``; the
smaller one is a crop of a 70 um 3328x2560 phantom, breast side kept), written as
uncompressed MG DICOM into a temporary folder whose name has a space:

1. ``stages``: one :class:`bcedge.pipeline.Segmenter` (warm), the scan job of ``bcedge infer``
   (``bcedge.scanjob.run_scan(..., ["json", "mask"])``), repeated; medians of the stages
   ``decode``, ``preprocess``, ``infer``, ``postprocess``, ``write`` and of
   ``non_model = decode + preprocess + postprocess + write`` (per run), reported as
   a percentage of ``infer`` (target <= 30 %).
2. ``seg``: on the same warm process, ``write_scan_outputs`` with ``json,mask`` and with
   ``json,mask,seg`` alternately on one result; SEG added = difference of the medians
   (target <= 100 ms). Also in fresh processes (``seg_first_in_process``): the first
   SEG of a process pays ``import highdicom`` and highdicom's standard tables. That
   is measured with bcedge's lazy table (as shipped) and with highdicom's own full
   parse of its 22 MB table (``highdicom_full_table``: the "before").
3. ``cold_start``: ``bcedge infer SCAN --outputs json --json`` as a subprocess, wall
   time from spawn to exit, minus the model's own ``infer`` time from its JSON
   (target <= 1.5 s beyond the model).

Everything runs pinned to one core by default (children inherit the pinning), the
backend with ``--threads`` (default 1). The results go to
``benchmarks/results/infer_speed.json`` with the machine, its load before and after,
the busiest other processes and the CPU time everything else used during the run
(from /proc/stat minus this process tree), so a figure from a busy machine can be
told apart.

Usage::

    python benchmarks/bench_infer.py [--model BUNDLE] [--runs 20] [--cold-runs 5] [--threads 1] [--cpu N]
"""

from __future__ import annotations

import os

# Thread limits must be set before NumPy/OpenCV load their thread pools.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "infer_speed.json"
SIZES = ((2944, 1920), (3328, 2560))
TARGET_NON_MODEL_PCT = 30.0
TARGET_SEG_MS = 100.0
TARGET_COLD_S = 1.5

# A fresh interpreter: one scan through the scan job; its write stage is the first (the SEG's first-use costs).
_FIRST_WRITE = textwrap.dedent(
    """
    import json, sys
    from bcedge.outputs import highdicom_tables
    from bcedge.pipeline import Segmenter
    from bcedge.scanjob import run_scan
    model, scan, out, kinds, mode, threads = sys.argv[1:7]
    if mode == "highdicom_full_table":
        highdicom_tables._INSTALLED = True  # leave highdicom's own 22 MB table parse in place (the "before")
    with Segmenter(model, "tflite", threads=int(threads)) as seg:
        result = run_scan(seg, scan, out, kinds.split(","))  # the scan job: its write stage is the first one
        print(json.dumps({"write_ms": result.timing_ms["write"]}))
    """
)


# --------------------------------------------------------------------------- machine


def load_snapshot() -> dict[str, Any]:
    """Load averages and the busiest other processes now (to tell a quiet run from a busy one)."""
    busy = []
    try:
        out = subprocess.run(
            ["ps", "-eo", "pid,pcpu,etime,comm", "--sort=-pcpu"], capture_output=True, text=True, timeout=10
        ).stdout
        for line in out.splitlines()[1:]:
            parts = line.split(None, 3)
            if len(parts) == 4 and int(parts[0]) != os.getpid() and float(parts[1]) >= 5.0:
                busy.append(" ".join(parts))
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    return {"load_average_1_5_15": [round(v, 2) for v in os.getloadavg()], "busy_processes": busy[:6]}


def cpu_clock() -> tuple[float, float, float]:
    """(wall s, busy CPU s of the whole machine, CPU s of this process and its children) now."""
    import resource

    busy = float("nan")
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
        busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    own = sum(
        r.ru_utime + r.ru_stime
        for r in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    )
    return time.perf_counter(), busy, own


def others_cpu(start: tuple[float, float, float]) -> dict[str, float]:
    """CPU time other processes used since ``start``, in seconds and as a fraction of all cores' time."""
    wall0, busy0, own0 = start
    wall1, busy1, own1 = cpu_clock()
    others = max(0.0, (busy1 - busy0) - (own1 - own0))
    return {
        "wall_s": round(wall1 - wall0, 1),
        "others_cpu_s": round(others, 2),
        "others_fraction_of_all_cores": round(others / ((wall1 - wall0) * (os.cpu_count() or 1)), 3),
    }


def pin(cpu: int | None) -> list[int]:
    """Pin this process (and so its children) to one core; ``-1``: leave every allowed core."""
    allowed = sorted(os.sched_getaffinity(0))
    if cpu == -1:
        return allowed
    core = allowed[-1] if cpu is None else cpu
    if core not in allowed:
        raise SystemExit(f"--cpu {core} is not among the allowed cores {allowed}")
    os.sched_setaffinity(0, {core})
    cv2.setNumThreads(1)
    return [core]


def summary(values: list[float]) -> dict[str, float]:
    """Median, p95, min and max (p95 by the nearest-rank rule)."""
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, max(0, int(np.ceil(0.95 * len(ordered))) - 1))]
    return {
        "median": round(statistics.median(ordered), 2),
        "p95": round(p95, 2),
        "min": round(ordered[0], 2),
        "max": round(ordered[-1], 2),
        "n": len(ordered),
    }


# --------------------------------------------------------------------------- scans


def make_scans(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Write the two benchmark scans (12-bit, MONOCHROME2, left CC, two masses)."""
    from bcedge.dicom_write import build_mg_dataset, save_atomic
    from bcedge.phantom import make_phantom

    ph = make_phantom(
        seed=21, laterality="L", view="CC", detector="70um", bits_stored=12, photometric="MONOCHROME2", n_masses=2
    )
    scans = []
    for rows, cols in SIZES:
        stored = ph.stored
        if (rows, cols) != stored.shape:
            # Crop rows around the middle and the columns on the breast's side (its chest wall kept).
            top = (stored.shape[0] - rows) // 2
            breast_cols = np.flatnonzero(ph.breast.any(axis=0))
            left = 0 if breast_cols.mean() < stored.shape[1] / 2 else stored.shape[1] - cols
            stored = np.ascontiguousarray(stored[top : top + rows, left : left + cols])
        ds = build_mg_dataset(stored, ph.tags)
        ds.SOPInstanceUID = f"{ph.tags.extra.get('SOPInstanceUID', ds.SOPInstanceUID)}.{rows}"[:64]
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = save_atomic(ds, folder / f"scan {rows}x{cols}.dcm")
        scans.append(
            (
                path,
                {
                    "rows": rows,
                    "columns": cols,
                    "bits_stored": 12,
                    "source": "bcedge.phantom.make_phantom(seed=21, L CC, 70um, 12 bits, MONOCHROME2)"
                    + ("" if (rows, cols) == ph.stored.shape else f", cropped to {rows}x{cols}"),
                    "file_bytes": path.stat().st_size,
                },
            )
        )
    return scans


# --------------------------------------------------------------------------- measurements


def bench_stages(segmenter: Any, path: Path, out: Path, runs: int, warmup: int) -> dict[str, Any]:
    """Warm per-stage timings with --outputs json,mask; SEG added on the same process."""
    from bcedge import outputs
    from bcedge.pipeline import ScanFailure
    from bcedge.scanjob import run_scan, write_scan_outputs

    stages: dict[str, list[float]] = {k: [] for k in ("decode", "preprocess", "infer", "postprocess", "write")}
    non_model, ratio = [], []
    for i in range(warmup + runs):
        result = run_scan(segmenter, path, out, ["json", "mask"])  # the scan job of bcedge infer
        if isinstance(result, ScanFailure):
            raise SystemExit(f"error: {result.error}")
        if i < warmup:
            continue
        t = result.timing_ms
        for key in stages:
            stages[key].append(t[key])
        rest = t["decode"] + t["preprocess"] + t["postprocess"] + t["write"]
        non_model.append(rest)
        ratio.append(100.0 * rest / t["infer"])
    report: dict[str, Any] = {key: summary(v) for key, v in stages.items()}
    report["non_model"] = summary(non_model)
    report["non_model_pct_of_infer"] = summary(ratio)
    report["findings"] = len(result.findings)

    # SEG: the same result written with and without it, alternately (same load on both).
    with_seg, without = [], []
    for _ in range(3):
        write_scan_outputs(result, out, ["json", "mask", "seg"], segmenter)
    for _ in range(runs):
        for kinds, bucket in ((["json", "mask"], without), (["json", "mask", "seg"], with_seg)):
            write_scan_outputs(result, out, kinds, segmenter)
            bucket.append(result.timing_ms["write"])
    report["write_json_mask"] = summary(without)
    report["write_json_mask_seg"] = summary(with_seg)
    report["seg_added_ms"] = round(statistics.median(with_seg) - statistics.median(without), 2)
    report["seg_bytes"] = (out / f"{outputs.output_stem(path)}_seg.dcm").stat().st_size
    return report


def bench_seg_first(model: Path, path: Path, out: Path, runs: int, threads: int) -> dict[str, Any]:
    """A fresh process's first write (the scan job's write stage), with and without seg, and highdicom's own table."""
    modes = (("json,mask", "lazy_table"), ("json,mask,seg", "lazy_table"), ("json,mask,seg", "highdicom_full_table"))
    times: dict[str, list[float]] = {f"{k} ({m})": [] for k, m in modes}
    for _ in range(runs):
        for kinds, mode in modes:  # interleaved: the three see the same machine state
            done = subprocess.run(
                [sys.executable, "-c", _FIRST_WRITE, str(model), str(path), str(out), kinds, mode, str(threads)],
                capture_output=True,
                text=True,
                timeout=300,
            )
            if done.returncode != 0:
                raise SystemExit(f"first-write subprocess failed:\n{done.stderr[-2000:]}")
            times[f"{kinds} ({mode})"].append(json.loads(done.stdout.strip().splitlines()[-1])["write_ms"])
    report: dict[str, Any] = {key: summary(v) for key, v in times.items()}
    base = statistics.median(times["json,mask (lazy_table)"])
    report["seg_added_ms"] = round(statistics.median(times["json,mask,seg (lazy_table)"]) - base, 2)
    report["seg_added_ms_highdicom_full_table"] = round(
        statistics.median(times["json,mask,seg (highdicom_full_table)"]) - base, 2
    )
    return report


def bcedge_command() -> list[str]:
    """How to run the CLI: the ``bcedge`` script beside this Python, else ``python -m bcedge``."""
    script = Path(sys.executable).with_name("bcedge")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "bcedge"]


def bench_cold(model: Path, path: Path, out: Path, runs: int, threads: int) -> dict[str, Any]:
    """``bcedge infer --outputs json --json`` in a fresh process: wall time, and wall minus the model's infer."""
    walls, beyond, infers, totals = [], [], [], []
    command = [
        *bcedge_command(),
        "infer",
        str(path),
        "--model",
        str(model),
        "--backend",
        "tflite",
        "--threads",
        str(threads),
        "--outputs",
        "json",
        "--out",
        str(out),
        "--json",
    ]
    for _ in range(runs):
        t0 = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        wall = (time.perf_counter() - t0) * 1000.0
        if done.returncode != 0:
            raise SystemExit(f"bcedge infer failed ({done.returncode}):\n{done.stderr[-2000:]}")
        doc = json.loads(done.stdout)
        timing = doc["scans"][0]["timing_ms"]
        walls.append(wall)
        infers.append(timing["infer"])
        totals.append(timing.get("total", float("nan")))
        beyond.append(wall - timing["infer"])
    return {
        "command": " ".join(["bcedge", *command[len(bcedge_command()) :]])
        .replace(str(path), "SCAN")
        .replace(str(out), "OUT")
        .replace(str(model), "MODEL"),
        "wall_ms": summary(walls),
        "infer_ms": summary(infers),
        "in_process_total_ms": summary(totals),
        "beyond_model_ms": summary(beyond),
    }


# --------------------------------------------------------------------------- main


def default_model() -> Path:
    demo = ROOT / "bcedge" / "demo_model"
    return demo if (demo / "manifest.json").is_file() else ROOT / "models" / "unet-mobilenetv2-combined256"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="bundle (default: bcedge/demo_model, else models/...)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per warm measurement")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--cold-runs", type=int, default=5, help="fresh processes per cold measurement")
    parser.add_argument("--threads", type=int, default=1, help="backend threads")
    parser.add_argument("--cpu", type=int, default=None, help="core to pin to (default: the last allowed; -1: none)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from bcedge.bench import library_versions, machine_info, source_state
    from bcedge.bundle import utc_now
    from bcedge.pipeline import Segmenter

    model = (args.model or default_model()).resolve()
    cores = pin(args.cpu)
    clock = cpu_clock()
    load_before = load_snapshot()
    report: dict[str, Any] = {
        "benchmark": "infer_speed",
        "created": utc_now(),
        "machine": machine_info([args.threads]),
        "libraries": library_versions(extra=("highdicom",)),
        "pinned_cores": cores,
        "threads": args.threads,
        "runs": args.runs,
        "cold_runs": args.cold_runs,
        "source": source_state(ROOT),
        "load_before": load_before,
        "targets": {
            "non_model_pct_of_infer": TARGET_NON_MODEL_PCT,
            "seg_added_ms": TARGET_SEG_MS,
            "cold_start_beyond_model_s": TARGET_COLD_S,
        },
        "scans": [],
    }
    with tempfile.TemporaryDirectory(prefix="bcedge bench ") as tmp:
        folder = Path(tmp)
        scans = make_scans(folder)
        with Segmenter(model, "tflite", threads=args.threads) as segmenter:
            report["model"] = segmenter.model_info
            if segmenter.artifact.precision != "int8":
                print(f"warning: the artifact that runs is {segmenter.artifact.describe()}, not INT8", file=sys.stderr)
            for path, desc in scans:
                out = folder / f"out {desc['rows']}"
                print(f"{desc['rows']}x{desc['columns']}: warm stages and SEG ...", file=sys.stderr)
                entry = {"scan": desc, "warm": bench_stages(segmenter, path, out, args.runs, args.warmup)}
                report["scans"].append(entry)
        for entry, (path, desc) in zip(report["scans"], scans, strict=True):
            out = folder / f"cold out {desc['rows']}"
            print(f"{desc['rows']}x{desc['columns']}: first SEG in fresh processes ...", file=sys.stderr)
            entry["seg_first_in_process"] = bench_seg_first(model, path, out, args.cold_runs, args.threads)
            print(f"{desc['rows']}x{desc['columns']}: cold start of bcedge infer ...", file=sys.stderr)
            entry["cold_start"] = bench_cold(model, path, out, args.cold_runs, args.threads)
    report["load_after"] = load_snapshot()
    # The machine is shared: how much CPU did everything else take while this ran? (> ~0.05: not quiet.)
    report["others_during_run"] = others_cpu(clock)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from bcedge.imageio import atomic_write_bytes

    atomic_write_bytes(args.out, (json.dumps(report, indent=2) + "\n").encode())
    print_table(report)
    print(f"\nwritten: {args.out}")
    return 0


def print_table(report: dict[str, Any]) -> None:
    """The README table: medians in ms."""
    model = report["model"]
    print(
        f"\n{model['name']} {model['format']}/{model['precision']} on {model['backend']} "
        f"({model.get('runtime')}), threads {report['threads']}, cores {report['pinned_cores']}, "
        f"load before {report['load_before']['load_average_1_5_15']} "
        f"after {report['load_after']['load_average_1_5_15']}; other processes used "
        f"{report['others_during_run']['others_cpu_s']} CPU s "
        f"({100 * report['others_during_run']['others_fraction_of_all_cores']:.1f} % of all cores) during the run"
    )
    rows = [
        ("decode", lambda e: e["warm"]["decode"]["median"]),
        ("preprocess", lambda e: e["warm"]["preprocess"]["median"]),
        ("infer (model)", lambda e: e["warm"]["infer"]["median"]),
        ("postprocess", lambda e: e["warm"]["postprocess"]["median"]),
        ("write json,mask", lambda e: e["warm"]["write"]["median"]),
        ("non-model (decode+pre+post+write)", lambda e: e["warm"]["non_model"]["median"]),
        ("non-model % of infer (target <= 30)", lambda e: e["warm"]["non_model_pct_of_infer"]["median"]),
        ("SEG added, warm process (target <= 100)", lambda e: e["warm"]["seg_added_ms"]),
        ("SEG added, first in a process", lambda e: e["seg_first_in_process"]["seg_added_ms"]),
        (
            "  same, highdicom's full table (before)",
            lambda e: e["seg_first_in_process"]["seg_added_ms_highdicom_full_table"],
        ),
        ("cold start wall (bcedge infer --outputs json)", lambda e: e["cold_start"]["wall_ms"]["median"]),
        ("cold start beyond the model (target <= 1500)", lambda e: e["cold_start"]["beyond_model_ms"]["median"]),
    ]
    sizes = [f"{e['scan']['rows']}x{e['scan']['columns']}" for e in report["scans"]]
    width = max(len(r[0]) for r in rows)
    print(f"{'median (ms)':<{width}}  " + "  ".join(f"{s:>10}" for s in sizes))
    for label, get in rows:
        print(f"{label:<{width}}  " + "  ".join(f"{get(e):>10.1f}" for e in report["scans"]))


if __name__ == "__main__":
    raise SystemExit(main())
