"""How much address space a worker process of ``bcedge serve`` needs per scan: the basis of ``[worker] memory_mb``.

For each scan size, a fresh :class:`~bcedge.serve.isolation.IsolatedProcessor` (no memory limit)
loads the demo bundle (or ``--bundle``) and processes one synthetic 16-bit MG scan of that size
(the real Segmenter and SEG writer); the worker reports its peak virtual size (``VmPeak``) above
its size once the model was loaded. Sizes: a quarter-field and a full-field Hologic-class scan
(3328x2560) and the largest common FFDM detector (5928x4728, 28 MP, 54 MB). Larger sizes can be
given with ``--sizes``; one the reader refuses (it refuses files over its byte budget, e.g. a
10000x10000 16-bit file of 200 MB) is recorded with the reason. Results go to
``benchmarks/results/worker_memory.json`` with the machine.

Usage::

    python benchmarks/bench_worker_memory.py [--bundle DIR] [--sizes 1664x1280,3328x2560,...]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bcedge.bench import library_versions, machine_info, source_state
from bcedge.bundle import utc_now
from bcedge.dicom_write import MGTags, build_mg_dataset, save_atomic
from bcedge.errors import BcedgeError
from bcedge.serve.config import ModelConfig
from bcedge.serve.isolation import IsolatedProcessor, Limits
from bcedge.serve.processing import SegmenterProcessor

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "worker_memory.json"
SIZES = "1664x1280,3328x2560,5928x4728"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "bcedge" / "demo_model")
    parser.add_argument("--sizes", default=SIZES)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bcedge worker memory ") as tmp:
        for size in args.sizes.split(","):
            h, w = (int(v) for v in size.split("x"))
            rng = np.random.default_rng(h)
            stored = (rng.integers(0, 2**12, size=(h, w), dtype=np.uint16) // 2).astype(np.uint16)
            scan = save_atomic(build_mg_dataset(stored, MGTags(bits_stored=12)), Path(tmp) / f"scan {size}.dcm")
            del stored
            out = Path(tmp) / f"out {size}"
            out.mkdir()
            worker = IsolatedProcessor(
                functools.partial(SegmenterProcessor, ModelConfig(bundle=args.bundle)), Limits(600.0, 0), name=size
            )
            refused = None
            try:
                worker.start()
                t0 = time.perf_counter()
                try:
                    worker(scan, out)
                except BcedgeError as exc:  # the reader's own limits come first
                    refused = str(exc).splitlines()[0]
                seconds = time.perf_counter() - t0
            finally:
                worker.close()
            row = {
                "refused": refused,
                "size": size,
                "megapixels": round(h * w / 1e6, 1),
                "file_mb": round(scan.stat().st_size / 2**20, 1),
                "loaded_mb": worker.info.get("base_mb"),
                "peak_above_loaded_mb": round(worker.peak_mb, 1),
                "seconds": round(seconds, 2),
            }
            print(json.dumps(row))
            rows.append(row)
    report = {
        "benchmark": "bcedge serve worker address space per scan",
        "created": utc_now(),
        "machine": machine_info(),
        "load": [round(v, 2) for v in os.getloadavg()],
        "libraries": library_versions(extra=("pydicom", "highdicom")),
        "source": source_state(ROOT),
        "bundle": str(args.bundle),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
