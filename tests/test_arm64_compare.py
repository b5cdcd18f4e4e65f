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


# --------------------------------------------------------------------------- report.py (the record)

_rspec = importlib.util.spec_from_file_location("arm64_report", SCRIPT.parent / "report.py")
assert _rspec is not None and _rspec.loader is not None
report_py = importlib.util.module_from_spec(_rspec)
_rspec.loader.exec_module(report_py)


def _bench_doc(dices: dict[tuple[str, str], float | None]) -> dict[str, Any]:
    """A ``bcedge benchmark --json`` document with one row per (file, precision) and its Dice."""
    rows = [
        {"file": f, "precision": p, "status": "validated", "dice": d, "latency_ms": {"p50": 1.0}, "e2e_ms": {"n": 1}}
        for (f, p), d in dices.items()
    ]
    return {"created": "t0", "finished": "t1", "settings": {"runs": 3}, "data": {"kind": "files"}, "rows": rows}


def test_benchmark_rows_gate_fp16_against_x86_and_need_every_artifact() -> None:
    """One aarch64 run per artifact: FP16 must score x86's Dice, every artifact needs a Dice."""
    fp16 = _bench_doc({("m_fp16.tflite", "fp16"): 0.5})
    dyn = _bench_doc({("m_dyn.tflite", "dynamic"): 0.41})
    x86 = _bench_doc({("m_fp16.tflite", "fp16"): 0.5, ("m_dyn.tflite", "dynamic"): 0.40})
    ok = report_py._benchmark([fp16, dyn], x86, "b")
    assert ok["passed"] and ok["finished"] and ok["not_finished"] == []
    row = next(r for r in ok["rows"] if r["precision"] == "dynamic")
    assert row["dice_minus_x86"] == 0.01 and row["passed"]  # INT8 Dice may differ (its mask gate is compare's)
    drift = report_py._benchmark([_bench_doc({("m_fp16.tflite", "fp16"): 0.49}), dyn], x86, "b")
    assert not drift["passed"]  # FP16 must score what x86 scores
    failed = report_py._benchmark([_bench_doc({("m_fp16.tflite", "fp16"): None}), dyn], x86, "b")
    assert not failed["passed"]  # an artifact without a Dice (error row) fails the bundle
    cut = report_py._benchmark([fp16, None], x86, "b")  # the second artifact's run timed out
    assert not cut["passed"] and not cut["finished"] and cut["not_finished"] == ["m_dyn.tflite"]
    assert [r["file"] for r in cut["rows"]] == ["m_fp16.tflite"]
    unfinished = report_py._benchmark([None], x86, "b")
    assert not unfinished["passed"] and unfinished["not_finished"] == ["m_dyn.tflite", "m_fp16.tflite"]


def test_report_keeps_the_steps_a_partial_run_did_not_run() -> None:
    """--steps benchmark: the earlier run's step results stay, listed as kept with their commit."""
    old = {
        "distro": "d",
        "source": {"git_commit": "old"},
        "steps": {"cpu": {"rc": 0}, "tests": {"rc": 0}},
        "tests": "243 passed",
        "x86_vs_arm64": {"passed": True, "complete": True},
        "infer": {"b": {"artifact": "x"}},
        "benchmark": [],
        "bundles": ["b"],
    }
    new = {
        "distro": "d",
        "steps": {"cpu": {"rc": 0}, "benchmark": {"rc": 0}},
        "tests": None,
        "x86_vs_arm64": {},
        "infer": {"b": None, "c": None},
        "benchmark": {"b": {"passed": True}},
        "bundles": ["b", "c"],
        "ran_now": ["benchmark", "cpu"],
    }
    merged = report_py.merge_previous(new, old)
    assert set(merged["steps"]) == {"cpu", "tests", "benchmark"}
    assert merged["tests"] == "243 passed" and merged["x86_vs_arm64"]["complete"]
    assert merged["infer"] == {"b": {"artifact": "x"}, "c": None}
    assert merged["kept_from_earlier_run"]["source"] == {"git_commit": "old"}
    # The old record named no root: the kept results' root is said to be unknown, not this run's.
    assert merged["kept_from_earlier_run"]["rootfs"]["built_by"].startswith("unknown")
    assert (
        "step tests" in merged["kept_from_earlier_run"]["items"]
        and "step cpu" not in merged["kept_from_earlier_run"]["items"]
    )
    # Another distribution's record is not mixed in.
    fresh = {"distro": "e", "steps": {}, "tests": None, "infer": {}, "benchmark": {}, "bundles": [], "ran_now": []}
    other = report_py.merge_previous(fresh, old)
    assert "kept_from_earlier_run" not in other and other["steps"] == {}


def test_kept_results_name_the_root_they_ran_on_across_partial_runs() -> None:
    """A second --steps run keeps the first kept items' root, not the intermediate record's."""
    debootstrap = {"built_by": "debootstrap --variant=minbase"}
    old = {
        "distro": "d",
        "source": {"git_commit": "mid"},
        "rootfs": {"built_by": "mmdebstrap --variant=extract"},
        "steps": {"tests": {"rc": 0}},
        "tests": "243 passed",
        "infer": {},
        "bundles": [],
        "kept_from_earlier_run": {"items": ["step tests"], "source": {"git_commit": "old"}, "rootfs": debootstrap},
    }
    new = {"distro": "d", "steps": {"cpu": {"rc": 0}}, "tests": None, "infer": {}, "benchmark": {}, "bundles": []}
    new["ran_now"] = ["cpu"]
    merged = report_py.merge_previous(new, old)
    assert merged["kept_from_earlier_run"]["rootfs"] == debootstrap
    assert merged["kept_from_earlier_run"]["source"] == {"git_commit": "old"}


def test_rootfs_info_reads_make_rootfs_stamp(tmp_path: Path) -> None:
    """The stamp make_rootfs.sh writes names the builder; an old empty stamp is 'unknown'."""
    (tmp_path / "root").mkdir()
    stamp = tmp_path / "root" / ".bcedge-rootfs-done"
    assert report_py.rootfs_info(tmp_path)["built_by"].startswith("unknown")  # no stamp
    stamp.write_text("")  # a root built before the method was recorded
    assert report_py.rootfs_info(tmp_path)["built_by"].startswith("unknown")
    stamp.write_text("built_by=mmdebstrap --variant=extract\nbuilt_at=2026-12-01T02:40:00Z\nsuite=bookworm\n")
    info = report_py.rootfs_info(tmp_path)
    assert info == {"built_by": "mmdebstrap --variant=extract", "built_at": "2026-12-01T02:40:00Z", "suite": "bookworm"}
