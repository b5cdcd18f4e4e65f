"""The export format table, option parsing and the TensorRT hand-off (no conversion here: fast)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from bcedge.errors import ConfigError
from export import bundle_builder as bb
from export.builders import BuildContext
from export.bundle_builder import builder_of


def test_default_formats_are_what_this_machine_can_build(monkeypatch: pytest.MonkeyPatch) -> None:
    names, skipped = bb.parse_formats(None)
    available = bb.format_availability()
    assert names == [n for n, (ok, _) in available.items() if ok]
    assert set(names) | set(skipped) == set(bb.EXPORT_FORMATS)
    assert all(why.startswith("not available here: ") for why in skipped.values())
    # pretend TensorRT is missing: the engines are listed as skipped with the reason, never attempted
    monkeypatch.setattr(
        bb,
        "format_availability",
        lambda: {**available, "tensorrt-fp16": (False, "no TensorRT"), "tensorrt-int8": (False, "no TensorRT")},
    )
    names, skipped = bb.parse_formats(None)
    assert "tensorrt-fp16" not in names and skipped["tensorrt-int8"] == "not available here: no TensorRT"
    with pytest.raises(ConfigError, match="tensorrt-fp16 cannot be built here: no TensorRT"):
        bb.parse_formats("onnx,tensorrt-fp16")


def test_explicit_formats_keep_table_order_without_repeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bb, "format_availability", lambda: {n: (True, "") for n in bb.EXPORT_FORMATS})
    names, skipped = bb.parse_formats("tensorrt-int8, ONNX,tflite-int8,onnx")
    assert names == ["tflite-int8", "onnx", "tensorrt-int8"] and skipped == {}  # ONNX before the engines built from it
    with pytest.raises(ConfigError, match="unknown export format"):
        bb.parse_formats("tflite-int4")
    with pytest.raises(ConfigError, match="names no format"):
        bb.parse_formats(" , ")


def test_tolerances() -> None:
    assert bb.parse_tolerances(None) == {"fp32": 0.001, "fp16": 0.001, "dynamic": 0.01, "int8": 0.01}
    assert bb.parse_tolerances(["int8=0.02", "FP16=0.005"])["int8"] == 0.02
    for bad in ("int8", "int4=0.1", "int8=lots", "int8=2"):
        with pytest.raises(ConfigError, match="--tolerance"):
            bb.parse_tolerances([bad])


def test_tensorrt_engines_come_from_export_tensorrt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The orchestration hands TensorRT the ONNX file, calibration images (INT8 only) and a persistent cache."""
    from export import tensorrt as trt_export

    out = tmp_path / "with space" / "bundle"
    out.mkdir(parents=True)
    calls = []

    def fake_build_engine(onnx_path, out_dir, *, precision, calibration, cache_dir, stem, **kw):
        calls.append({"onnx": onnx_path, "precision": precision, "calibration": calibration, "cache": cache_dir})
        path = Path(out_dir) / f"{stem}_{precision}.trt10.3.0.NVIDIA-Orin.engine"
        path.write_bytes(b"engine")
        details = {"onnx": str(onnx_path), "precision": precision, "trtexec": "trtexec --onnx=..."}
        return trt_export.EngineResult(path, "10.3.0", "NVIDIA Orin", 1.0, details)

    monkeypatch.setattr(trt_export, "build_engine", fake_build_engine)
    calib = np.zeros((3, 64, 64, 1), np.float32)
    onnx_path = out / "model.onnx"
    context = BuildContext(model=None, size=64, out=out, work=tmp_path, calibration=calib, cache=tmp_path / "cache")
    context.built["onnx"] = onnx_path  # the bundle's ONNX artifact, written earlier in the export
    kind = bb.EXPORT_FORMATS["tensorrt-int8"]
    file, details = builder_of(kind)(kind, context)
    assert file == "model_int8.trt10.3.0.NVIDIA-Orin.engine" and (out / file).is_file()
    assert calls[0]["calibration"] is calib and calls[0]["precision"] == "int8" and calls[0]["onnx"] == onnx_path
    assert calls[0]["cache"] == tmp_path / "cache" / "tensorrt"
    assert "path" not in details and "onnx" not in details  # no machine-local paths in the manifest
    assert details["trt_version"] == "10.3.0" and details["gpu_name"] == "NVIDIA Orin"
    kind = bb.EXPORT_FORMATS["tensorrt-fp16"]
    builder_of(kind)(kind, context)
    assert calls[1]["calibration"] is None and calls[1]["precision"] == "fp16"


def test_rows_build_through_the_table(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """build_bundle's per-row step calls the row's builder string, times it without the shared SavedModel,
    and turns a failing builder into a build-failed row."""
    import export.builders as builders

    lines: list[str] = []
    context = BuildContext(model=None, size=8, out=tmp_path, work=tmp_path, log=lines.append)

    def fake_tflite(kind, context):
        # As if making the shared SavedModel took 0.2 s: not charged to this row. The time actually
        # slept is what is declared untimed (a loaded machine oversleeps; 0.2 flat made the row's
        # remaining time depend on the load).
        t0 = time.perf_counter()
        time.sleep(0.2)
        context.untimed_seconds += time.perf_counter() - t0
        (context.out / kind.file).write_bytes(b"tflite")
        return kind.file, {"float_ops": []}

    def broken(kind, context):
        raise RuntimeError("converter exploded\nsecond line")

    monkeypatch.setattr(builders, "build_tflite", fake_tflite)
    monkeypatch.setattr(builders, "build_onnx", broken)
    row = bb._build_row(bb.EXPORT_FORMATS["tflite-int8"], context, {"n": 3})
    assert row.file == "model_int8.tflite" and row.status == "not-measured" and 0 <= row.build_seconds < 0.1
    assert context.built == {"tflite-int8": tmp_path / "model_int8.tflite"}
    assert row.details == {"float_ops": []}  # no calibration images in this context: nothing recorded
    assert lines[-1].startswith("tflite-int8: converted in") and lines[-1].endswith("ops left in float: none")
    row = bb._build_row(bb.EXPORT_FORMATS["onnx"], context, {})
    assert row.status == "build-failed" and row.file is None
    assert row.message == "RuntimeError: converter exploded" and "onnx" not in context.built


def test_overwrite_removes_only_the_old_bundles_own_files(tmp_path: Path) -> None:
    out = tmp_path / "with space"
    out.mkdir()
    (out / "model_int8.tflite").write_bytes(b"x")
    (out / "notes.txt").write_text("mine")
    outside = tmp_path / "precious.bin"
    outside.write_bytes(b"keep")
    manifest = {"artifacts": [{"file": "model_int8.tflite"}, {"file": "../precious.bin"}]}
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="--overwrite"):
        bb._prepare_out(out, overwrite=False)
    bb._prepare_out(out, overwrite=True)
    assert not (out / "manifest.json").exists() and not (out / "model_int8.tflite").exists()
    assert (out / "notes.txt").exists() and outside.exists()
    (tmp_path / "a file").write_text("")
    with pytest.raises(ConfigError, match="is a file"):
        bb._prepare_out(tmp_path / "a file", overwrite=True)
