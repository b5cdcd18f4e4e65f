"""The FP32 GEMM ceiling a row's achieved GFLOP/s is compared with, and the BLAS thread variables.

The ceiling is measured in a fresh ``python -m bcedge.bench gemm`` process, since a BLAS fixes
its thread pool when it starts.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from typing import Any

import numpy as np


def gemm_gflops(n: int = 1024, repeats: int = 5) -> dict[str, float]:
    """FP32 GEMM speed of this process: best and median GFLOP/s of ``repeats`` ``(n, n) @ (n, n)`` products.

    The BLAS uses whatever threads it was started with (see :func:`measure_gemm_ceiling`).
    """
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    c = a @ b  # warm-up: page in, spin up BLAS threads
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter_ns()
        np.matmul(a, b, out=c)
        times.append(time.perf_counter_ns() - start)
    flops = 2.0 * n**3
    best = min(times)
    return {
        "n": n,
        "repeats": repeats,
        "gflops": flops / best,  # ns -> GFLOP/s
        "gflops_median": flops / float(np.median(times)),
    }


#: Environment variables that set the thread count of the BLAS NumPy may use.
BLAS_THREAD_VARS = (
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def measure_gemm_ceiling(threads: int, n: int = 1024, repeats: int = 5, timeout_s: float = 120.0) -> dict[str, Any]:
    """FP32 GEMM ceiling with the BLAS limited to ``threads`` (measured in a fresh process,
    since a BLAS fixes its thread pool at start).

    Returns:
        :func:`gemm_gflops`'s dict plus ``threads`` and ``blas`` (NumPy's BLAS name),
        or ``{"threads", "error"}`` when the measurement failed.
    """
    env = dict(os.environ)
    for var in BLAS_THREAD_VARS:
        env[var] = str(threads)
    # OpenBLAS prints the kernel family it picked ("Core: Haswell"): an AVX2 kernel on an AVX-512
    # CPU caps this ceiling below what XNNPACK or oneDNN reach, and the report should say so.
    env["OPENBLAS_VERBOSE"] = "2"
    cmd = [sys.executable, "-m", "bcedge.bench", "gemm", "--n", str(n), "--repeats", str(repeats)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"threads": threads, "error": f"{type(exc).__name__}: {exc}"}
    if proc.returncode != 0:
        return {"threads": threads, "error": last_line(proc.stderr) or f"exit code {proc.returncode}"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["threads"] = threads
    core = re.search(r"Core:\s*(\S+)", proc.stderr or "")
    if core:
        result["blas_kernel"] = core.group(1)
    return result


def last_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""
