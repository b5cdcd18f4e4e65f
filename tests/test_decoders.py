"""bcedge.decoders: the fastest installed plugin per transfer syntax decodes to the same pixels.

The scans are real mammograms (mini-MIAS films from ``BCEDGE_DATA``) written as 8-bit and
12-bit MG DICOM, compressed by dcmtk's own encoders (JPEG-LS, lossless JPEG SV1, RLE) and by
pydicom's JPEG 2000 encoder. Every plugin pydicom has for a syntax, the chosen one included,
must give exactly the uncompressed file's stored values, and ``read_dicom`` the same pixels.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from bcedge import decoders
from bcedge.dicom import read_dicom

pytest.importorskip("pydicom.pixels", reason="pydicom >= 3 (plugin choice)")

DCMTK = {
    "1.2.840.10008.1.2.4.80": ["dcmcjpls"],  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.70": ["dcmcjpeg", "--encode-lossless-sv1"],  # lossless JPEG SV1
    "1.2.840.10008.1.2.5": ["dcmcrle"],  # RLE
}
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"


def _mias_stored(root: Path, bits: int) -> np.ndarray:
    """A real film (mdb001) as stored values of ``bits`` bits, (1024, 1024) uint8 or uint16.

    12 bits: the 8-bit film times 16 plus the low four bits of a second film (mdb002), so
    every bit plane carries real, non-constant content (a plain x16 would leave four zero
    bit planes that every codec handles trivially).
    """
    images = root / "mini-mias" / "images"
    first = sorted(images.glob("mdb001*"))
    second = sorted(images.glob("mdb002*"))
    if not first or not second:
        pytest.skip(f"mini-MIAS mdb001/mdb002 not under {images}")
    a = cv2.imread(str(first[0]), cv2.IMREAD_GRAYSCALE)
    if bits == 8:
        return a
    b = cv2.imread(str(second[0]), cv2.IMREAD_GRAYSCALE)
    return (a.astype(np.uint16) << 4) | (b.astype(np.uint16) & 0xF)


def _compress(plain: Path, ts: str) -> Path:
    packed = plain.with_name(f"{plain.stem} {ts}.dcm")
    if ts in DCMTK:
        command = DCMTK[ts]
        if shutil.which(command[0]) is None:
            pytest.skip(f"dcmtk's {command[0]} is not installed (apt-get install dcmtk); CI runs this")
        result = subprocess.run([*command, str(plain), str(packed)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
    else:
        from pydicom.pixels import get_encoder

        if not get_encoder(ts).is_available:
            pytest.skip("no JPEG 2000 encoder (pylibjpeg-openjpeg) installed")
        ds = pydicom.dcmread(plain)
        ds.compress(ts)
        ds.save_as(packed)
    assert str(pydicom.dcmread(packed).file_meta.TransferSyntaxUID) == ts
    return packed


@pytest.mark.parametrize("ts", [*DCMTK, J2K_LOSSLESS])
@pytest.mark.parametrize("bits", [8, 12])
def test_every_plugin_decodes_a_real_scan_to_the_same_pixels(
    ts: str, bits: int, bcedge_data: Path, write_mg: Callable[..., Path]
) -> None:
    from pydicom.pixels import get_decoder

    stored = _mias_stored(bcedge_data, bits)
    plain = write_mg(stored, f"mias {bits}.dcm", bits_stored=bits, windows=[(2 ** (bits - 1), 2**bits)])
    packed = _compress(plain, ts)
    ds = pydicom.dcmread(packed)
    plugins = get_decoder(ds.file_meta.TransferSyntaxUID).available_plugins
    assert plugins, f"no decoder for {ts}"
    for plugin in plugins:
        arr, _ = get_decoder(ds.file_meta.TransferSyntaxUID).as_array(ds, decoding_plugin=plugin)
        assert arr.shape == stored.shape, plugin
        np.testing.assert_array_equal(arr, stored, err_msg=f"{plugin} on {ts}, {bits} bits")
    chosen = decoders.decoding_plugin(ts)
    # The chosen one is the first of the preference list that is installed here.
    assert chosen == next(p for p in decoders.PREFERENCE[ts] if p in plugins)
    np.testing.assert_array_equal(read_dicom(packed).pixels, read_dicom(plain).pixels)


def test_the_choice_is_made_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import pydicom.pixels

    decoders.decoding_plugin.cache_clear()
    calls: list[str] = []
    real = pydicom.pixels.get_decoder

    def counting(uid: object) -> object:
        calls.append(str(uid))
        return real(uid)

    monkeypatch.setattr(pydicom.pixels, "get_decoder", counting)
    first = decoders.decoding_plugin("1.2.840.10008.1.2.5")
    assert decoders.decoding_plugin("1.2.840.10008.1.2.5") == first
    assert calls == ["1.2.840.10008.1.2.5"]
    decoders.decoding_plugin.cache_clear()


def test_unlisted_syntaxes_keep_pydicoms_order() -> None:
    assert decoders.decoding_plugin("1.2.840.10008.1.2.4.50") is None  # JPEG baseline: not listed
    assert decoders.decoding_plugin("1.2.840.10008.1.2.1") is None  # uncompressed
    assert set(decoders.chosen_decoders()) == set(decoders.PREFERENCE)


def test_the_chosen_plugins_refusal_is_final(monkeypatch: pytest.MonkeyPatch, write_mg: Callable[..., Path]) -> None:
    """No silent retry with another plugin: a plugin that cannot decode gives one DicomError line."""
    import bcedge.decoders
    from bcedge.errors import DicomError

    if shutil.which("dcmcrle") is None:
        pytest.skip("dcmtk's dcmcrle is not installed")
    stored = (np.arange(64 * 80, dtype=np.uint16) * 7 % 4096).reshape(64, 80)
    plain = write_mg(stored, "ramp.dcm", bits_stored=12, windows=[(2048, 4096)])
    packed = _compress(plain, "1.2.840.10008.1.2.5")
    monkeypatch.setattr(bcedge.decoders, "decoding_plugin", lambda _ts: "no-such-plugin")
    with pytest.raises(DicomError) as info:
        read_dicom(packed)
    assert "\n" not in str(info.value) and "no-such-plugin" in str(info.value)


def test_corrupt_data_is_still_one_error_line(monkeypatch: pytest.MonkeyPatch, write_mg: Callable[..., Path]) -> None:
    """Truncated JPEG-LS data: one DicomError line naming the codec.

    CharLS refuses the stream; pydicom's default first plugin before bcedge chose one
    (pylibjpeg-libjpeg) returned a partly blank image without an error.
    """
    from bcedge.errors import DicomError

    if shutil.which("dcmcjpls") is None:
        pytest.skip("dcmtk's dcmcjpls is not installed")
    if decoders.decoding_plugin("1.2.840.10008.1.2.4.80") in (None, "pylibjpeg"):
        pytest.skip("no CharLS (pyjpegls) or GDCM: pylibjpeg-libjpeg accepts truncated JPEG-LS streams")
    rng = np.random.default_rng(3)
    stored = rng.integers(0, 4096, (64, 80)).astype(np.uint16)
    plain = write_mg(stored, "noise.dcm", bits_stored=12, windows=[(2048, 4096)])
    packed = _compress(plain, "1.2.840.10008.1.2.4.80")
    ds = pydicom.dcmread(packed)
    from pydicom.encaps import encapsulate, generate_frames

    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 3]])
    bad = packed.with_name("truncated.dcm")
    ds.save_as(bad)
    with pytest.raises(DicomError) as info:
        read_dicom(bad)
    message = str(info.value)
    assert "\n" not in message and "JPEG-LS" in message, message


def test_a_rust_decoder_panic_is_corrupt_data() -> None:
    """pyo3's PanicException (BaseException) from a Rust decoder becomes an ordinary error, not an escape."""
    from bcedge.dicom import _pixel_array

    class PanicException(BaseException):  # same name as pyo3_runtime.PanicException
        pass

    class Panicking:
        def pixel_array_options(self, **_options: object) -> None:
            pass

        @property
        def pixel_array(self) -> np.ndarray:
            raise PanicException("index out of bounds: the len is 3840 but the index is 3841")

    with pytest.raises(ValueError, match="stopped on bad data"):
        _pixel_array(Panicking(), "1.2.840.10008.1.2.5")

    class Interrupted(Panicking):
        @property
        def pixel_array(self) -> np.ndarray:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # other BaseExceptions are not swallowed
        _pixel_array(Interrupted(), "1.2.840.10008.1.2.5")


@pytest.mark.parametrize("first", ["read_dicom", "Segmenter warm-up"])
def test_pydicom_is_imported_without_its_downloaders_extras(first: str) -> None:
    """Cold start: the first pydicom import (reader or the Segmenter's warm-up) loads no requests/urllib3/tqdm.

    A later import of them still works.
    """
    warm = "from bcedge.pipeline import _warm_up\n_warm_up()\n" if first != "read_dicom" else ""
    script = (
        "import importlib.util, json, sys\n"
        f"{warm}"
        "from bcedge.dicom import read_dicom\n"
        "m = read_dicom(sys.argv[1])\n"
        "loaded = sorted(n for n in ('requests', 'urllib3', 'tqdm', 'charset_normalizer') if n in sys.modules)\n"
        "later = None\n"
        "if importlib.util.find_spec('requests') is not None:\n"
        "    import requests\n"
        "    later = requests.__name__\n"
        "import pydicom.data.download as d\n"
        "print(json.dumps({'shape': list(m.pixels.shape), 'loaded': loaded, 'later': later,\n"
        "                  'have_requests': d.HAVE_REQUESTS}))\n"
    )
    scan = Path(__file__).resolve().parents[1] / "bcedge" / "examples" / "phantom_lcc.dcm"
    out = subprocess.run([sys.executable, "-c", script, str(scan)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout)
    assert len(doc["shape"]) == 2 and doc["loaded"] == [], doc  # none of them loaded by reading
    assert doc["have_requests"] is False  # pydicom's downloader falls back to urllib
    assert doc["later"] in (None, "requests")  # the absence mark was removed: requests imports normally afterwards
