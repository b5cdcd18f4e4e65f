"""A/B of the scan job's malloc settings (:mod:`bcedge.allocator`) on the 16-scan job of issue #14.

The settings only work when made before any other thread allocates, so each measurement is a fresh
child process: ``tuned`` calls :func:`bcedge.allocator.tune_for_scans` first thing (as ``bcedge infer``
does), ``default`` runs with ``BCEDGE_MALLOC=default`` (glibc's own settings). The two alternate,
round after round (ABAB...), on the same files: the FFDM phantom of ``bench_speed_done_when.py``
(2944x1920, 12 bits, uncompressed), 16 copies. In each child, after one untimed pass of each: ``reps``
times the pipelined scan job (:func:`bcedge.scanjob.process_scans`, ``json,mask``, batch 4, the
default bundle with ``--backend auto`` and every usable CPU) and the model alone on the same tensors
(the done-when script's ``model_only``), each inside a :class:`~bcedge.bench.load.LoadMeter`, with the
process's minor page faults (``getrusage``: fresh pages the kernel had to map and zero).

    python benchmarks/ab_allocator.py [--rounds 4] [--reps 3] [--json benchmarks/results/ab_allocator.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "ab_allocator.json"
VARIANTS = ("default", "tuned")


def child(folder: Path, reps: int) -> dict[str, Any]:
    """One process's measurements (the allocator is set, or not, before this imports NumPy)."""
    from bcedge.allocator import tune_for_scans

    allocator = tune_for_scans()
    import numpy as np

    from bcedge.bench.load import LoadMeter
    from bcedge.cpus import default_threads
    from bcedge.pipeline import ScanFailure, Segmenter, default_bundle_path
    from bcedge.scanjob import process_scans

    paths = sorted((folder / "sixteen").glob("*.dcm"))
    out = Path(tempfile.mkdtemp(prefix="ab allocator "))
    rows: dict[str, list[dict[str, Any]]] = {"pipelined": [], "model_only": []}
    with Segmenter(default_bundle_path(), "auto", threads=default_threads()) as seg:
        tensor = seg._prepare(0, paths[0]).tensor
        batches = [np.concatenate([tensor] * 4) for _ in range(len(paths) // 4)]

        def pipelined() -> None:
            items = list(process_scans(seg, paths, out, ["json", "mask"], batch_size=4, pipelined=True))
            if len(items) != len(paths) or any(isinstance(i, ScanFailure) for i in items):
                raise SystemExit("error: a scan failed")

        def model_only() -> None:
            for batch in batches:
                seg._infer(batch)

        fns = {"pipelined": pipelined, "model_only": model_only}
        for fn in fns.values():  # untimed: interpreters opened, shapes planned
            fn()
        for _ in range(reps):
            for name, fn in fns.items():
                faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                with LoadMeter() as meter:
                    fn()
                faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
                r = meter.result
                rows[name].append(
                    {
                        **r,
                        "scans_per_s": round(len(paths) / (r["wall_ms"] / 1e3), 3),
                        "cpu_ms_per_scan": round(r["cpu_ms"] / len(paths), 2),
                        # Pages the process had to be given (first touch of fresh memory), per scan.
                        "minor_faults_per_scan": round(faults / len(paths), 1),
                    }
                )
        artifact = seg.artifact.file
        threads = seg.backend.threads
    return {"allocator": allocator, "artifact": artifact, "threads": threads, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="child processes of each variant, alternating")
    parser.add_argument("--reps", type=int, default=3, help="timed runs of each job per child")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, args.reps)))
        return 0

    sys.path.insert(0, str(HERE))
    from bench_speed_done_when import make_files

    from bcedge.bench.machine import library_versions, machine_info, source_state
    from bcedge.cpus import default_threads

    doc: dict[str, Any] = {
        "script": "benchmarks/ab_allocator.py",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "source": source_state(ROOT),
        "how": "fresh child process per measurement, variants alternating; 16 copies of the 2944x1920 phantom, "
        "json+mask, batch 4, pipelined, vs the model alone on the same tensors",
        "rounds": [],
    }
    with tempfile.TemporaryDirectory(prefix="ab allocator ") as tmp:
        folder = Path(tmp)
        make_files(folder)
        for i in range(args.rounds):
            for variant in VARIANTS if i % 2 == 0 else VARIANTS[::-1]:
                env = dict(os.environ)
                env.pop("BCEDGE_MALLOC", None)
                if variant == "default":
                    env["BCEDGE_MALLOC"] = "default"
                cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(folder), "--reps", str(args.reps)]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, timeout=900)
                if proc.returncode != 0:
                    raise SystemExit(f"error: child failed: {proc.stderr.strip()[-400:]}")
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                doc["rounds"].append({"variant": variant, **result})
                print(f"round {i} {variant}: {summary([result])}", file=sys.stderr)
    doc["summary"] = {v: summary([r for r in doc["rounds"] if r["variant"] == v]) for v in VARIANTS}
    doc["busy_rows"] = sum(row["busy"] for r in doc["rounds"] for rows in r["rows"].values() for row in rows)
    doc["machine"] = machine_info([default_threads()])
    doc["libraries"] = library_versions(())
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    for variant, s in doc["summary"].items():
        print(f"{variant:8s} {s}")
    print(f"written: {args.json}")
    return 0


def summary(results: list[dict[str, Any]]) -> dict[str, float]:
    """Medians over the children's rows: scans/s and CPU ms per scan of each job, and the ratio."""

    def median(job: str, key: str) -> float:
        return round(statistics.median(row[key] for r in results for row in r["rows"][job]), 2)

    pipelined, model = median("pipelined", "scans_per_s"), median("model_only", "scans_per_s")
    return {
        "pipelined_minor_faults_per_scan": median("pipelined", "minor_faults_per_scan"),
        "pipelined_scans_per_s": pipelined,
        "model_only_scans_per_s": model,
        "ratio": round(pipelined / model, 3),
        "pipelined_cpu_ms_per_scan": median("pipelined", "cpu_ms_per_scan"),
        "model_only_cpu_ms_per_scan": median("model_only", "cpu_ms_per_scan"),
    }


if __name__ == "__main__":
    sys.exit(main())
