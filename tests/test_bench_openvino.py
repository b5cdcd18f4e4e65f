"""benchmarks/openvino_check.py: both runtimes give the same kind of rows (runs only where OpenVINO is installed)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("ai_edge_litert")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import openvino_check


def test_openvino_runs_the_tflite_file_like_litert() -> None:
    # The same FP16 file on both runtimes at f32: the same probabilities up to float rounding.
    x = np.random.default_rng(0).random((1, 512, 128, 1), dtype=np.float32)
    path = openvino_check.BUNDLE / "model_fp16.tflite"
    a = openvino_check.litert(path, 128, 1)(x)
    b = openvino_check.openvino(path, 128, 1, "f32")(x)
    assert a.shape == b.shape == (1, 512, 128, 1)
    assert float(np.abs(a - b).max()) < 1e-3


def test_timing_rows_name_every_candidate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openvino_check, "HINTS", ("f32",))
    monkeypatch.setattr(openvino_check, "ARTIFACTS", ("model_dynamic.tflite",))
    x = np.zeros((1, 512, 128, 1), np.float32)
    row = openvino_check.timings(128, 1, x, runs=2)
    assert set(row["ms_median"]) == {"litert model_dynamic.tflite", "openvino f32 model_dynamic.tflite"}
    assert all(v > 0 for v in row["ms_median"].values())
    assert row["load"]["cpu_ms"] > 0 and "others_cpu_share" in row["load"]
