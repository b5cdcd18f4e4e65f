"""File helpers shared by the dataset readers: image sizes from headers, listings.

Readers list thousands of files; decoding each image only to learn its height
would dominate the listing time, so :func:`image_size` reads the PNG, PNM and
JPEG headers directly (a few dozen bytes) and decodes only formats it cannot parse.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from bcedge.errors import DatasetError

IMAGE_SUFFIXES = (".png", ".pgm", ".pnm", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom")
MASK_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".pgm", ".dcm")


def natural_key(text: str) -> tuple[object, ...]:
    """Sort key that orders ``P9`` before ``P10`` (digit runs compare as numbers)."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text))


def files_with_suffix(folder: Path, suffixes: Iterable[str], *, recursive: bool = False) -> list[Path]:
    """Regular files in ``folder`` whose lower-cased suffix is in ``suffixes``, sorted by path."""
    wanted = {s.lower() for s in suffixes}
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in wanted and not p.name.startswith("."))


def _png_size(head: bytes) -> tuple[int, int] | None:
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        return height, width
    return None


def _pnm_size(head: bytes) -> tuple[int, int] | None:
    if head[:1] != b"P" or head[1:2] not in b"123456":
        return None
    # Header tokens are separated by whitespace; '#' starts a comment up to end of line.
    text = re.sub(rb"#[^\n]*", b" ", head[2:])
    tokens = text.split()
    if len(tokens) < 2 or not (tokens[0].isdigit() and tokens[1].isdigit()):
        return None
    return int(tokens[1]), int(tokens[0])


def _jpeg_size(path: Path) -> tuple[int, int] | None:
    with open(path, "rb") as fh:
        if fh.read(2) != b"\xff\xd8":
            return None
        while True:
            byte = fh.read(1)
            while byte and byte != b"\xff":
                byte = fh.read(1)
            while byte == b"\xff":
                byte = fh.read(1)
            if not byte:
                return None
            marker = byte[0]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                continue  # markers without a length field
            length_bytes = fh.read(2)
            if len(length_bytes) < 2:
                return None
            (length,) = struct.unpack(">H", length_bytes)
            # SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC) carry the frame size.
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                data = fh.read(5)
                if len(data) < 5:
                    return None
                height, width = struct.unpack(">HH", data[1:5])
                return height, width
            fh.seek(length - 2, 1)


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file, from its header when possible.

    Args:
        path: PNG, PGM/PNM, JPEG, DICOM or any format OpenCV decodes.

    Raises:
        DatasetError: the file is missing or unreadable.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read image ({exc.strerror})") from exc
    size = _png_size(head) or _pnm_size(head)
    if size is None and head[:2] == b"\xff\xd8":
        size = _jpeg_size(path)
    if size is None and (path.suffix.lower() in {".dcm", ".dicom"} or head[128:132] == b"DICM"):
        import pydicom

        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            return int(ds.Rows), int(ds.Columns)
        except Exception as exc:
            raise DatasetError(f"{path}: unreadable DICOM header ({type(exc).__name__})") from exc
    if size is None:
        import cv2

        img = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise DatasetError(f"{path}: not a readable image")
        size = int(img.shape[0]), int(img.shape[1])
    return size


def read_colour(path: Path) -> np.ndarray:
    """Decode an image file as stored: (H, W) or (H, W, C) uint8/uint16, channels in BGR(A) order."""
    import cv2

    img = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DatasetError(f"{path}: not a readable image")
    return img
