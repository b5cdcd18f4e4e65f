"""Hostile inputs for bcedge's readers, built at run time (no binaries in the repository).

Two things live here:

- :func:`write_seeds`: small valid scans in every encoding the reader accepts (explicit and
  implicit VR, big endian, deflate, RLE, JPEG-LS, JPEG 2000, JPEG baseline; PNG, PGM, TIFF,
  JPEG rasters). The fuzzer (``benchmarks/fuzz.py``) mutates them; the corpus edits them.
- :func:`build_corpus`: one file per hostile case of issue 15, by class (wrong-length values,
  transfer syntaxes that are not, character sets, other IODs, truncations, length fields,
  decompression and header bombs, raster header bombs, corrupt rasters, bundle manifests) and
  the valid-but-unusual files that must be accepted (no preamble, long names, deep paths).
  Each case says what is acceptable: ``reject`` (a documented error), ``accept`` (read
  fine) or ``either`` (read or a documented error; never a crash, a hang or a memory bomb).

``python benchmarks/hostile.py OUT_DIR`` writes the corpus and ``OUT_DIR/cases.json``.
"""

from __future__ import annotations

import io
import json
import struct
import sys
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

#: How a case may end: a documented error, a successful read, or either.
EXPECT = ("reject", "accept", "either")


@dataclass(frozen=True)
class Case:
    """One hostile file. ``entry``: ``reader`` (read_mammogram) or ``bundle`` (load_bundle on a folder)."""

    name: str
    klass: str
    path: str
    expect: str
    entry: str = "reader"


# --------------------------------------------------------------------------- seeds


def _stored(shape: tuple[int, int] = (48, 40), bits: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 2**bits - 1, shape[0] * shape[1]).reshape(shape)
    return np.clip(ramp + rng.normal(0, 20, shape), 0, 2**bits - 1).astype(np.uint16)


def mg_dataset(shape: tuple[int, int] = (48, 40), **extra: object):  # -> pydicom Dataset
    """A small valid MG dataset (12-bit MONOCHROME2, window, spacing), explicit VR little endian."""
    from bcedge.dicom_write import MGTags, build_mg_dataset

    return build_mg_dataset(_stored(shape), MGTags(bits_stored=12, windows=[(2048, 4096)], extra=dict(extra)))


def encode(ds, transfer_syntax: str | None = None, **save: object) -> bytes:  # ds: pydicom Dataset
    """The Part 10 bytes of ``ds``, compressed to ``transfer_syntax`` when given."""
    if transfer_syntax is not None:
        import pydicom.uid as u

        ts = u.UID(transfer_syntax)
        if ts.is_compressed:
            ds.compress(ts)
        else:
            ds.file_meta.TransferSyntaxUID = ts
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, **save)
    return buf.getvalue()


def save_unvalidated(ds, path: Path) -> Path:  # ds: pydicom Dataset
    """Write ``ds`` as it is, invalid values included (pydicom's write validation off for the call)."""
    from pydicom import config

    saved = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        ds.save_as(path, enforce_file_format=True)
    finally:
        config.settings.writing_validation_mode = saved
    return path


def _jpeg_baseline_dicom(shape: tuple[int, int] = (48, 40)) -> bytes:
    """An 8-bit MG encapsulated as JPEG baseline (OpenCV encodes it; pydicom has no JPEG encoder)."""
    import cv2
    from pydicom.encaps import encapsulate

    from bcedge.dicom_write import MGTags, build_mg_dataset

    img = (_stored(shape, bits=8)).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    ds = build_mg_dataset(img.astype(np.uint16), MGTags(bits_stored=8, windows=[(128, 256)]))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([buf.tobytes()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def dicom_seeds() -> dict[str, bytes]:
    """Small valid MG files, one per encoding the reader decodes."""
    from pydicom.uid import (
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        ImplicitVRLittleEndian,
        JPEG2000Lossless,
        JPEGLSLossless,
        RLELossless,
    )

    seeds = {"explicit_le.dcm": encode(mg_dataset())}
    seeds["implicit_le.dcm"] = encode(mg_dataset(), ImplicitVRLittleEndian)
    seeds["big_endian.dcm"] = encode(mg_dataset(), ExplicitVRBigEndian)
    seeds["deflate.dcm"] = encode(mg_dataset(), DeflatedExplicitVRLittleEndian)
    seeds["rle.dcm"] = encode(mg_dataset(), RLELossless)
    seeds["jpegls.dcm"] = encode(mg_dataset(), JPEGLSLossless)
    seeds["j2k.dcm"] = encode(mg_dataset(), JPEG2000Lossless)
    seeds["jpeg_baseline.dcm"] = _jpeg_baseline_dicom()
    return seeds


def raster_seeds() -> dict[str, bytes]:
    """Small valid rasters: 8- and 16-bit PNG, PGM, TIFF, JPEG."""
    import cv2

    img8 = _stored(bits=8).astype(np.uint8)
    img16 = _stored(bits=12) * 16
    out: dict[str, bytes] = {}
    for name, ext, img in (
        ("png8.png", ".png", img8),
        ("png16.png", ".png", img16),
        ("pgm8.pgm", ".pgm", img8),
        ("pgm16.pgm", ".pgm", img16),
        ("tiff16.tif", ".tif", img16),
        ("jpeg8.jpg", ".jpg", img8),
    ):
        ok, buf = cv2.imencode(ext, img)
        assert ok, name
        out[name] = buf.tobytes()
    return out


def write_seeds(folder: Path, data_dir: Path | None = None) -> list[Path]:
    """Write every seed into ``folder``; with ``data_dir`` (BCEDGE_DATA) also the real MG headers."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in {**dicom_seeds(), **raster_seeds()}.items():
        (folder / name).write_bytes(data)
        paths.append(folder / name)
    real = (data_dir / "dicom-headers") if data_dir else None
    if real is not None and real.is_dir():
        for src in sorted(real.iterdir()):
            if src.is_file() and src.stat().st_size < 4 << 20 and src.read_bytes()[128:132] == b"DICM":
                dst = folder / f"real_{src.name}"
                dst.write_bytes(src.read_bytes())
                paths.append(dst)
    return paths


# --------------------------------------------------------------------------- byte-level edits


def element_offset(data: bytes, tag: int, vr: bytes | None = None, start: int = 132) -> int:
    """Offset of an explicit-VR little-endian element ``tag`` (with ``vr`` when given) in ``data``."""
    key = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + (vr or b"")
    at = data.find(key, start)
    if at < 0:
        raise KeyError(f"tag {tag:08X} not found")
    return at


def set_short_value(data: bytes, tag: int, vr: bytes, value: bytes) -> bytes:
    """Replace a short-form explicit-VR element's value (any length: wrong lengths are the point)."""
    at = element_offset(data, tag, vr)
    old_len = struct.unpack("<H", data[at + 6 : at + 8])[0]
    return data[: at + 6] + struct.pack("<H", len(value)) + value + data[at + 8 + old_len :]


def meta_with_transfer_syntax(data: bytes, uid: bytes) -> bytes:
    """Part 10 bytes with the Transfer Syntax UID (0002,0010) replaced and the group length fixed."""
    at = element_offset(data, 0x00020010, b"UI")
    old_len = struct.unpack("<H", data[at + 6 : at + 8])[0]
    value = uid + (b"\x00" if len(uid) % 2 else b"")
    out = bytearray(data[: at + 6] + struct.pack("<H", len(value)) + value + data[at + 8 + old_len :])
    gl = element_offset(bytes(out), 0x00020000, b"UL")
    old_group = struct.unpack("<I", out[gl + 8 : gl + 12])[0]
    out[gl + 8 : gl + 12] = struct.pack("<I", old_group + len(value) - old_len)
    return bytes(out)


def _find_marker(data: bytes, marker: bytes) -> int:
    at = data.find(marker)
    if at < 0:
        raise KeyError(f"marker {marker.hex()} not found")
    return at


def patch_jpeg_frame(data: bytes, marker: bytes, rows: int, cols: int) -> bytes:
    """Set the height/width of a JPEG SOFn / JPEG-LS SOF55 frame header (marker, Lf, P, Y, X)."""
    at = _find_marker(data, marker)
    return data[: at + 5] + struct.pack(">HH", rows, cols) + data[at + 9 :]


def patch_j2k_siz(data: bytes, rows: int, cols: int) -> bytes:
    """Set Xsiz/Ysiz of a JPEG 2000 SIZ marker segment (FF51, Lsiz, Rsiz, Xsiz, Ysiz, ...)."""
    at = _find_marker(data, b"\xff\x51")
    return data[: at + 6] + struct.pack(">II", cols, rows) + data[at + 14 :]


def rle_header_offset(data: bytes) -> int:
    """Offset of the 64-byte RLE header: the first fragment after the Basic Offset Table item."""
    pixel = element_offset(data, 0x7FE00010, b"OB")
    item = data.find(b"\xfe\xff\x00\xe0", pixel + 12)  # Basic Offset Table item
    bot_len = struct.unpack("<I", data[item + 4 : item + 8])[0]
    return item + 8 + bot_len + 8


def deflate_bomb(inflated_mb: int, head: bytes) -> bytes:
    """A raw deflate stream: ``head``, then ``inflated_mb`` MiB of zeros, from ~1 kB per MiB.

    A full flush after each MiB makes the compressed block independent of what came
    before, so one block is built once and repeated (seconds, not minutes, to build).
    """
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = comp.compress(head) + comp.flush(zlib.Z_FULL_FLUSH)
    block = comp.compress(b"\x00" * (1 << 20)) + comp.flush(zlib.Z_FULL_FLUSH)
    return first + block * inflated_mb + comp.flush(zlib.Z_FINISH)


def png_with_header(width: int, height: int, bit_depth: int = 8, colour: int = 0, idat: bytes | None = None) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` (IDAT: a little real data, or ``idat``)."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(body, zlib.crc32(tag)))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    body = idat if idat is not None else zlib.compress(b"\x00" * 4096)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def tiff_with_header(width: int, height: int) -> bytes:
    """A little-endian baseline TIFF whose IFD claims ``width`` x ``height`` 16-bit grey, one tiny strip."""
    entries = [
        (256, 4, 1, width),  # ImageWidth LONG
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 16),  # BitsPerSample
        (259, 3, 1, 1),  # Compression none
        (262, 3, 1, 1),  # BlackIsZero
        (273, 4, 1, 8),  # StripOffsets
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, 64),  # StripByteCounts
    ]
    ifd_at = 8 + 64
    head = b"II*\x00" + struct.pack("<I", ifd_at) + b"\x00" * 64
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        ifd += struct.pack("<HHII", tag, typ, count, value)
    return head + ifd + b"\x00\x00\x00\x00"


def nested_sequence(depth: int) -> bytes:
    """A Referenced Image Sequence nested ``depth`` levels deep (undefined lengths, explicit VR LE)."""
    seq_tag = struct.pack("<HH", 0x0008, 0x1140) + b"SQ\x00\x00\xff\xff\xff\xff"
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    item_end = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    seq_end = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    return (seq_tag + item) * depth + (item_end + seq_end) * depth


def insert_before_pixels(data: bytes, element: bytes, tag: int = 0x00081140) -> bytes:
    """Insert raw element bytes in tag order (before the first tag above ``tag``; here: before 0008,1150+)."""
    # Explicit VR LE: walk the top-level elements after the file meta to find the insertion point.
    at = 132
    while at + 8 <= len(data):
        group, elem = struct.unpack("<HH", data[at : at + 4])
        if (group << 16 | elem) > tag and group != 0x0002:
            return data[:at] + element + data[at:]
        vr = data[at + 4 : at + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"OD", b"OL", b"OV", b"UC", b"UR"):
            length = struct.unpack("<I", data[at + 8 : at + 12])[0]
            at += 12 + (0 if length == 0xFFFFFFFF else length)
        else:
            at += 8 + struct.unpack("<H", data[at + 6 : at + 8])[0]
    return data + element


# --------------------------------------------------------------------------- the corpus


def _dataset_variant(**changes: object) -> bytes:
    """The explicit-LE seed with attributes set (None deletes)."""
    ds = mg_dataset()
    for key, value in changes.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    return encode(ds)


def _raw_tag_variant(tag: int, vr: str, value: bytes) -> bytes:
    from pydicom.dataelem import RawDataElement

    ds = mg_dataset()
    ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)  # type: ignore[assignment]
    return encode(ds)


def build_corpus(folder: Path, data_dir: Path | None = None) -> list[Case]:
    """Write every hostile case under ``folder`` and return them (at least 150)."""
    folder.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    seeds = dicom_seeds()
    good = seeds["explicit_le.dcm"]

    def add(name: str, klass: str, data: bytes, expect: str = "reject") -> None:
        path = folder / name
        path.write_bytes(data)
        cases.append(Case(name, klass, str(path), expect))

    # -- values of the wrong byte length for US elements (issue: Pixel Representation, High Bit)
    for keyword, tag in (
        ("Rows", 0x00280010),
        ("Columns", 0x00280011),
        ("BitsAllocated", 0x00280100),
        ("BitsStored", 0x00280101),
        ("HighBit", 0x00280102),
        ("PixelRepresentation", 0x00280103),
        ("SamplesPerPixel", 0x00280002),
    ):
        for n in (0, 1, 3, 4, 6):
            value = bytes(range(1, n + 1))
            add(f"uslen_{keyword}_{n}.dcm", "wrong-length value", set_short_value(good, tag, b"US", value), "either")

    # -- Transfer Syntax UIDs that are not transfer syntaxes
    for label, uid in (
        ("sop_class", b"1.2.840.10008.5.1.4.1.1.1.2"),
        ("ge_private", b"1.2.840.113619.5.2"),
        ("philips_private", b"1.3.46.670589.33.1.4.1"),
        ("garbage", b"not a uid!"),
        ("empty", b""),
        ("mpeg2", b"1.2.840.10008.1.2.4.100"),
        ("jpeg_on_native", b"1.2.840.10008.1.2.4.50"),
        ("rle_on_native", b"1.2.840.10008.1.2.5"),
        ("big_endian_on_le", b"1.2.840.10008.1.2.2"),
        ("long_uid", b"1." + b"2" * 70),
        ("control_chars", b"1.2.840\x01\x02.10008"),
        ("verification", b"1.2.840.10008.1.1"),
    ):
        add(f"ts_{label}.dcm", "transfer syntax", meta_with_transfer_syntax(good, uid), "either")

    # -- Specific Character Set: unknown, broken, and names that do not decode
    for label, charset, name in (
        ("unknown", b"ISO_IR 999", b"Doe^Jane"),
        ("garbage", b"\xff\xfe\x00", b"Doe^Jane"),
        ("bad_2022", b"ISO 2022 IR 87\\ISO 2022 IR 999", b"\x1b$B\x00\x00"),
        ("backslashes", b"\\\\\\\\", b"Doe^Jane"),
        ("utf8_invalid", b"ISO_IR 192", b"Doe\xff\xfe^Jane"),
        ("latin1_high", b"ISO_IR 100", b"M\xfcller^J\xf6rg"),
        ("gb18030_bad", b"GB18030", b"\x81\x30"),
        ("control_chars", b"ISO_IR 6", b"Doe^\x1b[31mJane\x07"),
        ("very_long_name", b"ISO_IR 192", "Ä".encode() * 2000),
        ("escape_only", b"ISO 2022 IR 13", b"\x1b(J\x1b)I"),
    ):
        data = _raw_tag_variant(0x00080005, "CS", charset)
        at = element_offset(data, 0x00100010, b"PN")
        old = struct.unpack("<H", data[at + 6 : at + 8])[0]
        name = name + (b" " if len(name) % 2 else b"")
        data = data[: at + 6] + struct.pack("<H", len(name)) + name + data[at + 8 + old :]
        add(f"charset_{label}.dcm", "character set", data, "either")

    # -- MG files that are another IOD, or miss required attributes
    for label, changes, expect in (
        ("ct_sop_class", {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"}, "either"),
        ("seg_sop_class", {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.66.4"}, "either"),
        ("no_sop_class", {"SOPClassUID": None}, "either"),
        ("no_sop_instance", {"SOPInstanceUID": None}, "either"),
        ("no_study_uid", {"StudyInstanceUID": None}, "either"),
        ("no_series_uid", {"SeriesInstanceUID": None}, "either"),
        ("no_modality", {"Modality": None}, "reject"),
        ("modality_ct", {"Modality": "CT"}, "reject"),
        ("no_photometric", {"PhotometricInterpretation": None}, "reject"),
        ("rgb", {"PhotometricInterpretation": "RGB"}, "reject"),
        ("palette", {"PhotometricInterpretation": "PALETTE COLOR"}, "reject"),
        ("ybr", {"PhotometricInterpretation": "YBR_FULL"}, "reject"),
        ("no_rows", {"Rows": None}, "reject"),
        ("no_bits_allocated", {"BitsAllocated": None}, "reject"),
        ("bits_allocated_32", {"BitsAllocated": 32}, "reject"),
        ("bits_allocated_1", {"BitsAllocated": 1}, "reject"),
        ("bits_allocated_12", {"BitsAllocated": 12}, "reject"),
        ("bits_stored_0", {"BitsStored": 0}, "reject"),
        ("bits_stored_17", {"BitsStored": 17}, "reject"),
        ("frames_2", {"NumberOfFrames": 2}, "reject"),
        ("frames_huge", {"NumberOfFrames": 2**31 - 1}, "reject"),
        ("samples_3", {"SamplesPerPixel": 3}, "reject"),
        ("rows_zero", {"Rows": 0}, "reject"),
        ("rows_huge_uncompressed", {"Rows": 65535, "Columns": 65535}, "reject"),
    ):
        add(f"iod_{label}.dcm", "other IOD / missing attribute", _dataset_variant(**changes), expect)

    # -- values a header can hold but the display pipeline must survive (or refuse in one line)
    for label, changes in (
        ("window_width_0", {"WindowWidth": "0"}),
        ("window_width_neg", {"WindowWidth": "-5"}),
        ("window_nan", {"WindowCenter": "nan"}),
        ("window_inf", {"WindowWidth": "inf"}),
        ("rescale_slope_0", {"RescaleSlope": "0"}),
        ("rescale_slope_huge", {"RescaleSlope": "1e308"}),
        ("voi_function_bogus", {"VOILUTFunction": "BOGUS"}),
        ("spacing_one_value", {"ImagerPixelSpacing": "0.07"}),
        ("spacing_zero", {"ImagerPixelSpacing": ["0", "0"]}),
        ("spacing_negative", {"ImagerPixelSpacing": ["-1", "0.07"]}),
        ("study_date_0", {"StudyDate": "0"}),
        ("birth_date_bad", {"PatientBirthDate": "19xx1301"}),
        ("orientation_odd", {"PatientOrientation": ["A", "R", "F"]}),
        ("laterality_x", {"ImageLaterality": "X"}),
        ("view_code_empty_item", {"ViewCodeSequence": [__import__("pydicom").Dataset()]}),
    ):
        add(f"value_{label}.dcm", "odd values", _dataset_variant(**changes), "either")
    for label, tag, vr, value in (
        ("window_text", 0x00281050, "LO", b"abc "),
        ("slope_text", 0x00281053, "LO", b"slope!"),
        ("spacing_text", 0x00181164, "LO", b"a\\b "),
        ("frames_text", 0x00280008, "LO", b"many"),
        ("lut_descriptor_bad", 0x00283010, "SQ", b""),
    ):
        add(f"rawvalue_{label}.dcm", "odd values", _raw_tag_variant(tag, vr, value), "either")

    # -- truncations of every seed (header, meta, pixel data)
    for seed_name in ("explicit_le.dcm", "implicit_le.dcm", "deflate.dcm", "rle.dcm", "jpegls.dcm", "j2k.dcm"):
        data = seeds[seed_name]
        for frac in (0.02, 0.1, 0.3, 0.6, 0.95):
            add(f"trunc_{Path(seed_name).stem}_{int(frac * 100)}.dcm", "truncated", data[: int(len(data) * frac)])
    for keep in (1, 100, 128, 131, 132, 140):
        add(f"trunc_bytes_{keep}.dcm", "truncated", good[:keep])

    # -- length fields that lie
    pixel = element_offset(good, 0x7FE00010, b"OW")
    for label, length in (
        ("undefined", 0xFFFFFFFF),
        ("max", 0xFFFFFFFE),
        ("2gib", 1 << 31),
        ("odd", 4097),
        ("zero", 0),
    ):
        data = good[: pixel + 8] + struct.pack("<I", length) + good[pixel + 12 :]
        add(f"len_pixeldata_{label}.dcm", "length field", data)
    spacing = element_offset(good, 0x00181164, b"DS")
    for label, length in (("ffff", 0xFFFF), ("beyond", 0x7FF1)):
        data = good[: spacing + 6] + struct.pack("<H", length) + good[spacing + 8 :]
        add(f"len_ds_{label}.dcm", "length field", data, "either")
    private = struct.pack("<HH", 0x0009, 0x0010) + b"UN\x00\x00" + struct.pack("<I", 0x7FFFFFF0)
    add("len_private_un_huge.dcm", "length field", insert_before_pixels(good, private, 0x00090010), "either")
    add("nested_sq_3000.dcm", "length field", insert_before_pixels(good, nested_sequence(3000)), "either")
    add("nested_sq_20.dcm", "length field", insert_before_pixels(good, nested_sequence(20)), "accept")
    unterminated = (
        struct.pack("<HH", 0x0008, 0x1140) + b"SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    )
    add("sq_unterminated.dcm", "length field", insert_before_pixels(good, unterminated), "either")

    # -- decompression and header bombs in DICOM
    jls = seeds["jpegls.dcm"]
    add("bomb_jpegls_65535.dcm", "bomb", patch_jpeg_frame(jls, b"\xff\xf7", 65535, 65535))
    add("bomb_jpegls_20000.dcm", "bomb", patch_jpeg_frame(jls, b"\xff\xf7", 20000, 20000))
    add("bomb_jpegls_wider.dcm", "bomb", patch_jpeg_frame(jls, b"\xff\xf7", 48, 4000))
    jls_big_rows = set_short_value(
        set_short_value(jls, 0x00280010, b"US", struct.pack("<H", 65535)), 0x00280011, b"US", struct.pack("<H", 65535)
    )
    add("bomb_jpegls_rows_too.dcm", "bomb", patch_jpeg_frame(jls_big_rows, b"\xff\xf7", 65535, 65535))
    j2k = seeds["j2k.dcm"]
    add("bomb_j2k_65535.dcm", "bomb", patch_j2k_siz(j2k, 65535, 65535))
    add("bomb_j2k_1e9.dcm", "bomb", patch_j2k_siz(j2k, 40000, 40000))
    jpg = seeds["jpeg_baseline.dcm"]
    add("bomb_jpeg_sof_65500.dcm", "bomb", patch_jpeg_frame(jpg, b"\xff\xc0", 65500, 65500))
    add("bomb_jpeg_sof_taller.dcm", "bomb", patch_jpeg_frame(jpg, b"\xff\xc0", 4000, 40))
    rle = seeds["rle.dcm"]
    rh = rle_header_offset(rle)
    for label, header in (
        ("15_segments", struct.pack("<I", 15) + struct.pack("<I", 64) * 15),
        ("offsets_beyond", struct.pack("<II", 2, 64) + struct.pack("<I", 0x7FFFFFFF) + b"\x00" * 52),
        ("zero_segments", b"\x00" * 64),
        ("descending", struct.pack("<III", 2, 2000, 64) + b"\x00" * 52),
    ):
        add(f"bomb_rle_{label}.dcm", "bomb", rle[:rh] + header + rle[rh + 64 :])
    # RLE runs that expand past the image: every segment a long run of replicate codes
    runs = b"\x81\x00" * 4000  # 4000 x 128 bytes per segment, for a 48x40 image
    rle_body = struct.pack("<III", 2, 64, 64 + len(runs)) + b"\x00" * 52 + runs + runs
    frag_at = rh - 8
    add(  # the decoder stops at the image's size: read or refused, never a bomb
        "bomb_rle_runs.dcm",
        "bomb",
        rle[: frag_at + 4] + struct.pack("<I", len(rle_body)) + rle_body + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00",
        "either",
    )
    # Deflate: a data set whose inflated size is 1.5 GiB (the Pixel Data claims it; zeros follow)
    ds = mg_dataset()
    raw = io.BytesIO()
    ds.save_as(raw, enforce_file_format=True)
    plain = raw.getvalue()
    meta_end = 132 + 12 + struct.unpack("<I", plain[132 + 8 : 132 + 12])[0]  # (0002,0000) group length
    body = plain[meta_end:]
    pix = element_offset(body, 0x7FE00010, b"OW", 0)
    huge_pixels = body[: pix + 8] + struct.pack("<I", 1536 << 20)
    deflated_meta = meta_with_transfer_syntax(plain[:meta_end], b"1.2.840.10008.1.2.1.99")
    add("bomb_deflate_1_5g.dcm", "bomb", deflated_meta + deflate_bomb(1536, huge_pixels))
    add("bomb_deflate_garbage_tail.dcm", "bomb", deflated_meta + deflate_bomb(600, body))
    add("deflate_not_deflate.dcm", "bomb", deflated_meta + body)
    # Pixel Data of 2 GiB in a sparse file: the header is right, the length is real
    sparse = folder / "bomb_sparse_2gib.dcm"
    declared = good[: pixel + 8] + struct.pack("<I", (1 << 31) - 2)
    with open(sparse, "wb") as fh:
        fh.write(declared)
        fh.truncate(len(declared) + (1 << 31) - 2)
    cases.append(Case(sparse.name, "bomb", str(sparse), "reject"))

    # -- raster header bombs
    for w, h in ((20000, 20000), (30000, 30000), (65535, 65535), (10001, 10000), (2**31 - 1, 1)):
        add(f"bomb_png_{w}x{h}.png", "raster bomb", png_with_header(w, h))
    add("bomb_png16_9000.png", "raster bomb", png_with_header(9000, 9000, bit_depth=16))
    add("bomb_png_rgba_20000.png", "raster bomb", png_with_header(20000, 20000, colour=6))
    add("bomb_tiff_100000.tif", "raster bomb", tiff_with_header(100000, 100000))
    add("bomb_tiff_20000.tif", "raster bomb", tiff_with_header(20000, 20000))
    add("bomb_pgm_100000.pgm", "raster bomb", b"P5\n100000 100000\n255\n" + b"\x00" * 1024)
    add("bomb_pgm16_30000.pgm", "raster bomb", b"P5\n30000 30000\n65535\n" + b"\x00" * 1024)
    add("bomb_pgm_ascii_huge.pgm", "raster bomb", b"P2\n50000 50000\n255\n0 0 0 0\n")
    add("bomb_pgm_negative.pgm", "raster bomb", b"P5\n-5 10\n255\n" + b"\x00" * 64)
    add("bomb_pgm_maxval_0.pgm", "raster bomb", b"P5\n4 4\n0\n" + b"\x00" * 16, "either")
    add("bomb_pgm_maxval_70000.pgm", "raster bomb", b"P5\n4 4\n70000\n" + b"\x00" * 32, "either")
    rasters = raster_seeds()
    jpeg = rasters["jpeg8.jpg"]
    add("bomb_jpeg_65500.jpg", "raster bomb", patch_jpeg_frame(jpeg, b"\xff\xc0", 65500, 65500))
    add("bomb_jpeg_20000.jpg", "raster bomb", patch_jpeg_frame(jpeg, b"\xff\xc0", 20000, 20000))
    add(
        "bomb_bmp_50000.bmp",
        "raster bomb",
        b"BM"
        + struct.pack("<IHHI", 62, 0, 0, 62)
        + struct.pack("<IiiHHIIiiII", 40, 50000, 50000, 1, 8, 0, 0, 0, 0, 0, 0)
        + b"\x00" * 8,
    )
    add("bomb_png_chunk_len.png", "raster bomb", rasters["png8.png"][:33] + struct.pack(">I", 0x7FFFFFFF) + b"IDAT")

    # -- corrupt rasters
    png = rasters["png8.png"]
    add("raster_png_bad_crc.png", "corrupt raster", png[:29] + bytes([png[29] ^ 0xFF]) + png[30:], "either")
    for frac in (0.1, 0.5, 0.9):
        for seed_name in ("png8.png", "png16.png", "tiff16.tif", "jpeg8.jpg", "pgm16.pgm"):
            data = rasters[seed_name]
            stem, ext = seed_name.rsplit(".", 1)
            add(
                f"raster_trunc_{stem}_{int(frac * 100)}.{ext}",
                "corrupt raster",
                data[: int(len(data) * frac)],
                "either",
            )
    add("raster_empty.png", "corrupt raster", b"")
    add("raster_text.jpg", "corrupt raster", b"not an image\n" * 20)
    add("raster_dicom_named_png.png", "corrupt raster", good, "either")
    add("raster_png_rgb16.png", "corrupt raster", _cv_png(np.full((8, 8, 3), 4000, np.uint16)), "either")
    add("raster_png_1x1.png", "corrupt raster", _cv_png(np.zeros((1, 1), np.uint8)), "either")
    add("raster_tiff_float_nan.tif", "corrupt raster", _cv_tiff(np.full((8, 8), np.nan, np.float32)), "either")

    # -- not DICOM at all, odd file system objects
    add("not_dicom_text.dcm", "not DICOM", b"hello\n" * 50)
    add("not_dicom_zeros.dcm", "not DICOM", b"\x00" * 4096)
    add("not_dicom_dicm_only.dcm", "not DICOM", b"\x00" * 128 + b"DICM")
    add("empty.dcm", "not DICOM", b"")

    # -- valid files that must be read (issue 15.3 and the encodings)
    for name, data in seeds.items():
        add(f"valid_{name}", "valid", data, "accept")
    for name, data in rasters.items():
        add(f"valid_{name}", "valid", data, "accept")
    add("valid_no_preamble", "valid", good[132:], "accept")
    add("valid_no_preamble.dcm", "valid", good[132:], "accept")
    long_name = "L" * 239 + ".dcm"
    add(long_name, "valid", good, "accept")
    add("é" * 120 + ".dcm", "valid", good, "accept")
    deep = folder.joinpath(*(["deep" * 12] * 60))  # ~2.9 kB of path
    deep.mkdir(parents=True, exist_ok=True)
    (deep / "scan.dcm").write_bytes(good)
    cases.append(Case("deep/scan.dcm", "valid", str(deep / "scan.dcm"), "accept"))
    add("valid name with spaces & ünïcode.dcm", "valid", good, "accept")
    add(
        "valid_private_tags.dcm",
        "valid",
        insert_before_pixels(good, private[:8] + struct.pack("<I", 4) + b"abcd", 0x00090010),
        "accept",
    )

    # -- bundle manifests (bcedge infer --model): malformed, over-nested, oversized
    for label, text in (
        ("nested", "[" * 200000 + "]" * 200000),
        ("nested_dict", '{"a":' * 100000 + "1" + "}" * 100000),
        ("not_json", "this is not json"),
        ("list", "[1, 2, 3]"),
        ("empty", ""),
        ("wrong_types", json.dumps({"schema": 1, "artifacts": "nope", "preprocess": 5})),
        ("huge_number", '{"schema": 1e999999}'),
        ("binary", "\x00\xff\xfe"),
    ):
        bundle = folder / f"bundle_{label}"
        bundle.mkdir(exist_ok=True)
        (bundle / "manifest.json").write_bytes(text.encode("utf-8", "surrogateescape"))
        cases.append(Case(bundle.name, "bundle", str(bundle), "reject", entry="bundle"))
    return cases


def _cv_png(img: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def _cv_tiff(img: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".tif", img)
    assert ok
    return buf.tobytes()


def main(argv: list[str] | None = None) -> int:
    """``python benchmarks/hostile.py OUT_DIR``: write the corpus and OUT_DIR/cases.json."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python benchmarks/hostile.py OUT_DIR", file=sys.stderr)
        return 2
    out = Path(args[0])
    import warnings

    warnings.simplefilter("ignore")  # pydicom warns about every invalid value written on purpose
    cases = build_corpus(out)
    (out / "cases.json").write_text(json.dumps([asdict(c) for c in cases], indent=1) + "\n")
    classes: dict[str, int] = {}
    for c in cases:
        classes[c.klass] = classes.get(c.klass, 0) + 1
    print(f"{len(cases)} cases in {out}: " + ", ".join(f"{k} {v}" for k, v in sorted(classes.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
