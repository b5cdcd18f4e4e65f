"""Timing loop and latency statistics of ``bcedge benchmark`` (no model knowledge here).

Durations are :func:`time.perf_counter_ns` nanoseconds; statistics are milliseconds,
percentiles NumPy's linear interpolation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

#: The model-latency loop rotates over at least this many distinct input buffers.
MIN_DISTINCT_INPUTS = 4


def latency_stats(ns: Sequence[int] | np.ndarray) -> dict[str, float]:
    """p50/p95/p99/mean/min/max/std in milliseconds of durations in nanoseconds.

    Raises:
        ValueError: no durations.
    """
    arr = np.asarray(ns, dtype=np.float64) / 1e6
    if arr.size == 0:
        raise ValueError("no timings to summarise")
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "mean": float(arr.mean()),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "std": float(arr.std()),
    }


def distinct_inputs(tensors: Sequence[np.ndarray], minimum: int = MIN_DISTINCT_INPUTS) -> list[np.ndarray]:
    """At least ``minimum`` distinct (1, S, S, 1) buffers from the given ones (flipped copies added).

    Args:
        tensors: preprocessed images, each (1, S, S, 1) float32 in [0, 1].
        minimum: how many distinct buffers to return at least.
    """
    if not tensors:
        raise ValueError("no input tensors")
    out = [np.ascontiguousarray(t) for t in tensors]
    variants = (lambda a: a[:, :, ::-1], lambda a: a[:, ::-1, :], lambda a: a[:, ::-1, ::-1])
    k = 0
    while len(out) < minimum:
        base = tensors[k % len(tensors)]
        out.append(np.ascontiguousarray(variants[(k // len(tensors)) % len(variants)](base)))
        k += 1
    return out


def time_calls(call: Callable[[np.ndarray], Any], inputs: Sequence[np.ndarray], runs: int, warmup: int) -> list[int]:
    """Durations in ns of ``runs`` calls after ``warmup`` untimed ones, input ``i`` = ``inputs[i % n]``.

    The rotation continues from the warm-up, so the first timed call never sees the
    buffer the last warm-up call used (unless there is a single input).
    """
    n = len(inputs)
    for i in range(warmup):
        call(inputs[i % n])
    out: list[int] = []
    clock = time.perf_counter_ns
    for i in range(warmup, warmup + runs):
        x = inputs[i % n]
        start = clock()
        call(x)
        out.append(clock() - start)
    return out
