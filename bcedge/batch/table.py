"""The results table of ``bcedge batch``: one row per scan, one row per finding (Parquet schemas).

A data team reads it with anything that reads Parquet folders::

    import pandas as pd
    scans = pd.read_parquet("OUT/results/scans")        # one row per scan, done or failed
    findings = pd.read_parquet("OUT/results/findings")  # one row per finding, joined on ``key``

(or :func:`bcedge.batch.ledger.read_table`, which also drops parts a crash left uncommitted).

Rows are built as plain dicts here (by the workers) and turned into Arrow tables by the ledger,
so this module imports pyarrow only for the schemas.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from typing import TYPE_CHECKING, Any

from bcedge.errors import first_line

if TYPE_CHECKING:
    import pyarrow as pa

    from bcedge.batch.sources import ScanRef
    from bcedge.pipeline import Result

#: Timing columns (ms), from the pipeline's stages plus ``fetch`` (WADO-RS) and ``stow`` (STOW-RS).
TIMING_COLUMNS = ("fetch", "decode", "preprocess", "infer", "postprocess", "write", "stow", "total")
#: Output kinds that get a path column.
OUTPUT_COLUMNS = ("mask", "overlay", "json", "seg")


def scan_schema() -> pa.Schema:
    """Schema of the scans table (one row per scan)."""
    import pyarrow as pa

    fields = [
        ("key", pa.string()),
        ("fingerprint", pa.string()),
        ("source_kind", pa.string()),
        ("path", pa.string()),
        ("size_bytes", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("study_uid", pa.string()),
        ("series_uid", pa.string()),
        ("sop_uid", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("error_type", pa.string()),
        ("rows", pa.int32()),
        ("columns", pa.int32()),
        ("laterality", pa.string()),
        ("view", pa.string()),
        ("n_findings", pa.int32()),
        ("largest_area_mm2", pa.float64()),
        ("largest_area_px", pa.int64()),
        ("max_probability", pa.float64()),
        *[(f"{t}_ms", pa.float64()) for t in TIMING_COLUMNS],
        *[(f"{k}_path", pa.string()) for k in OUTPUT_COLUMNS],
        ("seg_stored", pa.bool_()),
        ("model_name", pa.string()),
        ("model_artifact", pa.string()),
        ("model_sha256", pa.string()),
        ("backend", pa.string()),
        ("threshold", pa.float64()),
        ("min_area_mm2", pa.float64()),
        ("worker", pa.string()),
        ("node", pa.string()),
        ("finished_at", pa.timestamp("ms", tz="UTC")),
        ("part", pa.string()),
    ]
    return pa.schema(fields)


def finding_schema() -> pa.Schema:
    """Schema of the findings table (one row per finding; ``key`` joins it to the scans table)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("key", pa.string()),
            ("fingerprint", pa.string()),
            ("sop_uid", pa.string()),
            ("path", pa.string()),
            ("label", pa.int32()),
            ("area_px", pa.int64()),
            ("area_mm2", pa.float64()),
            ("bbox_r0", pa.int32()),
            ("bbox_c0", pa.int32()),
            ("bbox_r1", pa.int32()),
            ("bbox_c1", pa.int32()),
            ("bbox_height_mm", pa.float64()),
            ("bbox_width_mm", pa.float64()),
            ("centroid_row", pa.float64()),
            ("centroid_col", pa.float64()),
            ("max_probability", pa.float64()),
            ("mean_probability", pa.float64()),
            ("part", pa.string()),
        ]
    )


def fingerprint(model_sha256: str, threshold: float, min_area_mm2: float) -> str:
    """What makes two runs' results the same: the artifact's sha256 and the result-changing settings.

    A scan is done when the table holds its key with this fingerprint (16 hex digits).
    """
    text = json.dumps({"sha256": model_sha256, "threshold": float(threshold), "min_area_mm2": float(min_area_mm2)})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def worker_name() -> str:
    """``host:pid`` of the process that segmented the scan."""
    return f"{socket.gethostname()}:{os.getpid()}"


def node_id() -> str | None:
    """The Ray node this process runs on (None outside Ray): tells the nodes of a cluster apart."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # Ray missing or not connected: the row just has no node
        return None


def _base_row(ref: ScanRef, fp: str, model: dict[str, Any], threshold: float, min_area: float) -> dict[str, Any]:
    return {
        "key": ref.key,
        "fingerprint": fp,
        "source_kind": ref.kind,
        "path": ref.path,
        "size_bytes": ref.size,
        "mtime_ns": ref.mtime_ns,
        "study_uid": ref.study_uid or None,
        "series_uid": ref.series_uid or None,
        "sop_uid": ref.sop_uid or None,
        "model_name": model.get("name"),
        "model_artifact": model.get("artifact"),
        "model_sha256": model.get("sha256"),
        "backend": model.get("backend"),
        "threshold": threshold,
        "min_area_mm2": min_area,
        "worker": worker_name(),
        "node": node_id(),
        "finished_at": int(time.time() * 1000),  # ms since the epoch (JSON-able; the schema makes it a timestamp)
    }


def done_row(
    ref: ScanRef,
    result: Result,
    *,
    fp: str,
    threshold: float,
    min_area_mm2: float,
    timing_ms: dict[str, float],
    seg_stored: bool | None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The scan row and finding rows of a scan processed to the end."""
    meta = result.mammogram.meta
    row = _base_row(ref, fp, result.model, threshold, min_area_mm2)
    findings = result.findings
    areas_mm2 = [f.area_mm2 for f in findings if f.area_mm2 is not None]
    row.update(
        {
            "study_uid": meta.study_uid or row["study_uid"],
            "series_uid": meta.series_uid or row["series_uid"],
            "sop_uid": meta.sop_uid or row["sop_uid"],
            "status": "done",
            "rows": meta.rows,
            "columns": meta.columns,
            "laterality": meta.laterality,
            "view": meta.view,
            "n_findings": len(findings),
            "largest_area_mm2": max(areas_mm2) if areas_mm2 else None,
            "largest_area_px": max((f.area_px for f in findings), default=None),
            "max_probability": max((f.max_probability for f in findings), default=None),
            "seg_stored": seg_stored,
        }
    )
    row.update({f"{t}_ms": timing_ms.get(t) for t in TIMING_COLUMNS})
    row.update({f"{k}_path": result.outputs.get(k) for k in OUTPUT_COLUMNS})
    finding_rows = [
        {
            "key": ref.key,
            "fingerprint": fp,
            "sop_uid": row["sop_uid"],
            "path": ref.path,
            "label": f.label,
            "area_px": f.area_px,
            "area_mm2": f.area_mm2,
            "bbox_r0": f.bbox_px[0],
            "bbox_c0": f.bbox_px[1],
            "bbox_r1": f.bbox_px[2],
            "bbox_c1": f.bbox_px[3],
            "bbox_height_mm": f.bbox_mm[0] if f.bbox_mm else None,
            "bbox_width_mm": f.bbox_mm[1] if f.bbox_mm else None,
            "centroid_row": f.centroid_px[0],
            "centroid_col": f.centroid_px[1],
            "max_probability": f.max_probability,
            "mean_probability": f.mean_probability,
        }
        for f in findings
    ]
    return row, finding_rows


def failed_row(
    ref: ScanRef,
    error: BaseException,
    *,
    fp: str,
    model: dict[str, Any],
    threshold: float,
    min_area_mm2: float,
    timing_ms: dict[str, float],
) -> dict[str, Any]:
    """The scan row of a scan that failed: its one-line error and the time spent on it."""
    row = _base_row(ref, fp, model, threshold, min_area_mm2)
    row.update({"status": "failed", "error": first_line(error), "error_type": type(error).__name__, "n_findings": None})
    row.update({f"{t}_ms": timing_ms.get(t) for t in TIMING_COLUMNS})
    return row
