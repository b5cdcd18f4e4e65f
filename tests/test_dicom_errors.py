"""Bad inputs to the mammogram reader: each is one BcedgeError line quoting the tag or path.

Every case runs through the library (``read_mammogram``) and through the CLI
(``bcedge inspect`` must exit 2 with exactly one ``error:`` line and no traceback).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import DataElement

from bcedge import dicom
from bcedge.cli import main
from bcedge.dicom import read_dicom, read_mammogram
from bcedge.dicom_write import MGTags, build_mg_dataset, save_atomic
from bcedge.errors import BcedgeError, DicomError, InputError, MissingDependencyError, UnsupportedImageError

Maker = Callable[[Path], Path]


def _good(folder: Path) -> Path:
    stored = (np.arange(64 * 80).reshape(64, 80) % 4096).astype(np.uint16)
    return save_atomic(build_mg_dataset(stored, MGTags(bits_stored=12, windows=[(2048, 4096)])), folder / "good.dcm")


def _variant(name: str, **changes: object) -> Maker:
    """A maker writing the good file with tags changed (None deletes the tag)."""

    def make(folder: Path) -> Path:
        ds = pydicom.dcmread(_good(folder))
        for key, value in changes.items():
            if value is None:
                delattr(ds, key)
            else:
                setattr(ds, key, value)
        path = folder / name
        ds.save_as(path, enforce_file_format=False)
        return path

    return make


def _raw_element(name: str, tag: int, vr: str, value: object) -> Maker:
    """A maker writing a tag with a VR that lets an unparsable value through (e.g. LO for a DS tag)."""

    def make(folder: Path) -> Path:
        ds = pydicom.dcmread(_good(folder))
        ds.add(DataElement(tag, vr, value))
        path = folder / name
        ds.save_as(path)
        return path

    return make


def _bytes(name: str, data: bytes) -> Maker:
    def make(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path

    return make


def _truncated(name: str, keep: Callable[[int], int]) -> Maker:
    def make(folder: Path) -> Path:
        raw = _good(folder).read_bytes()
        path = folder / name
        path.write_bytes(raw[: keep(len(raw))])
        return path

    return make


def _rgb(folder: Path) -> Path:
    ds = pydicom.dcmread(_good(folder))
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = np.zeros((64, 80, 3), np.uint8).tobytes()
    path = folder / "rgb.dcm"
    ds.save_as(path)
    return path


def _png_named_dcm(folder: Path) -> Path:
    import cv2

    path = folder / "really a png.dcm"
    path.write_bytes(cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes())
    return path


def _directory(folder: Path) -> Path:
    path = folder / "a folder.dcm"
    path.mkdir()
    return path


_STORED = (np.arange(64 * 80).reshape(64, 80) % 4096).astype(np.uint16)

#: id -> (maker, expected error type, text the message must contain)
CASES: dict[str, tuple[Maker, type[BcedgeError], str]] = {
    "missing path": (lambda d: d / "nope.dcm", InputError, "no such file"),
    "directory": (_directory, InputError, "is a directory"),
    "empty file": (_bytes("empty.dcm", b""), InputError, "empty file"),
    "text file": (_bytes("notes.dcm", b"hello, not a DICOM file\n" * 20), DicomError, "not a DICOM file"),
    "random bytes": (
        _bytes("noise.dcm", np.random.default_rng(0).integers(0, 256, 4000).astype(np.uint8).tobytes()),
        DicomError,
        "not a DICOM file",
    ),
    "png named .dcm": (_png_named_dcm, DicomError, "it is a PNG image"),
    "shorter than preamble": (_truncated("t50.dcm", lambda n: 50), DicomError, "too short"),
    "truncated meta": (_truncated("t140.dcm", lambda n: 140), DicomError, "truncated file"),
    "truncated header": (_truncated("t400.dcm", lambda n: 400), DicomError, "truncated file"),
    "truncated pixels": (
        _truncated("tpix.dcm", lambda n: n - 3001),
        DicomError,
        "Pixel Data (7FE0,0010) is incomplete",
    ),
    "one byte short": (_truncated("t1.dcm", lambda n: n - 1), DicomError, "Pixel Data (7FE0,0010) is incomplete"),
    "no pixel data": (_variant("nopix.dcm", PixelData=None), DicomError, "no Pixel Data (7FE0,0010)"),
    "modality CT": (_variant("ct.dcm", Modality="CT"), DicomError, "Modality (0008,0060) is 'CT'"),
    "modality missing": (_variant("nomod.dcm", Modality=None), DicomError, "Modality (0008,0060) is 'missing'"),
    "multi-frame": (
        _variant("tomo.dcm", NumberOfFrames=3, PixelData=np.concatenate([_STORED] * 3).tobytes()),
        UnsupportedImageError,
        "tomosynthesis",
    ),
    "rgb": (_rgb, UnsupportedImageError, "Photometric Interpretation (0028,0004) is 'RGB'"),
    "palette colour": (
        _variant("pal.dcm", PhotometricInterpretation="PALETTE COLOR"),
        UnsupportedImageError,
        "'PALETTE COLOR'",
    ),
    "ybr": (_variant("ybr.dcm", PhotometricInterpretation="YBR_FULL"), UnsupportedImageError, "'YBR_FULL'"),
    "zero rows": (_variant("zero.dcm", Rows=0), DicomError, "Rows x Columns (0028,0010/0011) is 0x80"),
    "absurd size": (_variant("huge.dcm", Rows=20000, Columns=20000), DicomError, "refusing more than 50 MP"),
    "size beyond the data": (_variant("big.dcm", Rows=6000, Columns=6000), DicomError, "holds 10240 bytes"),
    "bits stored > allocated": (
        _variant("bits.dcm", BitsStored=17, HighBit=16),
        DicomError,
        "Bits Stored (0028,0101) 17 exceeds Bits Allocated (0028,0100) 16",
    ),
    "32 bits allocated": (
        _variant("b32.dcm", BitsAllocated=32, BitsStored=32, HighBit=31),
        UnsupportedImageError,
        "Bits Allocated (0028,0100) 32",
    ),
    "window centre text": (
        _raw_element("wc.dcm", 0x00281050, "LO", "abc"),
        DicomError,
        "Window Center/Width (0028,1050/1051) unreadable",
    ),
    "window width zero": (_variant("ww.dcm", WindowWidth="0"), DicomError, "Window Width (0028,1051) is 0.0"),
    "unknown VOI function": (_variant("fn.dcm", VOILUTFunction="LOG"), DicomError, "VOI LUT Function (0028,1056)"),
    "rescale text": (_raw_element("rs.dcm", 0x00281053, "LO", "x"), DicomError, "RescaleSlope (0028,1053)"),
    "rows text": (_raw_element("rows.dcm", 0x00280010, "LO", "x"), DicomError, "Rows (0028,0010) is not an integer"),
}


@pytest.fixture(params=list(CASES), ids=list(CASES))
def bad_case(request: pytest.FixtureRequest, spaced_dir: Path) -> tuple[Path, type[BcedgeError], str]:
    maker, error, text = CASES[request.param]
    return maker(spaced_dir), error, text


def _one_line_error(exc: BaseException, path: Path) -> str:
    message = str(exc)
    assert "\n" not in message, message
    assert str(path) in message, message  # names the file it is about
    return message


def test_bad_input_library(bad_case: tuple[Path, type[BcedgeError], str]) -> None:
    path, error, text = bad_case
    with pytest.raises(error) as info:
        read_mammogram(path)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    assert text in _one_line_error(info.value, path)


def test_bad_input_cli(bad_case: tuple[Path, type[BcedgeError], str], capsys: pytest.CaptureFixture[str]) -> None:
    path, _, text = bad_case
    rc = main(["inspect", str(path)])
    out, err = capsys.readouterr()
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], err
    assert "Traceback" not in err and out == ""


def test_cli_debug_shows_the_exception(spaced_dir: Path) -> None:
    path = _variant("ct.dcm", Modality="CT")(spaced_dir)
    with pytest.raises(DicomError, match="Modality"):
        main(["--debug", "inspect", str(path)])


def test_non_mg_allowed_on_request(spaced_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _variant("ct.dcm", Modality="CT")(spaced_dir)
    assert read_dicom(path, allow_non_mg=True).meta.modality == "CT"
    assert main(["inspect", "--json", "--allow-non-mg", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["modality"] == "CT"


def test_cli_inspect_json_on_a_good_file(spaced_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _good(spaced_dir)
    assert main(["inspect", "--json", str(path)]) == 0
    out, err = capsys.readouterr()
    info = json.loads(out)
    assert info["source"] == str(path) and info["modality"] == "MG" and info["rows"] == 64 and info["columns"] == 80
    assert info["window"] == [2048.0, 4096.0] and info["pixel_range"][0] >= 0.0 and info["pixel_range"][1] <= 1.0
    assert err == ""


def test_real_hologic_file_without_pixel_data(bcedge_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = bcedge_data / "dicom-headers" / "MG-Im-Hologic-PropProj.dcm"
    with pytest.raises(DicomError, match=r"no Pixel Data \(7FE0,0010\)") as info:
        read_mammogram(path)
    _one_line_error(info.value, path)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "no Pixel Data" in err


def test_absurd_size_refused_before_decoding(spaced_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _variant("huge.dcm", Rows=20000, Columns=20000)(spaced_dir)
    assert path.stat().st_size < 20_000  # the header claims 400 MP, the file holds 10 kB

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("pixel data decoded before the size check")

    monkeypatch.setattr(dicom, "_decode", no_decoding)
    tracemalloc.start()
    try:
        with pytest.raises(DicomError, match="20000x20000 = 400 MP"):
            read_mammogram(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000, f"peak allocation {peak / 1e6:.1f} MB"


@pytest.mark.parametrize("maker", [CASES["size beyond the data"][0], CASES["text file"][0], CASES["random bytes"][0]])
def test_bad_files_allocate_little(spaced_dir: Path, maker: Maker) -> None:
    # Corrupt lengths must not make the parser allocate what the header claims (an 81 MP image,
    # or 2 GB from a text file read as element lengths).
    path = maker(spaced_dir)
    tracemalloc.start()
    try:
        with pytest.raises(DicomError):
            read_mammogram(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000, f"peak allocation {peak / 1e6:.1f} MB"


def _rle_file(folder: Path) -> Path:
    ds = pydicom.dcmread(_good(folder))
    ds.compress(pydicom.uid.RLELossless)
    path = folder / "rle.dcm"
    ds.save_as(path)
    return path


def test_missing_decoder_names_the_extra(
    spaced_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pydicom.pixels import get_decoder

    path = _rle_file(spaced_dir)
    assert read_dicom(path).pixels.shape == (64, 80)  # decodes while its plugin is there
    decoder = get_decoder(pydicom.uid.RLELossless)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg>=2.0", "pylibjpeg-rle>=2.0")})
    with pytest.raises(MissingDependencyError) as info:
        read_dicom(path)
    message = _one_line_error(info.value, path)
    assert "pip install 'bcedge[dicom]'" in message and "RLE Lossless" in message
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bcedge[dicom]" in err


def test_missing_decoder_reported_by_pydicom_message(spaced_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the availability check (pydicom < 3), pydicom's own RuntimeError is mapped the same way.
    path = _rle_file(spaced_dir)

    def no_plugins(self: object) -> None:
        raise RuntimeError(
            "Unable to decompress 'RLE Lossless' pixel data because all plugins are missing dependencies:\n\tx"
        )

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(no_plugins))
    monkeypatch.setattr("pydicom.pixels.get_decoder", None, raising=False)
    with pytest.raises(MissingDependencyError, match=r"bcedge\[dicom\]"):
        read_dicom(path)


def test_voi_lut_with_bad_descriptor_names_the_file(spaced_dir: Path) -> None:
    stored = np.zeros((8, 8), np.uint16)
    ds = build_mg_dataset(stored, MGTags(voi_lut=(0, 12, [0, 4095])))
    ds.VOILUTSequence[0].LUTDescriptor = [2, 0, 20]
    path = save_atomic(ds, spaced_dir / "lut.dcm")
    with pytest.raises(DicomError, match=r"LUT Descriptor \(0028,3002\) gives 20 bits") as info:
        read_dicom(path)
    _one_line_error(info.value, path)


def _console_script() -> str | None:
    found = shutil.which("bcedge")
    if found:
        return found
    beside = Path(sys.executable).with_name("bcedge")
    return str(beside) if beside.exists() else None


def test_console_script_exit_code_and_no_traceback(spaced_dir: Path) -> None:
    script = _console_script()
    if script is None:
        pytest.skip("the bcedge console script is not installed (pip install -e .)")
    bad = _truncated("cut short.dcm", lambda n: n - 3001)(spaced_dir)
    env = {**os.environ, "PYTHONWARNINGS": "default"}  # pydicom warnings, if any, would show
    result = subprocess.run([script, "inspect", str(bad)], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0], result.stderr
