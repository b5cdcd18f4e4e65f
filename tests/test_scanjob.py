"""The scan job: all-or-nothing outputs that never lose a user's file, output names, a bad scan among good ones."""

from __future__ import annotations

import errno
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from bundle_support import write_test_manifest

import bcedge.imageio
from bcedge import outputs
from bcedge.bundle import ArtifactRecord, Bundle, load_bundle
from bcedge.dicom import read_mammogram
from bcedge.errors import DicomError, InputError
from bcedge.imageio import replace_files
from bcedge.phantom import make_phantom
from bcedge.pipeline import Result, ScanFailure
from bcedge.preprocess import Geometry, PreprocessConfig
from bcedge.scanjob import process_scans, unique_stems, write_scan_outputs


def _folder_state(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


class _FailAt:
    """An ``imageio._checkpoint`` that records the steps and raises at the ``at``-th one (0-based)."""

    def __init__(self, at: int | None) -> None:
        self.at = at
        self.steps: list[str] = []

    def __call__(self, step: str) -> None:
        self.steps.append(step)
        if self.at is not None and len(self.steps) - 1 == self.at:
            raise OSError(errno.ENOSPC, f"no space left (injected after {step})")


# --------------------------------------------------------------------------- replace_files


def test_replace_files_is_all_or_nothing_after_every_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two files replaced and one new: a failure after any step leaves the folder exactly as it was."""
    old = {"a.png": b"old a", "b.json": b"old b", "keep.txt": b"the user's"}
    new = {"a.png": b"new a", "b.json": b"new b", "c_seg.dcm": b"new c"}

    def attempt(at: int | None) -> tuple[Path, _FailAt]:
        folder = tmp_path / f"run {at}"
        folder.mkdir()
        for name, data in old.items():
            (folder / name).write_bytes(data)
        spy = _FailAt(at)
        monkeypatch.setattr(bcedge.imageio, "_checkpoint", spy)
        files = {folder / name: data for name, data in new.items()}
        if at is None:
            assert replace_files(files) == list(files)
        else:
            with pytest.raises(OSError, match="injected"):
                replace_files(files)
        return folder, spy

    folder, spy = attempt(None)
    assert _folder_state(folder) == {**old, **new}
    # 3 temporaries written, 2 existing files backed up, 3 renames.
    assert [s.split()[0] for s in spy.steps] == ["write"] * 3 + ["backup"] * 2 + ["rename"] * 3
    for at in range(len(spy.steps)):
        folder, _ = attempt(at)
        assert _folder_state(folder) == old, f"failure after step {at} ({spy.steps[at]})"


def test_replace_files_rolls_back_when_the_os_refuses_a_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second rename itself fails (not a checkpoint): the first replaced file gets its old content back."""
    (tmp_path / "a").write_bytes(b"old a")
    (tmp_path / "b").write_bytes(b"old b")
    real_replace = os.replace
    calls: list[str] = []

    def flaky(src: str, dst: str) -> None:
        calls.append(os.fspath(dst))
        if len(calls) == 2:
            raise OSError(errno.EIO, "I/O error (injected)")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError, match="injected"):
        replace_files({tmp_path / "a": b"new a", tmp_path / "b": b"new b"})
    assert _folder_state(tmp_path) == {"a": b"old a", "b": b"old b"}


def test_replace_files_gives_the_mode_of_a_plain_open(tmp_path: Path) -> None:
    replace_files({tmp_path / "x": b"1"})
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "x").stat().st_mode & 0o777 == 0o666 & ~mask


# --------------------------------------------------------------------------- write_scan_outputs


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """A bundle with a dummy artifact: writing outputs only reads the manifest."""
    root = tmp_path_factory.mktemp("bundle")
    (root / "model.tflite").write_bytes(b"\x01" * 64)
    record = ArtifactRecord.from_file(root, "model.tflite", format="tflite", precision="int8", backend="tflite")
    write_test_manifest(root, [record], PreprocessConfig(size=32), model={"name": "m"}, threshold=0.5)
    return load_bundle(root)


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    ph = make_phantom(3, laterality="L", view="CC", scale=0.1, n_masses=1)
    return ph.write(tmp_path_factory.mktemp("scan") / "scan.dcm"), ph.mask.astype(np.uint8)


def _result(path: Path, mask: np.ndarray, bundle: Bundle) -> Result:
    h, w = mask.shape
    record = bundle.manifest.artifacts[0]
    return Result(
        source=str(path),
        mammogram=read_mammogram(path),
        probability=np.zeros((32, 32), np.float32),
        geometry=Geometry((h, w), (0, 0, h, w), False, (0, 0, 32, 32), 32),
        mask=mask,
        findings=[],
        threshold=0.5,
        timing_ms={"decode": 1.0},
        model={"artifact": record.file, "sha256": record.sha256},
    )


def test_failed_rerun_keeps_the_previous_runs_outputs(
    scan: tuple[Path, np.ndarray], bundle: Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15: a re-run whose writes fail part-way must not delete or change the previous run's files."""
    kinds = ["mask", "overlay", "json"] + (["seg"] if importlib.util.find_spec("highdicom") else [])
    model = SimpleNamespace(bundle=bundle, artifact=bundle.manifest.artifacts[0])
    path, mask = scan
    first = tmp_path / "first"
    written = write_scan_outputs(_result(path, mask, bundle), first, kinds, model)
    assert sorted(written) == sorted(kinds)
    previous = _folder_state(first)
    spy = _FailAt(None)
    monkeypatch.setattr(bcedge.imageio, "_checkpoint", spy)
    write_scan_outputs(_result(path, 1 - mask, bundle), tmp_path / "count", kinds, model)
    assert len(spy.steps) == 2 * len(kinds)  # a fresh folder: temporaries and renames, no backups
    steps = 3 * len(kinds)  # in a folder with the previous run: temporaries, backups, renames
    for at in range(steps):
        monkeypatch.setattr(bcedge.imageio, "_checkpoint", _FailAt(at))
        again = _result(path, 1 - mask, bundle)  # a different mask: every file would change
        with pytest.raises(InputError, match="injected"):
            write_scan_outputs(again, first, kinds, model)
        assert again.outputs == {}
        assert _folder_state(first) == previous, f"failure after step {at}"
    monkeypatch.setattr(bcedge.imageio, "_checkpoint", lambda step: None)
    write_scan_outputs(_result(path, 1 - mask, bundle), first, kinds, model)
    now = _folder_state(first)
    assert sorted(now) == sorted(previous) and all(now[name] != previous[name] for name in now if "seg" not in name)


# --------------------------------------------------------------------------- names


def test_unique_stems_numbers_repeats_and_keeps_order() -> None:
    got = unique_stems(["a/scan.dcm", "b/scan.dcm", "c/scan_2.dcm", "a/scan.dcm", Path("d/scan.png")])
    assert got == {"a/scan.dcm": "scan", "b/scan.dcm": "scan_2", "c/scan_2.dcm": "scan_2_2", "d/scan.png": "scan_3"}


@pytest.mark.parametrize("char", ["x", "é", "漢"])
def test_long_names_are_shortened_deterministically_and_stay_distinct(char: str) -> None:
    names = [char * 239 + ".dcm", char * 238 + "y.dcm", char * 60 + ".dcm"]
    stems = unique_stems(names)
    assert len(set(stems.values())) == 3
    assert stems == unique_stems(names)  # same names, same stems
    assert stems[names[2]] == char * 60 or len((char * 60).encode()) > outputs.MAX_STEM_BYTES
    for stem in stems.values():
        for path in outputs.output_paths("out", stem, outputs.OUTPUT_KINDS).values():
            assert len(path.name.encode()) <= 255 - 16  # room for "_NNN" and more


def test_long_name_end_to_end(bundle: Bundle, scan: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    """A 239-character file name in a deep folder: read, and every output written under its short name."""
    path, mask = scan
    deep = tmp_path.joinpath(*(["d" * 50] * 40))  # ~2 kB of path
    deep.mkdir(parents=True)
    long = deep / ("L" * 235 + ".dcm")
    long.write_bytes(path.read_bytes())
    result = _result(long, mask, bundle)
    model = SimpleNamespace(bundle=bundle, artifact=bundle.manifest.artifacts[0])
    written = write_scan_outputs(result, deep / "out", ["mask", "overlay", "json"], model)
    assert all(p.is_file() and len(p.name.encode()) < 255 for p in written.values())
    assert sorted(p.name for p in (deep / "out").iterdir()) == sorted(p.name for p in written.values())


# --------------------------------------------------------------------------- a bad scan among good ones


class _FakeSegmenter:
    """segment_many yields what it is given: a ready Result, or a ScanFailure."""

    def __init__(self, items: dict[str, Result | ScanFailure], bundle: Bundle) -> None:
        self.items = items
        self.bundle = bundle
        self.artifact = bundle.manifest.artifacts[0]

    def segment_many(self, scans: list[str], batch_size: int = 1) -> Iterator[Result | ScanFailure]:
        yield from (self.items[s] for s in scans)


def test_process_scans_turns_every_write_failure_into_a_scan_failure(
    scan: tuple[Path, np.ndarray], bundle: Bundle, tmp_path: Path
) -> None:
    path, mask = scan
    good = _result(path, mask, bundle)
    unwritable = _result(path, mask[:-1], bundle)  # mask and image disagree: the overlay refuses
    unwritable.source = "odd.dcm"
    broken = _result(path, mask, bundle)
    broken.source = "broken.dcm"
    broken.findings = [None]  # type: ignore[list-item]  # an encoder fails with AttributeError
    unreadable = ScanFailure("bad.dcm", DicomError("bad.dcm: not a DICOM file"))
    seg = _FakeSegmenter({"bad.dcm": unreadable, "odd.dcm": unwritable, "broken.dcm": broken, str(path): good}, bundle)
    got = list(process_scans(seg, ["bad.dcm", "odd.dcm", "broken.dcm", str(path)], tmp_path, "mask,overlay,json"))
    # A scan that could not be read is a ScanFailure; one segmented but not written, a WriteFailure (a ScanFailure).
    assert [type(x).__name__ for x in got] == ["ScanFailure", "WriteFailure", "WriteFailure", "Result"]
    assert all(isinstance(x, ScanFailure) for x in got[:3])
    assert got[0] is unreadable and "shape" in str(got[1].error)
    assert isinstance(got[2].error, InputError) and "AttributeError" in str(got[2].error)
    assert got[3].timing_ms["total"] > 0 and sorted(p.name for p in tmp_path.iterdir()) == [
        "scan.json",
        "scan_mask.png",
        "scan_overlay.png",
    ]


# --------------------------------------------------------------------------- the header the reader keeps


def test_mammogram_keeps_its_header_without_pixels(scan: tuple[Path, np.ndarray]) -> None:
    mammo = read_mammogram(scan[0])
    header = mammo.header
    assert isinstance(header, pydicom.Dataset) and "PixelData" not in header
    assert header.SOPInstanceUID == mammo.meta.sop_uid and header.file_meta.TransferSyntaxUID
    assert mammo.with_meta(laterality="R").header is header


@pytest.mark.parametrize("cut", ["preamble", "preamble and file meta"])
def test_preambleless_dicom_is_read_with_its_header(scan: tuple[Path, np.ndarray], tmp_path: Path, cut: str) -> None:
    path = scan[0]
    full = read_mammogram(path)
    if cut == "preamble":
        data = path.read_bytes()[132:]  # starts with the file meta group (0002)
    else:
        from pydicom.filebase import DicomBytesIO
        from pydicom.filewriter import write_dataset

        buf = DicomBytesIO()
        buf.is_little_endian, buf.is_implicit_VR = True, False
        write_dataset(buf, pydicom.dcmread(path))  # the data set alone: no preamble, no file meta
        data = buf.getvalue()
    bare = tmp_path / "bare"  # no suffix, no preamble: must be recognised by content
    bare.write_bytes(data)
    mammo = read_mammogram(bare)
    assert np.array_equal(mammo.pixels, full.pixels)
    assert mammo.header is not None and mammo.header.SOPInstanceUID == full.meta.sop_uid
    assert "PixelData" not in mammo.header
