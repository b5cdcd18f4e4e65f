"""The pipelined scan job with two interpreters (issue #14, 16-scan throughput): same results, order kept.

- on the real TFLite runtime with the demo bundle at 2 threads, the Segmenter lends the job two
  1-thread interpreters; a set with bad files gives the same items, errors, byte-identical masks
  and JSON, and bit-identical probability maps as the serial path on the 2-thread interpreter;
  ``close()`` closes the lent interpreters and none is lent afterwards; at 1 thread none is lent;
- with a test double whose stages sleep for random times and which lends two fake interpreters,
  every batch goes to one of them, both are used, order and per-scan failures are those of the
  serial path, the default bound is ``4 * batch_size``, a model failure is raised after the scans
  before its batch, and no thread is left behind.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from test_scanjob_pipelined import _consume, _pipeline_threads, _Slow, _summary, scan_set  # noqa: F401 (fixture)

from bcedge.errors import BackendError
from bcedge.pipeline import ScanFailure, Segmenter, demo_bundle_path
from bcedge.scanjob import process_scans

needs_runtime = pytest.mark.skipif(
    importlib.util.find_spec("ai_edge_litert") is None, reason="needs the TFLite runtime (ai_edge_litert)"
)


def _all_job_threads() -> list[threading.Thread]:
    """The stage threads and the interpreter pool's workers (``bcedge-model_0``...)."""
    return _pipeline_threads() + [t for t in threading.enumerate() if t.name.startswith("bcedge-model_")]


@needs_runtime
@pytest.mark.parametrize("batch_size", [1, 3])
def test_two_interpreters_give_the_serial_results(scan_set: list[Path], tmp_path: Path, batch_size: int) -> None:  # noqa: F811
    with Segmenter(demo_bundle_path(), "tflite", threads=2) as seg:
        pool = seg._model_pool()
        assert [b.threads for b in pool] == [1, 1] and all(b is not seg.backend for b in pool)
        calls: list[int] = []
        for backend in pool:  # count the lent interpreters' calls: the pipelined job must run on them
            backend.predict = (lambda real: lambda batch: calls.append(len(batch)) or real(batch))(backend.predict)
        serial_out, piped_out = tmp_path / "serial", tmp_path / "pipelined"
        serial = list(process_scans(seg, scan_set, serial_out, "json,mask", batch_size=batch_size, pipelined=False))
        piped = list(process_scans(seg, scan_set, piped_out, "json,mask", batch_size=batch_size, pipelined=True))
        assert seg._model_pool() is pool  # opened once, kept for the next job
        # --json says the job ran on the lent interpreters, not only the Segmenter's own thread count
        assert seg.model_info["threads"] == 2 and seg.model_info["interpreters"] == [1, 1]
        assert all(item.model["interpreters"] == [1, 1] for item in piped if not isinstance(item, ScanFailure))
    assert sum(calls) == sum(not isinstance(item, ScanFailure) for item in piped)  # every scan, on the lent ones
    assert [item.source for item in piped] == [str(p) for p in scan_set]
    assert [type(item).__name__ for item in piped] == [type(item).__name__ for item in serial]
    assert _summary(piped, piped_out) == _summary(serial, serial_out)
    for a, b in zip(piped, serial, strict=True):
        if not isinstance(a, ScanFailure):
            assert a.probability.dtype == np.float32 and np.array_equal(a.probability, b.probability)
    assert all(b.closed for b in pool)  # the Segmenter's close() closed the lent interpreters
    assert seg._model_pool() == []  # a closed Segmenter lends none
    assert not _all_job_threads()


@needs_runtime
def test_one_thread_lends_no_interpreter() -> None:
    with Segmenter(demo_bundle_path(), "tflite", threads=1) as seg:
        assert seg._model_pool() == []
        assert "interpreters" not in seg.model_info


@needs_runtime
def test_a_second_interpreter_that_does_not_open_leaves_one_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with Segmenter(demo_bundle_path(), "tflite", threads=2) as seg:
        opened: list[Any] = []
        real_open = seg.bundle.open

        def open_once(*args: Any, **kwargs: Any) -> Any:
            if opened:
                raise MemoryError("simulated: no memory for another interpreter")
            opened.append(real_open(*args, **kwargs))
            return opened[-1]

        monkeypatch.setattr(seg.bundle, "open", open_once)
        with caplog.at_level("WARNING", logger="bcedge.pipeline"):
            assert seg._model_pool() == []
        assert opened and opened[0].closed  # the one that did open was closed again
        assert "did not open" in caplog.text and "no memory" in caplog.text
        assert not seg.backend.closed  # the Segmenter's own interpreter still serves the job


class _Pooled(_Slow):
    """The slow double lending two fake interpreters; ``fail_index``: a batch holding it fails like a broken backend."""

    def __init__(self, fail_index: int | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.fail_index = fail_index
        self.pool = [SimpleNamespace(name="first"), SimpleNamespace(name="second")]
        self.busy: set[str] = set()
        self.used: list[str] = []

    def _model_pool(self) -> list[Any]:
        return self.pool

    def _infer(self, batch: np.ndarray, backend: Any = None) -> tuple[np.ndarray, float]:
        assert backend in self.pool
        with self.lock:
            assert backend.name not in self.busy  # an interpreter runs one batch at a time
            self.busy.add(backend.name)
            self.used.append(backend.name)
        try:
            if self.fail_index is not None and self.fail_index in batch[:, 0, 0, 0]:
                raise BackendError("model.tflite failed to run: simulated fault")
            return super()._infer(batch)
        finally:
            with self.lock:
                self.busy.discard(backend.name)


@pytest.mark.parametrize("batch_size", [1, 2, 4])
def test_pooled_order_failures_and_bound(batch_size: int) -> None:
    names = [f"scan{i:02d}.dcm" for i in range(23)]
    seg = _Pooled(bad_read={3, 10}, bad_finish={4, 17})
    got = _consume(seg, names, batch_size=batch_size)
    assert [item.source for item in got] == names
    assert {i for i, item in enumerate(got) if isinstance(item, ScanFailure)} == {3, 4, 10, 17}
    blocks = [[i for i in range(s, min(s + batch_size, 23)) if i not in (3, 10)] for s in range(0, 23, batch_size)]
    # The same blocks as the serial path; two interpreters may finish them out of order.
    assert sorted(seg.calls) == sorted(b for b in blocks if b)
    assert set(seg.used) == {"first", "second"}
    assert 1 < seg.peak <= 4 * batch_size
    assert not _all_job_threads()


def test_pooled_model_failure_is_raised_after_the_scans_before_its_batch() -> None:
    seg = _Pooled(fail_index=4)
    names = [f"s{i}" for i in range(10)]
    got: list[Any] = []
    with pytest.raises(BackendError, match="simulated fault"):
        for item in process_scans(seg, names, "unused", "", batch_size=2):
            got.append(item)
    assert [item.source for item in got] == names[:4]  # batches 0 and 1, nothing of batch 2
    assert not _all_job_threads()
