"""Reports of ``bcedge benchmark``: schema check, terminal table, JSON, Markdown and the Pareto plot.

The document :func:`bcedge.bench.run_benchmark` returns is plain JSON::

    {"kind": "bcedge.benchmark", "version": 1, "created": ISO-8601 UTC, "finished": ...,
     "machine": {"cpu_model", "logical_cpus", "usable_cpus", "threads_used", "cpu_flags", "gpu", ...},
     "libraries": {"python", "numpy", "ai-edge-litert", ...},
     "settings": {"runs", "warmup", "threads", "isolate", "batch", ...},
     "data": {"kind", "label", ...},
     "gemm_ceiling": {"<threads>": {"gflops", "n", "blas", "blas_kernel", ...}},
     "rows": [{"model", "format", "backend", "precision", "threads", "status", "reason", "size_mb",
               "dice", "iou", "latency_ms": {"p50", "p95", "p99", "mean", ...},
               "e2e_ms": {"decode", "preprocess", "infer", "postprocess", "total", ...},
               "throughput_ips", "peak_rss_mb", "gflops", "achieved_gflops", "ceiling_share", ...}]}

:func:`validate` checks that layout (types, required keys, value ranges, and that a
measured row has its measurements while an unmeasured one says why). Matplotlib is
needed only for :func:`plot_pareto` (``pip install 'bcedge[plot]'``).

Why one module: one document in every form (schema check, terminal table, JSON, Markdown, plot),
all reading the same row fields; the schema and its renderings change together.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bcedge.bench.load import BUSY_SHARE
from bcedge.bench.rows import E2E_STAGES, GATE_FAILED, NOT_VALIDATED, STATUSES, VALIDATED
from bcedge.bench.run import REPORT_KIND, REPORT_VERSION
from bcedge.errors import InputError, MissingDependencyError

#: Statuses of rows that were run and measured.
MEASURED = (VALIDATED, GATE_FAILED, NOT_VALIDATED)


class ReportSchemaError(InputError):
    """A benchmark document does not match the report schema."""


# --------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class _Opt:
    spec: Any


@dataclass(frozen=True)
class _Enum:
    values: tuple[Any, ...]


@dataclass(frozen=True)
class _List:
    item: Any


@dataclass(frozen=True)
class _Num:
    low: float | None = None
    high: float | None = None


_STR, _INT, _BOOL = str, int, bool

_LATENCY = {"p50": _Num(0), "p95": _Num(0), "p99": _Num(0), "mean": _Num(0), "runs": _Num(1)}
_E2E = {**{stage: _Num(0) for stage in E2E_STAGES}, "total": _Num(0)}

#: Every row has these keys; ``_Opt`` values may be null.
ROW_SCHEMA: dict[str, Any] = {
    "model": _STR,
    "format": _STR,
    "backend": _STR,
    "precision": _STR,
    "file": _STR,
    "threads": _Opt(_Num(1)),
    "status": _Enum(STATUSES),
    "reason": _Opt(_STR),
    "size_mb": _Num(0),
    "dice": _Opt(_Num(0, 1)),
    "iou": _Opt(_Num(0, 1)),
    "latency_ms": _Opt(_LATENCY),
    "e2e_ms": _Opt(_E2E),
    "throughput_ips": _Opt(_Num(0)),
    "peak_rss_mb": _Opt(_Num(0)),
    "gflops": _Opt(_Num(0)),
}

#: Keys a measured row (status in :data:`MEASURED`) must not leave null.
MEASURED_KEYS = ("dice", "iou", "latency_ms", "e2e_ms", "throughput_ips", "peak_rss_mb")

#: The whole document.
SCHEMA: dict[str, Any] = {
    "kind": _Enum((REPORT_KIND,)),
    "version": _Enum((REPORT_VERSION,)),
    "created": _STR,
    "machine": {
        "cpu_model": _STR,
        "logical_cpus": _Opt(_Num(1)),
        "usable_cpus": _Num(1),
        "threads_used": _List(_Num(1)),
        "cpu_flags": _List(_STR),
        "gpu": _List(_STR),
    },
    "libraries": {"python": _STR, "numpy": _STR},
    "settings": {"runs": _Num(1), "warmup": _Num(0), "threads": _List(_Num(1)), "isolate": _BOOL, "batch": _Num(1)},
    "data": {"kind": _Enum(("files", "dataset")), "label": _STR},
    "gemm_ceiling": dict,
    "rows": _List(ROW_SCHEMA),
}


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check(value: Any, spec: Any, where: str, errors: list[str]) -> None:
    if isinstance(spec, _Opt):
        if value is not None:
            _check(value, spec.spec, where, errors)
        return
    if isinstance(spec, _Enum):
        if value not in spec.values or isinstance(value, bool) != any(isinstance(v, bool) for v in spec.values):
            errors.append(f"{where} is {value!r}; expected one of {list(spec.values)}")
        return
    if isinstance(spec, _Num):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            errors.append(f"{where} is {_type_name(value)} {value!r}; expected a finite number")
        elif (spec.low is not None and value < spec.low) or (spec.high is not None and value > spec.high):
            errors.append(f"{where} is {value!r}; expected a number in [{spec.low}, {spec.high}]")
        return
    if isinstance(spec, _List):
        if not isinstance(value, list):
            errors.append(f"{where} is {_type_name(value)}; expected a list")
            return
        for i, item in enumerate(value):
            _check(item, spec.item, f"{where}[{i}]", errors)
        return
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            errors.append(f"{where} is {_type_name(value)}; expected an object")
            return
        for key, sub in spec.items():
            if key not in value:
                errors.append(f"{where} has no '{key}'")
            else:
                _check(value[key], sub, f"{where}.{key}", errors)
        return
    if spec is bool:
        if not isinstance(value, bool):
            errors.append(f"{where} is {_type_name(value)}; expected true or false")
        return
    if spec is dict:
        if not isinstance(value, dict):
            errors.append(f"{where} is {_type_name(value)}; expected an object")
        return
    if not isinstance(value, spec) or isinstance(value, bool):
        errors.append(f"{where} is {_type_name(value)}; expected {spec.__name__}")


def schema_errors(doc: Any) -> list[str]:
    """Every way ``doc`` departs from the report schema (empty when it conforms)."""
    errors: list[str] = []
    _check(doc, SCHEMA, "report", errors)
    if errors:
        return errors
    for i, row in enumerate(doc["rows"]):
        where = f"report.rows[{i}]"
        if row["status"] in MEASURED:
            errors += [f"{where}.{key} is null but the row was measured" for key in MEASURED_KEYS if row[key] is None]
            lat = row["latency_ms"]
            if lat and not lat["p50"] <= lat["p95"] <= lat["p99"]:
                errors.append(f"{where}.latency_ms percentiles are not ordered: {lat}")
        elif not row["reason"]:
            errors.append(f"{where} has status {row['status']!r} but no reason")
    return errors


def validate(doc: Any) -> None:
    """Raise :class:`ReportSchemaError` naming the first problems when ``doc`` is not a benchmark report."""
    errors = schema_errors(doc)
    if errors:
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise ReportSchemaError("not a bcedge benchmark report: " + "; ".join(errors[:3]) + more)


def load_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a report JSON file."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable JSON report ({exc})") from exc
    validate(doc)
    return doc


# --------------------------------------------------------------------------- JSON


def write_json(doc: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Validate and write the report atomically (indent 2, no NaN)."""
    from bcedge.bench.rows import _json_default
    from bcedge.imageio import atomic_write_bytes

    validate(doc)
    text = json.dumps(doc, indent=2, default=_json_default, allow_nan=False)
    return atomic_write_bytes(path, (text + "\n").encode("utf-8"))


# --------------------------------------------------------------------------- formatting helpers


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}"


def _lat(row: dict[str, Any], key: str) -> str:
    lat = row.get("latency_ms") or {}
    value = lat.get(key)
    return "-" if value is None else (f"{value:.2f}" if value < 10 else f"{value:.1f}")


def _e2e(row: dict[str, Any]) -> str:
    e2e = row.get("e2e_ms")
    if not e2e:
        return "-"
    parts = "/".join(_f(e2e.get(s), 1) for s in E2E_STAGES)
    return f"{_f(e2e.get('total'), 1)} ({parts})"


def _share(row: dict[str, Any]) -> str:
    share = row.get("ceiling_share")
    return "-" if share is None else f"{100 * share:.0f}%"


def _status(row: dict[str, Any]) -> str:
    # A row timed while other processes used the machine (bcedge.bench.load) says so where its figures are.
    return f"{row['status']} (busy)" if row.get("busy") else str(row["status"])


def row_label(row: dict[str, Any], with_threads: bool = True) -> str:
    """``model format/precision [backend] @Nt`` for plots and lists."""
    label = f"{row['model']} {row['format']}/{row['precision']}"
    if row["backend"] != row["format"]:
        label += f" [{row['backend']}]"
    if with_threads and row.get("threads") is not None:
        label += f" @{row['threads']}t"
    return label


COLUMNS = (
    "model",
    "format",
    "precision",
    "backend",
    "threads",
    "status",
    "size MB",
    "Dice",
    "IoU",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "mean ms",
    "e2e ms (decode/pre/infer/post)",
    "img/s",
    "peak RSS MB",
    "GFLOPs",
    "GFLOP/s",
    "% GEMM",
)


def table_rows(doc: dict[str, Any]) -> list[list[str]]:
    """The report's rows as strings, in :data:`COLUMNS` order."""
    out = []
    for row in doc["rows"]:
        out.append(
            [
                str(row["model"]),
                str(row["format"]),
                str(row["precision"]),
                str(row["backend"]),
                "-" if row.get("threads") is None else str(row["threads"]),
                _status(row),
                _f(row.get("size_mb"), 1),
                _f(row.get("dice"), 4),
                _f(row.get("iou"), 4),
                _lat(row, "p50"),
                _lat(row, "p95"),
                _lat(row, "p99"),
                _lat(row, "mean"),
                _e2e(row),
                _f(row.get("throughput_ips"), 1),
                _f(row.get("peak_rss_mb"), 0),
                _f(row.get("gflops"), 2),
                _f(row.get("achieved_gflops"), 1),
                _share(row),
            ]
        )
    return out


def _ceiling_text(doc: dict[str, Any]) -> str:
    parts = []
    for threads, c in sorted(doc.get("gemm_ceiling", {}).items(), key=lambda kv: int(kv[0])):
        if c.get("gflops"):
            kernel = f", {c['blas_kernel']} kernel" if c.get("blas_kernel") else ""
            parts.append(f"{c['gflops']:.0f} GFLOP/s at {threads} thread(s) ({c.get('blas') or 'BLAS'}{kernel})")
        elif c.get("error"):
            parts.append(f"{threads} thread(s): not measured ({c['error']})")
    return "; ".join(parts) or "not measured"


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """Date, machine, libraries, settings, data and GEMM ceiling, one line each."""
    m, s = doc["machine"], doc["settings"]
    cpu = f"{m['cpu_model']} ({m.get('logical_cpus')} logical CPUs, {m['usable_cpus']} usable"
    if m.get("cpu_flags"):
        cpu += f"; {' '.join(m['cpu_flags'])}"
    cpu += ")"
    if m.get("device_model"):
        cpu = f"{m['device_model']}: {cpu}"
    gpu = ", ".join(m.get("gpu") or []) or "none"
    libs = ", ".join(f"{k} {v}" for k, v in doc["libraries"].items())
    load = f", load average {m['load_avg']}" if m.get("load_avg") else ""
    isolate = "each row in a fresh process" if s["isolate"] else "all rows in one process"
    return [
        f"Date: {doc['created']} (finished {doc.get('finished', '?')})",
        f"Machine: {cpu}, {m.get('memory_gb', '?')} GB RAM, GPU: {gpu}, {m.get('os', '')}{load}",
        f"Libraries: {libs}",
        f"Settings: {s['runs']} timed runs after {s['warmup']} warm-up, batch {s['batch']}, threads "
        f"{', '.join(str(t) for t in s['threads'])}, {isolate}",
        f"Data: {doc['data']['label']}",
        f"FP32 GEMM ceiling (NumPy matmul): {_ceiling_text(doc)}",
        _busy_text(doc),
    ]


def _busy_text(doc: dict[str, Any]) -> str:
    """One line: how many timed rows ran while other processes used the machine (bcedge.bench.load)."""
    timed = [r for r in doc["rows"] if r.get("latency_ms")]
    known = [r for r in timed if r.get("busy") is not None]
    if not known:
        return "Machine load during the rows: not recorded"
    busy = [r for r in known if r["busy"]]
    worst = max((r.get("others_cpu_share") or 0.0) for r in known)
    if not busy:
        return f"Machine load during the rows: quiet (other processes used at most {100 * worst:.0f} % of the CPUs)"
    return (
        f"Machine load during the rows: {len(busy)} of {len(known)} timed rows measured on a busy machine "
        f"(other processes used up to {100 * worst:.0f} % of the CPUs; marked 'busy'): not this machine's speed"
    )


# --------------------------------------------------------------------------- terminal


#: Terminal columns (the Markdown and JSON carry every figure; a terminal gets the ones that decide).
TERMINAL_COLUMNS = (
    "model",
    "artifact",
    "thr",
    "status",
    "MB",
    "Dice",
    "IoU",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "mean ms",
    "e2e ms",
    "img/s",
    "RSS MB",
    "GFLOP/s",
    "% GEMM",
)


def print_table(doc: dict[str, Any], console: Any = None) -> None:
    """Print the report as a rich table, then the summary lines and why rows were not measured."""
    from rich.console import Console
    from rich.markup import escape as markup_escape
    from rich.table import Table

    console = console or Console()
    if not console.is_terminal and console.width < 160:
        # Piped to a log: rich would squeeze 16 columns into 80 characters.
        console = Console(file=console.file, width=200)
    table = Table(title="bcedge benchmark")
    for col in TERMINAL_COLUMNS:
        table.add_column(col, justify="left" if col in ("model", "artifact", "status") else "right")
    for row, cells in zip(doc["rows"], table_rows(doc), strict=True):
        # Escaped: rich would read "[openvino]" as a markup tag and drop it.
        artifact = markup_escape(
            f"{row['format']}/{row['precision']}" + (f" [{row['backend']}]" if row["backend"] != row["format"] else "")
        )
        e2e = row.get("e2e_ms")
        short = [
            cells[0],
            artifact,
            cells[4],
            cells[5],
            cells[6],
            cells[7],
            cells[8],
            cells[9],
            cells[10],
            cells[11],
            cells[12],
            _f(e2e.get("total"), 1) if e2e else "-",
            cells[14],
            cells[15],
            cells[17],
            cells[18],
        ]
        table.add_row(*short, style=None if row["status"] in MEASURED else "dim")
    console.print(table)
    for line in summary_lines(doc):
        console.print(line, highlight=False, markup=False)
    for row in doc["rows"]:
        if row.get("reason"):
            console.print(f"{row_label(row)}: {row['status']}: {row['reason']}", highlight=False, markup=False)


# --------------------------------------------------------------------------- INT8 speed-up


#: Issue #7's goal: INT8 at least this many times faster than FP32 at p50 ...
SPEEDUP_GOAL = 1.5

#: ... losing at most this much Dice (a gain never fails, as in the export gate).
DICE_LOSS_GOAL = 0.01


def int8_speedups(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """INT8 rows against the FP32 row of the same model, format, backend and threads (FP16 when no FP32).

    Returns:
        One dict per INT8 row with a reference: ``model, format, backend, threads, base_precision,
        base_p50_ms, int8_p50_ms, speedup, dice_delta, meets_goal`` (speed-up >= :data:`SPEEDUP_GOAL`
        and Dice not lower by more than :data:`DICE_LOSS_GOAL`).
    """
    measured = [r for r in doc["rows"] if r["status"] in MEASURED and r.get("latency_ms")]
    index = {(r["model"], r["format"], r["backend"], r.get("threads"), r["precision"]): r for r in measured}
    out = []
    for row in measured:
        if row["precision"] != "int8":
            continue
        key = (row["model"], row["format"], row["backend"], row.get("threads"))
        base = index.get((*key, "fp32")) or index.get((*key, "fp16"))
        if base is None:
            continue
        speedup = base["latency_ms"]["p50"] / row["latency_ms"]["p50"]
        delta = row["dice"] - base["dice"]
        out.append(
            {
                "model": row["model"],
                "format": row["format"],
                "backend": row["backend"],
                "threads": row.get("threads"),
                "base_precision": base["precision"],
                "base_p50_ms": base["latency_ms"]["p50"],
                "int8_p50_ms": row["latency_ms"]["p50"],
                "speedup": speedup,
                "dice_delta": delta,
                "meets_goal": bool(speedup >= SPEEDUP_GOAL and delta >= -DICE_LOSS_GOAL),
            }
        )
    return out


# --------------------------------------------------------------------------- Markdown


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(doc: dict[str, Any], title: str = "bcedge benchmark") -> str:
    """The report as Markdown: summary, the table, notes on unmeasured rows, per-op profiles, definitions."""
    lines = [f"# {title}", ""]
    lines += [f"- {_md_escape(line)}" for line in summary_lines(doc)]
    lines += [
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" if i < 6 else "---:" for i in range(len(COLUMNS))) + "|",
    ]
    for cells in table_rows(doc):
        lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    notes = [row for row in doc["rows"] if row.get("reason")]
    if notes:
        lines += ["", "Rows not validated or not measured:", ""]
        lines += [
            f"- {_md_escape(row_label(row))}: **{row['status']}**: {_md_escape(str(row['reason']))}" for row in notes
        ]
    # Masks do not depend on the thread count: one entry per artifact.
    grouped = list(
        {(r.get("bundle"), r["file"]): r for r in doc["rows"][::-1] if len(r.get("groups") or {}) > 1}.values()
    )
    if grouped:
        lines += [
            "",
            "## Dice by ground truth (pixel masks, circle masks, normal images)",
            "",
            "Found: share of lesions (ground-truth components) a predicted component overlaps. "
            "FP/image: predicted components overlapping no lesion. Flagged: share of normal images with "
            "any finding. Intervals and per-source figures: the row's `evaluation` (as `bcedge evaluate --model`).",
            "",
            "| model | format | precision | group | images | Dice | IoU | found | FP/image | flagged |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in grouped[::-1]:
            for name, g in r["groups"].items():
                lines.append(
                    f"| {r['model']} | {r['format']} | {r['precision']} | {name} | {g['n']} | "
                    f"{_f(g.get('dice'), 4)} | {_f(g.get('iou'), 4)} | {_f(g.get('detection_rate'), 2)} | "
                    f"{_f(g.get('fp_per_image'), 2)} | {_f(g.get('false_positive_rate'), 2)} |"
                )
    speedups = int8_speedups(doc)
    if speedups:
        lines += [
            "",
            f"## INT8 against FP32 (goal: >= {SPEEDUP_GOAL}x faster at p50, Dice lower by <= {DICE_LOSS_GOAL})",
            "",
            "| model | format | threads | reference | reference p50 ms | INT8 p50 ms | speed-up | Dice delta | goal |",
            "|---|---|---:|---|---:|---:|---:|---:|---|",
        ]
        for s in speedups:
            lines.append(
                f"| {s['model']} | {s['format']} | {s['threads']} | {s['base_precision']} | {s['base_p50_ms']:.2f} | "
                f"{s['int8_p50_ms']:.2f} | {s['speedup']:.2f}x | {s['dice_delta']:+.4f} | "
                f"{'yes' if s['meets_goal'] else 'no'} |"
            )
    profiles = [row for row in doc["rows"] if row.get("op_profile")]
    for row in profiles:
        prof = row["op_profile"]
        lines += ["", f"## Where the time goes: {_md_escape(row_label(row))}", ""]
        total = prof.get("sum_ms") or 0.0
        model = prof.get("model_p50_ms")
        if model:
            lines.append(f"Ops timed one by one sum to {total:.2f} ms (whole model p50 {model:.2f} ms).")
            lines.append("")
        lines += ["| op | count | ms | share | GFLOP/s | input types |", "|---|---:|---:|---:|---:|---|"]
        for entry in prof["by_type"]:
            lines.append(
                f"| {entry['op']} | {entry['count']} | {entry['ms']:.2f} | {100 * entry['share']:.1f}% | "
                f"{_f(entry.get('gflops_per_s'), 1)} | {', '.join(entry['input_types'])} |"
            )
    lines += [
        "",
        "Definitions: Dice/IoU are per-image means over lesion-positive images of the masks `bcedge infer` "
        "produces on the original pixel grid (`bcedge.metrics`); p50/p95/p99/mean are model latencies "
        "(`Backend.predict`, batch 1, inputs rotated, warm-up excluded); e2e is the median per image of the "
        "decode, preprocess, infer and postprocess stages of the runtime pipeline; img/s = 1000 / mean model "
        "latency; peak RSS is the peak resident memory of the process that measured the row (VmHWM: with "
        "isolation, that row's own); 'busy' marks a row during whose timing other processes used more than "
        f"{100 * BUSY_SHARE:.0f} % of the machine's CPUs (its JSON row has the process CPU time per call and "
        "the others' share); "
        "GFLOPs count 2 x the "
        "multiply-accumulates of convolutions and matrix products; GFLOP/s = GFLOPs / p50; % GEMM is that "
        "over the FP32 NumPy GEMM ceiling at the same thread count (INT8 rows can exceed 100%).",
        "",
    ]
    return "\n".join(lines)


def write_markdown(doc: dict[str, Any], path: str | os.PathLike[str], title: str = "bcedge benchmark") -> Path:
    """Write :func:`to_markdown` atomically."""
    from bcedge.imageio import atomic_write_bytes

    return atomic_write_bytes(path, to_markdown(doc, title).encode("utf-8"))


# --------------------------------------------------------------------------- Pareto plot


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both latency (lower) and Dice (higher), by latency.

    Args:
        points: (latency, dice) pairs.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    best = -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _require_matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise MissingDependencyError("the Pareto plot (--plot)", "plot", "matplotlib") from None
    return matplotlib


def plot_available() -> bool:
    """Whether matplotlib is installed (checked without importing it)."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


#: Plots with fewer measured rows than this label every point; larger ones label the Pareto front only.
_LABEL_ALL_BELOW = 13


def plot_pareto(doc: dict[str, Any], path: str | os.PathLike[str], title: str | None = None) -> Path:
    """Dice against p50 model latency (log x), one marker per measured row, the Pareto front drawn.

    Colour: model; marker: precision; filled for the largest thread count, hollow otherwise.

    Raises:
        MissingDependencyError: matplotlib is not installed.
    """
    matplotlib = _require_matplotlib()
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from bcedge.imageio import atomic_write

    rows = [r for r in doc["rows"] if r["status"] in MEASURED and r.get("latency_ms") and r.get("dice") is not None]
    fig, ax = plt.subplots(figsize=(8.5, 5.5), dpi=120)
    try:
        models = sorted({r["model"] for r in rows})
        colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
        markers = {"fp32": "o", "fp16": "s", "dynamic": "^", "int8": "D"}
        max_threads = max((r.get("threads") or 0 for r in rows), default=0)
        points = [(r["latency_ms"]["p50"], r["dice"]) for r in rows]
        for row, (x, y) in zip(rows, points, strict=True):
            filled = (row.get("threads") or 0) == max_threads
            colour = colours[row["model"]]
            ax.scatter(
                x,
                y,
                marker=markers.get(row["precision"], "x"),
                s=55,
                facecolors=colour if filled else "none",
                edgecolors=colour,
                linewidths=1.4,
                zorder=3,
            )
        front = pareto_front(points)
        # Colour names the model, the marker the precision; text labels only where they stay legible
        # (every point of a small plot, else the Pareto front: 36 rows of labels overprint each other).
        labelled = range(len(rows)) if len(rows) <= _LABEL_ALL_BELOW else front
        for i in labelled:
            label = row_label(rows[i]) if len(models) > 1 else row_label(rows[i]).split(" ", 1)[1]
            ax.annotate(label, points[i], textcoords="offset points", xytext=(6, -10), fontsize=7)
        if front:
            fx = [points[i][0] for i in front]
            fy = [points[i][1] for i in front]
            ax.plot(fx, fy, drawstyle="steps-post", color="0.35", linestyle="--", linewidth=1, zorder=2)
            ax.scatter(
                fx, fy, s=160, facecolors="none", edgecolors="0.35", linewidths=1, zorder=2, label="Pareto front"
            )
        for m in models:
            ax.scatter([], [], color=colours[m], marker="o", label=m)
        for prec, marker in markers.items():
            if any(r["precision"] == prec for r in rows):
                ax.scatter([], [], color="0.3", marker=marker, label=prec)
        if rows:
            from matplotlib.ticker import FuncFormatter

            ax.set_xscale("log")
            plain = FuncFormatter(lambda v, _pos: f"{v:g}")
            ax.xaxis.set_major_formatter(plain)
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _pos: f"{v:g}" if f"{v:g}"[0] in "25" else ""))
            ax.legend(fontsize=7, loc="best")
            ax.margins(x=0.15, y=0.15)
        else:
            ax.text(0.5, 0.5, "no measured rows", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("p50 model latency, ms (log scale; batch 1)")
        ax.set_ylabel("Dice (lesion images, original grid)")
        machine = doc["machine"]
        ax.set_title(
            title
            or f"bcedge benchmark: {machine['cpu_model']}, {doc['created'][:10]}  (filled: {max_threads} threads)",
            fontsize=9,
        )
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)


__all__ = [
    "COLUMNS",
    "ROW_SCHEMA",
    "SCHEMA",
    "ReportSchemaError",
    "int8_speedups",
    "load_report",
    "pareto_front",
    "plot_available",
    "plot_pareto",
    "print_table",
    "schema_errors",
    "summary_lines",
    "table_rows",
    "to_markdown",
    "validate",
    "write_json",
    "write_markdown",
]
