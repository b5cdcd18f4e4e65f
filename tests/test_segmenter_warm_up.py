"""The Segmenter's warm-up runs on its own thread while the model loads, and fails as it did on the caller's."""

from __future__ import annotations

import importlib.util
import threading

import pytest

import bcedge.decoders
from bcedge.pipeline import Segmenter, demo_bundle_path

needs_runtime = pytest.mark.skipif(
    importlib.util.find_spec("ai_edge_litert") is None, reason="needs the TFLite runtime (ai_edge_litert)"
)


@needs_runtime
def test_warm_up_runs_on_a_thread_and_its_error_reaches_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real = bcedge.decoders.import_pydicom

    def spy() -> object:
        seen.append(threading.current_thread().name)
        return real()

    monkeypatch.setattr(bcedge.decoders, "import_pydicom", spy)
    with Segmenter(demo_bundle_path(), "tflite", threads=1):
        pass
    assert seen == ["bcedge-warm-up"]

    def broken() -> object:
        raise ImportError("pydicom is broken here")

    monkeypatch.setattr(bcedge.decoders, "import_pydicom", broken)
    with pytest.raises(ImportError, match="pydicom is broken here"):
        Segmenter(demo_bundle_path(), "tflite", threads=1)
