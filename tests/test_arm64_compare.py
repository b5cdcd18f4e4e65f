"""The x86-vs-aarch64 gates of ``benchmarks/arm64/segment_all.py compare`` on hand-made runs.

FP32 rows must match exactly (mask and findings), INT8 rows need mask Dice >= 0.98, and
rows that ran on x86 only are reported as not run on aarch64 (the comparison is then
incomplete), so a run cut short cannot pass as a full one.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "arm64" / "segment_all.py"
_spec = importlib.util.spec_from_file_location("arm64_segment_all", SCRIPT)
assert _spec is not None and _spec.loader is not None
segment_all = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(segment_all)

FINDING = {
    "label": 1,
    "bbox_px": [10, 10, 30, 30],
    "centroid_px": [19.5, 19.5],
    "area_px": 400,
    "area_mm2": None,
    "bbox_mm": None,
    "max_probability": 0.99,
    "mean_probability": 0.9,
}


def _write_run(folder: Path, machine: str, rows: list[tuple[str, str, np.ndarray, list[dict[str, Any]]]]) -> Path:
    """rows: (artifact file, precision, (H, W) uint8 mask, findings); one bundle 'b', one scan 's.png'."""
    folder.mkdir()
    arrays, out_rows = {}, []
    for artifact, precision, mask, findings in rows:
        key = f"b|{artifact}|s.png"
        arrays[key + "|mask"] = np.packbits(mask.astype(bool))
        arrays[key + "|probability"] = mask.astype(np.float32)[:8, :8]
        out_rows.append(
            {
                "bundle": "b",
                "artifact": artifact,
                "precision": precision,
                "backend": "tflite",
                "scan": "s.png",
                "shape": list(mask.shape),
                "mask_pixels": int(mask.sum()),
                "findings": findings,
            }
        )
    np.savez_compressed(folder / "arrays.npz", **arrays)
    (folder / "results.json").write_text(json.dumps({"machine": machine, "python": "3.11", "rows": out_rows}))
    return folder


def _mask(extra_pixels: int = 0) -> np.ndarray:
    mask = np.zeros((64, 64), np.uint8)
    mask[10:30, 10:30] = 1
    mask[40, :extra_pixels] = 1
    return mask


def test_identical_fp32_and_close_int8_pass(tmp_path: Path) -> None:
    x86 = _write_run(tmp_path / "x86", "x86_64", [("fp32.tflite", "fp32", _mask(), [FINDING])])
    arm = _write_run(tmp_path / "arm", "aarch64", [("fp32.tflite", "fp32", _mask(), [FINDING])])
    report = segment_all.compare(x86, arm, 0.98)
    assert report["passed"] and report["complete"]
    assert report["rows"][0]["pixels_differing"] == 0


def test_one_fp32_pixel_fails_but_int8_tolerates_it(tmp_path: Path) -> None:
    rows_x86 = [("fp32.tflite", "fp32", _mask(), [FINDING]), ("int8.tflite", "int8", _mask(), [FINDING])]
    rows_arm = [("fp32.tflite", "fp32", _mask(1), [FINDING]), ("int8.tflite", "int8", _mask(1), [FINDING])]
    report = segment_all.compare(
        _write_run(tmp_path / "x86", "x86_64", rows_x86), _write_run(tmp_path / "arm", "aarch64", rows_arm), 0.98
    )
    by_artifact = {r["artifact"]: r for r in report["rows"]}
    assert not by_artifact["fp32.tflite"]["passed"]
    assert by_artifact["fp32.tflite"]["pixels_differing"] == 1
    assert by_artifact["int8.tflite"]["passed"]  # Dice 800/801 >= 0.98
    assert not report["passed"]


def test_int8_below_the_dice_gate_fails(tmp_path: Path) -> None:
    rows_x86 = [("int8.tflite", "int8", _mask(), [FINDING])]
    rows_arm = [("int8.tflite", "int8", _mask(30), [FINDING])]  # 30 extra pixels: Dice 800/830
    report = segment_all.compare(
        _write_run(tmp_path / "x86", "x86_64", rows_x86), _write_run(tmp_path / "arm", "aarch64", rows_arm), 0.98
    )
    assert report["rows"][0]["dice_vs_x86"] < 0.98
    assert not report["passed"]


def test_fp32_findings_must_match(tmp_path: Path) -> None:
    moved = {**FINDING, "bbox_px": [10, 10, 30, 31]}
    report = segment_all.compare(
        _write_run(tmp_path / "x86", "x86_64", [("fp32.tflite", "fp32", _mask(), [FINDING])]),
        _write_run(tmp_path / "arm", "aarch64", [("fp32.tflite", "fp32", _mask(), [moved])]),
        0.98,
    )
    assert report["rows"][0]["pixels_differing"] == 0
    assert not report["rows"][0]["findings_match"]
    assert not report["passed"]


def test_rows_missing_on_arm_make_the_comparison_incomplete(tmp_path: Path) -> None:
    rows_x86 = [("fp32.tflite", "fp32", _mask(), [FINDING]), ("int8.tflite", "int8", _mask(), [FINDING])]
    report = segment_all.compare(
        _write_run(tmp_path / "x86", "x86_64", rows_x86),
        _write_run(tmp_path / "arm", "aarch64", rows_x86[:1]),
        0.98,
    )
    assert report["passed"]  # what was compared passed ...
    assert not report["complete"]  # ... but not everything was
    assert report["not_run_on_arm"] == ["b|int8.tflite|s.png"]
