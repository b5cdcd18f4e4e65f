"""One benchmark row: what it measures, in this process or in a fresh worker process.

A row is an artifact of a bundle on its backend with a thread count (:class:`RowJob`, JSON-able).
:func:`measure_row` measures it here; :func:`run_isolated` runs it in
``python -m bcedge.bench row JOB.json OUT.json`` (see :mod:`bcedge.bench.__main__`) so the
row's peak RSS is its own, with :func:`worker_env` sizing the BLAS and TensorFlow pools.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bcedge.bench.data import BenchData, BenchItem
from bcedge.bench.gemm import BLAS_THREAD_VARS, last_line
from bcedge.bench.load import LoadMeter
from bcedge.bench.memory import current_rss_mb, own_peak_rss_mb, reset_peak_rss
from bcedge.bench.ops import profile_tflite_ops, summarise_ops
from bcedge.bench.timing import MIN_DISTINCT_INPUTS, distinct_inputs, latency_stats, time_calls
from bcedge.errors import BcedgeError, InputError

if TYPE_CHECKING:
    from bcedge.bundle import ArtifactRecord, Bundle
    from bcedge.pipeline import Segmenter


#: Row statuses.
VALIDATED = "validated"  # built, and its accuracy gate passed at export
GATE_FAILED = "validation failed"  # built, but it lost more Dice than its tolerance at export
NOT_VALIDATED = "not validated"  # built, gate not measured
UNAVAILABLE = "not available here"  # its backend (library or hardware) is missing on this machine
FAILED = "error"  # it could not be measured here (bad file, backend failure...); ``reason`` says why
STATUSES = (VALIDATED, GATE_FAILED, NOT_VALIDATED, UNAVAILABLE, FAILED)

#: End-to-end stages reported per row, in pipeline order.
E2E_STAGES = ("decode", "preprocess", "infer", "postprocess")

#: With few evaluation images the end-to-end pass is repeated until this many images were timed.
MIN_E2E_TIMINGS = 8
_GATE_STATUS = {"passed": VALIDATED, "failed": GATE_FAILED, "not-measured": NOT_VALIDATED}


@dataclass(frozen=True)
class RowJob:
    """One row to measure: an artifact of a bundle on its backend with a thread count (JSON-able)."""

    bundle: str
    file: str
    backend: str
    threads: int
    data: dict[str, Any]
    runs: int
    warmup: int
    profile_ops: bool = False
    #: Images timed end to end per row at least (the image list is passed over again until then).
    e2e_min: int = MIN_E2E_TIMINGS


def base_row(bundle: Bundle, record: ArtifactRecord, threads: int | None) -> dict[str, Any]:
    """The row fields known without running anything (status from the manifest's gate)."""
    model = bundle.manifest.model
    return {
        "model": str(model.get("name") or bundle.dir.name),
        "architecture": model.get("architecture"),
        "bundle": str(bundle.dir),
        "file": record.file,
        "format": record.format,
        "precision": record.precision,
        "backend": record.backend,
        "threads": threads,
        "status": _GATE_STATUS.get(record.gate, NOT_VALIDATED),
        "reason": None if record.gate == "passed" else _gate_reason(record),
        "gate": record.gate,
        "export_dice": record.metrics.get("dice"),
        "size_mb": record.size_bytes / 1e6,
        "dice": None,
        "iou": None,
        "latency_ms": None,
        "e2e_ms": None,
        "throughput_ips": None,
        "peak_rss_mb": None,
        "gflops": None,
        # Timing honesty (bcedge.bench.load): this process's CPU per model call and how much of the
        # machine other processes used while the row was timed; busy: do not publish its timings.
        "cpu_ms_per_call": None,
        "others_cpu_share": None,
        "busy": None,
    }


def _gate_reason(record: ArtifactRecord) -> str:
    if record.gate == "failed":
        delta = record.metrics.get("delta_dice")
        lost = f" (Dice {delta:+.4f} vs the reference" if isinstance(delta, (int, float)) else " ("
        return f"accuracy gate failed at export{lost}, tolerance {record.tolerance})"
    return "accuracy gate not measured at export"


def measure_row(job: RowJob, *, items: list[BenchItem] | None = None, isolated: bool = False) -> dict[str, Any]:
    """Measure one row in this process (see the module doc for what is measured).

    Args:
        job: what to measure.
        items: the evaluation images (loaded from ``job.data`` when None).
        isolated: this process runs only this row (peak RSS is then the row's own).

    Returns:
        The row dict (``status`` ``error`` with a ``reason`` when the artifact could not be run).
    """
    from bcedge.bundle import load_bundle
    from bcedge.formats import runtime_candidates

    bundle = load_bundle(job.bundle)
    candidates = runtime_candidates(bundle.manifest.artifacts)
    record = next((a for a in candidates if a.file == job.file and a.backend == job.backend), None)
    if record is None:
        raise InputError(f"bundle {job.bundle} has no artifact {job.file} for the {job.backend} backend")
    row = base_row(bundle, record, job.threads)
    if items is None:
        items = BenchData.from_dict(job.data).items()
    peak_reset = True if isolated else reset_peak_rss()
    with _cv2_threads(job.threads):
        try:
            _measure_into(row, bundle, record, job, items)
        except BcedgeError as exc:
            row.update(status=FAILED, reason=str(exc))
        except Exception as exc:  # a backend library failing mid-run: report the row, keep the others going
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            row.update(status=FAILED, reason=f"{type(exc).__name__}: {first}")
    if record.backend == "keras":
        # Keras' thread pools are process-wide: only a fresh worker can size them (see worker_env).
        row["threads_applied"] = isolated
    # VmHWM, not ru_maxrss: a worker's ru_maxrss starts at its parent's peak (Linux carries the
    # mark across fork and exec), which made every isolated row report the parent's 691.65 MB.
    peak, source = own_peak_rss_mb()
    row["peak_rss_mb"] = peak
    row["peak_rss_source"] = source
    row["peak_rss_scope"] = "process per row" if isolated else ("row (peak reset)" if peak_reset else "whole run")
    return row


@contextlib.contextmanager
def _cv2_threads(threads: int | None) -> Iterator[None]:
    """Limit OpenCV (preprocessing) to the row's threads; restore afterwards."""
    try:
        import cv2
    except ImportError:
        yield
        return
    before = cv2.getNumThreads()
    if threads is not None:
        cv2.setNumThreads(int(threads))
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def _open_segmenter(bundle: Bundle, record: ArtifactRecord, threads: int | None) -> Segmenter:
    """A :class:`bcedge.pipeline.Segmenter` running exactly ``record``."""
    from bcedge.pipeline import Segmenter

    return Segmenter(bundle, backend=record.backend, artifact=record, threads=threads)


def _measure_into(
    row: dict[str, Any], bundle: Bundle, record: ArtifactRecord, job: RowJob, items: list[BenchItem]
) -> None:
    from bcedge.evaluation import ImageScore, score_result, summarize
    from bcedge.preprocess import preprocess

    rss_before = current_rss_mb()
    start = time.perf_counter_ns()
    seg = _open_segmenter(bundle, record, job.threads)
    try:
        load_ms = (time.perf_counter_ns() - start) / 1e6
        backend = seg.backend
        config = bundle.preprocess_config()
        # Accuracy and end-to-end stages: every image through the runtime path, decode timed here.
        image_scores: list[ImageScore] = []
        stages: dict[str, list[float]] = {s: [] for s in E2E_STAGES}
        totals: list[float] = []
        tensors: list[np.ndarray] = []
        passes = max(1, math.ceil(job.e2e_min / len(items)))
        e2e_meter = LoadMeter()
        # The first call of a backend allocates and sets up its delegate: not part of any stage.
        warm_id = None
        for item in items:
            with contextlib.suppress(InputError):  # an unreadable scan is reported by the pass below
                tensors.append(preprocess(item.decode(), config)[0])
                warm_id = item.id
                break
        if tensors:
            backend.predict(tensors[0])
        skipped: dict[str, str] = {}
        with e2e_meter:  # the end-to-end pass: decode, preprocess, model, postprocess per image
            for p in range(passes):
                for item in items:
                    if item.id in skipped:
                        continue
                    try:
                        t0 = time.perf_counter_ns()
                        mammo = item.decode()
                        decode_ms = (time.perf_counter_ns() - t0) / 1e6
                        result = seg.segment(mammo)
                    except InputError as exc:  # a bad scan is reported and left out; a backend failure is not caught
                        skipped[item.id] = str(exc)
                        continue
                    timing = dict(result.timing_ms)
                    timing["decode"] = decode_ms
                    for stage in E2E_STAGES:
                        stages[stage].append(float(timing.get(stage, 0.0)))
                    totals.append(sum(float(timing.get(s, 0.0)) for s in E2E_STAGES))
                    if p:
                        continue
                    if item.id != warm_id and len(tensors) < MIN_DISTINCT_INPUTS * 2:
                        tensors.append(preprocess(mammo, config)[0])
                    try:
                        truth = item.mask(mammo.pixels.shape[:2])
                    except InputError as exc:  # a mask that does not fit its image: left out, as by bcedge evaluate
                        skipped[item.id] = str(exc)
                        continue
                    # The one scoring of bcedge evaluate --model (bcedge.evaluation): same numbers.
                    image_scores.append(
                        score_result(result, truth, id=item.id, source=item.source, mask_kind=item.mask_kind)
                    )
        if not totals:
            raise InputError(f"no evaluation image could be read; first error: {next(iter(skipped.values()))}")
        # Model latency: batch 1, rotating distinct inputs, warm-up excluded.
        inputs = distinct_inputs(tensors)
        with LoadMeter() as latency_meter:  # warm-up calls included: the loop is one block
            ns = time_calls(backend.predict, inputs, job.runs, job.warmup)
        details = dict(getattr(backend, "details", {}) or {})
    finally:
        seg.close()
    latency = latency_stats(ns)
    latency.update(runs=job.runs, warmup=job.warmup, batch=1, distinct_inputs=len(inputs))
    evaluation = summarize(image_scores)
    lesion_scores = [s for s in image_scores if s.kind != "normal"]
    main = lesion_scores or image_scores
    e2e = {s: float(np.median(v)) for s, v in stages.items()}
    e2e["total"] = float(np.median(totals))
    e2e["mean_total"] = float(np.mean(totals))
    e2e["n"] = len(totals)
    row.update(
        dice=float(np.mean([s.dice for s in main])),
        iou=float(np.mean([s.iou for s in main])),
        dice_metric="lesion_images" if lesion_scores else "all_images",
        dice_all_images=float(np.mean([s.dice for s in image_scores])),
        iou_all_images=float(np.mean([s.iou for s in image_scores])),
        n_images=len(image_scores),
        n_lesion_images=len(lesion_scores),
        groups=_kind_groups(evaluation),
        evaluation=evaluation,
        latency_ms=latency,
        e2e_ms=e2e,
        throughput_ips=1000.0 / latency["mean"],
        e2e_throughput_ips=1000.0 / e2e["mean_total"] if e2e["mean_total"] > 0 else None,
        load_ms=load_ms,
        rss_before_model_mb=rss_before,
        backend_details={k: v for k, v in details.items() if k not in ("path",)},
        skipped_images=[{"id": key, "error": why} for key, why in skipped.items()],
        **_load_fields(latency_meter.result, e2e_meter.result, job.runs + job.warmup),
    )
    if job.profile_ops and record.format == "tflite":
        path = bundle.artifact_path(record, verify=False)
        try:
            ops = profile_tflite_ops(path, threads=job.threads, runs=max(3, min(job.runs, 20)), warmup=2)
        except BcedgeError as exc:  # a device without the flatbuffer schema: the row itself stands
            row["op_profile_error"] = str(exc)
        else:
            row["op_profile"] = summarise_ops(ops, model_p50_ms=latency["p50"])


def _load_fields(latency: dict[str, Any], e2e: dict[str, Any], calls: int) -> dict[str, Any]:
    """The row's timing-honesty fields from the two timed sections (model loop, end-to-end pass).

    Returns:
        ``cpu_ms_per_call`` (this process's CPU time per model call, every thread), the largest
        ``others_cpu_share`` of the two sections, ``busy`` (either section busy; None when the
        machine's counters are unreadable) and both sections' raw figures under ``load``.
    """
    shares = [s["others_cpu_share"] for s in (latency, e2e) if s.get("others_cpu_share") is not None]
    flags = [s["busy"] for s in (latency, e2e) if s.get("busy") is not None]
    return {
        "cpu_ms_per_call": round(latency["cpu_ms"] / calls, 3) if calls and "cpu_ms" in latency else None,
        "others_cpu_share": max(shares) if shares else None,
        "busy": any(flags) if flags else None,
        "load": {"model_calls": latency, "end_to_end": e2e},
    }


def _kind_groups(evaluation: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Short per-kind summary (all sources pooled) for the report's Markdown table."""
    from bcedge.evaluation import KINDS, find_group

    out: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        g = find_group(evaluation, kind)
        if g is None:
            continue
        if kind == "normal":
            out[kind] = {
                "n": g["n_images"],
                "false_positive_rate": g["flagged_share"]["value"],
                "fp_per_image": g["fp_per_image"]["value"],
            }
        else:
            out[kind] = {
                "n": g["n_images"],
                "dice": g["dice"]["value"],
                "iou": g["iou"]["value"],
                "detection_rate": g["detection_rate"]["value"],
                "fp_per_image": g["fp_per_image"]["value"],
            }
    return out


def run_isolated(job: RowJob, timeout_s: float | None = None) -> dict[str, Any]:
    """Measure ``job`` in a fresh ``python -m bcedge.bench row`` process; its peak RSS is the row's own.

    Returns:
        The worker's row, or the fields of a :data:`FAILED` row when the worker crashed or timed out.
    """
    from bcedge.imageio import atomic_write_bytes

    with tempfile.TemporaryDirectory(prefix="bcedge-bench-job ") as tmp:
        job_path, out_path = Path(tmp) / "job.json", Path(tmp) / "row.json"
        atomic_write_bytes(job_path, json.dumps(asdict(job)).encode())
        cmd = [sys.executable, "-m", "bcedge.bench", "row", str(job_path), str(out_path)]
        try:
            proc = subprocess.run(
                cmd, env=worker_env(job.threads), capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            return {"status": FAILED, "reason": f"timed out after {timeout_s} s"}
        if proc.returncode != 0 or not out_path.is_file():
            why = last_line(proc.stderr) or f"worker exit code {proc.returncode}"
            return {"status": FAILED, "reason": f"worker failed: {why}"}
        return json.loads(out_path.read_text(encoding="utf-8"))


def worker_env(threads: int) -> dict[str, str]:
    """The environment of a row's worker: BLAS and TensorFlow thread pools sized to the row's threads.

    LiteRT and onnxruntime take the thread count as an argument; TensorFlow (the Keras
    reference) and BLAS libraries fix their pools from these variables when they start,
    which only a fresh process allows.
    """
    env = dict(os.environ)
    for var in BLAS_THREAD_VARS:
        env[var] = str(threads)
    env["TF_NUM_INTRAOP_THREADS"] = str(threads)
    env["TF_NUM_INTEROP_THREADS"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _json_default(value: Any) -> Any:
    # A benchmark row must always be written: what JSON cannot hold is recorded as text.
    from bcedge.imageio import json_default

    try:
        return json_default(value)
    except TypeError:
        return str(value)
