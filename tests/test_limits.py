"""Resource limits before decoding (bcedge/limits.py) and what decoder failures say.

One test per bomb class runs the reader in a fresh interpreter whose address space is capped
(``RLIMIT_AS`` = what the idle reader process maps + :data:`CAP_MB`) with a 10 s timeout: the
file must be refused with one documented error, quickly, without touching the cap.
"""

from __future__ import annotations

import json
import resource
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from bcedge import limits
from bcedge.dicom import read_mammogram
from bcedge.errors import DicomError, InputError, MissingDependencyError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import hostile  # noqa: E402

#: Twice the read peak of the largest real scan (see tests/test_hostile.py).
CAP_MB = 330.0

_READ = """
import json, os, sys, time
os.environ.setdefault("OMP_NUM_THREADS", "1")
from bcedge.dicom import read_mammogram
from bcedge.errors import BcedgeError
if sys.argv[1] == "--vmsize":
    read_mammogram(sys.argv[2])  # warm: imports and decoders loaded, as for a real read
    print(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:")))
    sys.exit(0)
for warm in sys.argv[2:]:  # the first reads import pydicom, the decoders, OpenCV (seconds on a busy box)
    read_mammogram(warm)
t = time.perf_counter()
try:
    read_mammogram(sys.argv[1])
    out = {"class": "ok"}
except BcedgeError as exc:
    out = {"class": type(exc).__name__, "message": str(exc)}
except MemoryError:
    out = {"class": "MemoryError"}
out["seconds"] = time.perf_counter() - t
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, hostile.Case]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {c.name: c for c in hostile.build_corpus(tmp_path_factory.mktemp("corpus"))}


@pytest.fixture(scope="module")
def address_space_kb(corpus: dict[str, hostile.Case]) -> int:
    """What a reader process maps after reading a valid compressed scan (libraries, decoders)."""
    out = subprocess.run(
        [sys.executable, "-c", _READ, "--vmsize", corpus["valid_jpegls.dcm"].path],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return int(out.stdout.strip())


def _read_capped(path: str, address_space_kb: int, warm: list[str]) -> dict:
    limit = address_space_kb * 1024 + int(CAP_MB * (1 << 20))

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", _READ, path, *warm], capture_output=True, text=True, timeout=60, preexec_fn=cap
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    result["wall"] = time.monotonic() - start
    return result


@pytest.mark.parametrize(
    ("case", "says"),
    [
        (
            "bomb_jpegls_65535.dcm",
            "corrupt JPEG-LS data in Pixel Data (7FE0,0010): its frame header says 65535 x 65535",
        ),
        ("bomb_j2k_65535.dcm", "corrupt JPEG 2000 data in Pixel Data (7FE0,0010): its frame header says 65535 x 65535"),
        ("bomb_jpeg_sof_65500.dcm", "corrupt JPEG data in Pixel Data (7FE0,0010): its frame header says 65500 x 65500"),
        ("bomb_rle_offsets_beyond.dcm", "corrupt RLE data in Pixel Data (7FE0,0010)"),
        ("bomb_deflate_1_5g.dcm", "inflates to more than"),
        ("bomb_sparse_2gib.dcm", "refusing files over"),
        ("iod_rows_huge_uncompressed.dcm", "refusing more than 50 MP"),
        ("len_pixeldata_2gib.dcm", "incomplete"),
        ("bomb_png_30000x30000.png", "the PNG header claims 30000 x 30000"),
        ("bomb_tiff_100000.tif", "the TIFF header claims 100000 x 100000"),
        ("bomb_pgm16_30000.pgm", "the PNM header claims 30000 x 30000"),
        ("bomb_jpeg_65500.jpg", "the JPEG header claims 65500 x 65500"),
        ("bomb_bmp_50000.bmp", "the BMP header claims 50000 x 50000"),
    ],
)
def test_each_bomb_class_is_refused_fast_under_a_memory_cap(
    case: str, says: str, corpus: dict[str, hostile.Case], address_space_kb: int
) -> None:
    warm = [corpus[name].path for name in ("valid_jpegls.dcm", "valid_png16.png", "valid_jpeg8.jpg")]
    got = _read_capped(corpus[case].path, address_space_kb, warm)
    assert got["class"] in ("DicomError", "InputError", "UnsupportedImageError"), got
    assert says in got["message"], got["message"]
    assert got["seconds"] < 1.0, got  # the check comes before any decoding


def test_the_cap_is_real(corpus: dict[str, hostile.Case], address_space_kb: int) -> None:
    """Control: the same capped process, warmed up by the same reads, does run out of memory when asked
    for more than the cap (warmed, it maps what the measured reader maps: pydicom, the decoders, OpenCV)."""
    limit = address_space_kb * 1024 + int(CAP_MB * (1 << 20))
    size = int((CAP_MB + 64) * (1 << 20))
    warm = [corpus[name].path for name in ("valid_jpegls.dcm", "valid_png16.png", "valid_jpeg8.jpg")]
    code = (
        "import sys\nimport numpy as np\nfrom bcedge.dicom import read_mammogram\n"
        "for warm in sys.argv[1:]:\n    read_mammogram(warm)\n"
        f"try:\n    np.ones({size}, np.uint8)\nexcept MemoryError:\n    print('MemoryError')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *warm],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)),
    )
    assert proc.stdout.strip() == "MemoryError"


# --------------------------------------------------------------------------- header parsers


def test_jpeg_and_j2k_frame_headers_match_the_encoders(corpus: dict[str, hostile.Case]) -> None:
    import pydicom
    from pydicom.encaps import generate_frames

    for name, parse in (("valid_jpegls.dcm", limits.jpeg_frame_header), ("valid_j2k.dcm", limits.j2k_frame_header)):
        ds = pydicom.dcmread(corpus[name].path)
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        rows, cols, components, precision = parse(frame)
        assert (rows, cols, components) == (ds.Rows, ds.Columns, 1) and precision in (12, 16)


def test_rle_header_checks() -> None:
    ok = struct.pack("<3I", 2, 64, 100) + b"\0" * 52 + b"\0" * 100
    limits.check_rle_header(ok, 2)
    for bad, why in (
        (struct.pack("<3I", 1, 64, 0) + b"\0" * 52 + b"\0" * 8, "needs 2"),
        (struct.pack("<3I", 2, 64, 64) + b"\0" * 52 + b"\0" * 8, "not ascending"),
        (struct.pack("<3I", 2, 64, 9999) + b"\0" * 52, "beyond"),
        (b"\0" * 10, "shorter than its 64-byte header"),
    ):
        with pytest.raises(ValueError, match=why):
            limits.check_rle_header(bad, 2)


def test_inflate_stops_at_its_limit() -> None:
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = comp.compress(b"\0" * (64 << 20)) + comp.flush()
    assert len(bomb) < 100_000
    with pytest.raises(DicomError, match=r"inflates to more than 1\.0 MB"):
        limits.inflate_limited(bomb, 1_000_000, "x")
    assert len(limits.inflate_limited(bomb, 1000, "x", partial=True)) == 1000
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    assert limits.inflate_limited(comp.compress(b"abc") + comp.flush(), 10, "x") == b"abc"
    with pytest.raises(DicomError, match="corrupt deflate data"):
        limits.inflate_limited(b"\xff\xff\xff\xff", 10, "x")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (hostile.png_with_header(640, 480, 16, 0), ("PNG", 480, 640, 2)),
        (hostile.png_with_header(64, 48, 8, 6), ("PNG", 48, 64, 4)),
        (hostile.tiff_with_header(300, 200), ("TIFF", 200, 300, 2)),
        (b"P5\n# comment\n30 20\n65535\n", ("PNM", 20, 30, 2)),
        (b"P6 30 20 255 ", ("PNM", 20, 30, 3)),
        (b"GIF89a", None),
    ],
)
def test_raster_headers(data: bytes, expected: tuple | None) -> None:
    assert limits.raster_header(data) == expected


def test_check_image_size_names_the_limit() -> None:
    limits.check_image_size(5928, 4728, 2, "x")  # the largest real detector fits
    with pytest.raises(InputError, match="refusing more than 50 MP"):
        limits.check_image_size(10000, 6000, 1, "x")
    with pytest.raises(InputError, match="refusing more than 100 MB"):
        limits.check_image_size(6000, 6000, 4, "x")
    with pytest.raises(InputError, match="empty"):
        limits.check_image_size(0, 10, 1, "x")


# --------------------------------------------------------------------------- issue 18.5: what decoders say


def _broken_frame(path: Path, out: Path, codec: str) -> Path:
    """The file with its compressed frame broken past its frame header (which still matches Rows x Columns).

    JPEG-LS decoders fill a cut stream, so its start-of-scan claims 2 components; a JPEG 2000
    stream is cut to 40 %.
    """
    import pydicom
    from pydicom.encaps import encapsulate, generate_frames

    ds = pydicom.dcmread(path)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    if codec == "JPEG-LS":
        sos = frame.find(b"\xff\xda")
        frame = frame[: sos + 4] + b"\x02" + frame[sos + 5 :]
    else:
        frame = frame[: int(len(frame) * 0.4)]
    ds.PixelData = encapsulate([frame + b"\0" * (len(frame) % 2)])
    ds.save_as(out)
    return out


@pytest.mark.parametrize(("seed", "codec"), [("valid_jpegls.dcm", "JPEG-LS"), ("valid_j2k.dcm", "JPEG 2000")])
def test_corrupt_compressed_data_is_named_not_a_missing_plugin(
    seed: str, codec: str, corpus: dict[str, hostile.Case], tmp_path: Path
) -> None:
    bad = _broken_frame(Path(corpus[seed].path), tmp_path / "bad.dcm", codec)
    with pytest.raises(DicomError) as info:
        read_mammogram(bad)
    assert not isinstance(info.value, MissingDependencyError), info.value  # the decoders are installed
    message = str(info.value)
    assert f"corrupt {codec} data in Pixel Data (7FE0,0010): " in message and "\n" not in message
    assert "pip install" not in message


def test_rle_with_broken_segments_is_corrupt_rle(corpus: dict[str, hostile.Case]) -> None:
    with pytest.raises(DicomError, match=r"corrupt RLE data in Pixel Data \(7FE0,0010\): RLE header lists 15"):
        read_mammogram(corpus["bomb_rle_15_segments.dcm"].path)


def test_only_a_missing_decoder_asks_for_the_extra(
    corpus: dict[str, hostile.Case], monkeypatch: pytest.MonkeyPatch
) -> None:
    import pydicom.pixels

    real = pydicom.pixels.get_decoder

    class Unavailable:
        is_available = False

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda ts: Unavailable() if ts.is_compressed else real(ts))
    with pytest.raises(MissingDependencyError, match=r"pip install 'bcedge\[dicom\]'"):
        read_mammogram(corpus["valid_jpegls.dcm"].path)
