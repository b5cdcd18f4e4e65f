"""``python -m bcedge.bench``: the worker entry point (one row, or one GEMM measurement, in a fresh process)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from bcedge.bench.gemm import gemm_gflops
from bcedge.bench.machine import blas_name
from bcedge.bench.rows import RowJob, _json_default, measure_row
from bcedge.errors import BcedgeError


def _worker(argv: Sequence[str]) -> int:
    """``python -m bcedge.bench row JOB.json OUT.json`` | ``python -m bcedge.bench gemm [--n N] [--repeats R]``."""
    if argv and argv[0] == "gemm":
        n, repeats = 1024, 5
        args = list(argv[1:])
        while args:
            key, value = args.pop(0), args.pop(0)
            if key == "--n":
                n = int(value)
            elif key == "--repeats":
                repeats = int(value)
        result = gemm_gflops(n, repeats)
        result["blas"] = blas_name()
        print(json.dumps(result))
        return 0
    if len(argv) == 3 and argv[0] == "row":
        from bcedge.imageio import atomic_write_bytes

        job = RowJob(**json.loads(Path(argv[1]).read_text(encoding="utf-8")))
        row = measure_row(job, isolated=True)
        atomic_write_bytes(argv[2], json.dumps(row, default=_json_default).encode())
        return 0
    print("usage: python -m bcedge.bench row JOB.json OUT.json | gemm [--n N] [--repeats R]", file=sys.stderr)
    return 2


def _main() -> int:
    try:
        return _worker(sys.argv[1:])
    except BcedgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":  # not when a tool imports every module of the package
    sys.exit(_main())
