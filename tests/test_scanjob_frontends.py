"""The one scan job behind infer, demo, serve, batch and the benchmark.

- a scan is read from disk once (``pydicom.dcmread`` and ``open`` counted per scan) under
  ``bcedge infer --outputs json,mask,seg`` and under ``bcedge serve``'s processing step and worker;
- a failure to write is a :class:`~bcedge.scanjob.WriteFailure`, told apart from a scan that could not
  be read, and the node turns only its own disk's failures into a retry;
- the bundled sample scan's outputs are those recorded before the front ends shared the scan job.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import importlib.util
import io
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
import pydicom.filereader
import pytest

from bcedge import outputs
from bcedge.cli import main
from bcedge.errors import DicomError, InputError
from bcedge.phantom import make_phantom
from bcedge.pipeline import Result, ScanFailure, Segmenter, demo_bundle_path
from bcedge.scanjob import WriteFailure, process_scans, run_scan

needs_runtime = pytest.mark.skipif(
    importlib.util.find_spec("ai_edge_litert") is None or importlib.util.find_spec("highdicom") is None,
    reason="needs the TFLite runtime (ai_edge_litert) and highdicom",
)
DEMO = demo_bundle_path()
ROOT = Path(__file__).resolve().parents[1]


class ReadCounter:
    """Counts, per watched file, the DICOM parses (``pydicom.dcmread``) and the ``open()`` calls on it.

    A parse is keyed by the path it was given or, for a file object, its ``name`` (the reader
    parses a memory map wrapped in an object named after the file).
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, paths: list[Path]) -> None:
        self.watched = {os.path.realpath(p) for p in paths}
        self.parses: Counter[str] = Counter()
        self.opens: Counter[str] = Counter()
        real_dcmread = pydicom.dcmread
        real_open = builtins.open

        def dcmread(fp: Any, *args: Any, **kwargs: Any) -> Any:
            key = self._key(fp)
            if key is not None:
                self.parses[key] += 1
            return real_dcmread(fp, *args, **kwargs)

        def counting_open(file: Any, *args: Any, **kwargs: Any) -> Any:
            key = self._key(file)
            if key is not None:
                self.opens[key] += 1
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(pydicom, "dcmread", dcmread)
        monkeypatch.setattr(pydicom.filereader, "dcmread", dcmread)
        monkeypatch.setattr(builtins, "open", counting_open)
        monkeypatch.setattr(io, "open", counting_open)

    def _key(self, file: Any) -> str | None:
        if isinstance(file, (str, os.PathLike)):
            name: Any = os.fspath(file)
        else:
            name = getattr(file, "name", None)
        if not isinstance(name, str):
            return None
        real = os.path.realpath(name)
        return real if real in self.watched else None

    def reads(self, path: Path) -> tuple[int, int]:
        """(parses, opens) of ``path`` so far."""
        key = os.path.realpath(path)
        return self.parses[key], self.opens[key]


def _phantoms(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [
        make_phantom(10 + i, laterality="LR"[i % 2], view="CC", scale=0.1, n_masses=1).write(folder / f"scan{i}.dcm")
        for i in range(n)
    ]


# --------------------------------------------------------------------------- read once


@needs_runtime
def test_infer_reads_each_scan_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scans = _phantoms(tmp_path / "in", 2)
    counter = ReadCounter(monkeypatch, scans)
    out = tmp_path / "out"
    args = ["infer", *map(str, scans), "--model", str(DEMO), "--backend", "tflite", "--out", str(out)]
    rc = main([*args, "--outputs", "json,mask,seg", "--json"])
    capsys.readouterr()
    assert rc == 0
    for scan in scans:
        assert counter.reads(scan) == (1, 1), scan.name
        seg = pydicom.dcmread(out / f"{scan.stem}_seg.dcm", stop_before_pixels=True)
        referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        assert referenced == pydicom.dcmread(scan, stop_before_pixels=True).SOPInstanceUID
    # The counter sees a second read when there is one: the SEG writer's fallback for a result without a header.
    before = counter.reads(scans[0])
    outputs.read_source_header(scans[0])
    assert counter.reads(scans[0]) == (before[0] + 1, before[1] + 1)


@needs_runtime
def test_serve_processing_reads_each_scan_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The node's processing step and its worker: one read of the spooled scan; UIDs from the SEG's reference."""
    from bcedge.serve.config import ModelConfig
    from bcedge.serve.processing import SegmenterProcessor
    from bcedge.serve.spool import Layout, Spool
    from bcedge.serve.state import NodeState
    from bcedge.serve.worker import Worker

    (scan,) = _phantoms(tmp_path / "in", 1)
    source = pydicom.dcmread(scan, stop_before_pixels=True)
    layout = Layout(tmp_path / "node").create()
    spool = Spool(layout)
    spooled = spool.put(scan.read_bytes(), str(source.SOPInstanceUID))
    processor = SegmenterProcessor(ModelConfig(bundle=DEMO, backend="tflite", threads=1, outputs=["seg", "json"]))
    try:
        counter = ReadCounter(monkeypatch, [spooled])
        worker = Worker(layout, spool, processor, NodeState(layout))
        assert worker.step()
    finally:
        processor.close()
    (item,) = layout.items(layout.outbox)
    record = json.loads((item / "item.json").read_text())
    assert record["source_sop_instance_uid"] == source.SOPInstanceUID
    assert record["source_sop_class_uid"] == source.SOPClassUID
    assert sorted(record["outputs"]) == ["json", "seg"]
    assert counter.reads(spooled) == (1, 1)


# --------------------------------------------------------------------------- failures by stage


class _FakeSegmenter:
    """``segment_many`` yields what it is given (a ready Result or a ScanFailure)."""

    def __init__(self, items: dict[str, Result | ScanFailure], bundle: Any) -> None:
        self.items = items
        self.bundle = bundle
        self.artifact = None

    def segment_many(self, scans: list[str], batch_size: int = 1) -> Any:
        yield from (self.items[os.fspath(s)] for s in scans)


@needs_runtime
def test_run_scan_tells_write_failures_from_read_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (scan,) = _phantoms(tmp_path / "in", 1)
    with Segmenter(DEMO, "tflite", threads=1) as seg:
        result = run_scan(seg, scan, tmp_path / "out", "mask,json")
        assert isinstance(result, Result) and sorted(result.outputs) == ["json", "mask"]
        assert result.timing_ms["total"] >= result.timing_ms["write"] > 0
        # Segment only (no kinds): nothing written, the findings are there.
        bare = run_scan(seg, scan, tmp_path / "none", ())
        assert isinstance(bare, Result) and bare.outputs == {} and not (tmp_path / "none").exists()
        assert [f.to_dict() for f in bare.findings] == [f.to_dict() for f in result.findings]
        missing = run_scan(seg, tmp_path / "missing.dcm", tmp_path / "out", "mask")
        assert type(missing) is ScanFailure and missing.error.exit_code == 2
        # A full disk while writing: a WriteFailure carrying the OSError, and nothing of the scan written.
        import bcedge.imageio

        def full(step: str) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(bcedge.imageio, "_checkpoint", full)
        failed = run_scan(seg, scan, tmp_path / "full", "mask,json")
        assert isinstance(failed, WriteFailure) and isinstance(failed.error.__cause__, OSError)
        assert failed.to_dict()["error_type"] == "InputError" and list((tmp_path / "full").iterdir()) == []


@needs_runtime
def test_serve_retries_its_own_disk_and_quarantines_the_scans_fault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bcedge.serve.config import ModelConfig
    from bcedge.serve.processing import SegmenterProcessor

    (scan,) = _phantoms(tmp_path / "in", 1)
    processor = SegmenterProcessor(ModelConfig(bundle=DEMO, backend="tflite", threads=1, outputs=["seg"]))
    try:
        written = processor(scan, tmp_path / "ok")
        assert list(written) == ["seg"] and written["seg"].is_file()
        bad = tmp_path / "bad.dcm"
        bad.write_bytes(b"\0" * 200)
        with pytest.raises(DicomError):  # the scan's fault: the worker quarantines it
            processor(bad, tmp_path / "bad")
        import bcedge.imageio

        def full(step: str) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(bcedge.imageio, "_checkpoint", full)
        with pytest.raises(OSError) as caught:  # the node's own disk: the worker retries it
            processor(scan, tmp_path / "full")
        assert not isinstance(caught.value, InputError) and caught.value.errno == errno.ENOSPC
    finally:
        processor.close()


@needs_runtime
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # the test's own invalid SOP Instance UID
def test_serve_refuses_a_scan_its_seg_cannot_reference_before_the_model(tmp_path: Path) -> None:
    """No valid Study/SOP Instance UID: the node's processing step fails the scan right after decoding,
    with the message the SEG writer gives after the model when the check is off, and no model call."""
    from bcedge.serve.config import ModelConfig
    from bcedge.serve.processing import SegmenterProcessor

    (scan,) = _phantoms(tmp_path / "in", 1)
    bad = []
    for name, change in (("no_study", {"StudyInstanceUID": None}), ("bad_sop", {"SOPInstanceUID": "abc.def.ghi"})):
        ds = pydicom.dcmread(scan)
        for keyword, value in change.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        ds.save_as(tmp_path / f"{name}.dcm")
        bad.append(tmp_path / f"{name}.dcm")
    processor = SegmenterProcessor(ModelConfig(bundle=DEMO, backend="tflite", threads=1, outputs=["seg"]))
    calls = []
    infer = processor.segmenter._infer
    processor.segmenter._infer = lambda batch: calls.append(len(batch)) or infer(batch)  # type: ignore[method-assign]
    try:
        assert list(processor(scan, tmp_path / "ok")) == ["seg"] and calls == [1]  # a good scan: one model call
        messages = []
        for path in bad:
            with pytest.raises(DicomError, match="a DICOM SEG cannot reference it") as early:
                processor(path, tmp_path / "early")
            messages.append(str(early.value))
        assert calls == [1]  # neither bad scan reached the model
        processor.segmenter.check_source = None  # the SEG writer's own check, after the model
        for path, message in zip(bad, messages, strict=True):
            with pytest.raises(DicomError) as late:
                processor(path, tmp_path / "late")
            assert str(late.value) == message
        assert calls == [1, 1, 1]
    finally:
        processor.close()


def test_process_scans_without_kinds_writes_nothing(tmp_path: Path) -> None:
    result = Result(
        source="a.dcm",
        mammogram=None,  # type: ignore[arg-type]  # never touched without outputs
        probability=np.zeros((4, 4), np.float32),
        geometry=None,  # type: ignore[arg-type]
        mask=np.zeros((4, 4), np.uint8),
        findings=[],
        threshold=0.5,
        timing_ms={"decode": 1.0, "infer": 2.0},
    )
    got = list(process_scans(_FakeSegmenter({"a.dcm": result}, None), ["a.dcm"], tmp_path / "out", ""))
    assert got == [result] and result.timing_ms["total"] == 3.0 and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- the sample scan

#: ``bcedge demo`` on bcedge/examples/phantom_lcc.dcm, recorded before infer, demo, serve, batch and the
#: benchmark were moved onto one scan job (bcedge 07d71ac~1, ai_edge_litert INT8 on x86-64, OpenCV 5.0.0).
SAMPLE_FINDINGS = [
    {
        "label": 1,
        "bbox_px": [72, 29, 99, 55],
        "centroid_px": [85.8, 41.1],
        "area_px": 555,
        "area_mm2": 88.8,
        "bbox_mm": [10.8, 10.4],
        "max_probability": 0.9961,
        "mean_probability": 0.9412,
    },
    {
        "label": 2,
        "bbox_px": [433, 33, 449, 54],
        "centroid_px": [441.1, 43.4],
        "area_px": 227,
        "area_mm2": 36.32,
        "bbox_mm": [6.4, 8.4],
        "max_probability": 0.9961,
        "mean_probability": 0.9114,
    },
]
SAMPLE_DICE = 0.8661
#: sha256 of the mask PNG file per deflate encoder (ISA-L with the ``fast`` extra, else zlib: the same
#: pixels, other bytes), and of the mask as (574, 478) bool bytes.
SAMPLE_MASK_PNG_SHA256 = {
    "zlib": "90e92b9b8085e9e33888d400352c671e3752ee97a7583a96082084fa573e5e2d",
    "isal": "6ebf6221e283a91e0b01130e3ebb61d498790f44bba70c165295c6326bf0c5cd",
}
SAMPLE_MASK_SHA256 = "ab33f66e8e73cc71631b0e06aa63ebac94422f7fee2402dddf1b75e6322fa183"
#: The overlay's bytes depend on OpenCV's drawing and PNG encoder: compared only with the version recorded.
SAMPLE_OVERLAY_PNG_SHA256 = "c3bc526778e9b7ec799d4426c17103b2c7df95f4a0052b528fc2d709feed01c8"
SAMPLE_OPENCV = "5.0.0"
SAMPLE_SEG_UIDS = ("2.25.31564654891106469821511576636247345662", "2.25.295876881366464148027187789949851318093")


@needs_runtime
def test_sample_scan_outputs_are_unchanged(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "demo out"
    rc = main(["demo", "--backend", "tflite", "--out", str(out), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["failures"] == []
    (scan,) = doc["scans"]
    assert scan["findings"] == SAMPLE_FINDINGS and doc["dice_vs_truth"] == SAMPLE_DICE
    assert sorted(scan["outputs"]) == ["json", "mask", "overlay", "seg"]
    mask_png = out / "phantom_lcc_mask.png"
    import importlib.util

    encoder = "isal" if importlib.util.find_spec("isal") else "zlib"
    assert hashlib.sha256(mask_png.read_bytes()).hexdigest() == SAMPLE_MASK_PNG_SHA256[encoder]
    mask = cv2.imread(str(mask_png), cv2.IMREAD_GRAYSCALE) > 0
    assert mask.shape == (574, 478) and hashlib.sha256(mask.tobytes()).hexdigest() == SAMPLE_MASK_SHA256
    if cv2.__version__ == SAMPLE_OPENCV:
        overlay = (out / "phantom_lcc_overlay.png").read_bytes()
        assert hashlib.sha256(overlay).hexdigest() == SAMPLE_OVERLAY_PNG_SHA256
    seg = pydicom.dcmread(out / "phantom_lcc_seg.dcm")
    assert (seg.SOPInstanceUID, seg.SeriesInstanceUID) == SAMPLE_SEG_UIDS
    np.testing.assert_array_equal(seg.pixel_array.astype(bool), mask)
    # The JSON file is the document's scan entry (the write time aside, which the file holds up to its own encoding).
    written = json.loads((out / "phantom_lcc.json").read_text())
    assert {k: v for k, v in written.items() if k != "timing_ms"} == {k: v for k, v in scan.items() if k != "timing_ms"}


@needs_runtime
def test_batch_worker_without_outputs_runs_the_scan_job_and_writes_nothing(tmp_path: Path) -> None:
    """``bcedge batch --outputs none``: the same scan job, segment only; rows and findings, no files."""
    from bcedge.batch.run import BatchOptions, choose_model, worker_options
    from bcedge.batch.sources import ScanRef, folder_refs
    from bcedge.batch.worker import ScanWorker

    scans = _phantoms(tmp_path / "in", 2)
    (tmp_path / "in" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    refs = list(folder_refs(tmp_path / "in"))
    out = tmp_path / "out"
    opts = BatchOptions(source=str(tmp_path / "in"), out=out, kinds=(), batch_size=2)
    options = worker_options(opts, DEMO, choose_model(DEMO, "tflite", 1, None, None), out)
    worker = ScanWorker(options.to_dict())
    answer = worker({k: np.array([getattr(r, k) for r in refs]) for k in ScanRef.__dataclass_fields__})
    rows = {Path(r["path"]).name: r for r in map(json.loads, answer["row"])}
    assert rows["broken.dcm"]["status"] == "failed"
    with Segmenter(DEMO, "tflite", threads=1) as seg:
        for scan in scans:
            row = rows[scan.name]
            expected = seg.segment(scan)
            assert row["status"] == "done" and row["n_findings"] == len(expected.findings), scan.name
    assert not out.exists()
