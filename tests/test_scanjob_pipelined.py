"""The pipelined scan job (issue #14 item 7): same results as the serial path, order kept, memory bounded.

- with the demo bundle on the real TFLite runtime, a set with bad files in the middle gives the
  same items, the same errors and byte-identical masks and JSON findings pipelined as serially,
  for several batch sizes;
- with a test double whose stages sleep for random times, the order is the input order, a scan
  that fails in any stage does not stop the others, the scans between reading and hand-over
  never exceed ``max_in_flight``, reading runs ahead while the model works (the stages overlap),
  a model failure is raised after the scans before its batch, and closing early stops the threads.
"""

from __future__ import annotations

import importlib.util
import json
import random
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from bcedge.errors import BackendError, ConfigError, DicomError, InputError
from bcedge.phantom import make_phantom
from bcedge.pipeline import ScanFailure, Segmenter, demo_bundle_path
from bcedge.scanjob import WriteFailure, process_scans

needs_runtime = pytest.mark.skipif(
    importlib.util.find_spec("ai_edge_litert") is None, reason="needs the TFLite runtime (ai_edge_litert)"
)


def _pipeline_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name in ("bcedge-read", "bcedge-model", "bcedge-write")]


# --------------------------------------------------------------------------- the real pipeline, real model


@pytest.fixture(scope="module")
def scan_set(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Five phantoms with a text file, a missing file and a truncated DICOM among them."""
    folder = tmp_path_factory.mktemp("scans")
    good = [
        make_phantom(30 + i, laterality="LR"[i % 2], view=("CC", "MLO")[i % 2], scale=0.1, n_masses=1).write(
            folder / f"scan{i}.dcm"
        )
        for i in range(5)
    ]
    text = folder / "notes.dcm"
    text.write_text("not a DICOM file\n")
    cut = folder / "cut.dcm"
    cut.write_bytes(good[0].read_bytes()[:4000])
    return [good[0], text, good[1], folder / "missing.dcm", good[2], cut, good[3], good[4]]


def _summary(items: list[Any], out: Path) -> list[tuple[Any, ...]]:
    """Per item: its type and source, its error, or its findings, JSON (less timings and paths) and mask bytes."""
    rows: list[tuple[Any, ...]] = []
    for item in items:
        if isinstance(item, ScanFailure):
            rows.append((type(item).__name__, item.source, type(item.error).__name__, str(item.error)))
            continue
        doc = json.loads(Path(item.outputs["json"]).read_text())
        for key in ("timing_ms", "outputs"):
            doc.pop(key, None)
        doc.get("model", {}).pop("choice", None)  # how the artifact was picked, not what it found
        mask = Path(item.outputs["mask"])
        assert mask.parent == out
        rows.append(("Result", item.source, [f.to_dict() for f in item.findings], doc, mask.read_bytes()))
    return rows


@needs_runtime
@pytest.mark.parametrize("batch_size", [1, 3])
def test_pipelined_equals_serial_on_a_set_with_bad_files(scan_set: list[Path], tmp_path: Path, batch_size: int) -> None:
    with Segmenter(demo_bundle_path(), "tflite", threads=1) as seg:
        serial_out, piped_out = tmp_path / "serial", tmp_path / "pipelined"
        serial = list(process_scans(seg, scan_set, serial_out, "json,mask", batch_size=batch_size, pipelined=False))
        piped = list(process_scans(seg, scan_set, piped_out, "json,mask", batch_size=batch_size, pipelined=True))
    assert [item.source for item in piped] == [str(p) for p in scan_set]  # input order
    kinds = [type(item).__name__ for item in piped]
    assert kinds == ["Result", "ScanFailure", "Result", "ScanFailure", "Result", "ScanFailure", "Result", "Result"]
    assert _summary(piped, piped_out) == _summary(serial, serial_out)
    assert sorted(p.name for p in piped_out.iterdir()) == sorted(p.name for p in serial_out.iterdir())
    assert all(item.timing_ms["total"] > 0 for item in piped if not isinstance(item, ScanFailure))
    assert not _pipeline_threads()


# --------------------------------------------------------------------------- a test double with slow stages


class _Slow:
    """Segmenter stages that sleep a random while; records what is in flight and when each stage ran.

    In flight: scans whose ``_prepare`` started and which the caller has not yet received.
    ``bad_read`` fail in ``_prepare``, ``bad_finish`` in ``_finish``; ``fail_batch`` (the n-th
    model call, 0-based) raises like a broken backend.
    """

    def __init__(
        self, *, bad_read: set[int] = frozenset(), bad_finish: set[int] = frozenset(), fail_batch: int | None = None
    ) -> None:
        self.bad_read, self.bad_finish, self.fail_batch = bad_read, bad_finish, fail_batch
        self.lock = threading.Lock()
        self.in_flight: set[int] = set()
        self.peak = 0
        self.calls: list[list[int]] = []
        self.events: list[tuple[str, int, float]] = []
        self.rng = random.Random(7)

    def _nap(self) -> None:
        with self.lock:
            delay = self.rng.uniform(0.0, 0.004)
        time.sleep(delay)

    def _prepare(self, index: int, scan: str) -> Any:
        with self.lock:
            self.in_flight.add(index)
            self.peak = max(self.peak, len(self.in_flight))
            self.events.append(("read", index, time.perf_counter()))
        self._nap()
        if index in self.bad_read:
            raise DicomError(f"{scan}: not a DICOM file")
        return SimpleNamespace(index=index, source=scan, tensor=np.full((1, 2, 2, 1), index, np.float32))

    def _infer(self, batch: np.ndarray) -> tuple[np.ndarray, float]:
        indices = [int(v) for v in batch[:, 0, 0, 0]]
        with self.lock:
            self.events.append(("model start", indices[0], time.perf_counter()))
        self._nap()
        self._nap()
        if self.fail_batch is not None and len(self.calls) == self.fail_batch:
            raise BackendError("model.tflite failed to run: simulated fault")
        self.calls.append(indices)
        with self.lock:
            self.events.append(("model end", indices[-1], time.perf_counter()))
        return batch * 2.0, 1.0

    def _finish(self, item: Any, probability: np.ndarray, infer_ms: float) -> Any:
        self._nap()
        if item.index in self.bad_finish:
            raise ValueError("odd probability map")
        assert float(probability[0, 0]) == 2.0 * item.index  # the probability of this scan, not a neighbour's
        return SimpleNamespace(source=item.source, index=item.index, timing_ms={"infer": infer_ms})

    def received(self, index: int) -> None:
        with self.lock:
            self.in_flight.discard(index)


def _consume(seg: _Slow, names: list[str], **options: Any) -> list[Any]:
    got = []
    for item in process_scans(seg, names, "unused", "", **options):
        seg.received(names.index(item.source))
        got.append(item)
    return got


@pytest.mark.parametrize(("batch_size", "max_in_flight"), [(1, None), (4, None), (3, 3), (2, 7)])
def test_order_failures_and_the_in_flight_bound(batch_size: int, max_in_flight: int | None) -> None:
    names = [f"scan{i:02d}.dcm" for i in range(23)]
    seg = _Slow(bad_read={3, 10}, bad_finish={4, 17})
    got = _consume(seg, names, batch_size=batch_size, max_in_flight=max_in_flight)
    assert [item.source for item in got] == names
    failed = {i for i, item in enumerate(got) if isinstance(item, ScanFailure)}
    assert failed == {3, 4, 10, 17}
    assert "not a DICOM file" in str(got[3].error) and isinstance(got[3].error, DicomError)
    assert isinstance(got[4].error, InputError) and "unexpected ValueError: odd probability map" in str(got[4].error)
    # Batches are the serial path's blocks of consecutive inputs, less the scans that could not be read.
    blocks = [[i for i in range(s, min(s + batch_size, 23)) if i not in (3, 10)] for s in range(0, 23, batch_size)]
    assert seg.calls == [b for b in blocks if b]
    bound = 3 * batch_size if max_in_flight is None else max_in_flight
    assert 1 < seg.peak <= bound
    assert not _pipeline_threads()


def test_reading_runs_ahead_while_the_model_works() -> None:
    seg = _Slow()
    names = [f"s{i}" for i in range(12)]
    _consume(seg, names, batch_size=2)
    model_start = {i: t for kind, i, t in seg.events if kind == "model start"}
    model_end = {i: t for kind, i, t in seg.events if kind == "model end"}
    read = {i: t for kind, i, t in seg.events if kind == "read"}
    # Scan 2 (the next batch) was being read before the first model call (scans 0, 1) had ended.
    assert read[2] < model_end[1]
    assert model_start[0] < model_end[1]


def test_serial_path_is_kept_for_one_scan_and_on_request() -> None:
    seg = _Slow()
    calls: list[int] = []

    def segment_many(items: list[str], batch_size: int) -> Any:
        calls.append(len(items))
        for i, name in enumerate(items):
            yield SimpleNamespace(source=name, index=i, timing_ms={"infer": 1.0})

    seg.segment_many = segment_many  # type: ignore[attr-defined]
    assert [x.source for x in process_scans(seg, ["a"], "unused", "")] == ["a"]
    assert [x.source for x in process_scans(seg, ["a", "b"], "unused", "", pipelined=False)] == ["a", "b"]
    assert calls == [1, 2] and seg.calls == []  # neither went through the stage methods


def test_a_model_failure_is_raised_after_the_scans_before_its_batch() -> None:
    seg = _Slow(fail_batch=2)
    names = [f"s{i}" for i in range(10)]
    got: list[Any] = []
    with pytest.raises(BackendError, match="simulated fault"):
        for item in process_scans(seg, names, "unused", "", batch_size=2):
            got.append(item)
    assert [item.source for item in got] == names[:4]  # batches 0 and 1, nothing of batch 2
    assert not _pipeline_threads()


def test_closing_early_stops_the_threads() -> None:
    seg = _Slow()
    names = [f"s{i}" for i in range(40)]
    jobs = process_scans(seg, names, "unused", "", batch_size=2)
    assert next(jobs).source == "s0"
    jobs.close()
    assert not _pipeline_threads()
    assert (
        len({i for kind, i, _ in seg.events if kind == "read"}) <= 7
    )  # 6 slots, one given back by the scan handed over


def test_write_failures_stay_per_scan(tmp_path: Path) -> None:
    """A scan whose outputs cannot be written is a WriteFailure in its place; the next ones are written."""
    seg = _Slow()
    seg.bundle = SimpleNamespace()  # type: ignore[attr-defined]
    seg.artifact = None  # type: ignore[attr-defined]
    names = ["a.dcm", "b.dcm", "c.dcm"]
    got = list(process_scans(seg, names, tmp_path, "json", batch_size=1))
    # The double's results are not real Results: every write fails, each as its own WriteFailure.
    assert [type(item).__name__ for item in got] == ["WriteFailure"] * 3
    assert [item.source for item in got] == names
    assert all(isinstance(item, WriteFailure) and item.source in str(item.error) for item in got)


@pytest.mark.parametrize(("options", "message"), [({"batch_size": 0}, "batch_size"), ({"max_in_flight": 0}, "max")])
def test_option_checks(options: dict[str, int], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        list(process_scans(_Slow(), ["a", "b"], "unused", "", **options))
    with pytest.raises(ConfigError, match="at least batch_size"):
        list(process_scans(_Slow(), ["a", "b"], "unused", "", batch_size=4, max_in_flight=3))


def test_a_non_scan_exception_in_the_reader_is_raised_in_order() -> None:
    """SystemExit while reading scan 2 is not a scan failure: the caller gets scans 0 and 1, then the exception."""
    seg = _Slow()
    real = seg._prepare

    def prepare(index: int, scan: str) -> Any:
        if index == 2:
            raise SystemExit(5)
        return real(index, scan)

    seg._prepare = prepare  # type: ignore[method-assign]
    got: list[Any] = []
    with pytest.raises(SystemExit):
        for item in process_scans(seg, [f"s{i}" for i in range(6)], "unused", "", batch_size=1):
            got.append(item.source)
    assert got == ["s0", "s1"]
    assert not _pipeline_threads()


def test_a_batch_1_model_gets_each_scan_as_soon_as_it_is_read() -> None:
    """Backend.predict splits a block into one call per scan for a model of fixed batch 1: the pipeline makes
    those calls directly, in input order, without waiting for the block."""
    seg = _Slow(bad_read={2})
    seg.backend = SimpleNamespace(input_shape=(1, 2, 2, 1))  # type: ignore[attr-defined]
    names = [f"s{i}" for i in range(7)]
    got = _consume(seg, names, batch_size=4)
    assert [item.source for item in got] == names
    assert seg.calls == [[0], [1], [3], [4], [5], [6]]
    assert isinstance(got[2], ScanFailure)
