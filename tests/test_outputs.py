"""Output writers: mask PNG, overlay, JSON, DICOM SEG (dciodvfy, round trip, UIDs), atomicity, raster inputs."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from bundle_support import write_test_manifest

import bcedge.imageio
from bcedge import outputs
from bcedge.bundle import ArtifactRecord, Bundle, load_bundle
from bcedge.dicom import ImageMeta, Mammogram, read_mammogram
from bcedge.errors import ConfigError, DicomError, MissingDependencyError
from bcedge.outputs import highdicom_tables
from bcedge.phantom import make_phantom
from bcedge.pipeline import Result
from bcedge.postprocess import Finding
from bcedge.preprocess import Geometry, PreprocessConfig

DCIODVFY = shutil.which("dciodvfy")
needs_dciodvfy = pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (Debian package dicom3tools) is not installed")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """A bundle with two (dummy) artifacts: outputs only read the manifest."""
    root = tmp_path_factory.mktemp("bundle")
    records = []
    for i, (file, precision) in enumerate((("model_int8.tflite", "int8"), ("model_fp32.tflite", "fp32"))):
        (root / file).write_bytes(bytes([i + 1]) * 64)
        records.append(ArtifactRecord.from_file(root, file, format="tflite", precision=precision, backend="tflite"))
    model = {"name": "unet-mobilenetv2", "architecture": "unet-mobilenetv2", "params": 1}
    write_test_manifest(root, records, PreprocessConfig(size=32), model=model, threshold=0.5)
    return load_bundle(root)


def _findings(mask: np.ndarray, spacing: float | None) -> list[Finding]:
    n, _, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
    found = []
    for k in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[k])
        found.append(
            Finding(
                label=k,
                bbox_px=(y, x, y + h, x + w),
                centroid_px=(float(centroids[k][1]), float(centroids[k][0])),
                area_px=area,
                area_mm2=None if spacing is None else area * spacing * spacing,
                bbox_mm=None if spacing is None else (h * spacing, w * spacing),
                max_probability=0.9 - 0.1 * k,
                mean_probability=0.7 - 0.1 * k,
            )
        )
    return found


def make_result(mammo: Mammogram, mask: np.ndarray, source: str, *, model: dict | None = None) -> Result:
    """A Result built directly (no model): what Segmenter.segment returns for ``mask``."""
    h, w = mask.shape
    spacing = mammo.meta.pixel_spacing_mm
    return Result(
        source=source,
        mammogram=mammo,
        probability=np.zeros((32, 32), np.float32),
        geometry=Geometry((h, w), (0, 0, h, w), False, (0, 0, 32, 32), 32),
        mask=mask.astype(np.uint8),
        findings=_findings(mask.astype(np.uint8), None if spacing is None else spacing[0]),
        threshold=0.5,
        timing_ms={"decode": 1.0, "preprocess": 1.0, "infer": 1.0, "postprocess": 1.0},
        model=model or {},
    )


@pytest.fixture(scope="module")
def phantom_scan(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A quarter-scale 12-bit MONOCHROME1 phantom DICOM (832x640) with two masses, and its mask."""
    root = tmp_path_factory.mktemp("scans") / "with space"
    ph = make_phantom(
        11,
        laterality="R",
        view="MLO",
        scale=0.25,
        detector="70um",
        bits_stored=12,
        photometric="MONOCHROME1",
        n_masses=2,
    )
    assert ph.mask.any()
    return ph.write(root / "scan R.dcm"), ph.mask.astype(np.uint8)


@pytest.fixture
def phantom_result(phantom_scan: tuple[Path, np.ndarray], bundle: Bundle) -> Result:
    path, mask = phantom_scan
    record = bundle.manifest.artifacts[0]
    return make_result(read_mammogram(path), mask, str(path), model={"artifact": record.file, "sha256": record.sha256})


def _dciodvfy(path: Path) -> tuple[int, list[str]]:
    proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    return proc.returncode, [line for line in lines if line.startswith("Error")]


# --------------------------------------------------------------------------- names and kinds


def test_parse_kinds_and_names(tmp_path: Path) -> None:
    assert outputs.parse_kinds("mask, json,mask") == ("mask", "json")
    assert outputs.parse_kinds(["SEG", "overlay"]) == ("seg", "overlay")
    with pytest.raises(ConfigError, match="unknown output kind 'png'"):
        outputs.parse_kinds("mask,png")
    with pytest.raises(ConfigError, match="no output kind"):
        outputs.parse_kinds(" , ")
    assert outputs.output_stem("/a/b/scan R.dcm") == "scan R"
    assert outputs.output_stem("x/1.2.840.113619.2.55.3") == "1.2.840.113619.2.55.3"  # UID-named file keeps its digits
    assert outputs.output_stem("scan.PNG") == "scan"
    assert outputs.output_stem("") == "mammogram"
    paths = outputs.output_paths(tmp_path, "s", "seg,mask,json,overlay")
    assert {k: p.name for k, p in paths.items()} == {
        "seg": "s_seg.dcm",
        "mask": "s_mask.png",
        "json": "s.json",
        "overlay": "s_overlay.png",
    }


# --------------------------------------------------------------------------- mask PNG


@pytest.mark.parametrize("shape", [(37, 13), (64, 64), (5, 1)])
def test_mask_png_round_trip(shape: tuple[int, int], spaced_dir: Path) -> None:
    rng = np.random.default_rng(shape[0])
    mask = (rng.random(shape) < 0.3).astype(np.uint8)
    path = outputs.write_mask(spaced_dir / "m_mask.png", mask)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, colour = re.compile(rb"IHDR(.{4})(.{4})(.)(.)", re.S).search(data).groups()  # type: ignore[union-attr]
    assert (int.from_bytes(width, "big"), int.from_bytes(height, "big")) == (shape[1], shape[0])
    assert (depth, colour) == (b"\x01", b"\x00")  # 1-bit greyscale
    back = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint8 and back.shape == shape
    np.testing.assert_array_equal(back, mask * 255)
    # Every chunk's CRC is right (a strict decoder would refuse the file otherwise).
    pos = 8
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        body = data[pos + 4 : pos + 8 + length]
        assert zlib.crc32(body) == int.from_bytes(data[pos + 8 + length : pos + 12 + length], "big")
        pos += 12 + length
    assert pos == len(data)


@pytest.mark.parametrize("deflate", ["isal", "zlib"])
def test_mask_png_decodes_to_the_mask_with_either_deflate(deflate: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """ISA-L's deflate (the ``fast`` extra) and the standard library's write the same pixels."""
    import builtins
    import sys

    if deflate == "isal":
        pytest.importorskip("isal")
    else:
        real_import = builtins.__import__

        def no_isal(name: str, *args: object, **kwargs: object) -> object:
            if name == "isal" or name.startswith("isal."):
                raise ImportError("isal hidden by the test")
            return real_import(name, *args, **kwargs)

        monkeypatch.delitem(sys.modules, "isal", raising=False)
        monkeypatch.delitem(sys.modules, "isal.isal_zlib", raising=False)
        monkeypatch.setattr(builtins, "__import__", no_isal)
    rng = np.random.default_rng(11)
    mask = np.zeros((301, 203), np.uint8)
    mask[40:120, 17:150] = 1
    mask[200:260] = rng.integers(0, 2, (60, 203), dtype=np.uint8)  # noise: runs of every length
    data = outputs.encode_mask_png(mask)
    idat = data[data.index(b"IDAT") + 4 : data.index(b"IEND") - 8]
    raw = zlib.decompress(idat)  # a zlib stream any PNG reader inflates
    assert len(raw) == 301 * (1 + 26)
    back = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(back, mask * 255)


def test_mask_png_nonzero_is_lesion_and_pillow_reads_it(spaced_dir: Path) -> None:
    mask = np.zeros((20, 30), np.uint8)
    mask[3:9, 4:17] = 7  # any nonzero value is lesion
    bool_png = outputs.encode_mask_png(mask.astype(bool))
    assert outputs.encode_mask_png(mask) == bool_png
    Image = pytest.importorskip("PIL.Image")
    path = spaced_dir / "p.png"
    path.write_bytes(bool_png)
    with Image.open(path) as im:
        assert im.mode == "1" and im.size == (30, 20)
        np.testing.assert_array_equal(np.asarray(im), mask > 0)


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.uint16])
def test_mask_png_packs_any_nonzero_value_as_lesion(dtype: type) -> None:
    """A uint8 mask is packed without a ``!= 0`` copy: every nonzero value, high bit or not, is a set bit."""
    rng = np.random.default_rng(5)
    values = np.array([0, 1, 2, 127, 128, 255], dtype)
    mask = values[rng.integers(0, values.size, (41, 67))]  # odd width: the last byte of a row is partial
    assert outputs.encode_mask_png(mask) == outputs.encode_mask_png(mask != 0)


# --------------------------------------------------------------------------- overlay


def test_overlay_is_downscaled_with_contours(spaced_dir: Path) -> None:
    h, w = 2100, 1300
    pixels = np.full((h, w), 0.5, np.float32)
    mask = np.zeros((h, w), np.uint8)
    cv2.circle(mask, (650, 1000), 200, 1, -1)
    image = outputs.render_overlay(pixels, mask, _findings(mask, None))
    assert image.shape == (1024, round(1300 * 1024 / 2100), 3) and image.dtype == np.uint8
    red = (image[:, :, 2] > 200) & (image[:, :, 1] < 80) & (image[:, :, 0] < 80)
    scale = 1024 / 2100
    rr, cc = np.nonzero(red)
    radius = np.hypot(rr - 1000 * scale, cc - 650 * scale)
    assert red.sum() > 100
    assert np.all(np.abs(radius - 200 * scale) < 4)  # the contour, nowhere else
    assert (image[int(1000 * scale), int(650 * scale)] == 128).all()  # inside: the mammogram, untouched
    small = outputs.render_overlay(np.zeros((40, 30), np.float32), np.zeros((40, 30), np.uint8))
    assert small.shape == (40, 30, 3)  # never enlarged


# --------------------------------------------------------------------------- write_outputs


def test_write_outputs_all_kinds(phantom_result: Result, bundle: Bundle, spaced_dir: Path) -> None:
    pytest.importorskip("highdicom")
    out_dir = spaced_dir / "out dir"
    written = outputs.write_outputs(phantom_result, out_dir, "mask,overlay,json,seg", bundle=bundle)
    assert {k: p.name for k, p in written.items()} == {
        "mask": "scan R_mask.png",
        "overlay": "scan R_overlay.png",
        "seg": "scan R_seg.dcm",
        "json": "scan R.json",
    }
    assert all(p.is_file() for p in written.values())
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(p.name for p in written.values())  # no temp files
    assert phantom_result.outputs == {k: str(p) for k, p in written.items()}
    assert phantom_result.timing_ms["write"] > 0
    doc = json.loads(written["json"].read_text(encoding="utf-8"))
    assert doc["outputs"] == phantom_result.outputs
    assert len(doc["findings"]) == len(phantom_result.findings) == 2
    assert doc["findings"][0]["bbox_px"] == list(phantom_result.findings[0].bbox_px)
    assert set(doc["timing_ms"]) == {"decode", "preprocess", "infer", "postprocess", "write"}
    mask = cv2.imread(str(written["mask"]), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(mask, phantom_result.mask * 255)
    overlay = cv2.imread(str(written["overlay"]))
    assert max(overlay.shape[:2]) == min(1024, max(phantom_result.mask.shape))


def test_raster_input_skips_seg_with_warning(
    bundle: Bundle, spaced_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    png = spaced_dir / "plain scan.png"
    image = np.zeros((60, 40), np.uint8)
    image[10:50, 5:35] = 180
    cv2.imwrite(str(png), image)
    mask = np.zeros((60, 40), np.uint8)
    mask[20:30, 10:20] = 1
    result = make_result(read_mammogram(png), mask, str(png))
    with caplog.at_level(logging.WARNING, logger="bcedge.outputs"):
        written = outputs.write_outputs(result, spaced_dir / "out", ["mask", "seg", "json"], bundle=bundle)
    assert set(written) == {"mask", "json"}
    assert not (spaced_dir / "out" / "plain scan_seg.dcm").exists()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no DICOM SEG" in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage() and str(png) in warnings[0].getMessage()


# --------------------------------------------------------------------------- atomicity


@pytest.mark.parametrize("kind", ["mask", "overlay", "json", "seg"])
def test_interrupted_write_leaves_old_file_and_no_partial(
    kind: str, phantom_result: Result, bundle: Bundle, spaced_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if kind == "seg":
        pytest.importorskip("highdicom")
    target = outputs.output_paths(spaced_dir, "scan R", [kind])[kind]
    target.write_bytes(b"previous run")

    def die_after_the_temporary(step: str) -> None:
        if step.startswith("write"):
            raise KeyboardInterrupt  # e.g. Ctrl-C once the new content is in its temporary file

    monkeypatch.setattr(bcedge.imageio, "_checkpoint", die_after_the_temporary)
    with pytest.raises(KeyboardInterrupt):
        outputs.write_outputs(phantom_result, spaced_dir, [kind], bundle=bundle)
    assert target.read_bytes() == b"previous run"
    assert [p.name for p in spaced_dir.iterdir()] == [target.name]  # the half-written temp file is gone
    monkeypatch.undo()
    outputs.write_outputs(phantom_result, spaced_dir, [kind], bundle=bundle)
    assert target.read_bytes() != b"previous run"


def test_failed_seg_build_writes_nothing(bundle: Bundle, spaced_dir: Path, phantom_result: Result) -> None:
    pytest.importorskip("highdicom")
    wrong = make_result(phantom_result.mammogram, phantom_result.mask[:-1], phantom_result.source)
    with pytest.raises(DicomError, match=r"Rows/Columns .* are 832x640 but the mask is 831x640"):
        outputs.write_outputs(wrong, spaced_dir, ["seg"], bundle=bundle)
    assert list(spaced_dir.iterdir()) == []


# --------------------------------------------------------------------------- DICOM SEG


@needs_dciodvfy
def test_seg_passes_dciodvfy(phantom_result: Result, bundle: Bundle, spaced_dir: Path) -> None:
    pytest.importorskip("highdicom")
    path = outputs.write_seg(spaced_dir / "a_seg.dcm", phantom_result, bundle=bundle)
    rc, errors = _dciodvfy(path)
    assert errors == [] and rc == 0


@needs_dciodvfy
def test_dciodvfy_check_is_not_vacuous(phantom_result: Result, bundle: Bundle, spaced_dir: Path) -> None:
    """The same check flags a SEG with a required attribute removed."""
    pytest.importorskip("highdicom")
    seg = outputs.build_seg(phantom_result, bundle=bundle)
    del seg.SegmentSequence[0].SegmentLabel
    path = spaced_dir / "broken_seg.dcm"
    path.write_bytes(outputs.encode_seg(seg))
    rc, errors = _dciodvfy(path)
    assert rc != 0 and any("SegmentLabel" in line for line in errors)


@needs_dciodvfy
def test_empty_seg_passes_dciodvfy_and_reads_back_empty(
    phantom_result: Result, bundle: Bundle, spaced_dir: Path
) -> None:
    hd = pytest.importorskip("highdicom")
    empty = make_result(phantom_result.mammogram, np.zeros_like(phantom_result.mask), phantom_result.source)
    path = outputs.write_seg(spaced_dir / "empty_seg.dcm", empty, bundle=bundle)
    rc, errors = _dciodvfy(path)
    assert errors == [] and rc == 0
    seg = hd.seg.segread(path)
    pixels = seg.get_pixels_by_source_instance([phantom_result.mammogram.meta.sop_uid], segment_numbers=[1])
    assert pixels.shape == (1, *phantom_result.mask.shape, 1) and not pixels.any()


def test_seg_round_trip_and_references(phantom_result: Result, bundle: Bundle, spaced_dir: Path) -> None:
    hd = pytest.importorskip("highdicom")
    source = pydicom.dcmread(phantom_result.source, stop_before_pixels=True)
    path = outputs.write_outputs(phantom_result, spaced_dir, ["seg"], bundle=bundle)["seg"]
    seg = hd.seg.segread(path)
    pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1])
    np.testing.assert_array_equal(pixels[0, :, :, 0], phantom_result.mask)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.Modality == "SEG"
    assert seg.SegmentationType == "BINARY"
    assert seg.get_source_image_uids() == [(source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID)]
    ref = seg.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == source.SeriesInstanceUID
    assert ref.ReferencedInstanceSequence[0].ReferencedSOPClassUID == source.SOPClassUID
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "StudyDate"):
        assert seg[keyword].value == source[keyword].value, keyword
    assert seg.PatientOrientation == source.PatientOrientation
    record = bundle.manifest.artifacts[0]
    assert seg.SOPInstanceUID == outputs.seg_sop_instance_uid(source.SOPInstanceUID, bundle, record)
    assert seg.SeriesInstanceUID == outputs.seg_series_instance_uid(source.SeriesInstanceUID, bundle, record)
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    description = seg.get_segment_description(1)
    assert description.segment_label == "Mass"
    assert description.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
    assert (
        description.segmented_property_category.value,
        description.segmented_property_category.scheme_designator,
    ) == (
        "49755003",
        "SCT",
    )
    assert (description.segmented_property_type.value, description.segmented_property_type.scheme_designator) == (
        "4147007",
        "SCT",
    )
    algorithm = description.algorithm_identification[0]
    assert algorithm.AlgorithmName == "unet-mobilenetv2"
    assert algorithm.AlgorithmVersion == f"bcedge {bcedge.__version__} tflite/int8 {record.sha256[:12]}"
    assert seg.Manufacturer == "bcedge" and seg.ManufacturerModelName == "unet-mobilenetv2"


def test_seg_uid_is_deterministic(bundle: Bundle, phantom_result: Result, spaced_dir: Path) -> None:
    int8, fp32 = bundle.manifest.artifacts
    uid = outputs.seg_sop_instance_uid("1.2.3.4", bundle, int8)
    assert uid == outputs.seg_sop_instance_uid("1.2.3.4", bundle, int8)
    assert pydicom.uid.UID(uid).is_valid and uid.startswith("2.25.") and len(uid) <= 64
    others = {
        outputs.seg_sop_instance_uid("1.2.3.5", bundle, int8),  # another image
        outputs.seg_sop_instance_uid("1.2.3.4", bundle, fp32),  # another model file
        outputs.seg_sop_instance_uid("1.2.3.4", bundle),  # the bundle as a whole
        outputs.seg_sop_instance_uid("1.2.3.4", bundle, int8, threshold=0.3),  # another threshold
        outputs.seg_series_instance_uid("1.2.3.4", bundle, int8),  # series and instance never collide
    }
    assert uid not in others and len(others) == 5
    assert outputs.seg_sop_instance_uid("1.2.3.4", bundle, int8, threshold=bundle.threshold) == uid
    # A resend writes the very same instance UID.
    if pytest.importorskip("highdicom"):
        first = pydicom.dcmread(outputs.write_seg(spaced_dir / "1.dcm", phantom_result, bundle=bundle))
        again = pydicom.dcmread(outputs.write_seg(spaced_dir / "2.dcm", phantom_result, bundle=bundle))
        assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (again.SOPInstanceUID, again.SeriesInstanceUID)
        assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID


def test_seg_source_errors_are_one_line(bundle: Bundle, phantom_result: Result, spaced_dir: Path) -> None:
    pytest.importorskip("highdicom")
    ds = pydicom.dcmread(phantom_result.source)
    del ds.StudyInstanceUID
    broken = spaced_dir / "no study.dcm"
    ds.save_as(broken)
    # the header the reader parsed is what the SEG uses (the file is not read again) ...
    no_study = dataclasses.replace(phantom_result.mammogram.with_meta(source=str(broken)), header=ds)
    result = make_result(no_study, phantom_result.mask, str(broken))
    with pytest.raises(DicomError) as info:
        outputs.write_seg(spaced_dir / "x_seg.dcm", result, bundle=bundle)
    assert "StudyInstanceUID (0020,000D)" in str(info.value) and "\n" not in str(info.value)
    # ... and without one (a Mammogram built in code), the file is read
    headerless = dataclasses.replace(phantom_result.mammogram.with_meta(source=str(broken)), header=None)
    result = make_result(headerless, phantom_result.mask, str(broken))
    with pytest.raises(DicomError) as info:
        outputs.write_seg(spaced_dir / "x_seg.dcm", result, bundle=bundle)
    assert "StudyInstanceUID (0020,000D)" in str(info.value) and "\n" not in str(info.value)
    other = make_result(phantom_result.mammogram.with_meta(sop_uid="1.2.3"), phantom_result.mask, phantom_result.source)
    with pytest.raises(DicomError, match="is not that of the segmented image"):
        outputs.write_seg(spaced_dir / "y_seg.dcm", other, bundle=bundle)
    not_dicom = spaced_dir / "not.dcm"
    not_dicom.write_bytes(b"\x00" * 10)
    headerless = dataclasses.replace(phantom_result.mammogram, header=None)
    result = make_result(headerless, phantom_result.mask, str(not_dicom))
    with pytest.raises(DicomError, match="cannot read the source DICOM header"):
        outputs.write_seg(spaced_dir / "z_seg.dcm", result, bundle=bundle)
    assert sorted(p.name for p in spaced_dir.iterdir()) == ["no study.dcm", "not.dcm"]


def test_seg_without_highdicom_says_which_extra(
    bundle: Bundle, phantom_result: Result, spaced_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "highdicom", None)
    with pytest.raises(MissingDependencyError, match=r"bcedge\[seg\]"):
        outputs.write_outputs(phantom_result, spaced_dir, ["seg"], bundle=bundle)
    assert list(spaced_dir.iterdir()) == []


@needs_dciodvfy
def test_seg_of_real_mg_headers(bcedge_data: Path, bundle: Bundle, spaced_dir: Path) -> None:
    """Real GE/Hologic MG headers (tiny pixel data): Frame of Reference, odd spacings, SC class."""
    pytest.importorskip("highdicom")
    files = sorted((bcedge_data / "dicom-headers").glob("*.dcm"))
    if not files:
        pytest.skip("no DICOM files under BCEDGE_DATA/dicom-headers")
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        h, w = int(ds.Rows), int(ds.Columns)
        meta = ImageMeta(
            source=str(path), rows=h, columns=w, sop_uid=str(ds.SOPInstanceUID), transfer_syntax="1.2.840.10008.1.2.1"
        )
        mask = np.zeros((h, w), np.uint8)
        mask[h // 2 :, w // 2 :] = 1
        result = make_result(Mammogram(np.zeros((h, w), np.float32), meta), mask, str(path))
        seg_path = outputs.write_outputs(result, spaced_dir, ["seg"], bundle=bundle)["seg"]
        rc, errors = _dciodvfy(seg_path)
        assert errors == [] and rc == 0, f"{path.name}: {errors}"
        seg = pydicom.dcmread(seg_path)
        assert seg.PatientID == ds.PatientID and seg.StudyInstanceUID == ds.StudyInstanceUID
        assert (
            seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
        )


def test_seg_with_and_without_lazy_tables_is_identical(
    phantom_result: Result, bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("highdicom")
    import highdicom.base
    import highdicom.image
    from highdicom import _standard_utils as su

    assert highdicom_tables.install()
    fast = outputs.build_seg(phantom_result, bundle=bundle)
    original = su.get_module_attribute_map.original
    for module in (su, highdicom.base, highdicom.image):
        monkeypatch.setattr(module, "get_module_attribute_map", original)
    slow = outputs.build_seg(phantom_result, bundle=bundle)

    def without_clock(ds: pydicom.Dataset) -> pydicom.Dataset:
        # Creation dates and times (top level and in Contributing Equipment) differ between two builds.
        for element in list(ds):
            if element.VR in ("DA", "TM", "DT") and element.keyword != "StudyDate" and element.keyword != "StudyTime":
                del ds[element.tag]
            elif element.VR == "SQ":
                for item in element.value:
                    without_clock(item)
        return ds

    fast, slow = without_clock(fast), without_clock(slow)
    assert [e.keyword for e in fast] == [e.keyword for e in slow]
    for element in fast:
        assert element == slow[element.tag], element.keyword


def test_segmenter_end_to_end(phantom_scan: tuple[Path, np.ndarray], spaced_dir: Path) -> None:
    """Through the real pipeline when a runnable bundle is here: the SEG holds exactly the mask the pipeline made."""
    hd = pytest.importorskip("highdicom")
    pytest.importorskip("ai_edge_litert")
    from bcedge.pipeline import Segmenter, default_bundle_path

    root = Path(__file__).resolve().parents[1]
    candidates = [default_bundle_path(), root / "models" / "unet-mobilenetv2-combined256"]
    found = next((c for c in candidates if (c / "manifest.json").is_file()), None)
    if found is None:
        pytest.skip("no runnable bundle (bcedge/demo_model or models/unet-mobilenetv2-combined256)")
    path, _ = phantom_scan
    with Segmenter(found, "tflite") as segmenter:
        result = segmenter.segment(path)
        written = outputs.write_outputs(result, spaced_dir, outputs.OUTPUT_KINDS, bundle=segmenter.bundle)
    seg = hd.seg.segread(written["seg"])
    pixels = seg.get_pixels_by_source_instance([result.mammogram.meta.sop_uid], segment_numbers=[1])
    np.testing.assert_array_equal(pixels[0, :, :, 0], result.mask)
    assert seg.SOPInstanceUID == outputs.seg_sop_instance_uid(
        result.mammogram.meta.sop_uid, segmenter.bundle, segmenter.artifact
    )
    doc = json.loads(written["json"].read_text(encoding="utf-8"))
    assert doc["outputs"]["seg"] == str(written["seg"]) and doc["timing_ms"]["write"] > 0
