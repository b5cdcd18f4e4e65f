"""Resource limits on untrusted images, checked before anything is decoded or allocated.

A corrupt or hostile file can claim any size: a 37 kB JPEG-LS stream whose frame header says
65535x65535, a 0.4 MB PNG of 20000x20000, a deflated data set that inflates to gigabytes, a
Pixel Data element of 2 GiB in a sparse file. Each claim is read from the header (a few bytes,
parsed here by hand: the libraries only tell after they allocated) and checked against:

- :data:`MAX_MEGAPIXELS`, and
- :data:`MAX_DECODED_BYTES`, a byte budget for one decoded image in its own sample format
  (50 MP at 16 bits), which also bounds colour and 16-bit rasters; and
- :data:`MAX_FILE_BYTES` for the file itself (the budget plus room for a header).

Why 50 MP: the largest mammography detector (Fujifilm, 50 um pixels) makes 5928 x 4728 =
28 MP images; reading one peaks at ~164 MB (its 16-bit samples plus the float32 image every
reader returns, 6 bytes a pixel). Issue 15 bounds any input at twice that. 50 MP at 6 bytes
a pixel is 300 MB, inside it; the earlier 100 MP guard let a 5 kB file that claims 82 MP
decode to 410 MB.

What fails raises a one-line :class:`~bcedge.errors.InputError` (``DicomError`` for DICOM)
naming the header field and the size it claims; nothing large is allocated before that.
"""

from __future__ import annotations

import itertools
import struct
import zlib

from bcedge.errors import DicomError, InputError

#: Refuse images above this many pixels before decoding (a corrupt header can claim anything).
MAX_MEGAPIXELS = 50.0
#: Byte budget of one decoded image in its stored format: 50 MP at 16 bits.
MAX_DECODED_BYTES = int(MAX_MEGAPIXELS * 1e6) * 2
#: Largest file read at all: the decoded budget plus 64 MiB of header, overlays and padding.
MAX_FILE_BYTES = MAX_DECODED_BYTES + (64 << 20)
#: Largest DICOM header (everything but Pixel Data) accepted from a deflated data set.
MAX_HEADER_BYTES = 64 << 20

#: Transfer syntaxes whose frames are JPEG (ISO 10918) or JPEG-LS (ISO 14495) codestreams.
JPEG_SYNTAXES = {
    "1.2.840.10008.1.2.4.50": "JPEG",
    "1.2.840.10008.1.2.4.51": "JPEG",
    "1.2.840.10008.1.2.4.57": "JPEG lossless",
    "1.2.840.10008.1.2.4.70": "JPEG lossless",
    "1.2.840.10008.1.2.4.80": "JPEG-LS",
    "1.2.840.10008.1.2.4.81": "JPEG-LS",
}
#: Transfer syntaxes whose frames are JPEG 2000 (ISO 15444) codestreams or JP2 files.
J2K_SYNTAXES = {
    "1.2.840.10008.1.2.4.90": "JPEG 2000",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.4.201": "HTJ2K",
    "1.2.840.10008.1.2.4.202": "HTJ2K",
    "1.2.840.10008.1.2.4.203": "HTJ2K",
}
RLE_SYNTAX = "1.2.840.10008.1.2.5"
DEFLATE_SYNTAX = "1.2.840.10008.1.2.1.99"
#: JPEG start-of-frame markers (SOF0-SOF15 but DHT C4, JPG C8, DAC CC) and JPEG-LS SOF55 (F7).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}


def codec_name(transfer_syntax: str) -> str:
    """``JPEG-LS``, ``JPEG 2000``, ``RLE``... for a compressed transfer syntax; the UID otherwise."""
    ts = str(transfer_syntax)
    if ts == RLE_SYNTAX:
        return "RLE"
    return JPEG_SYNTAXES.get(ts) or J2K_SYNTAXES.get(ts) or ts


def check_image_size(rows: int, cols: int, bytes_per_pixel: int, what: str) -> None:
    """Refuse ``rows`` x ``cols`` when over :data:`MAX_MEGAPIXELS` or :data:`MAX_DECODED_BYTES`.

    Args:
        rows, cols: the size a header claims.
        bytes_per_pixel: decoded bytes per pixel (samples x bytes per sample).
        what: the header field, for the message (e.g. ``"PNG IHDR"``).

    Raises:
        InputError: empty or over a limit.
    """
    if rows <= 0 or cols <= 0:
        raise InputError(f"{what} gives an empty image ({cols} x {rows})")
    pixels = rows * cols
    if pixels > MAX_MEGAPIXELS * 1e6:
        raise InputError(
            f"{what} claims {cols} x {rows} = {pixels / 1e6:.1f} MP; refusing more than {MAX_MEGAPIXELS:.0f} MP"
        )
    if pixels * bytes_per_pixel > MAX_DECODED_BYTES:
        raise InputError(
            f"{what} claims {cols} x {rows} x {bytes_per_pixel} bytes = {pixels * bytes_per_pixel / 1e6:.0f} MB "
            f"decoded; refusing more than {MAX_DECODED_BYTES / 1e6:.0f} MB"
        )


def check_file_size(size: int, what: str) -> None:
    """Refuse a file larger than :data:`MAX_FILE_BYTES` before reading it."""
    if size > MAX_FILE_BYTES:
        raise InputError(f"{what} is {size / 1e6:.0f} MB; refusing files over {MAX_FILE_BYTES / 1e6:.0f} MB")


# --------------------------------------------------------------------------- compressed DICOM frames


def jpeg_frame_header(data: bytes | memoryview) -> tuple[int, int, int, int]:
    """(rows, columns, components, precision) from the first SOFn / SOF55 of a JPEG or JPEG-LS stream.

    Walks the marker segments from SOI by their lengths (no entropy-coded data comes before the
    frame header).

    Raises:
        ValueError: no SOI, a segment running past the end, or no frame header.
    """
    buf = bytes(data[:65536]) if len(data) > 65536 else bytes(data)
    if buf[:2] != b"\xff\xd8":
        raise ValueError("no JPEG start-of-image marker")
    at = 2
    while at + 4 <= len(buf):
        if buf[at] != 0xFF:
            raise ValueError(f"no marker at byte {at}")
        marker = buf[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):
            at += 2
            continue
        (length,) = struct.unpack(">H", buf[at + 2 : at + 4])
        if marker in _SOF:
            if length < 8 or at + 10 > len(buf):
                raise ValueError("truncated frame header")
            precision, rows, cols, components = struct.unpack(">BHHB", buf[at + 4 : at + 10])
            return rows, cols, components, precision
        if marker in (0xDA, 0xD9):
            break  # start of scan / end of image before any frame header
        if length < 2:
            raise ValueError(f"marker segment FF{marker:02X} has length {length}")
        at += 2 + length
    raise ValueError("no frame header (SOF) before the scan data")


def j2k_frame_header(data: bytes | memoryview) -> tuple[int, int, int, int]:
    """(rows, columns, components, precision) from the SIZ segment of a JPEG 2000 codestream or JP2 file.

    Raises:
        ValueError: no codestream start (SOC + SIZ) in the first 64 kB, or a short SIZ.
    """
    buf = bytes(data[:65536]) if len(data) > 65536 else bytes(data)
    at = buf.find(b"\xff\x4f\xff\x51")  # SOC then SIZ (a JP2 file's codestream box holds the same)
    if at < 0:
        raise ValueError("no JPEG 2000 codestream (SOC + SIZ markers)")
    siz = buf[at + 4 :]
    if len(siz) < 41:
        raise ValueError("truncated SIZ segment")
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", siz[4:20])
    (components,) = struct.unpack(">H", siz[36:38])
    precision = (siz[38] & 0x7F) + 1
    if xosiz > xsiz or yosiz > ysiz:
        raise ValueError(f"SIZ image offset ({xosiz}, {yosiz}) beyond its size ({xsiz}, {ysiz})")
    return ysiz - yosiz, xsiz - xosiz, components, precision


def check_rle_header(data: bytes | memoryview, segments_expected: int) -> None:
    """Check an RLE frame's 64-byte header: segment count and offsets inside the frame, ascending.

    Raises:
        ValueError: a count other than ``segments_expected``, or offsets out of order or range.
    """
    if len(data) < 64:
        raise ValueError(f"RLE frame of {len(data)} bytes is shorter than its 64-byte header")
    header = struct.unpack("<16I", bytes(data[:64]))
    count, offsets = header[0], header[1 : 1 + min(header[0], 15)]
    if count != segments_expected:
        raise ValueError(f"RLE header lists {count} segments; this image needs {segments_expected}")
    if offsets[0] != 64 or any(b <= a for a, b in itertools.pairwise(offsets)):
        raise ValueError(f"RLE segment offsets {list(offsets)} are not ascending from 64")
    if offsets[-1] >= len(data):
        raise ValueError(f"RLE segment offset {offsets[-1]} is beyond the frame's {len(data)} bytes")


def check_frame(transfer_syntax: str, frame: bytes | memoryview, rows: int, cols: int, bits_allocated: int) -> None:
    """Check a compressed frame's own header against Rows/Columns before any decoder sees it.

    A decoder allocates what the codestream's frame header says, not what the DICOM header says;
    the two must agree (and Rows x Columns was already checked against the limits).

    Raises:
        DicomError: the codestream's size or sample layout disagrees with the DICOM header, or
            its header is unreadable ("corrupt <codec> data in Pixel Data (7FE0,0010): ...").
    """
    ts = str(transfer_syntax)
    codec = codec_name(ts)
    try:
        if ts in JPEG_SYNTAXES or ts in J2K_SYNTAXES:
            parse = jpeg_frame_header if ts in JPEG_SYNTAXES else j2k_frame_header
            f_rows, f_cols, components, precision = parse(frame)
            if (f_rows, f_cols) != (rows, cols):
                raise ValueError(
                    f"its frame header says {f_cols} x {f_rows} but Rows x Columns (0028,0010/0011) is {cols} x {rows}"
                )
            if components != 1:
                raise ValueError(f"its frame header says {components} components; a mammogram has 1")
            if not 1 <= precision <= 16:
                raise ValueError(f"its frame header says {precision}-bit samples; expected 1 to 16")
        elif ts == RLE_SYNTAX:
            check_rle_header(frame, bits_allocated // 8)
    except (ValueError, struct.error) as exc:
        raise DicomError(f"corrupt {codec} data in Pixel Data (7FE0,0010): {exc}") from exc


def inflate_limited(data: bytes | memoryview, limit: int, what: str, *, partial: bool = False) -> bytes:
    """Inflate raw deflate ``data`` (DICOM Deflated Explicit VR Little Endian), stopping at ``limit`` bytes.

    The output is produced in steps of at most 1 MiB, so a bomb costs ``limit`` bytes, not
    what it would inflate to.

    Args:
        data: the deflated bytes.
        limit: most bytes to produce.
        what: names the data in messages.
        partial: return the first ``limit`` bytes instead of refusing a longer output.

    Raises:
        DicomError: more than ``limit`` bytes (unless ``partial``), or not a valid deflate stream.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    pending = bytes(data)
    try:
        while pending and not inflater.eof:
            chunk = inflater.decompress(pending, min(1 << 20, limit + 1 - len(out)))
            out += chunk
            if len(out) > limit:
                if partial:
                    return bytes(out[:limit])
                raise DicomError(f"{what} inflates to more than {limit / 1e6:.1f} MB; refusing (a deflate bomb?)")
            pending = inflater.unconsumed_tail
            if not chunk and not pending:
                break
    except zlib.error as exc:
        raise DicomError(f"{what}: corrupt deflate data ({exc})") from exc
    return bytes(out)


# --------------------------------------------------------------------------- rasters


def raster_header(data: bytes | memoryview) -> tuple[str, int, int, int] | None:
    """(format, rows, columns, decoded bytes per pixel) from a PNG, JPEG, TIFF, PGM/PPM or BMP header.

    The bytes per pixel are what OpenCV's ``IMREAD_UNCHANGED`` decode holds (channels x bytes
    per sample). None when the bytes start like none of these formats.

    Raises:
        InputError: a recognised format whose header is unreadable.
    """
    head = bytes(data[:65536]) if len(data) > 65536 else bytes(data)
    try:
        if head[:8] == b"\x89PNG\r\n\x1a\n":
            _check_png_chunks(data)
            width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
            channels = {0: 1, 2: 3, 3: 3, 4: 4, 6: 4}.get(colour, 4)
            return "PNG", height, width, channels * (2 if depth == 16 else 1)
        if head[:3] == b"\xff\xd8\xff":
            rows, cols, components, precision = jpeg_frame_header(head)
            return "JPEG", rows, cols, max(components, 1) * (2 if precision > 8 else 1)
        if head[:4] in (b"II*\x00", b"MM\x00*"):
            return ("TIFF", *_tiff_header(bytes(data)))
        if head[:2] in (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6"):
            return ("PNM", *_pnm_header(head))
        if head[:2] == b"BM":
            width, height, _, bpp = struct.unpack("<iiHH", head[18:30])
            return "BMP", abs(height), width, max(1, bpp // 8) if bpp > 8 else 3
    except (ValueError, struct.error, IndexError) as exc:
        raise InputError(f"unreadable image header ({exc})") from exc
    return None


def _check_png_chunks(data: bytes | memoryview) -> None:
    """Every PNG chunk's length must fit in the file (OpenCV/libpng allocate what a chunk claims:
    a 0x7FFFFFFF IDAT in a small file made it allocate 2 GB and spin)."""
    at, size = 8, len(data)
    while at + 8 <= size:
        (length,) = struct.unpack(">I", bytes(data[at : at + 4]))
        if length > 0x7FFFFFFF or at + 12 + length > size:
            tag = bytes(data[at + 4 : at + 8]).decode("latin-1")
            raise ValueError(
                f"PNG chunk {tag!r} at byte {at} claims {length} bytes; the file ends {size - at - 12} after"
            )
        if bytes(data[at + 4 : at + 8]) == b"IEND":
            return
        at += 12 + length


def _tiff_header(data: bytes) -> tuple[int, int, int]:
    """(rows, columns, bytes per pixel) of a classic TIFF's first image file directory."""
    order = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[offset : offset + 2])
    fields: dict[int, int] = {}
    sizes = {1: 1, 3: 2, 4: 4}
    for i in range(min(count, 512)):
        entry = data[offset + 2 + 12 * i : offset + 14 + 12 * i]
        tag, typ, n = struct.unpack(order + "HHI", entry[:8])
        if typ in sizes and n >= 1:
            if sizes[typ] * n <= 4:
                fmt = {1: "B", 3: "H", 4: "I"}[typ]
                fields[tag] = struct.unpack(order + fmt, entry[8 : 8 + sizes[typ]])[0]
            elif tag == 258:  # BitsPerSample per sample, stored elsewhere: the first is enough
                (at,) = struct.unpack(order + "I", entry[8:12])
                fields[tag] = struct.unpack(order + ("H" if typ == 3 else "I"), data[at : at + sizes[typ]])[0]
    if 256 not in fields or 257 not in fields:
        raise ValueError("TIFF directory without ImageWidth/ImageLength")
    samples = max(1, fields.get(277, 1))
    bits = max(8, fields.get(258, 8))
    return fields[257], fields[256], samples * ((bits + 7) // 8)


def _pnm_header(head: bytes) -> tuple[int, int, int]:
    """(rows, columns, bytes per pixel) of a PBM/PGM/PPM header (comments allowed)."""
    tokens: list[bytes] = []
    for line in head[2:4096].split(b"\n"):
        tokens.extend(line.split(b"#", 1)[0].split())
        if len(tokens) >= 3:
            break
    kind = head[:2]
    width, height = int(tokens[0]), int(tokens[1])
    maxval = 1 if kind in (b"P1", b"P4") else int(tokens[2])
    channels = 3 if kind in (b"P3", b"P6") else 1
    return height, width, channels * (2 if maxval > 255 else 1)
