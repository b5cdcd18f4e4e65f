"""Latency and accuracy measurement for ``bcedge benchmark`` (one row per model, artifact, backend, threads).

What a row measures, on the machine it runs on:

* **Accuracy**: every evaluation image goes through :class:`bcedge.pipeline.Segmenter`, the
  path ``bcedge infer`` takes (decode, preprocess, infer, postprocess), and its mask on the
  *original* pixel grid is scored by :mod:`bcedge.evaluation`, the scoring of
  ``bcedge evaluate --model`` (same numbers for the same artifact and images): the row's
  ``evaluation`` holds, per source and kind (pixel masks, circles, normal images), the
  study's table, lesions found and false-positive components per image with bootstrap
  95 % intervals. ``dice``/``iou`` are per-image means over lesion-positive images (the
  export gate's convention: on screening data an empty prediction scores 1 on every
  normal image, so an all-image mean rewards a model that finds nothing);
  ``dice_all_images`` is there too.
* **Model latency**: ``Backend.predict`` on one preprocessed image (batch 1) timed with
  :func:`time.perf_counter_ns`, ``warmup`` calls first (not counted), then ``runs`` calls
  rotating over at least :data:`MIN_DISTINCT_INPUTS` distinct input buffers so no run
  reuses the previous run's input. Percentiles are NumPy's linear interpolation.
* **End to end**: per image, the stage times the Segmenter reports (``preprocess``,
  ``infer``, ``postprocess``) plus the time to decode the file (``decode``); medians over
  images (and repeated passes when there are few images).
* **Peak memory**: the measuring process' peak resident set (``ru_maxrss``). With
  ``isolate=True`` (the default) every row runs in a fresh Python process, so the figure is
  what that artifact alone needs (interpreter, libraries, data, model, activations);
  in-process rows share one process and the peak is reset between rows where Linux allows
  it (``/proc/self/clear_refs``), else it only grows (the row says which).
* **Compute**: model GFLOPs counted from the artifact's graph (2 x multiply-accumulates of
  convolutions, transposed convolutions, depthwise convolutions and matrix products;
  element-wise ops, pooling and resizing are not counted), the GFLOP/s achieved at p50,
  and its share of a measured FP32 GEMM ceiling (one NumPy matrix product, best of a few,
  with the BLAS limited to the row's thread count). INT8 rows count the same operations, so
  their share can exceed what FP32 arithmetic could reach.

Nothing heavy is imported at module import: backends, OpenCV, the pipeline and plotting are
imported inside the functions that need them. A worker entry point (``python -m bcedge.bench``,
:mod:`bcedge.bench.__main__`) runs one row or one GEMM measurement in a fresh process.

The package, one job per module (this module re-exports the names callers use)::

    data      BenchData / BenchItem / sample_data: the evaluation images
    timing    the timing loop, distinct inputs, latency statistics
    memory    peak / current RSS and the peak reset
    flops     FLOP counting from TFLite / ONNX graphs
    gemm      the FP32 GEMM ceiling and the BLAS thread variables
    machine   provenance: machine_info, library_versions, source_state (shared with training and export)
    ops       per-op TFLite profile
    rows      one row: statuses, RowJob, measure_row, run_isolated, worker_env
    run       BenchOptions, select_artifacts, run_benchmark (the report document)
    report    schema check, terminal table, JSON, Markdown, Pareto plot
    __main__  the worker process (``row`` / ``gemm``)
"""

from __future__ import annotations

from bcedge.bench.data import BenchData, BenchItem, sample_data
from bcedge.bench.flops import FlopCount, count_flops, count_onnx, count_tflite, tflite_op_macs
from bcedge.bench.gemm import BLAS_THREAD_VARS, gemm_gflops, measure_gemm_ceiling
from bcedge.bench.machine import (
    LIBRARIES,
    gpu_info,
    library_versions,
    machine_info,
    source_state,
    usable_cpus,
)
from bcedge.bench.memory import _proc_peak_mb, current_rss_mb, peak_rss_mb, reset_peak_rss
from bcedge.bench.ops import OpTiming, profile_tflite_ops, summarise_ops
from bcedge.bench.rows import (
    E2E_STAGES,
    FAILED,
    GATE_FAILED,
    MIN_E2E_TIMINGS,
    NOT_VALIDATED,
    STATUSES,
    UNAVAILABLE,
    VALIDATED,
    RowJob,
    base_row,
    measure_row,
    run_isolated,
    worker_env,
)
from bcedge.bench.run import REPORT_KIND, REPORT_VERSION, BenchOptions, run_benchmark, select_artifacts
from bcedge.bench.timing import MIN_DISTINCT_INPUTS, distinct_inputs, latency_stats, time_calls

__all__ = [
    "BLAS_THREAD_VARS",
    "E2E_STAGES",
    "FAILED",
    "GATE_FAILED",
    "LIBRARIES",
    "MIN_DISTINCT_INPUTS",
    "MIN_E2E_TIMINGS",
    "NOT_VALIDATED",
    "REPORT_KIND",
    "REPORT_VERSION",
    "STATUSES",
    "UNAVAILABLE",
    "VALIDATED",
    "BenchData",
    "BenchItem",
    "BenchOptions",
    "FlopCount",
    "OpTiming",
    "RowJob",
    "_proc_peak_mb",
    "base_row",
    "count_flops",
    "count_onnx",
    "count_tflite",
    "current_rss_mb",
    "distinct_inputs",
    "gemm_gflops",
    "gpu_info",
    "latency_stats",
    "library_versions",
    "machine_info",
    "measure_gemm_ceiling",
    "measure_row",
    "peak_rss_mb",
    "profile_tflite_ops",
    "reset_peak_rss",
    "run_benchmark",
    "run_isolated",
    "sample_data",
    "select_artifacts",
    "source_state",
    "summarise_ops",
    "tflite_op_macs",
    "time_calls",
    "usable_cpus",
    "worker_env",
]
