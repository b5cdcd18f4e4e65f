"""Outside oracle for the DICOM display pipeline: dcmtk.

``dcmj2pnm +Wi 1`` renders a file through its Modality LUT, first window (with the
VOI LUT Function) and Presentation LUT Shape to 8 bits; ``+Wl 1`` uses the first
VOI LUT item instead. bcedge's ``np.rint(pixels * 255)`` must match within one grey
level (dcmtk truncates where bcedge rounds, hence the tolerance).

Conventions checked here (dcmtk 3.6.7):

* dcmtk renders the *displayed* image: MONOCHROME1 comes out inverted, and
  MONOCHROME1 + Presentation LUT Shape INVERSE is inverted once, as in bcedge.
* MONOCHROME1 + IDENTITY (non-conformant in DX/MG, whose rule is INVERSE with
  MONOCHROME1) differs: dcmtk lets the explicit shape decide and does not invert;
  bcedge follows the Photometric Interpretation, whose definition (PS3.3
  C.7.6.3.1.2) says the minimum value is displayed white, as known DX files with
  wrong shapes need (dcm4chee-arc-light issue 3155). The test pins that difference.
* dcmtk 3.6.7 has no LINEAR_EXACT: it renders such windows as LINEAR. bcedge follows
  PS3.3 C.11.2.1.3.2; with a wide window the two differ by < 0.3 grey level and are
  compared directly, with a narrow one the test checks that every disagreement is
  exactly dcmtk's LINEAR fallback.

Compressed transfer syntaxes written by dcmtk's own encoders (``dcmcjpls``,
``dcmcjpeg``, ``dcmcrle``) must decode to the uncompressed file's pixels.

Skipped when dcmtk is not installed; CI installs it (``apt-get install dcmtk``).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest

from bcedge.dicom import read_dicom, window_linear, window_linear_exact
from bcedge.dicom_write import MGTags, build_mg_dataset, save_atomic

pytestmark = pytest.mark.skipif(
    shutil.which("dcmj2pnm") is None, reason="dcmtk is not installed (apt-get install dcmtk); CI runs these"
)


def dcmtk_render(path: Path, *options: str) -> np.ndarray:
    """dcmj2pnm's 8-bit rendering of ``path`` as (H, W) int, via a binary PGM next to it."""
    out = path.with_name(path.stem + " dcmtk.pgm")
    result = subprocess.run(
        ["dcmj2pnm", *options, "+op", str(path), str(out)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    data = out.read_bytes()
    fields = data.split(maxsplit=4)
    assert fields[0] == b"P5" and fields[3] == b"255", data[:20]
    width, height = int(fields[1]), int(fields[2])
    return np.frombuffer(fields[4][: width * height], np.uint8).reshape(height, width).astype(int)


def ours(path: Path, voi: str = "auto") -> np.ndarray:
    return np.rint(read_dicom(path, voi=voi).pixels * 255).astype(int)  # type: ignore[arg-type]


def _gamma_lut(n: int, bits: int, power: float) -> list[int]:
    return [int(v) for v in np.rint((2**bits - 1) * np.linspace(0, 1, n) ** power)]


# id -> (bits, signed, MGTags fields, dcmj2pnm VOI option)
WINDOW = ("+Wi", "1")
VOI_LUT = ("+Wl", "1")
AGREE: dict[str, tuple[int, bool, dict[str, object], tuple[str, ...]]] = {
    "monochrome2 12-bit": (12, False, {"windows": [(2048, 1000)]}, WINDOW),
    "monochrome2 12-bit narrow": (12, False, {"windows": [(1999.5, 100)]}, WINDOW),
    "monochrome2 12-bit width 1": (12, False, {"windows": [(2048, 1)]}, WINDOW),
    "monochrome1 inverse 12-bit": (12, False, {"photometric": "MONOCHROME1", "windows": [(2048, 1000)]}, WINDOW),
    "monochrome1 no shape": (
        12,
        False,
        {"photometric": "MONOCHROME1", "presentation_lut_shape": None, "windows": [(2048, 1000)]},
        WINDOW,
    ),
    "monochrome2 inverse": (
        12,
        False,
        {"photometric": "MONOCHROME2", "presentation_lut_shape": "INVERSE", "windows": [(2048, 1000)]},
        WINDOW,
    ),
    "14-bit": (14, False, {"windows": [(8000, 6000)]}, WINDOW),
    "16-bit": (16, False, {"windows": [(30000, 20000)]}, WINDOW),
    "16-bit identity window": (16, False, {"windows": [(32768, 65536)]}, WINDOW),
    "16-bit monochrome1": (16, False, {"photometric": "MONOCHROME1", "windows": [(20000, 30000)]}, WINDOW),
    "rescale slope 2 intercept -1000": (12, False, {"rescale": (2.0, -1000.0), "windows": [(3000, 4000)]}, WINDOW),
    "rescale slope 0.5 intercept 10": (12, False, {"rescale": (0.5, 10.0), "windows": [(1000, 800)]}, WINDOW),
    "several windows, first applies": (12, False, {"windows": [(1000, 800), (3000, 200)]}, WINDOW),
    "sigmoid narrow": (12, False, {"windows": [(2048, 100)], "voi_function": "SIGMOID"}, WINDOW),
    "sigmoid wide": (12, False, {"windows": [(2048, 3000)], "voi_function": "SIGMOID"}, WINDOW),
    "sigmoid monochrome1 16-bit": (
        16,
        False,
        {"photometric": "MONOCHROME1", "windows": [(30000, 20000)], "voi_function": "SIGMOID"},
        WINDOW,
    ),
    "linear exact wide": (12, False, {"windows": [(2048, 2000)], "voi_function": "LINEAR_EXACT"}, WINDOW),
    "voi lut 12-bit": (12, False, {"voi_lut": (0, 12, _gamma_lut(4096, 12, 0.5))}, VOI_LUT),
    "voi lut 16-bit offset, clamped both ends": (12, False, {"voi_lut": (1000, 16, _gamma_lut(2000, 16, 2))}, VOI_LUT),
    "voi lut 8-bit": (12, False, {"voi_lut": (1500, 8, _gamma_lut(1500, 8, 0.7))}, VOI_LUT),
    "voi lut monochrome1": (
        12,
        False,
        {"photometric": "MONOCHROME1", "voi_lut": (1000, 16, _gamma_lut(2000, 16, 2))},
        VOI_LUT,
    ),
    "voi lut after rescale": (
        12,
        False,
        {"rescale": (2.0, -500.0), "voi_lut": (0, 12, _gamma_lut(8000, 12, 0.8))},
        VOI_LUT,
    ),
    "signed 12-bit": (12, True, {"windows": [(0, 1000)]}, WINDOW),
    "signed with rescale": (12, True, {"rescale": (1.0, 2048.0), "windows": [(2048, 1000)]}, WINDOW),
}


@pytest.mark.parametrize("case", list(AGREE))
def test_matches_dcmtk_within_one_grey_level(case: str, write_mg: Callable[..., Path], ramp) -> None:
    bits, signed, tags, options = AGREE[case]
    stored = ramp(bits, signed=signed)
    path = write_mg(stored, f"{case}.dcm", bits_stored=bits, **tags)
    reference = dcmtk_render(path, *options)
    mine = ours(path)
    diff = np.abs(mine - reference)
    assert diff.max() <= 1, (
        f"max |bcedge - dcmtk| = {diff.max()} at stored {stored[np.unravel_index(diff.argmax(), diff.shape)]}"
    )
    assert mine.min() < 64 and mine.max() > 192  # the ramp exercises the dark, mid and bright ends


def test_eight_bits_allocated_matches_dcmtk(spaced_dir: Path) -> None:
    stored = np.arange(256, dtype=np.uint16).repeat(4).reshape(32, 32)
    ds = build_mg_dataset(stored, MGTags(bits_stored=8, photometric="MONOCHROME1", windows=[(120, 160)]))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = stored.astype(np.uint8).tobytes()
    ds["PixelData"].VR = "OB"
    path = save_atomic(ds, spaced_dir / "eight bit.dcm")
    assert np.abs(ours(path) - dcmtk_render(path, *WINDOW)).max() <= 1


def test_monochrome1_identity_is_where_dcmtk_and_bcedge_differ(write_mg: Callable[..., Path], ramp) -> None:
    """Non-conformant MONOCHROME1 + IDENTITY: dcmtk obeys the shape, bcedge the Photometric Interpretation."""
    stored = ramp(12)
    tags = {"bits_stored": 12, "photometric": "MONOCHROME1", "windows": [(2048, 1000)]}
    ident = write_mg(stored, "m1 identity.dcm", presentation_lut_shape="IDENTITY", **tags)
    inverse = write_mg(stored, "m1 inverse.dcm", presentation_lut_shape="INVERSE", **tags)
    # dcmtk: IDENTITY shows the window output as is, INVERSE inverts it.
    assert np.abs(dcmtk_render(ident, *WINDOW) - (255 - dcmtk_render(inverse, *WINDOW))).max() <= 1
    # bcedge: MONOCHROME1 means minimum is white either way, so both files look the same...
    np.testing.assert_array_equal(ours(ident), ours(inverse))
    # ...which is dcmtk's rendering of the conformant file, and the inverse of its IDENTITY rendering.
    assert np.abs(ours(ident) - (255 - dcmtk_render(ident, *WINDOW))).max() <= 1
    assert read_dicom(ident).meta.inverted


def test_linear_exact_narrow_window_follows_the_standard_not_dcmtk(write_mg: Callable[..., Path], ramp) -> None:
    stored = ramp(12)
    path = write_mg(stored, "exact.dcm", bits_stored=12, windows=[(2048, 2)], voi_function="LINEAR_EXACT")
    mine = ours(path)
    expected = np.rint(window_linear_exact(stored.astype(float), 2048, 2) * 255).astype(int)
    np.testing.assert_array_equal(mine, expected)
    assert set(mine[stored == 2048].tolist()) == {128}  # (x - c) / w + 0.5 at the centre
    reference = dcmtk_render(path, *WINDOW)
    as_linear = np.rint(window_linear(stored.astype(float), 2048, 2) * 255).astype(int)
    disagree = np.abs(mine - reference) > 1
    # Every disagreement is dcmtk rendering LINEAR instead (none at all once dcmtk implements LINEAR_EXACT).
    np.testing.assert_array_equal(reference[disagree], as_linear[disagree])


# --------------------------------------------------------------------------- real GE headers


@pytest.mark.parametrize("name", ["MG-Im-GE_Seno_1_ForPresentation.dcm", "MG-Im-GE_Seno_2_ForPresentation.dcm"])
@pytest.mark.parametrize(("voi", "options"), [("lut", VOI_LUT), ("window", WINDOW)])
def test_real_ge_files_match_dcmtk(bcedge_data: Path, name: str, voi: str, options: tuple[str, ...]) -> None:
    # Real VOI LUT items (12-bit, first mapped ~1400) and the first of three SIGMOID windows.
    path = bcedge_data / "dicom-headers" / name
    assert np.abs(ours(path, voi) - dcmtk_render(path, *options)).max() <= 1


# --------------------------------------------------------------------------- dcmtk-compressed files

COMPRESSORS = {
    "JPEG-LS lossless (dcmcjpls)": (["dcmcjpls"], "1.2.840.10008.1.2.4.80"),
    "JPEG lossless SV1 (dcmcjpeg)": (["dcmcjpeg", "--encode-lossless-sv1"], "1.2.840.10008.1.2.4.70"),
    "RLE (dcmcrle)": (["dcmcrle"], "1.2.840.10008.1.2.5"),
}


@pytest.mark.parametrize("codec", list(COMPRESSORS))
@pytest.mark.parametrize(
    ("bits", "signed", "photometric"),
    [(12, False, "MONOCHROME2"), (16, False, "MONOCHROME1"), (12, True, "MONOCHROME2")],
)
def test_dcmtk_compressed_decodes_to_the_same_pixels(
    codec: str, bits: int, signed: bool, photometric: str, write_mg: Callable[..., Path]
) -> None:
    command, uid = COMPRESSORS[codec]
    if shutil.which(command[0]) is None:
        pytest.skip(f"{command[0]} not installed")
    rng = np.random.default_rng(bits)
    stored = rng.integers(0, 2**bits, (64, 80)).astype(np.uint16)
    if signed:
        stored = (stored.astype(np.int32) - 2 ** (bits - 1)).astype(np.int16)
    centre = 0 if signed else 2 ** (bits - 1)
    plain = write_mg(
        stored, f"plain {bits}.dcm", bits_stored=bits, photometric=photometric, windows=[(centre, 2**bits)]
    )
    packed = plain.with_name(f"packed {bits}.dcm")
    result = subprocess.run([*command, str(plain), str(packed)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert str(pydicom.dcmread(packed).file_meta.TransferSyntaxUID) == uid
    mammo = read_dicom(packed)
    assert mammo.meta.transfer_syntax == uid
    np.testing.assert_array_equal(pydicom.dcmread(packed).pixel_array, stored)
    np.testing.assert_array_equal(mammo.pixels, read_dicom(plain).pixels)
