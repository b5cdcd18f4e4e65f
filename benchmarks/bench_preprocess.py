"""Preprocessing speed: a full-field 16-bit MG DICOM to a model tensor, on one CPU core.

Builds a realistic 3328x2560 scan (``bcedge.phantom.make_phantom``: 70 um detector,
14 bits stored, MONOCHROME1 + INVERSE, right MLO so the flip path runs, labels
burned in), writes it as DICOM in a temporary folder, then times N runs after a
warm-up of each stage:

- ``decode``: ``pydicom.dcmread`` + ``pixel_array`` (the stored values);
- ``read``: ``bcedge.dicom.read_mammogram`` (decode + display LUT + metadata);
- ``lut``: ``read - decode`` per run (the reader's own cost);
- ``preprocess``: ``bcedge.preprocess.preprocess`` on the read mammogram;
- ``lut+preprocess``: the part this project controls (target <= 60 ms median);
- ``total``: ``read_mammogram`` + ``preprocess`` back to back (target <= 150 ms).

Everything runs pinned to one core (``os.sched_setaffinity``) with OpenCV,
OpenMP and BLAS limited to one thread. Results go to
``benchmarks/results/preprocess.json`` with a description of the machine.

Usage::

    python benchmarks/bench_preprocess.py [--runs 30] [--cpu N] [--work-size 512 1024] [--size 256]
"""

from __future__ import annotations

import os

# Thread limits must be set before NumPy/OpenCV load their thread pools.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pydicom  # noqa: E402

from bcedge.bench import library_versions, machine_info, source_state  # noqa: E402
from bcedge.bundle import utc_now  # noqa: E402
from bcedge.dicom import read_mammogram  # noqa: E402
from bcedge.imageio import atomic_write_bytes  # noqa: E402
from bcedge.preprocess import PreprocessConfig, preprocess  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "preprocess.json"
TARGET_LUT_PREPROCESS_MS = 60.0
TARGET_TOTAL_MS = 150.0


def pin(cpu: int | None) -> int:
    """Pin this process to one core (the last allowed one by default) and OpenCV to one thread."""
    allowed = sorted(os.sched_getaffinity(0))
    core = allowed[-1] if cpu is None else cpu
    if core not in allowed:
        raise SystemExit(f"--cpu {core} is not among the allowed cores {allowed}")
    os.sched_setaffinity(0, {core})
    cv2.setNumThreads(1)
    return core


def timed(fn: Callable[[], object], runs: int, warmup: int = 3) -> list[float]:
    """Wall times of ``runs`` calls in ms, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def summary(values: list[float]) -> dict[str, float]:
    """Median, p95, min and max of ms timings (p95 by the nearest-rank rule)."""
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, max(0, int(np.ceil(0.95 * len(ordered))) - 1))]
    return {
        "median_ms": round(statistics.median(ordered), 2),
        "p95_ms": round(p95, 2),
        "min_ms": round(ordered[0], 2),
        "max_ms": round(ordered[-1], 2),
    }


def make_scan(folder: Path) -> tuple[Path, dict[str, object]]:
    """Write the benchmark scan; returns its path and a description."""
    from bcedge.phantom import make_phantom

    ph = make_phantom(
        seed=7,
        laterality="R",
        view="MLO",
        detector="70um",
        bits_stored=14,
        photometric="MONOCHROME1",
        n_masses=2,
        labels=True,
    )
    path = ph.write(folder / "bench scan.dcm")
    desc = {
        "source": "bcedge.phantom.make_phantom(seed=7, R MLO, 70um, 14 bits, MONOCHROME1, labels)",
        "rows": int(ph.stored.shape[0]),
        "columns": int(ph.stored.shape[1]),
        "bits_stored": 14,
        "bits_allocated": 16,
        "transfer_syntax": "Explicit VR Little Endian (uncompressed)",
        "file_bytes": path.stat().st_size,
    }
    return path, desc


def bench(path: Path, runs: int, configs: list[PreprocessConfig]) -> dict[str, object]:
    """Time every stage; preprocess, lut+preprocess and total once per config."""

    def decode() -> object:
        return pydicom.dcmread(path).pixel_array

    def read() -> object:
        return read_mammogram(path)

    # Interleave decode and read so both see the same machine load.
    for _ in range(3):
        decode()
        read()
    decode_ms, read_ms = [], []
    for _ in range(runs):
        decode_ms += timed(decode, 1, warmup=0)
        read_ms += timed(read, 1, warmup=0)
    lut_ms = [r - d for r, d in zip(read_ms, decode_ms, strict=True)]
    mammo = read_mammogram(path)
    out: dict[str, object] = {
        "decode": summary(decode_ms),
        "read_mammogram": summary(read_ms),
        "lut": summary(lut_ms),
        "configs": [],
    }
    for config in configs:
        pre_ms = timed(lambda c=config: preprocess(mammo, c), runs)

        def total(c: PreprocessConfig = config) -> object:
            return preprocess(read_mammogram(path), c)

        total_ms = timed(total, runs)
        lut_pre = [lu + p for lu, p in zip(lut_ms, pre_ms, strict=True)]
        _, geometry = preprocess(mammo, config)
        out["configs"].append(  # type: ignore[union-attr]
            {
                "config": config.to_dict(),
                "config_hash": config.hash(),
                "preprocess": summary(pre_ms),
                "lut+preprocess": summary(lut_pre),
                "total": summary(total_ms),
                "geometry": geometry.to_dict(),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="timed runs per stage (after warm-up)")
    parser.add_argument("--cpu", type=int, default=None, help="core to pin to (default: last allowed)")
    parser.add_argument("--size", type=int, default=256, help="model input size")
    parser.add_argument("--work-size", type=int, nargs="+", default=None, help="work_size values to compare")
    parser.add_argument("--out", type=Path, default=RESULTS, help="result JSON path")
    args = parser.parse_args(argv)

    core = pin(args.cpu)
    work_sizes = args.work_size or [PreprocessConfig().work_size]
    configs = [PreprocessConfig(size=args.size, work_size=w) for w in work_sizes]
    with tempfile.TemporaryDirectory(prefix="bcedge bench ") as tmp:
        path, scan = make_scan(Path(tmp))
        timings = bench(path, args.runs, configs)
    result = {
        "benchmark": "preprocess",
        "runs": args.runs,
        "pinned_core": core,
        "created": utc_now(),
        "machine": machine_info([1]),
        "libraries": library_versions(),
        "source": source_state(Path(__file__).resolve().parent.parent),
        "scan": scan,
        "targets": {"lut+preprocess_median_ms": TARGET_LUT_PREPROCESS_MS, "total_median_ms": TARGET_TOTAL_MS},
        **timings,
    }
    atomic_write_bytes(args.out, (json.dumps(result, indent=2) + "\n").encode())

    def row(name: str, s: dict[str, float]) -> str:
        return f"  {name:<34s} median {s['median_ms']:7.2f} ms   p95 {s['p95_ms']:7.2f} ms"

    print(f"{scan['columns']}x{scan['rows']} {scan['bits_stored']}-bit MG DICOM, core {core}, {args.runs} runs")
    print(f"  machine: {result['machine']['cpu_model']}, load {result['machine'].get('load_avg')}")
    print(row("decode (pydicom pixel_array)", timings["decode"]))
    print(row("read_mammogram (decode + LUT)", timings["read_mammogram"]))
    print(row("LUT (read - decode)", timings["lut"]))
    for c in timings["configs"]:
        tag = f"size {c['config']['size']}, work_size {c['config']['work_size']}"
        print(f"  -- {tag} (config {c['config_hash']})")
        print(row("preprocess", c["preprocess"]))
        print(row(f"LUT + preprocess (<= {TARGET_LUT_PREPROCESS_MS:.0f})", c["lut+preprocess"]))
        print(row(f"total: read + preprocess (<= {TARGET_TOTAL_MS:.0f})", c["total"]))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
