"""The whole ``bcedge benchmark`` run: every (bundle, artifact, thread count) measured into one report."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bcedge.bench.data import BenchData, BenchItem
from bcedge.bench.flops import FlopCount, count_flops
from bcedge.bench.gemm import measure_gemm_ceiling
from bcedge.bench.machine import gpu_info, library_versions, machine_info, usable_cpus
from bcedge.bench.rows import MIN_E2E_TIMINGS, UNAVAILABLE, RowJob, base_row, measure_row, run_isolated
from bcedge.errors import BcedgeError, ConfigError

if TYPE_CHECKING:
    from bcedge.bundle import ArtifactRecord, Bundle


#: Identifies the JSON document :func:`run_benchmark` returns (see :data:`bcedge.bench.report.SCHEMA`).
REPORT_KIND = "bcedge.benchmark"
REPORT_VERSION = 1


@dataclass(frozen=True)
class BenchOptions:
    """How to measure.

    Attributes:
        runs: timed model calls per row (>= 1).
        warmup: untimed model calls before them (>= 0).
        threads: thread counts to measure each artifact with (one row each); None means
            every CPU this process may use.
        isolate: measure each row in a fresh process (clean per-artifact peak memory).
        profile_ops: add a per-op time breakdown to TFLite rows (:func:`profile_tflite_ops`).
        timeout_s: limit for one isolated row (None: no limit).
        e2e_min: images timed end to end per row at least (>= 1; the images are passed over
            again until then). Fewer makes a row cheaper where a model call is slow (emulation).
        auto_choice: also record what ``--backend auto`` picks per bundle (its acceptance check
            and timing of every candidate: several model calls per artifact).
        gemm_ceiling: measure the FP32 GEMM ceiling per thread count (the rows' ceiling share).
    """

    runs: int = 50
    warmup: int = 5
    threads: tuple[int, ...] | None = None
    isolate: bool = True
    profile_ops: bool = False
    timeout_s: float | None = None
    e2e_min: int = MIN_E2E_TIMINGS
    auto_choice: bool = True
    gemm_ceiling: bool = True

    def __post_init__(self) -> None:
        for name, value, low in (("runs", self.runs, 1), ("warmup", self.warmup, 0), ("e2e_min", self.e2e_min, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} is {value!r}; expected an integer >= {low}")
        if self.threads is not None:
            if not self.threads:
                raise ConfigError("threads is empty; give at least one thread count or None (every CPU)")
            for t in self.threads:
                if isinstance(t, bool) or not isinstance(t, int) or t < 1:
                    raise ConfigError(f"thread count {t!r}; expected a positive integer")

    def thread_counts(self) -> tuple[int, ...]:
        """The thread counts to measure (every usable CPU when none were given)."""
        return self.threads if self.threads is not None else (usable_cpus(),)


def select_artifacts(bundle: Bundle, formats: Sequence[str] | None) -> list[ArtifactRecord]:
    """The bundle's artifacts matching any of ``formats`` (``tflite``, ``tflite/int8``, ``int8``...;
    :func:`bcedge.formats.parse_filter`). A token naming an alternate runtime (``openvino``) selects
    the artifacts that runtime also reads, on it (:func:`bcedge.formats.runtime_candidates`); without
    one, only the bundle's artifacts on their own backends are measured (the default).

    Raises:
        ConfigError: a token matching nothing the bcedge formats/precisions/runtimes know.
    """
    from bcedge.formats import alternate_backends, alternate_runtime, parse_filter, runtime_candidates

    records = list(bundle.manifest.artifacts)
    if not formats:
        return records
    alternates = alternate_backends()
    candidates = runtime_candidates(records)
    chosen: list[ArtifactRecord] = []
    for token in formats:
        name = token.strip().lower()
        if name in alternates:
            chosen += [r for r in candidates if alternate_runtime(r) and r.backend == name]
            continue
        fmt, prec = parse_filter(token)
        chosen += [r for r in records if (not fmt or r.format == fmt) and (not prec or r.precision == prec)]
    return [r for r in candidates if any(r is c for c in chosen)]


def run_benchmark(
    bundles: Sequence[str | os.PathLike[str]],
    data: BenchData,
    options: BenchOptions | None = None,
    *,
    formats: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure every (bundle, artifact, thread count) and return the report document.

    Artifacts whose backend is not available here become rows with status
    :data:`UNAVAILABLE` and the reason; one that fails to run becomes a :data:`FAILED` row.

    Args:
        bundles: bundle directories.
        data: the evaluation images.
        options: measurement settings.
        formats: artifact filter (see :func:`select_artifacts`); None for every artifact.
        progress: called with one line per step.

    Returns:
        The report: ``{"kind", "version", "created", "machine", "libraries", "settings", "data",
        "gemm_ceiling", "rows"}`` (validated by :func:`bcedge.bench.report.validate`).

    Raises:
        BundleError: a bundle cannot be loaded.
        ConfigError: bad options.
    """
    from bcedge.backends import BACKENDS
    from bcedge.bundle import load_bundle, utc_now

    options = options or BenchOptions()
    say = progress or (lambda _msg: None)
    thread_counts = options.thread_counts()
    loaded = [load_bundle(b) for b in bundles]
    created = utc_now()
    items: list[BenchItem] | None = None
    rows: list[dict[str, Any]] = []
    flops_cache: dict[str, FlopCount | None] = {}
    for bundle in loaded:
        records = select_artifacts(bundle, formats)
        if not records:
            say(f"{bundle.dir}: no artifact matches {', '.join(formats or [])}")
        model_flops = _bundle_flops(bundle, flops_cache)
        for record in records:
            spec = BACKENDS.get(record.backend)
            ok, why = spec.available() if spec is not None else (False, f"bcedge has no backend {record.backend!r}")
            if ok:
                ok, why = _hardware_ok(record.backend)
            for threads in thread_counts:
                row = base_row(bundle, record, threads)
                label = f"{row['model']} {record.format}/{record.precision} on {record.backend}, {threads} thread(s)"
                if not ok:
                    row.update(status=UNAVAILABLE, reason=why)
                    say(f"{label}: {UNAVAILABLE} ({why})")
                    rows.append(row)
                    continue
                say(f"{label}: measuring")
                job = RowJob(
                    str(bundle.dir),
                    record.file,
                    record.backend,
                    threads,
                    data.to_dict(),
                    options.runs,
                    options.warmup,
                    options.profile_ops,
                    options.e2e_min,
                )
                if options.isolate:
                    measured = run_isolated(job, timeout_s=options.timeout_s)
                else:
                    if items is None:
                        items = data.items()
                    measured = measure_row(job, items=items)
                row.update(measured)
                own = flops_cache.get(str(bundle.dir / record.file))
                count = own or model_flops
                _add_compute(row, count)
                rows.append(row)
                if row["latency_ms"]:
                    say(f"{label}: p50 {row['latency_ms']['p50']:.2f} ms, Dice {row['dice']:.4f}")
                else:
                    say(f"{label}: {row['status']} ({row.get('reason')})")
    choices = [_auto_choice(bundle, thread_counts[0], say) for bundle in loaded] if options.auto_choice else []
    ceilings = {}
    measured_threads = sorted({r["threads"] for r in rows if r.get("latency_ms")}) if options.gemm_ceiling else []
    for threads in measured_threads:
        say(f"FP32 GEMM ceiling, {threads} thread(s)")
        ceilings[str(threads)] = measure_gemm_ceiling(threads)
    for row in rows:
        _add_ceiling_share(row, ceilings.get(str(row["threads"])))
    return {
        "kind": REPORT_KIND,
        "version": REPORT_VERSION,
        "created": created,
        "finished": utc_now(),
        "machine": machine_info(thread_counts),
        "libraries": library_versions(),
        "settings": {
            "runs": options.runs,
            "warmup": options.warmup,
            "threads": list(thread_counts),
            "isolate": options.isolate,
            "batch": 1,
            "formats": list(formats) if formats else None,
            "profile_ops": options.profile_ops,
            "e2e_min": options.e2e_min,
            "auto_choice": options.auto_choice,
            "gemm_ceiling": options.gemm_ceiling,
        },
        "data": data.to_dict(),
        "gemm_ceiling": ceilings,
        "rows": rows,
        "auto_choice": choices,
    }


def _auto_choice(bundle: Bundle, threads: int, say: Callable[[str], None]) -> dict[str, Any]:
    """What ``--backend auto`` runs on this machine for ``bundle`` (:func:`bcedge.choice.resolve`):
    ``{"bundle", **ChoiceReport.to_dict()}``, or ``{"bundle", "error"}``."""
    from bcedge.choice import resolve

    try:
        _, report = resolve(bundle, "auto", threads=threads)
    except BcedgeError as exc:
        say(f"{bundle.dir}: --backend auto: {exc}")
        return {"bundle": str(bundle.dir), "error": str(exc)}
    for line in report.warnings:
        say(f"warning: {line}")
    say(f"{bundle.dir}: --backend auto " + report.lines()[0])
    return {"bundle": str(bundle.dir), **report.to_dict()}


def _hardware_ok(backend: str) -> tuple[bool, str]:
    """TensorRT needs a GPU besides its library: say so instead of failing at load."""
    if backend == "tensorrt" and not gpu_info():
        return False, "no NVIDIA GPU found (nvidia-smi / Jetson device tree)"
    return True, ""


def _bundle_flops(bundle: Bundle, cache: dict[str, FlopCount | None]) -> FlopCount | None:
    """Count FLOPs of every countable artifact once; the bundle's count is the first one (fp32 preferred)."""
    best = None
    order = sorted(bundle.manifest.artifacts, key=lambda r: (r.precision != "fp32", r.format != "tflite"))
    for record in order:
        key = str(bundle.dir / record.file)
        if key not in cache:
            path = bundle.dir / record.file
            try:
                cache[key] = count_flops(path, record.format) if path.is_file() else None
            except BcedgeError:
                cache[key] = None
        if best is None and cache[key] is not None:
            best = cache[key]
    return best


def _add_compute(row: dict[str, Any], count: FlopCount | None) -> None:
    if count is None:
        row["gflops"] = None
        return
    row["gflops"] = count.gflops
    row["gflops_source"] = count.source
    row["macs_by_op"] = dict(count.by_op)
    lat = row.get("latency_ms")
    if lat and lat.get("p50"):
        row["achieved_gflops"] = count.gflops / (lat["p50"] / 1000.0)


def _add_ceiling_share(row: dict[str, Any], ceiling: dict[str, Any] | None) -> None:
    achieved = row.get("achieved_gflops")
    if achieved is None or not ceiling or not ceiling.get("gflops"):
        return
    row["ceiling_gflops"] = ceiling["gflops"]
    row["ceiling_share"] = achieved / ceiling["gflops"]
