"""bcedge.dicom: LUT steps one by one, the display pipeline, header meaning, rasters, real MG headers.

The outside oracle (dcmtk) lives in test_dicom_oracle.py, bad inputs in test_dicom_errors.py.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from bcedge import dicom
from bcedge.dicom import (
    ImageMeta,
    Mammogram,
    apply_voi_lut_sequence,
    display_table,
    first_window,
    modality_lut,
    needs_inversion,
    read_dicom,
    read_mammogram,
    read_raster,
    robust_window,
    value_range,
    window_linear,
    window_linear_exact,
    window_sigmoid,
)
from bcedge.dicom_write import MGTags, build_mg_dataset, save_atomic
from bcedge.errors import DicomError

HEADERS = "dicom-headers"


def _ds(**tags: object) -> Dataset:
    ds = Dataset()
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def _lut_item(first: int, bits: int, data: list[int] | bytes, vr: str = "US") -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [len(data) % 65536 if not isinstance(data, bytes) else len(data) // 2, first, bits]
    item.LUTData = data
    item["LUTData"].VR = vr
    return item


def _u8(pixels: np.ndarray) -> np.ndarray:
    return np.rint(pixels * 255).astype(int)


# --------------------------------------------------------------------------- LUT steps, one by one


def _linear_ps33(x: float, c: float, w: float) -> float:
    """PS3.3 C.11.2.1.2.1, written out as in the standard (ymin 0, ymax 1)."""
    if x <= c - 0.5 - (w - 1) / 2:
        return 0.0
    if x > c - 0.5 + (w - 1) / 2:
        return 1.0
    return (x - (c - 0.5)) / (w - 1) + 0.5


@pytest.mark.parametrize(("center", "width"), [(2048, 4096), (100, 50), (0.5, 2), (7, 1), (-300.25, 17.5), (40, 1.5)])
def test_window_linear_matches_ps33_formula(center: float, width: float) -> None:
    x = np.linspace(center - width - 3, center + width + 3, 997)
    x = np.concatenate([x, np.round(x)])  # integers hit the band edges exactly
    expected = np.array([_linear_ps33(v, center, width) for v in x])
    np.testing.assert_allclose(window_linear(x, center, width), expected, atol=1e-12)


def test_window_linear_width_one_is_threshold_at_center() -> None:
    # PS3.3 note: width 1 maps values below the centre to 0, the centre and above to 1 (integers).
    y = window_linear(np.array([99, 100, 101]), 100, 1)
    assert y.tolist() == [0.0, 1.0, 1.0]


def test_window_linear_rejects_width_below_one() -> None:
    with pytest.raises(DicomError, match=r"Window Width \(0028,1051\)"):
        window_linear(np.zeros(3), 10, 0.5)


def test_window_linear_exact_formula() -> None:
    c, w = 1000.0, 200.0
    x = np.array([c - w, c - w / 2, c - 50, c, c + 50, c + w / 2, c + w / 2 + 1e-9, c + w])
    expected = [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    np.testing.assert_allclose(window_linear_exact(x, c, w), expected, atol=1e-12)
    # Unlike LINEAR, a width below 1 is legal and the centre maps to exactly one half.
    assert window_linear_exact(np.array([5.0]), 5.0, 0.25)[0] == 0.5
    with pytest.raises(DicomError, match="LINEAR_EXACT"):
        window_linear_exact(np.zeros(2), 0, 0)


def test_window_sigmoid_formula_and_extremes() -> None:
    c, w = 2262.0, 380.0
    x = np.array([c - 3 * w, c - w / 4, c, c + w / 4, c + 3 * w])
    expected = 1.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
    np.testing.assert_allclose(window_sigmoid(x, c, w), expected, rtol=1e-12)
    assert window_sigmoid(np.array([c]), c, w)[0] == 0.5
    with np.errstate(all="raise"):  # no overflow warning far outside the window
        far = window_sigmoid(np.array([-1e9, 1e9]), 0.0, 1.0)
    assert far[0] < 1e-300 and far[1] == 1.0
    with pytest.raises(DicomError, match="SIGMOID"):
        window_sigmoid(np.zeros(2), 0, -1)


def test_voi_lut_sequence_first_mapped_offset_and_clamping() -> None:
    data = [10, 20, 30, 40, 4095]
    ds = _ds(VOILUTSequence=DicomSequence([_lut_item(100, 12, data)]))
    x = np.array([-5, 99, 100, 101, 103, 104, 105, 10_000])
    # Below the first mapped value: first entry; beyond the table: last entry (PS3.3 C.11.2.1.1).
    expected = np.array([10, 10, 10, 20, 40, 4095, 4095, 4095]) / 4095
    np.testing.assert_allclose(apply_voi_lut_sequence(x, ds), expected)


def test_voi_lut_sequence_uses_first_item() -> None:
    first = _lut_item(0, 8, [0, 255])
    second = _lut_item(0, 8, [255, 0])
    ds = _ds(VOILUTSequence=DicomSequence([first, second]))
    assert apply_voi_lut_sequence(np.array([0, 1]), ds).tolist() == [0.0, 1.0]


def test_voi_lut_data_as_ow_bytes_little_and_big_endian() -> None:
    values = np.array([0, 1000, 4095], dtype=np.uint16)
    for dtype, ts in (("<u2", ExplicitVRLittleEndian), (">u2", "1.2.840.10008.1.2.2")):
        ds = _ds(VOILUTSequence=DicomSequence([_lut_item(0, 12, values.astype(dtype).tobytes(), vr="OW")]))
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ts
        np.testing.assert_allclose(apply_voi_lut_sequence(np.arange(3), ds), values / 4095)


def test_voi_lut_8bit_entries_packed_or_in_words() -> None:
    entries = [0, 64, 128, 255]
    packed = _lut_item(0, 8, bytes(entries), vr="OW")
    packed.LUTDescriptor = [4, 0, 8]
    words = _lut_item(0, 8, entries)
    for item in (packed, words):
        ds = _ds(VOILUTSequence=DicomSequence([item]))
        np.testing.assert_allclose(apply_voi_lut_sequence(np.arange(4), ds), np.array(entries) / 255)


def test_voi_lut_signed_first_mapped_read_as_unsigned() -> None:
    # SS -100 stored in a US-typed descriptor arrives as 65436.
    item = _lut_item(0, 8, [0, 128, 255])
    item.LUTDescriptor = [3, 65536 - 100, 8]
    ds = _ds(PixelRepresentation=1, VOILUTSequence=DicomSequence([item]))
    np.testing.assert_allclose(apply_voi_lut_sequence(np.array([-101, -100, -99, -98, 0]), ds), [0, 0, 128 / 255, 1, 1])


def test_voi_lut_quirk_data_beyond_descriptor_depth() -> None:
    # Some vendors declare 12 bits and store 16-bit data: normalise by the data instead of overflowing.
    ds = _ds(VOILUTSequence=DicomSequence([_lut_item(0, 12, [0, 32768, 65535])]))
    np.testing.assert_allclose(apply_voi_lut_sequence(np.arange(3), ds), [0, 32768 / 65535, 1])


def test_voi_lut_bad_descriptor_is_one_line_error() -> None:
    item = _lut_item(0, 12, [0, 1])
    item.LUTDescriptor = [2, 0]
    with pytest.raises(DicomError, match=r"LUT Descriptor \(0028,3002\)"):
        apply_voi_lut_sequence(np.arange(2), _ds(VOILUTSequence=DicomSequence([item])))


def test_modality_lut_rescale_and_defaults() -> None:
    x = np.array([0, 1, 4095])
    np.testing.assert_allclose(modality_lut(x, _ds(RescaleSlope="2", RescaleIntercept="-1000")), [-1000, -998, 7190])
    np.testing.assert_allclose(modality_lut(x, _ds(RescaleSlope="0.5")), x * 0.5)  # intercept defaults to 0
    np.testing.assert_allclose(modality_lut(x, _ds(RescaleIntercept="10")), x + 10.0)  # slope defaults to 1
    np.testing.assert_allclose(modality_lut(x, _ds()), x)
    assert modality_lut(x, _ds()).dtype == np.float64
    with pytest.raises(DicomError, match=r"Rescale Slope \(0028,1053\) is 0"):
        modality_lut(x, _ds(RescaleSlope="0"))


def test_modality_lut_sequence_12bit_with_offset_beats_rescale() -> None:
    # pydicom 3.0's apply_modality_lut fails on 12-bit entries ('uint12'); bcedge decodes the LUT itself.
    data = list(range(0, 4096, 2))[:2000]
    seq = DicomSequence([_lut_item(100, 12, data)])
    ds = _ds(ModalityLUTSequence=seq, RescaleSlope="5", RescaleIntercept="5")
    x = np.array([0, 100, 101, 2099, 2100, 60000])
    np.testing.assert_allclose(modality_lut(x, ds), [0, 0, 2, 3998, 3998, 3998])


@pytest.mark.parametrize(
    ("photometric", "shape", "expected"),
    [
        ("MONOCHROME2", None, False),
        ("MONOCHROME2", "IDENTITY", False),
        ("MONOCHROME1", None, True),
        ("MONOCHROME1", "INVERSE", True),  # the DX/MG pair: one inversion, not two
        ("MONOCHROME1", "IDENTITY", True),  # non-conformant: Photometric Interpretation decides
        ("MONOCHROME2", "INVERSE", True),  # non-conformant: the explicit INVERSE is honoured
        ("monochrome1 ", "inverse", True),
        (None, None, False),
    ],
)
def test_needs_inversion_truth_table(photometric: str | None, shape: str | None, expected: bool) -> None:
    assert needs_inversion(photometric, shape) is expected


def test_robust_window_percentiles_samples_and_histogram_agree() -> None:
    rng = np.random.default_rng(3)
    samples = rng.integers(1000, 3000, 200_000)
    center, width = robust_window(samples)
    lo, hi = np.quantile(samples, [0.005, 0.995])
    assert (center, width) == pytest.approx(((lo + hi) / 2, hi - lo))
    support = np.arange(samples.min(), samples.max() + 1)
    counts = np.bincount(samples - samples.min())
    c2, w2 = robust_window(support, counts)
    assert abs(c2 - center) <= 1 and abs(w2 - width) <= 2
    # Outliers beyond the percentiles do not stretch the window.
    spiked = np.concatenate([samples, [0] * 100, [60000] * 100])
    c3, w3 = robust_window(spiked)
    assert abs(c3 - center) < 10 and abs(w3 - width) < 30


def test_robust_window_constant_image_has_unit_width() -> None:
    assert robust_window(np.full(100, 7.0)) == (7.5, 1.0)


def test_first_window_takes_first_of_several_and_handles_absence() -> None:
    ds = _ds(WindowCenter=["2262", "2286", "2262"], WindowWidth=["380", "380", "500"])
    assert first_window(ds) == (2262.0, 380.0)
    assert first_window(_ds(WindowCenter="100", WindowWidth="50")) == (100.0, 50.0)
    assert first_window(_ds(WindowCenter="100")) is None
    assert first_window(_ds()) is None


# --------------------------------------------------------------------------- the pipeline on files


def test_monochrome2_window_ramp_follows_formula(write_mg, ramp) -> None:
    stored = ramp(12)
    path = write_mg(stored, bits_stored=12, windows=[(2048, 1000)])
    mammo = read_dicom(path)
    assert mammo.pixels.dtype == np.float32 and mammo.pixels.shape == stored.shape
    assert mammo.pixels.min() == 0.0 and mammo.pixels.max() == 1.0
    np.testing.assert_allclose(mammo.pixels, window_linear(stored.astype(float), 2048, 1000), atol=1e-6)
    meta = mammo.meta
    assert meta.window == (2048.0, 1000.0) and meta.window_source == "window" and meta.voi_function == "LINEAR"
    assert meta.inverted is False and meta.photometric == "MONOCHROME2" and meta.bits_stored == 12
    assert " " in meta.source  # the "with space" folder made it through


def test_monochrome1_with_inverse_is_inverted_once(write_mg, ramp) -> None:
    stored = ramp(12)
    m2 = read_dicom(write_mg(stored, "m2.dcm", bits_stored=12, windows=[(2048, 1000)]))
    m1 = read_dicom(write_mg(stored, "m1.dcm", bits_stored=12, photometric="MONOCHROME1", windows=[(2048, 1000)]))
    assert m1.meta.presentation_lut_shape == "INVERSE" and m1.meta.inverted
    np.testing.assert_allclose(m1.pixels, 1.0 - m2.pixels, atol=1e-6)
    # MONOCHROME1: the minimum stored value displays white, the maximum black.
    assert m1.pixels[0, 0] == 1.0 and m1.pixels[-1, -1] == 0.0


def test_multiple_windows_use_the_first(write_mg, ramp) -> None:
    stored = ramp(12)
    mammo = read_dicom(write_mg(stored, bits_stored=12, windows=[(1000, 800), (3000, 200)]))
    assert mammo.meta.window == (1000.0, 800.0)
    np.testing.assert_allclose(mammo.pixels, window_linear(stored.astype(float), 1000, 800), atol=1e-6)


@pytest.mark.parametrize("function", ["LINEAR_EXACT", "SIGMOID"])
def test_voi_lut_function_is_applied(write_mg, ramp, function: str) -> None:
    stored = ramp(12)
    mammo = read_dicom(write_mg(stored, bits_stored=12, windows=[(2000, 600)], voi_function=function))
    reference = {"LINEAR_EXACT": window_linear_exact, "SIGMOID": window_sigmoid}[function]
    np.testing.assert_allclose(mammo.pixels, reference(stored.astype(float), 2000, 600), atol=1e-6)
    assert mammo.meta.voi_function == function


def test_rescale_then_window_in_modality_units(write_mg, ramp) -> None:
    stored = ramp(12)
    mammo = read_dicom(write_mg(stored, bits_stored=12, rescale=(2.0, -1000.0), windows=[(3000, 4000)]))
    np.testing.assert_allclose(mammo.pixels, window_linear(stored * 2.0 - 1000.0, 3000, 4000), atol=1e-6)


def test_voi_lut_sequence_wins_over_window_and_ignores_window_meta(write_mg, ramp) -> None:
    stored = ramp(12)
    lut = [int(v) for v in np.rint(4095 * np.linspace(0, 1, 2000) ** 0.5)]
    path = write_mg(stored, bits_stored=12, windows=[(100, 10)], voi_lut=(1000, 12, lut))
    mammo = read_dicom(path)
    assert mammo.meta.window_source == "voi_lut_sequence" and mammo.meta.window is None
    expected = np.array(lut)[np.clip(stored.astype(int) - 1000, 0, 1999)] / 4095
    np.testing.assert_allclose(mammo.pixels, expected, atol=1e-6)
    windowed = read_dicom(path, voi="window")
    assert windowed.meta.window == (100.0, 10.0)
    np.testing.assert_allclose(windowed.pixels, window_linear(stored.astype(float), 100, 10), atol=1e-6)


def test_implicit_vr_file_reads_lut_data_as_bytes(spaced_dir: Path, ramp) -> None:
    # Implicit VR makes LUT Data ambiguous (US or OW): pydicom hands over raw bytes.
    stored = ramp(12)
    lut = [int(v) for v in np.rint(np.linspace(0, 4095, 4096) ** 2 / 4095)]
    ds = build_mg_dataset(stored, MGTags(bits_stored=12, voi_lut=(0, 12, lut)))
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    path = save_atomic(ds, spaced_dir / "implicit.dcm")
    assert isinstance(pydicom.dcmread(path).VOILUTSequence[0].LUTData, bytes)
    mammo = read_dicom(path)
    np.testing.assert_allclose(mammo.pixels, np.array(lut)[stored] / 4095, atol=1e-6)


def test_raw_data_set_without_preamble_or_file_meta(spaced_dir: Path, ramp) -> None:
    # Old exports start straight with the (0008,xxxx) elements: no 128-byte preamble, no DICM, no group 0002.
    stored = ramp(12)
    ds = build_mg_dataset(stored, MGTags(bits_stored=12, windows=[(2048, 4096)]))
    del ds.file_meta
    path = spaced_dir / "raw"
    ds.save_as(path, implicit_vr=True, little_endian=True)
    assert path.read_bytes()[:2] == b"\x08\x00"
    mammo = read_mammogram(path)
    np.testing.assert_allclose(mammo.pixels, window_linear(stored.astype(float), 2048, 4096), atol=1e-6)


def test_modality_lut_sequence_file(spaced_dir: Path, ramp) -> None:
    stored = ramp(12)
    ds = build_mg_dataset(stored, MGTags(bits_stored=12, windows=[(1024, 2048)]))
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.LUTData = [v // 2 for v in range(4096)]
    item["LUTData"].VR = "US"
    item.ModalityLUTType = "US"
    ds.ModalityLUTSequence = DicomSequence([item])
    path = save_atomic(ds, spaced_dir / "mlut.dcm")
    mammo = read_dicom(path)
    np.testing.assert_allclose(mammo.pixels, window_linear(stored // 2, 1024, 2048), atol=1e-6)


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_signed_pixels(write_mg, ramp, photometric: str) -> None:
    stored = ramp(12, signed=True)
    mammo = read_dicom(write_mg(stored, bits_stored=12, photometric=photometric, windows=[(0, 1000)]))
    expected = window_linear(stored.astype(float), 0, 1000)
    np.testing.assert_allclose(mammo.pixels, 1 - expected if photometric == "MONOCHROME1" else expected, atol=1e-6)


def test_for_processing_gets_documented_robust_window(write_mg) -> None:
    rng = np.random.default_rng(0)
    stored = rng.integers(1000, 3000, (200, 160)).astype(np.uint16)
    stored.ravel()[::1000] = 0  # 0.1 % outliers, below the 0.5th percentile
    path = write_mg(stored, bits_stored=14, photometric="MONOCHROME1", presentation_intent="FOR PROCESSING")
    mammo = read_dicom(path)
    meta = mammo.meta
    assert meta.window_source == "robust" and meta.presentation_intent == "FOR PROCESSING" and meta.inverted
    center, width = meta.window
    lo, hi = center - width / 2, center + width / 2
    assert 1000 <= lo < 1030 and 2970 < hi <= 3000  # the zeros do not stretch the window
    np.testing.assert_allclose(mammo.pixels, 1 - window_linear_exact(stored.astype(float), center, width), atol=1e-6)


def test_voi_modes_none_and_unknown(write_mg, ramp) -> None:
    stored = (ramp(12) // 2 + 100).astype(np.uint16)
    path = write_mg(stored, bits_stored=12, windows=[(10, 2)])
    plain = read_dicom(path, voi="none")
    np.testing.assert_allclose(plain.pixels, (stored - 100.0) / (stored.max() - 100.0), atol=1e-6)
    assert plain.meta.window_source == "none"
    from bcedge.errors import ConfigError

    with pytest.raises(ConfigError, match="VOI mode"):
        read_dicom(path, voi="bogus")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("bits", "signed"), [(8, False), (10, False), (12, False), (14, False), (16, False), (12, True)]
)
def test_native_fast_path_equals_pydicom_pixel_array(spaced_dir: Path, bits: int, signed: bool) -> None:
    # bcedge views uncompressed Pixel Data in place; it must agree with pydicom, incl. junk above Bits Stored.
    rng = np.random.default_rng(bits)
    raw = rng.integers(0, 65536, (40, 30)).astype(np.uint16)
    ds = build_mg_dataset(raw.view(np.int16) if signed else raw, MGTags(bits_stored=bits, windows=[(0, 2**bits)]))
    path = save_atomic(ds, spaced_dir / f"junk{bits}.dcm")
    decoded = pydicom.dcmread(path).pixel_array
    mammo = read_dicom(path, voi="window")
    np.testing.assert_allclose(mammo.pixels, window_linear(decoded.astype(float), 0, 2**bits), atol=1e-6)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.int32, np.uint32, np.int64])
def test_value_range_is_min_and_max_in_one_pass(dtype: type) -> None:
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype)
    values = rng.integers(max(info.min, -(2**20)), min(info.max, 2**20), (37, 53), endpoint=True).astype(dtype)
    values[3, 4], values[30, 50] = info.min, info.max  # the extremes of the type itself
    for arr in (values, values[:, ::2], values.T):  # contiguous (OpenCV) and strided (NumPy)
        lo, hi = value_range(arr)
        assert (lo, hi) == (int(arr.min()), int(arr.max())) and isinstance(lo, int) and isinstance(hi, int)


def test_signed_values_without_sign_extension(spaced_dir: Path) -> None:
    # Two's complement within 12 bits, bits 12-15 left zero: -5 is stored as 0x0FFB.
    values = np.array([[-2048, -5, 0, 5, 2047]], dtype=np.int16)
    ds = build_mg_dataset(values, MGTags(bits_stored=12, windows=[(0, 4096)]))
    ds.PixelData = (values.view(np.uint16) & 0x0FFF).tobytes()
    path = save_atomic(ds, spaced_dir / "unextended.dcm")
    np.testing.assert_array_equal(pydicom.dcmread(path).pixel_array, values)
    np.testing.assert_allclose(read_dicom(path).pixels, window_linear(values.astype(float), 0, 4096), atol=1e-6)


def test_eight_bit_allocated(spaced_dir: Path) -> None:
    stored = np.arange(256, dtype=np.uint16).reshape(16, 16)
    ds = build_mg_dataset(stored, MGTags(bits_stored=8, windows=[(128, 256)]))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = stored.astype(np.uint8).tobytes()
    ds["PixelData"].VR = "OB"
    mammo = read_dicom(save_atomic(ds, spaced_dir / "eight.dcm"))
    np.testing.assert_allclose(mammo.pixels, window_linear(stored.astype(float), 128, 256), atol=1e-6)


def test_display_table_is_one_lookup_over_stored_values(write_mg, ramp) -> None:
    stored = ramp(14)
    path = write_mg(stored, bits_stored=14, windows=[(8000, 6000)])
    table, offset, info = display_table(pydicom.dcmread(path), stored)
    assert offset == 0 and table.dtype == np.float32 and table.shape == (int(stored.max()) + 1,)
    np.testing.assert_array_equal(read_dicom(path).pixels, table[stored])
    assert info["window_source"] == "window"


@pytest.mark.parametrize("uid_name", ["JPEG2000Lossless", "JPEGLSLossless", "RLELossless"])
def test_compressed_by_pydicom_decodes_like_uncompressed(write_mg, ramp, uid_name: str) -> None:
    from pydicom.pixels import get_encoder

    uid = getattr(pydicom.uid, uid_name)
    if not get_encoder(uid).is_available:
        pytest.skip(f"no pydicom encoder plugin for {uid_name} installed")
    stored = ramp(14)
    plain = write_mg(stored, "plain.dcm", bits_stored=14, photometric="MONOCHROME1", windows=[(8000, 9000)])
    ds = pydicom.dcmread(plain)
    ds.compress(uid)
    packed = plain.with_name(f"{uid_name}.dcm")
    ds.save_as(packed)
    mammo = read_dicom(packed)
    assert mammo.meta.transfer_syntax == uid
    np.testing.assert_array_equal(mammo.pixels, read_dicom(plain).pixels)


# --------------------------------------------------------------------------- header meaning (synthetic)


def _header_variant(write_mg, name: str, **extra: object) -> ImageMeta:
    stored = np.zeros((8, 8), np.uint16)
    return read_dicom(write_mg(stored, name, laterality=None, view=None, windows=[(1, 2)], extra=extra)).meta


def test_laterality_precedence(write_mg) -> None:
    meta = _header_variant(write_mg, "a.dcm", ImageLaterality="R", Laterality="L", PatientOrientation=["A", "R"])
    assert (meta.laterality, meta.laterality_source) == ("R", "ImageLaterality")
    meta = _header_variant(write_mg, "b.dcm", Laterality="L", PatientOrientation=["P", "L"])
    assert (meta.laterality, meta.laterality_source) == ("L", "Laterality")
    meta = _header_variant(write_mg, "c.dcm", ImageLaterality="B", Laterality="R")
    assert (meta.laterality, meta.laterality_source) == ("R", "Laterality")


@pytest.mark.parametrize(
    ("orientation", "expected"),
    [
        (["A", "R"], "L"),
        (["A", "FR"], "L"),
        (["P", "L"], "R"),
        (["P", "FL"], "R"),
        (["A", "L"], None),
        (["R", "P"], None),
    ],
)
def test_laterality_from_patient_orientation(write_mg, orientation: list[str], expected: str | None) -> None:
    meta = _header_variant(write_mg, "o.dcm", PatientOrientation=orientation)
    assert meta.laterality == expected
    assert meta.laterality_source == ("PatientOrientation" if expected else None)


def _code(value: str, meaning: str, scheme: str = "SRT") -> Dataset:
    return _ds(CodeValue=value, CodeMeaning=meaning, CodingSchemeDesignator=scheme)


def test_view_code_sequence_wins_and_flatfield_is_not_a_view(write_mg) -> None:
    cc = DicomSequence([_code("R-10242", "cranio-caudal")])
    assert _header_variant(write_mg, "a.dcm", ViewPosition="FLATFIELD", ViewCodeSequence=cc).view == "CC"
    assert _header_variant(write_mg, "b.dcm", ViewPosition="MLO", ViewCodeSequence=cc).view == "CC"
    assert _header_variant(write_mg, "c.dcm", ViewPosition="FLATFIELD").view is None
    assert _header_variant(write_mg, "d.dcm", ViewPosition="MLO").view == "MLO"
    assert _header_variant(write_mg, "e.dcm", ViewPosition="RCC").view == "CC"
    assert _header_variant(write_mg, "f.dcm", ViewPosition="LM").view == "LM"  # a view, not L + M
    sct = DicomSequence([_code("399368009", "Medio-lateral oblique", "SCT")])
    assert _header_variant(write_mg, "g.dcm", ViewCodeSequence=sct).view == "MLO"
    odd = DicomSequence([_code("X-1", "medio-lateral")])
    assert _header_variant(write_mg, "h.dcm", ViewCodeSequence=odd).view == "ML"


def test_spacing_sources(write_mg) -> None:
    stored = np.zeros((8, 8), np.uint16)
    imager = read_dicom(write_mg(stored, "i.dcm", pixel_spacing_mm=(0.1, 0.05), windows=[(1, 2)])).meta
    assert imager.pixel_spacing_mm == (0.1, 0.05) and imager.spacing_source == "ImagerPixelSpacing"
    both = read_dicom(
        write_mg(stored, "p.dcm", pixel_spacing_mm=(0.1, 0.1), windows=[(1, 2)], extra={"PixelSpacing": [0.07, 0.08]})
    ).meta
    assert both.pixel_spacing_mm == (0.07, 0.08) and both.spacing_source == "PixelSpacing"
    bad = read_dicom(
        write_mg(stored, "b.dcm", pixel_spacing_mm=(0.1, 0.1), windows=[(1, 2)], extra={"PixelSpacing": [0, 0.1]})
    ).meta
    assert bad.spacing_source == "ImagerPixelSpacing"  # an unusable Pixel Spacing falls through
    none = read_dicom(write_mg(stored, "n.dcm", pixel_spacing_mm=None, windows=[(1, 2)])).meta
    assert none.pixel_spacing_mm is None and none.spacing_source is None


def test_meta_to_dict_and_with_meta(write_mg, ramp) -> None:
    mammo = read_dicom(write_mg(ramp(12), bits_stored=12, windows=[(2048, 4096)], manufacturer="ACME"))
    info = mammo.meta.to_dict()
    assert info["window"] == [2048.0, 4096.0] and info["manufacturer"] == "ACME" and info["modality"] == "MG"
    assert all(info[k] for k in ("study_uid", "series_uid", "sop_uid", "transfer_syntax"))
    changed = mammo.with_meta(laterality="R", laterality_source="filename")
    assert isinstance(changed, Mammogram) and changed.meta.laterality == "R" and changed.pixels is mammo.pixels
    assert mammo.meta.laterality == "L"


# --------------------------------------------------------------------------- real MG headers (BCEDGE_DATA)


def test_real_ge_for_presentation_header(bcedge_data: Path) -> None:
    path = bcedge_data / HEADERS / "MG-Im-GE_Seno_1_ForPresentation.dcm"
    mammo = read_dicom(path)
    meta = mammo.meta
    assert (meta.laterality, meta.laterality_source) == ("L", "ImageLaterality")
    assert meta.view == "CC" and meta.manufacturer == "GE MEDICAL SYSTEMS"
    assert meta.photometric == "MONOCHROME2" and meta.presentation_lut_shape == "IDENTITY" and not meta.inverted
    assert meta.presentation_intent == "FOR PRESENTATION"
    assert meta.pixel_spacing_mm == pytest.approx((74.708182, 46.575)) and meta.spacing_source == "PixelSpacing"
    assert meta.bits_stored == 12 and meta.window_source == "voi_lut_sequence"
    assert meta.sop_uid == "1.3.6.1.4.1.5962.99.1.1270844358.1571783457.1525984267206.8.0"
    assert meta.study_uid and meta.series_uid and meta.study_uid != meta.series_uid
    # Three windows with VOI LUT Function SIGMOID: the first one applies when the window is asked for.
    windowed = read_dicom(path, voi="window").meta
    assert windowed.window == (2262.0, 380.0) and windowed.voi_function == "SIGMOID"


@pytest.mark.parametrize("name", ["MG-Im-GE_Seno_1_ForPresentation.dcm", "MG-Im-GE_Seno_2_ForPresentation.dcm"])
def test_real_ge_voi_lut_tabulates_its_sigmoid_window(bcedge_data: Path, name: str) -> None:
    # GE ships each SIGMOID window also as a VOI LUT item: the two alternative views must agree,
    # which checks LUT decoding (first mapped, 12-bit entries) against the window path.
    ds = pydicom.dcmread(bcedge_data / HEADERS / name)
    for index in range(len(ds.VOILUTSequence)):
        item = ds.VOILUTSequence[index]
        n, first, _ = item.LUTDescriptor
        x = np.arange(first - 200, first + n + 200, dtype=float)
        one = _ds(VOILUTSequence=DicomSequence([item]))
        lut = apply_voi_lut_sequence(x, one)
        sig = window_sigmoid(x, float(ds.WindowCenter[index]), float(ds.WindowWidth[index]))
        assert np.abs(lut - sig).max() < 2 / 4095


def test_real_ge_for_processing_monochrome1_inverse(bcedge_data: Path) -> None:
    path = bcedge_data / HEADERS / "MG-Im-GE_Seno_1_ForProcessing.dcm"
    mammo = read_dicom(path)
    meta = mammo.meta
    assert meta.presentation_intent == "FOR PROCESSING" and meta.window_source == "robust"
    assert meta.photometric == "MONOCHROME1" and meta.presentation_lut_shape == "INVERSE" and meta.inverted
    assert meta.bits_stored == 11
    stored = pydicom.dcmread(path).pixel_array  # [[1137, 1130]]: more exposure on the left pixel
    assert stored[0, 0] > stored[0, 1]
    # One inversion: the more exposed (less dense) pixel is the darker one.
    assert mammo.pixels.tolist() == [[0.0, 1.0]]


def test_real_ge_scaled_for_processing_laterality_and_spacing(bcedge_data: Path) -> None:
    meta = read_dicom(bcedge_data / HEADERS / "MG-Im-GE-SenDS-scaled.dcm").meta
    assert (meta.laterality, meta.view, meta.photometric, meta.inverted) == ("L", "CC", "MONOCHROME1", True)
    assert meta.bits_stored == 14 and meta.window_source == "robust"
    assert meta.pixel_spacing_mm == pytest.approx((53.961136, 45.0225)) and meta.spacing_source == "PixelSpacing"


def test_real_hologic_header_with_pixels_added(bcedge_data: Path, spaced_dir: Path) -> None:
    # The Hologic file has no Pixel Data (see test_dicom_errors); give it some to read its header.
    ds = pydicom.dcmread(bcedge_data / HEADERS / "MG-Im-Hologic-PropProj.dcm")
    stored = (np.arange(ds.Rows * ds.Columns) % 1000).reshape(ds.Rows, ds.Columns).astype(np.uint16)
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW"
    path = spaced_dir / "hologic.dcm"
    ds.save_as(path)
    mammo = read_dicom(path)
    meta = mammo.meta
    assert (meta.laterality, meta.laterality_source) == ("R", "Laterality")  # no Image Laterality
    assert meta.view == "CC"  # View Position FLATFIELD is no view; View Code Sequence says cranio-caudal
    assert meta.manufacturer == "HOLOGIC, Inc." and meta.presentation_intent is None
    assert meta.photometric == "MONOCHROME1" and meta.presentation_lut_shape == "INVERSE" and meta.inverted
    assert meta.pixel_spacing_mm is None and meta.window == (109.0, 500.0)
    np.testing.assert_allclose(mammo.pixels, 1 - window_linear(stored.astype(float), 109, 500), atol=1e-6)


# --------------------------------------------------------------------------- rasters


def test_read_raster_png_8_and_16_bit(spaced_dir: Path) -> None:
    img8 = np.arange(256, dtype=np.uint8).reshape(16, 16)
    cv2.imwrite(str(spaced_dir / "a.png"), img8)
    m8 = read_mammogram(spaced_dir / "a.png")
    np.testing.assert_allclose(m8.pixels, img8 / 255.0, atol=1e-7)
    assert m8.meta.bits_stored == 8 and m8.meta.modality is None and m8.meta.laterality is None
    img12 = (np.arange(256, dtype=np.uint16) * 16).reshape(16, 16)  # 12-bit data in a 16-bit PNG
    cv2.imwrite(str(spaced_dir / "b.png"), img12)
    m12 = read_raster(spaced_dir / "b.png")
    assert m12.meta.bits_stored == 12
    np.testing.assert_allclose(m12.pixels, img12 / 4095.0, atol=1e-7)


def test_read_raster_pgm_uses_header_maxval(spaced_dir: Path) -> None:
    img = (np.arange(64, dtype=np.uint16) * 10).reshape(8, 8)  # max 630, header says 4095
    header = b"P5\n# a comment\n8 8\n4095\n"
    (spaced_dir / "a.pgm").write_bytes(header + img.astype(">u2").tobytes())
    mammo = read_mammogram(spaced_dir / "a.pgm")
    np.testing.assert_allclose(mammo.pixels, img / 4095.0, atol=1e-7)
    img8 = np.arange(64, dtype=np.uint8).reshape(8, 8)
    (spaced_dir / "b.pgm").write_bytes(b"P5 8 8 255\n" + img8.tobytes())
    np.testing.assert_allclose(read_raster(spaced_dir / "b.pgm").pixels, img8 / 255.0, atol=1e-7)


def test_read_raster_jpeg_tiff_and_colour(spaced_dir: Path) -> None:
    grad = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (32, 1))
    cv2.imwrite(str(spaced_dir / "a.jpg"), grad, [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert np.abs(read_mammogram(spaced_dir / "a.jpg").pixels - grad / 255.0).max() < 3 / 255
    tiff16 = (np.arange(32 * 64, dtype=np.uint16) * 32).reshape(32, 64)
    cv2.imwrite(str(spaced_dir / "a.tif"), tiff16)
    np.testing.assert_allclose(read_mammogram(spaced_dir / "a.tif").pixels, tiff16 / 65535.0, atol=1e-7)
    colour = np.dstack([grad, grad, grad])
    cv2.imwrite(str(spaced_dir / "c.png"), colour)
    np.testing.assert_allclose(read_mammogram(spaced_dir / "c.png").pixels, grad / 255.0, atol=1e-7)


def test_real_mias_png_and_original_pgm_agree(bcedge_data: Path) -> None:
    pgms = sorted((bcedge_data / "mini-mias" / "original-pgm").glob("*.pgm"))
    if not pgms:
        pytest.skip("no original PGM in mini-mias/original-pgm")
    pgm = pgms[0]
    png = next((bcedge_data / "mini-mias").rglob(pgm.stem + ".png"), None)
    if png is None:
        pytest.skip(f"no PNG for {pgm.stem}")
    a, b = read_mammogram(pgm), read_mammogram(png)
    assert a.pixels.shape == (1024, 1024) and a.meta.bits_stored == 8
    np.testing.assert_array_equal(a.pixels, b.pixels)  # the PNGs are lossless re-encodings


def test_read_mammogram_dispatch(spaced_dir: Path, write_mg) -> None:
    stored = np.full((8, 8), 5, np.uint16)
    no_suffix = write_mg(stored, "IM0001", windows=[(5, 10)])
    assert read_mammogram(no_suffix).meta.modality == "MG"
    assert dicom.is_dicom_file(no_suffix) and dicom.is_dicom_file(spaced_dir / "x.dcm")
    np.testing.assert_allclose(read_mammogram(no_suffix).pixels, window_linear(stored.astype(float), 5, 10), atol=1e-6)


def test_big_endian_file_with_ow_lut(spaced_dir: Path, ramp) -> None:
    # Explicit VR Big Endian (retired, still met in archives): Pixel Data and OW LUT Data in file byte order.
    stored = ramp(12)
    lut = (np.arange(4096) // 2).astype(np.uint16)
    ds = build_mg_dataset(stored, MGTags(bits_stored=12, voi_lut=(0, 12, lut.tolist())))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRBigEndian
    ds.PixelData = stored.astype(">u2").tobytes()
    del ds.VOILUTSequence[0].LUTData
    ds.VOILUTSequence[0].add_new(0x00283006, "OW", lut.astype(">u2").tobytes())
    path = spaced_dir / "big endian.dcm"
    ds.save_as(path, enforce_file_format=True)
    np.testing.assert_allclose(read_dicom(path).pixels, lut[stored] / 4095, atol=1e-6)


def test_pydicom_warnings_go_to_the_debug_log(write_mg, ramp, monkeypatch, caplog) -> None:
    import warnings

    path = write_mg(ramp(12), bits_stored=12, windows=[(2048, 4096)])
    real = pydicom.dcmread

    def warning_dcmread(*args, **kwargs):
        warnings.warn("vendor quirk tolerated", UserWarning, stacklevel=2)
        return real(*args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", warning_dcmread)
    caplog.set_level("DEBUG", logger="bcedge.dicom")
    with warnings.catch_warnings(record=True) as leaked:
        warnings.simplefilter("always")
        read_dicom(path)
    assert not leaked  # nothing reaches the user's stderr (one-line CLI errors)
    assert "vendor quirk tolerated" in caplog.text


def test_reading_in_threads_leaves_warning_state_alone(write_mg, ramp) -> None:
    import threading
    import warnings

    path = write_mg(ramp(12), bits_stored=12, windows=[(2048, 4096)])
    before = (warnings.showwarning, list(warnings.filters))
    shapes: list[tuple[int, ...]] = []
    threads = [threading.Thread(target=lambda: shapes.append(read_dicom(path).pixels.shape)) for _ in range(4)]
    for thread in threads:
        thread.start()
    read_dicom(path)
    for thread in threads:
        thread.join()
    assert shapes == [(64, 80)] * 4
    assert (warnings.showwarning, list(warnings.filters)) == before


# --------------------------------------------------------------------------- uncompressed Pixel Data in the map


def _large_scan(folder: Path, *, private_bytes: int = 0, implicit: bool = False) -> tuple[Path, np.ndarray]:
    """A 1024x768 12-bit MG file (1.5 MB of Pixel Data: over dicom._MAP_PIXELS_BYTES) and its stored values."""
    rng = np.random.default_rng(7)
    stored = rng.integers(0, 4096, (1024, 768), dtype=np.uint16)
    ds = build_mg_dataset(stored, MGTags(bits_stored=12, windows=[(2048, 4096)]))
    if private_bytes:
        ds.add_new(0x00090010, "LO", "BCEDGE TEST")
        ds.add_new(0x00091001, "OB", bytes(range(256)) * (private_bytes // 256))
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    path = folder / "large.dcm"
    ds.save_as(path, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
    return path, stored


def _maps(arr: np.ndarray) -> bool:
    """Whether ``arr`` views a memory map (its base chain ends in one)."""
    import mmap

    base = arr
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(base.obj if isinstance(base, memoryview) else base, mmap.mmap)


@pytest.mark.parametrize("implicit", [False, True])
def test_large_pixel_data_is_viewed_in_the_file_map(tmp_path: Path, implicit: bool) -> None:
    import copy
    import pickle

    path, stored = _large_scan(tmp_path, implicit=implicit)
    m = read_dicom(path)
    assert m.stored is not None and _maps(m.stored.values)
    assert np.array_equal(m.stored.values, stored)
    assert np.array_equal(m.stored.values, pydicom.dcmread(path).pixel_array)
    assert not m.stored.values.flags.writeable
    # The header kept on the Mammogram holds no map: it can be copied and pickled like any data set.
    assert "PixelData" not in m.header and m.header.buffer is None
    copy.deepcopy(m.header)
    assert pickle.loads(pickle.dumps(m.header)).Rows == 1024
    # The Mammogram itself pickles (the pixels are copied out of the map) and gives the same display.
    again = pickle.loads(pickle.dumps(m))
    assert np.array_equal(again.stored.values, stored) and np.array_equal(again.pixels, m.pixels)


def test_small_pixel_data_is_still_copied(tmp_path: Path) -> None:
    stored = (np.arange(64 * 80).reshape(64, 80) % 4096).astype(np.uint16)
    path = save_atomic(build_mg_dataset(stored, MGTags(bits_stored=12)), tmp_path / "small.dcm")
    m = read_dicom(path)
    assert m.stored is not None and not _maps(m.stored.values)
    assert np.array_equal(m.stored.values, stored)


def test_large_private_element_is_read_from_the_file_when_asked(tmp_path: Path) -> None:
    # pydicom's defer_size skips every value over the limit, not only the pixels: the others are read
    # by file name when something asks for them, as pydicom does for a path.
    path, stored = _large_scan(tmp_path, private_bytes=2 << 20)
    m = read_dicom(path)
    assert np.array_equal(m.stored.values, stored)
    assert m.header[0x00091001].value == bytes(range(256)) * ((2 << 20) // 256)


@pytest.mark.parametrize("cut", [1, 3001, 1 << 20])
def test_large_pixel_data_cut_short_is_refused(tmp_path: Path, cut: int) -> None:
    path, _ = _large_scan(tmp_path)
    raw = path.read_bytes()
    short = tmp_path / "short.dcm"
    short.write_bytes(raw[:-cut])
    with pytest.raises(DicomError, match=r"Pixel Data \(7FE0,0010\) is incomplete, truncated file"):
        read_dicom(short)


def test_rows_beyond_the_mapped_pixel_data_are_refused(tmp_path: Path) -> None:
    # The header promises more pixels than the (complete) element holds.
    path, _ = _large_scan(tmp_path)
    ds = pydicom.dcmread(path)
    ds.Rows = 1100
    bad = tmp_path / "rows.dcm"
    ds.save_as(bad, enforce_file_format=True)
    with pytest.raises(DicomError, match="holds 1572864 bytes but Rows x Columns x Bits Allocated"):
        read_dicom(bad)


@pytest.mark.parametrize("length", [0, 2, 3, 1 << 20, 0xFFFFFFF0, 0xFFFFFFFF])
def test_mapped_pixel_data_with_a_wrong_length_is_refused(tmp_path: Path, length: int) -> None:
    import struct

    path, _ = _large_scan(tmp_path)
    data = bytearray(path.read_bytes())
    at = data.find(b"\xe0\x7f\x10\x00OW")  # Pixel Data, explicit VR: tag, VR, 2 reserved bytes, 4-byte length
    data[at + 8 : at + 12] = struct.pack("<I", length)
    bad = tmp_path / "length.dcm"
    bad.write_bytes(bytes(data))
    with pytest.raises(DicomError, match="Pixel Data"):
        read_dicom(bad)
