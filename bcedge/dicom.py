"""Read a mammogram (MG DICOM or a PNG/PGM/JPEG/TIFF raster) into a :class:`Mammogram`.

The pixel path follows the DICOM display pipeline (PS3.4 N.2, PS3.3 C.11):

    stored values -> Modality LUT (Rescale Slope/Intercept or Modality LUT Sequence)
                  -> VOI (VOI LUT Sequence, else Window Center/Width with VOI LUT
                     Function LINEAR / LINEAR_EXACT / SIGMOID, first window)
                  -> Presentation (MONOCHROME1 and/or Presentation LUT Shape INVERSE)
                  -> float32 in [0, 1], dense tissue bright.

Speed: the three steps depend only on the stored value, so they are evaluated
once over every possible stored value (at most 2**16) and the image is mapped
through that table in one pass. A full-field 3328x2560 scan costs one table
lookup instead of a dozen full-resolution float passes, and uncompressed pixel
data are viewed in place rather than copied.

VOI choice: PS3.3 C.8.11.3.1.5 lets an image carry both a VOI LUT Sequence and
Window Center/Width as *alternative* views and names no default. bcedge uses the
first VOI LUT item when there is one (vendors such as GE tabulate the same curve
they also describe as a SIGMOID window), else the first window.

Inversion: in DX/MG, MONOCHROME1 normally comes with Presentation LUT Shape
INVERSE. Both say the same thing (low values display white), so the image is
inverted exactly once when either says so. For the two non-conformant
combinations the reader still inverts: MONOCHROME1 + IDENTITY follows the
Photometric Interpretation (PS3.3 C.7.6.3.1.2: the minimum value *is* displayed
white; DX files with wrong shapes exist), MONOCHROME2 + INVERSE follows the
shape's explicit request. dcmtk lets the shape alone decide, so it differs on
MONOCHROME1 + IDENTITY (see ``tests/test_dicom_oracle.py``).

FOR PROCESSING images (and any image without a VOI) carry no display window:
bcedge applies a *robust window*, linear between the 0.5th and 99.5th
percentiles of the modality values (on a subsampled grid of at least ~250k
pixels), documented in ``ImageMeta.window_source == "robust"``.

Why one module: the reader is one pipeline (header checks, limits, decoding, each LUT step,
photometric and orientation rules) whose steps are small pure functions sharing the same header
conventions; every rule about what a mammogram looks like lives here, once.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import mmap
import os
import struct
import threading
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bcedge.cstderr import c_stderr_to_debug_log
from bcedge.errors import (
    BcedgeError,
    ConfigError,
    DicomError,
    InputError,
    MissingDependencyError,
    UnsupportedImageError,
    first_line,
)
from bcedge.limits import (
    DEFLATE_SYNTAX,
    MAX_FILE_BYTES,
    MAX_HEADER_BYTES,
    MAX_MEGAPIXELS,
    check_file_size,
    check_frame,
    check_image_size,
    codec_name,
    inflate_limited,
    raster_header,
)

_log = logging.getLogger(__name__)

#: Percentiles of the robust window used when an image carries no VOI.
ROBUST_PERCENTILES = (0.5, 99.5)
#: The robust window's histogram keeps at least this many pixels (fewer: no subsampling).
ROBUST_MIN_SAMPLES = 1 << 18
RASTER_SUFFIXES = {".png", ".pgm", ".pnm", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
_MONO = ("MONOCHROME1", "MONOCHROME2")
#: Uncompressed little-endian transfer syntaxes whose Pixel Data can be viewed in place.
_NATIVE_LE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99"}
#: Of those, the ones stored as they are in the file (not deflated): their Pixel Data is mapped, not read.
_MAPPED_LE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
#: Uncompressed Pixel Data over this size is viewed in the file's memory map instead of copied out
#: of it (pydicom's ``defer_size``: such values are skipped while parsing). Copying an FFDM's 11 MB
#: was 2 ms of the scan job's ~4.5 ms decode when other stages had just filled the caches
#: (benchmark-context A/B on the 2944x1920 phantom, 2-core Intel Xeon, avx512f avx512_vnni amx_int8:
#: 4.5 -> 2.5 ms). The price is the one of every memory-mapped reader (NumPy's memmap, nibabel's
#: default): a file cut short by another process *while* bcedge reads it ends the process with
#: SIGBUS instead of an error line; files written whole, or replaced by rename (bcedge serve's
#: spool, DICOM receivers' temporary files), are never affected.
_MAP_PIXELS_BYTES = 1 << 20
#: Magic numbers of the raster formats, to say what a misnamed file really is.
_RASTER_MAGIC = {
    b"\x89PNG": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"P5": "PGM",
    b"P2": "PGM",
    b"BM": "BMP",
}

VoiMode = Literal["auto", "lut", "window", "robust", "none"]
_VOI_MODES = ("auto", "lut", "window", "robust", "none")


@dataclass(frozen=True)
class ImageMeta:
    """What was read about an image besides its pixels.

    Attributes:
        source: path of the file read.
        rows, columns: size of the stored image in pixels.
        modality: DICOM Modality (``MG``), None for rasters.
        laterality: ``L`` or ``R``, or None when unknown.
        laterality_source: the DICOM keyword it came from (``ImageLaterality``,
            ``Laterality``, ``PatientOrientation``) or another provenance
            (``filename``, set by dataset readers).
        chest_wall_side: side of the *stored image* the chest wall is on (``L``
            left edge, ``R`` right edge) as the header states it, or None. From
            the row direction of Patient Orientation (0020,0020): rows running
            ``A`` (towards the nipple) put the chest wall on the left, ``P`` on
            the right; other row directions (a rotated image) state no side.
            Independent of laterality: a right breast stored ``A\\L`` has its
            chest wall on the left.
        chest_wall_source: where ``chest_wall_side`` came from
            (``PatientOrientation``), or None.
        view: ``CC``, ``MLO``, ``ML``, ``LM``, ... or None. From View Code Sequence
            (0054,0220), else View Position (0018,5101); ``FLATFIELD``/``UNKNOWN``
            are not views and never returned.
        photometric: Photometric Interpretation.
        presentation_intent: ``FOR PRESENTATION`` / ``FOR PROCESSING`` or None.
        presentation_lut_shape: ``IDENTITY`` / ``INVERSE`` or None.
        inverted: whether the reader inverted grey levels (MONOCHROME1/INVERSE).
        pixel_spacing_mm: (row, column) spacing in mm, or None.
        spacing_source: ``PixelSpacing`` or ``ImagerPixelSpacing`` (the latter is
            at the detector, not corrected for magnification).
        bits_stored: Bits Stored (8 or 16 for rasters).
        manufacturer: Manufacturer.
        study_uid, series_uid, sop_uid: Study/Series/SOP Instance UIDs.
        window: (center, width) applied, in modality units, or None.
        window_source: ``voi_lut_sequence``, ``window``, ``robust`` or ``none``.
        voi_function: VOI LUT Function used with a window.
        transfer_syntax: Transfer Syntax UID, None for rasters.
    """

    source: str
    rows: int
    columns: int
    modality: str | None = None
    laterality: str | None = None
    laterality_source: str | None = None
    chest_wall_side: str | None = None
    chest_wall_source: str | None = None
    view: str | None = None
    photometric: str | None = None
    presentation_intent: str | None = None
    presentation_lut_shape: str | None = None
    inverted: bool = False
    pixel_spacing_mm: tuple[float, float] | None = None
    spacing_source: str | None = None
    bits_stored: int | None = None
    manufacturer: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    sop_uid: str | None = None
    window: tuple[float, float] | None = None
    window_source: str = "none"
    voi_function: str | None = None
    transfer_syntax: str | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict (tuples become lists)."""
        out: dict[str, object] = {}
        for key, value in self.__dict__.items():
            out[key] = list(value) if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True)
class StoredImage:
    """The pixels as stored, with the display pipeline as a table: what the displayed image is made of.

    ``table[values - offset]`` is the displayed image (:attr:`Mammogram.pixels`); keeping the two
    apart lets preprocessing resample the stored values to its working size first and map only
    the small image through the table (preprocessing version 2), so no full-size float image is
    ever made on the default path.

    Attributes:
        values: (H, W) integer stored values (uint8, uint16, int8 or int16; may be a read-only
            view of the file's bytes).
        table: (n,) float32 in [0, 1]: the displayed value of stored value ``offset + i``,
            covering at least ``values.min()..values.max()``.
        offset: the stored value of ``table[0]`` (0 for unsigned data read from DICOM, may be
            negative for signed data).
    """

    values: np.ndarray
    table: np.ndarray
    offset: int = 0

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the image."""
        return int(self.values.shape[0]), int(self.values.shape[1])

    def display(self) -> np.ndarray:
        """The displayed image: (H, W) float32 in [0, 1], one table lookup per pixel.

        Made once and kept on this object, so Mammograms sharing it (:meth:`Mammogram.with_meta`)
        share one float image.
        """
        cached = self.__dict__.get("_display")
        if cached is None:
            cached = self.display_uncached()
            self.__dict__["_display"] = cached  # a frozen dataclass's __dict__; two racing threads agree
        return cached

    def display_uncached(self) -> np.ndarray:
        """:meth:`display`'s image made anew (or the kept one), without keeping it."""
        cached = self.__dict__.get("_display")
        if cached is not None:
            return cached
        values = self.values
        # Fancy indexing by the stored values themselves: faster than np.take, no index copy.
        if self.offset == 0 and values.dtype.kind == "u":
            return self.table[values]
        return self.table[values.astype(np.intp) - self.offset]

    def _slopes(self) -> np.ndarray:
        """(n,) float32: ``table[i + 1] - table[i]``, 0 at the last entry (which has no successor).

        Made on first use and kept (a frozen dataclass's ``__dict__``; two racing threads agree).
        """
        slope = self.__dict__.get("_slope")
        if slope is None:
            slope = np.zeros_like(self.table)
            np.subtract(self.table[1:], self.table[:-1], out=slope[:-1])
            self.__dict__["_slope"] = slope
        return slope

    def display_values(self, values: np.ndarray) -> np.ndarray:
        """Displayed values of (resampled, possibly fractional) stored values, float32 in [0, 1].

        The table is read with linear interpolation between neighbouring stored values, the
        continuous extension of the display pipeline: an area average of stored values that
        falls between two integers gets the value between theirs. Values outside the table
        take its end entries.

        Args:
            values: any shape, integer or float stored values (e.g. a downscaled image).

        Returns:
            float32 array of the same shape.
        """
        x = np.asarray(values, dtype=np.float32) - np.float32(self.offset)
        table, slope = self.table, self._slopes()
        np.clip(x, 0.0, float(table.shape[0] - 1), out=x)
        # float32 and int32 throughout, in place: three arrays the size of the (small) input at most.
        i0 = x.astype(np.int32)  # truncation is the floor: x >= 0
        np.subtract(x, i0, out=x, casting="unsafe")  # x is now the fraction
        # table[i0] + (table[i0 + 1] - table[i0]) * fraction, with the differences read from a table
        # made once: the same float32 operations on the same operands, so the same bits, with one
        # gather and one index array fewer: 2.5 -> 1.5 ms per 736x480 call (ad-hoc timing, 2-core Intel
        # Xeon, CPU flags avx2 avx512f avx512_vnni).
        out = slope.take(i0)
        out *= x
        out += table.take(i0)
        return out


class _DisplayPixels:
    """Data descriptor behind :attr:`Mammogram.pixels`: given pixels, or the stored image's display.

    A reader gives only the :class:`StoredImage`; the full-size float32 image (4 bytes a pixel,
    ~23 MB for a 2944x1920 scan) is made on first access (an overlay, ``bcedge inspect``, a
    version-1 preprocessing) and kept. Preprocessing version 2 never touches it.
    """

    def __get__(self, obj: Any, objtype: Any = None) -> np.ndarray:
        if obj is None:
            raise AttributeError("pixels")  # no class-level default: the dataclass field is required
        cached = obj.__dict__.get("_pixels")
        if cached is None:
            stored = obj.__dict__.get("stored")
            if stored is None:
                raise AttributeError("this Mammogram has neither pixels nor stored values")
            cached = stored.display()
            obj.__dict__["_pixels"] = cached  # two threads racing here compute the same array
        return cached

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__["_pixels"] = value
        obj.__dict__["_pixels_given"] = value is not None


@dataclass(frozen=True)
class Mammogram:
    """A mammogram ready for preprocessing.

    Attributes:
        pixels: (H, W) float32 in [0, 1], as displayed: dense tissue bright,
            background dark. Original resolution, no geometric change. Pass None with
            ``stored``: it is then computed from ``stored`` on first access.
        meta: what was read about it.
        header: for a DICOM file, the pydicom ``Dataset`` the reader parsed, with its file meta
            and without Pixel Data (7FE0,0010): what a DICOM SEG references and copies, so no
            writer has to read the file again (a file without the 128-byte preamble, read here,
            may not parse the same way elsewhere). None for rasters and in-memory images.
            Treat it as read-only: it is shared by copies made with :meth:`with_meta`.
        stored: the stored values and display table the pixels come from, or None. Dropped
            when ``pixels`` are given too (e.g. ``dataclasses.replace(m, pixels=flipped)``):
            given pixels are the truth, and stored values that might no longer match them
            (flipped, edited) must not be used instead.
    """

    pixels: np.ndarray = _DisplayPixels()  # type: ignore[assignment]
    meta: ImageMeta
    header: Any = field(default=None, repr=False, compare=False)
    stored: StoredImage | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.__dict__.get("_pixels_given"):
            object.__setattr__(self, "stored", None)
        elif self.stored is None:
            raise TypeError("Mammogram needs pixels or stored values")

    def pixels_once(self) -> np.ndarray:
        """The displayed pixels for one use, not kept: the kept image when there is one, else a
        fresh table lookup (the same values as :attr:`pixels`).

        For preprocessing version 1, which reads the float image once: the Mammogram then keeps
        only its stored values (2 bytes a pixel) rather than those and the float image (4 more);
        whatever asks for :attr:`pixels` later (an overlay) pays the lookup again.
        """
        cached = self.__dict__.get("_pixels")
        if cached is not None or self.stored is None:
            return self.pixels
        return self.stored.display_uncached()

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the image, without making the float pixels."""
        if self.stored is not None:
            return self.stored.shape
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])

    def with_meta(self, **changes: object) -> Mammogram:
        """A copy whose meta has ``changes`` applied (e.g. laterality from a file name)."""
        meta = replace(self.meta, **changes)  # type: ignore[arg-type]
        if self.stored is not None:
            return Mammogram(None, meta, self.header, stored=self.stored)  # type: ignore[arg-type]
        return Mammogram(self.pixels, meta, self.header)


# --------------------------------------------------------------------------- file checks


def _check_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, expected an image file")
    if not p.is_file():
        raise InputError(f"{p}: not a regular file, expected an image file")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: empty file (0 bytes)")
    return p


def _raster_kind(head: bytes) -> str | None:
    """``PNG``, ``JPEG``, ... when ``head`` starts like a raster image, else None."""
    for magic, kind in _RASTER_MAGIC.items():
        if head.startswith(magic):
            return kind
    return None


def is_dicom_file(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` starts with the DICOM preamble + ``DICM`` or ends in .dcm/.dicom."""
    p = Path(path)
    if p.suffix.lower() in {".dcm", ".dicom"}:
        return True
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _looks_like_dataset(head: bytes, size: int) -> bool:
    """True when a file without preamble starts like a raw little-endian DICOM data set.

    Such files (old ACR-NEMA style exports) begin with a group 0002 or 0008 element:
    tag, then either a two-letter VR (explicit) or a 4-byte length that fits the file
    (implicit). Anything else is not parsed at all: forcing pydicom through arbitrary
    bytes wastes time and memory on nonsense lengths.
    """
    if len(head) < 8:
        return False
    group = struct.unpack("<H", head[:2])[0]
    if group not in (0x0002, 0x0008):
        return False
    vr = head[4:6]
    if vr.isalpha() and vr.isupper():
        return True
    return struct.unpack("<I", head[4:8])[0] <= size


class _TrackedReader:
    """Read-only file object over a memory map that records short reads.

    A memory map never allocates more than the file holds, however large a length a
    corrupt header claims, and pydicom only ever asks for fewer bytes than remain
    when the file is truncated: the first such read is kept in ``short_read``
    as (offset, wanted, got). An 8-byte read that gets nothing is the normal end of
    the data set.
    """

    def __init__(self, buf: mmap.mmap | io.BytesIO, name: str) -> None:
        self._buf = buf
        self._size = len(buf) if isinstance(buf, mmap.mmap) else buf.getbuffer().nbytes
        self.name = name
        self.short_read: tuple[int, int, int] | None = None

    def read(self, size: int | None = -1) -> bytes:
        pos = self._buf.tell()
        data = self._buf.read() if size is None or size < 0 else self._buf.read(size)
        short = size is not None and size > 0 and len(data) < size and not (size == 8 and not data)
        if short and self.short_read is None:
            self.short_read = (pos, size, len(data))
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        # pydicom skips a deferred value with seek(tell() + length) (:data:`_MAP_PIXELS_BYTES`): past the
        # end of the file that is a short read of the value, recorded like one (a memory map refuses
        # to seek past its end).
        pos = self._buf.tell()
        target = offset if whence == 0 else pos + offset if whence == 1 else self._size + offset
        if target > self._size:
            if self.short_read is None:
                self.short_read = (pos, target - pos, max(0, self._size - pos))
            target = self._size
        self._buf.seek(target)
        return self._buf.tell()

    def tell(self) -> int:
        return self._buf.tell()


# --------------------------------------------------------------------------- tag access


def _tag_label(keyword: str) -> str:
    """``Keyword (GGGG,EEEE)`` for messages."""
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    return f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})" if tag is not None else keyword


def _get(ds: Any, keyword: str, default: Any = None) -> Any:
    """``ds.get(keyword)`` that turns pydicom's lazy value-conversion failures into a DicomError."""
    try:
        return ds.get(keyword, default)
    except Exception as exc:  # pydicom converts raw values on access and can raise almost anything
        raise DicomError(f"{_tag_label(keyword)} is unreadable ({first_line(exc)})") from exc


def _tag_str(ds: Any, keyword: str) -> str | None:
    value = _get(ds, keyword)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _float_tag(ds: Any, keyword: str, default: float) -> float:
    value = _get(ds, keyword)
    if value is None or (isinstance(value, (str, bytes)) and not value.strip()):
        return default
    try:
        out = float(value)
    except (TypeError, ValueError) as exc:
        raise DicomError(f"{_tag_label(keyword)} is not a number: {value!r}") from exc
    if not math.isfinite(out):
        raise DicomError(f"{_tag_label(keyword)} is not a finite number: {value!r}")
    return out


def _int_tag(ds: Any, keyword: str, tag: str | None = None, default: int | None = None) -> int:
    label = f"{keyword} {tag}" if tag else _tag_label(keyword)
    value = _get(ds, keyword, default)
    if value is None or (isinstance(value, str) and not value.strip()):
        if default is not None:
            return default
        raise DicomError(f"missing {label}")
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise DicomError(f"{label} is not an integer: {value!r}") from exc


# --------------------------------------------------------------------------- LUT steps
# Small pure functions over arrays of modality values; each takes what it needs from
# the dataset, so tests can drive them one by one.


def _is_little_endian(ds: Any) -> bool:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts is not None:
        return str(ts) != "1.2.840.10008.1.2.2"  # Explicit VR Big Endian (retired)
    encoding = getattr(ds, "original_encoding", (None, True))
    return encoding[1] is not False


def lut_from_item(item: Any, ds: Any, sequence: str) -> tuple[np.ndarray, int, int]:
    """Decode one LUT item (Modality or VOI LUT Sequence) per PS3.3 C.11.1.1 / C.11.2.1.1.

    Args:
        item: the sequence item holding LUT Descriptor (0028,3002) and LUT Data (0028,3006).
        ds: the dataset (byte order, Pixel Representation).
        sequence: the sequence keyword, for messages.

    Returns:
        (lut, first_mapped, bits): lut is (n,) float64 entries; first_mapped the input
        value mapped to entry 0 (may be negative); bits the nominal entry depth.

    Raises:
        DicomError: missing or inconsistent descriptor or data.
    """
    where = f"{_tag_label(sequence)} item 1"
    try:
        desc = [int(v) for v in item.LUTDescriptor]
        n, first, bits = desc
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise DicomError(f"{where}: LUT Descriptor (0028,3002) missing or not three integers") from exc
    n = n or 65536  # PS3.3: 0 means 2**16 entries
    if not 1 <= bits <= 16:
        raise DicomError(f"{where}: LUT Descriptor (0028,3002) gives {bits} bits per entry; expected 8 to 16")
    try:
        data = item.LUTData
    except (AttributeError, KeyError) as exc:
        raise DicomError(f"{where}: no LUT Data (0028,3006)") from exc
    if data is None:
        raise DicomError(f"{where}: no LUT Data (0028,3006)")
    if isinstance(data, (bytes, bytearray)):
        # OW (or an implicit-VR file, which pydicom reads as OW): 16-bit words in file
        # byte order; 8-bit entries may also come packed one per byte.
        if bits <= 8 and len(data) == n:
            lut = np.frombuffer(data, dtype=np.uint8)
        else:
            usable = len(data) - len(data) % 2
            lut = np.frombuffer(data[:usable], dtype="<u2" if _is_little_endian(ds) else ">u2")
    else:
        lut = np.atleast_1d(np.asarray(data)).ravel()
    if lut.size == 0:
        raise DicomError(f"{where}: empty LUT Data (0028,3006)")
    if not np.issubdtype(lut.dtype, np.number):
        raise DicomError(f"{where}: LUT Data (0028,3006) is not numeric")
    lut = lut.astype(np.float64)[:n]
    # First Mapped is US or SS (PS3.3): a negative value read as US wraps past 32767.
    if first >= 32768 and int(_get(ds, "PixelRepresentation", 0) or 0) == 1:
        first -= 65536
    return lut, first, bits


def _apply_lut(x: np.ndarray, lut: np.ndarray, first: int) -> np.ndarray:
    # Below the first mapped value: first entry; beyond the table: last entry (PS3.3 C.11.1.1, C.11.2.1.1).
    idx = np.clip(np.rint(np.asarray(x, dtype=np.float64) - first), 0, lut.size - 1).astype(np.intp)
    return lut[idx]


def modality_lut(values: np.ndarray, ds: Any) -> np.ndarray:
    """Modality LUT: Modality LUT Sequence (0028,3000), else Rescale Slope/Intercept (0028,1053/1052).

    The sequence wins when both are present (they are mutually exclusive in
    PS3.3 C.11.1); a missing slope is 1 and a missing intercept 0.

    Args:
        values: stored values, any integer shape.
        ds: the pydicom dataset.

    Returns:
        float64 modality values, same shape.
    """
    seq = _get(ds, "ModalityLUTSequence")
    if seq:
        lut, first, _ = lut_from_item(seq[0], ds, "ModalityLUTSequence")
        return _apply_lut(values, lut, first)
    slope = _float_tag(ds, "RescaleSlope", 1.0)
    intercept = _float_tag(ds, "RescaleIntercept", 0.0)
    if slope == 0.0:
        raise DicomError("Rescale Slope (0028,1053) is 0; every pixel would have the same value")
    out = np.asarray(values, dtype=np.float64)
    if slope != 1.0 or intercept != 0.0:
        out = out * slope + intercept
    return out


def window_linear(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """VOI LUT Function LINEAR (PS3.3 C.11.2.1.2.1) onto [0, 1]. ``width`` >= 1.

    ``y = ((x - (c - 0.5)) / (w - 1) + 0.5)`` clipped to 0 for ``x <= c - 0.5 - (w - 1) / 2``
    and 1 for ``x > c - 0.5 + (w - 1) / 2``; width 1 is a threshold at ``c - 0.5``.
    """
    if not width >= 1:
        raise DicomError(f"Window Width (0028,1051) is {width}; LINEAR needs >= 1")
    x = np.asarray(x, dtype=np.float64)
    y = (x - (center - 0.5)) / (width - 1) + 0.5 if width > 1 else np.zeros_like(x)
    y = np.where(x <= center - 0.5 - (width - 1) / 2, 0.0, y)
    y = np.where(x > center - 0.5 + (width - 1) / 2, 1.0, y)
    return np.clip(y, 0.0, 1.0)


def window_linear_exact(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """VOI LUT Function LINEAR_EXACT (PS3.3 C.11.2.1.3.2) onto [0, 1]. ``width`` > 0.

    ``y = (x - c) / w + 0.5``, 0 for ``x <= c - w / 2``, 1 for ``x > c + w / 2``.
    """
    if not width > 0:
        raise DicomError(f"Window Width (0028,1051) is {width}; LINEAR_EXACT needs > 0")
    x = np.asarray(x, dtype=np.float64)
    return np.clip((x - center) / width + 0.5, 0.0, 1.0)


def window_sigmoid(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """VOI LUT Function SIGMOID (PS3.3 C.11.2.1.3.1) onto (0, 1). ``width`` > 0.

    ``y = 1 / (1 + exp(-4 (x - c) / w))``.
    """
    if not width > 0:
        raise DicomError(f"Window Width (0028,1051) is {width}; SIGMOID needs > 0")
    x = np.asarray(x, dtype=np.float64)
    # exp overflows to inf beyond ~709; clipping the argument changes nothing visible.
    return 1.0 / (1.0 + np.exp(np.clip(-4.0 * (x - center) / width, -700.0, 700.0)))


_WINDOW_FUNCTIONS = {
    "LINEAR": window_linear,
    "LINEAR_EXACT": window_linear_exact,
    "SIGMOID": window_sigmoid,
}


def _first_value(value: Any) -> Any:
    from pydicom.multival import MultiValue

    if isinstance(value, (MultiValue, list, tuple)):
        return value[0] if len(value) else None
    return value


def first_window(ds: Any) -> tuple[float, float] | None:
    """(center, width) of the first window in Window Center/Width (0028,1050/1051), or None."""
    c, w = _get(ds, "WindowCenter"), _get(ds, "WindowWidth")
    if c is None or w is None:
        return None
    c, w = _first_value(c), _first_value(w)
    if c is None or w is None or (isinstance(c, str) and not c.strip()):
        return None
    try:
        center, width = float(c), float(w)
    except (TypeError, ValueError) as exc:
        raise DicomError(f"Window Center/Width (0028,1050/1051) unreadable: {c!r}/{w!r}") from exc
    if not (math.isfinite(center) and math.isfinite(width)):
        raise DicomError(f"Window Center/Width (0028,1050/1051) not finite: {c!r}/{w!r}")
    return center, width


def voi_function(ds: Any) -> str:
    """VOI LUT Function (0028,1056), upper case; LINEAR when absent. Raises on unknown values."""
    function = str(_first_value(_get(ds, "VOILUTFunction")) or "LINEAR").strip().upper() or "LINEAR"
    if function not in _WINDOW_FUNCTIONS:
        raise DicomError(
            f"VOI LUT Function (0028,1056) {function!r} unsupported; expected LINEAR, LINEAR_EXACT or SIGMOID"
        )
    return function


def apply_window(x: np.ndarray, ds: Any) -> np.ndarray:
    """Window Center/Width with the VOI LUT Function (0028,1056), default LINEAR; onto [0, 1]."""
    cw = first_window(ds)
    if cw is None:
        raise DicomError("no Window Center/Width (0028,1050/1051) to apply")
    return _WINDOW_FUNCTIONS[voi_function(ds)](x, *cw)


def apply_voi_lut_sequence(x: np.ndarray, ds: Any) -> np.ndarray:
    """First item of the VOI LUT Sequence (0028,3010) onto [0, 1].

    Values below the first mapped value take the first entry, above the last take
    the last entry (PS3.3 C.11.2.1.1). The output is divided by 2**bits - 1 from
    LUT Descriptor (0028,3002); when the data exceed that (a known vendor quirk)
    the bit depth is taken from the data instead.
    """
    seq = _get(ds, "VOILUTSequence")
    if not seq:
        raise DicomError("no VOI LUT Sequence (0028,3010) in the file")
    lut, first, bits = lut_from_item(seq[0], ds, "VOILUTSequence")
    top = max(float(2**bits - 1), float(lut.max()))
    return _apply_lut(x, lut, first) / top


def needs_inversion(photometric: str | None, lut_shape: str | None) -> bool:
    """True when grey levels must be inverted to show dense tissue bright.

    MONOCHROME1 means low values display white; Presentation LUT Shape INVERSE
    (2050,0020) says the same. They come together in DX/MG files and describe
    one inversion, so the answer is a logical OR, never an XOR.
    """
    return (photometric or "").strip().upper() == "MONOCHROME1" or (lut_shape or "").strip().upper() == "INVERSE"


def robust_window(values: np.ndarray, counts: np.ndarray | None = None) -> tuple[float, float]:
    """(center, width) spanning the 0.5th to 99.5th percentile of ``values``.

    Used with :func:`window_linear_exact`, it maps the low percentile to 0 and the
    high one to 1. A constant image gets width 1.

    Args:
        values: modality values (1-D), or the sorted support of a histogram.
        counts: histogram counts for ``values``; None for raw samples.
    """
    lo_q, hi_q = (q / 100.0 for q in ROBUST_PERCENTILES)
    values = np.asarray(values, dtype=np.float64)
    if counts is None:
        lo, hi = np.quantile(values, [lo_q, hi_q])
    else:
        cdf = np.cumsum(counts, dtype=np.float64)
        if cdf[-1] <= 0:
            raise ValueError("robust_window: histogram is empty")
        cdf /= cdf[-1]
        lo = values[min(int(np.searchsorted(cdf, lo_q)), values.size - 1)]
        hi = values[min(int(np.searchsorted(cdf, hi_q)), values.size - 1)]
    lo, hi = float(lo), float(hi)
    if hi <= lo:
        hi = lo + 1.0
    return (lo + hi) / 2.0, hi - lo


def _subsample_step(shape: tuple[int, ...]) -> int:
    """Grid step for the robust window's histogram: keep >= ROBUST_MIN_SAMPLES pixels, step <= 4."""
    pixels = int(np.prod(shape))
    return int(max(1, min(4, math.isqrt(max(pixels // ROBUST_MIN_SAMPLES, 1)))))


# --------------------------------------------------------------------------- header meaning


def _chest_wall_side(ds: Any) -> str | None:
    """Side of the stored image the chest wall is on, from Patient Orientation (0020,0020).

    The first value is the direction of the rows (left to right across the image).
    The chest wall is posterior, so rows running anterior (``A``, towards the
    nipple) start at the chest wall: it is on the left; rows running ``P`` end at
    it: on the right. The column direction (``R``/``L``/``F``... top to bottom)
    only says whether the image is also flipped vertically, which moves no chest
    wall, so it is not used. A row direction without ``A``/``P`` (``H``, ``F``: an
    image rotated by 90 degrees) or with both states no side.

    Returns:
        ``L``, ``R`` or None.
    """
    orient = _get(ds, "PatientOrientation")
    if orient is None or isinstance(orient, str) or len(orient) != 2:
        return None
    row_dir = str(orient[0]).strip().upper()
    if "A" in row_dir and "P" not in row_dir:
        return "L"
    if "P" in row_dir and "A" not in row_dir:
        return "R"
    return None


def _laterality(ds: Any) -> tuple[str | None, str | None]:
    for keyword in ("ImageLaterality", "Laterality"):
        value = (_tag_str(ds, keyword) or "").upper()
        if value in {"L", "R"}:
            return value, keyword
    # Patient Orientation (0020,0020) names the row direction first. Mammograms are
    # stored in the standard hanging orientation (chest wall at the image edge facing
    # the other breast), so rows of a left breast run towards the nipple (A...) and
    # rows of a right breast towards the chest wall (P...). The column direction
    # points medially, i.e. to the other side (R... for a left breast); a column
    # value naming the same side contradicts the convention, so nothing is inferred.
    orient = _get(ds, "PatientOrientation")
    if orient is not None and not isinstance(orient, str) and len(orient) == 2:
        row_dir, col_dir = (str(v).upper() for v in orient)
        if row_dir.startswith("A") and "L" not in col_dir:
            return "L", "PatientOrientation"
        if row_dir.startswith("P") and "R" not in col_dir:
            return "R", "PatientOrientation"
    return None, None


#: View Code Sequence (0054,0220) codes of CID 4014, SNOMED-RT and SNOMED CT values.
_VIEW_CODES = {
    "R-10242": "CC",
    "399162004": "CC",
    "R-10226": "MLO",
    "399368009": "MLO",
    "R-10224": "ML",
    "399260004": "ML",
    "R-10228": "LM",
    "399352003": "LM",
    "R-10230": "LMO",
    "399099002": "LMO",
    "R-10244": "FB",
    "399196006": "FB",
    "R-102D0": "SIO",
    "399192008": "SIO",
    "R-1024A": "XCCL",
    "399101009": "XCCL",
    "R-1024B": "XCCM",
    "399188001": "XCCM",
}
_VIEW_MEANINGS = {
    "cranio-caudal": "CC",
    "medio-lateral oblique": "MLO",
    "medio-lateral": "ML",
    "latero-medial": "LM",
    "latero-medial oblique": "LMO",
    "caudo-cranial (from below)": "FB",
    "cranio-caudal exaggerated laterally": "XCCL",
    "cranio-caudal exaggerated medially": "XCCM",
    "superolateral to inferomedial oblique": "SIO",
}
_KNOWN_VIEWS = set(_VIEW_MEANINGS.values())
#: View Position values that describe no projection of the breast.
_NOT_VIEWS = {"FLATFIELD", "FLAT FIELD", "UNKNOWN", "NONE", "NA", "N/A"}


def _view(ds: Any) -> str | None:
    """Mammographic view: View Code Sequence (0054,0220) first, then View Position (0018,5101).

    The coded sequence is the Type 1 view attribute of the MG image (PS3.3
    C.8.11.7); View Position is a DX attribute vendors fill with free values.
    Hologic flat-field QC images say ``FLATFIELD`` there, which is not a view, and
    code the gantry's cranio-caudal position in the sequence: the result is ``CC``.
    """
    for item in _get(ds, "ViewCodeSequence") or []:
        code = str(item.get("CodeValue", "") or "").strip().upper()
        meaning = str(item.get("CodeMeaning", "") or "").strip().lower()
        if code in _VIEW_CODES:
            return _VIEW_CODES[code]
        if meaning in _VIEW_MEANINGS:
            return _VIEW_MEANINGS[meaning]
    value = (_tag_str(ds, "ViewPosition") or "").upper()
    if not value or value in _NOT_VIEWS:
        return None
    if value not in _KNOWN_VIEWS and value[:1] in {"L", "R"} and value[1:].lstrip("-_ ") in _KNOWN_VIEWS:
        return value[1:].lstrip("-_ ")  # "LCC", "R-MLO": laterality glued to the view
    return value


def _spacing(ds: Any) -> tuple[tuple[float, float] | None, str | None]:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            value = ds.get(keyword)
        except Exception:  # an unreadable spacing is the same as none
            continue
        if value is None:
            continue
        try:
            row, col = (float(v) for v in value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(row) and math.isfinite(col) and row > 0 and col > 0:
            return (row, col), keyword
    return None, None


# --------------------------------------------------------------------------- DICOM


def _validate(ds: Any, path: Path, allow_non_mg: bool) -> tuple[int, int]:
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise UnsupportedImageError(
                f"{path}: Float Pixel Data (7FE0,0008/0009) is not supported; expected integer Pixel Data (7FE0,0010)"
            )
        raise DicomError(f"{path}: no Pixel Data (7FE0,0010); nothing to segment")
    modality = (_tag_str(ds, "Modality") or "").upper()
    if modality != "MG" and not allow_non_mg:
        raise DicomError(
            f"{path}: Modality (0008,0060) is {modality or 'missing'!r}, expected 'MG'; "
            "pass --allow-non-mg to read it anyway"
        )
    frames = _int_tag(ds, "NumberOfFrames", "(0028,0008)", 1)
    if frames > 1:
        raise UnsupportedImageError(
            f"{path}: Number of Frames (0028,0008) is {frames}; multi-frame images "
            "(breast tomosynthesis) are not supported, only single 2-D mammograms"
        )
    samples = _int_tag(ds, "SamplesPerPixel", "(0028,0002)", 1)
    photometric = (_tag_str(ds, "PhotometricInterpretation") or "").upper()
    if samples != 1 or photometric not in _MONO:
        raise UnsupportedImageError(
            f"{path}: Photometric Interpretation (0028,0004) is {photometric or 'missing'!r} with "
            f"Samples per Pixel (0028,0002) {samples}; expected MONOCHROME1/MONOCHROME2 greyscale"
        )
    rows = _int_tag(ds, "Rows", "(0028,0010)")
    cols = _int_tag(ds, "Columns", "(0028,0011)")
    if rows <= 0 or cols <= 0:
        raise DicomError(f"{path}: Rows x Columns (0028,0010/0011) is {rows}x{cols}; expected a non-empty image")
    if rows * cols > MAX_MEGAPIXELS * 1e6:
        raise DicomError(
            f"{path}: Rows x Columns (0028,0010/0011) is {rows}x{cols} = {rows * cols / 1e6:.0f} MP; "
            f"refusing more than {MAX_MEGAPIXELS:.0f} MP"
        )
    allocated = _int_tag(ds, "BitsAllocated", "(0028,0100)")
    stored = _int_tag(ds, "BitsStored", "(0028,0101)", allocated)
    if stored > allocated:
        raise DicomError(f"{path}: Bits Stored (0028,0101) {stored} exceeds Bits Allocated (0028,0100) {allocated}")
    if allocated not in (8, 16) or stored < 1:
        raise UnsupportedImageError(
            f"{path}: Bits Allocated (0028,0100) {allocated} / Bits Stored (0028,0101) {stored}; "
            "expected 8 or 16 allocated"
        )
    return rows, cols


#: Integer dtypes whose range :func:`value_range` reads with one OpenCV pass.
_ONE_PASS_RANGE = (np.dtype(np.uint8), np.dtype(np.int8), np.dtype(np.uint16), np.dtype(np.int16), np.dtype(np.int32))


def value_range(values: np.ndarray) -> tuple[int, int]:
    """(min, max) of an integer image.

    One pass with OpenCV's ``minMaxLoc`` for a C-contiguous 2-D image of up to 32 bits (exact: it
    returns the extremes as doubles): ~0.8 ms on a fresh 2944x1920 uint16 scan, against ~1.8 ms for
    the three NumPy passes the reader made before (the unused-bits check, ``min``, ``max``; measured
    on the 2-core AMD EPYC, CPU flags avx avx2 fma f16c, while a training job ran). NumPy for anything else.
    """
    if values.ndim == 2 and values.size and values.dtype in _ONE_PASS_RANGE and values.flags.c_contiguous:
        import cv2

        lo, hi, _, _ = cv2.minMaxLoc(values)
        return int(lo), int(hi)
    return int(values.min()), int(values.max())


def _native_pixels(
    ds: Any, ts: str, rows: int, cols: int, mapped: mmap.mmap | None = None
) -> tuple[np.ndarray, tuple[int, int] | None] | None:
    """Uncompressed little-endian Pixel Data as an array viewing the file's bytes, or None.

    The bytes are pydicom's value, or, when :func:`_parse` left the value in the file's map
    (``mapped``), the map itself. Bits above Bits Stored are masked off (unsigned) or
    sign-extended (signed) the way pydicom does, but only when some pixel uses them, so the
    common case costs no copy at all. Anything unusual returns None and goes through pydicom.

    Returns:
        (values, (min, max) of the values when the unused-bits check found them, else None).
    """
    if ts not in _NATIVE_LE:
        return None
    allocated = _int_tag(ds, "BitsAllocated", "(0028,0100)")
    stored = _int_tag(ds, "BitsStored", "(0028,0101)", allocated) or allocated
    signed = _int_tag(ds, "PixelRepresentation", "(0028,0103)", 0) == 1
    if "HighBit" in ds and _int_tag(ds, "HighBit", "(0028,0102)", 0) != stored - 1:
        return None
    elem = ds.get_item(0x7FE00010, keep_deferred=True)
    in_map = mapped is not None and getattr(elem, "value", b"") is None  # deferred: still in the file
    if in_map:
        raw, offset, length = mapped, int(elem.value_tell), int(elem.length)
        if offset % 2:  # an odd offset (not valid DICOM) would give an unaligned array: let pydicom copy it
            return None
    else:
        raw, offset = _get(ds, "PixelData"), 0
        if not isinstance(raw, (bytes, bytearray)):
            return None
        length = len(raw)
    nbytes = rows * cols * (allocated // 8)
    if length < nbytes:
        raise DicomError(
            f"Pixel Data (7FE0,0010) holds {length} bytes but Rows x Columns x Bits Allocated "
            f"({rows}x{cols}x{allocated}) need {nbytes}: the file is truncated or its header is wrong"
        )
    dtype = {(8, False): np.uint8, (8, True): np.int8, (16, False): "<u2", (16, True): "<i2"}[(allocated, signed)]
    arr = np.frombuffer(raw, dtype=dtype, count=rows * cols, offset=offset).reshape(rows, cols)
    if stored < allocated:
        unsigned = arr.view(np.uint8 if allocated == 8 else np.uint16)
        if signed:
            # The sign is bit Bits Stored - 1, whatever the bits above hold (writers differ).
            shift = allocated - stored
            arr = (unsigned << shift).view(arr.dtype) >> shift  # arithmetic shift sign-extends
        else:
            # One pass gives the check and, when no pixel uses the unused bits, the display table's range.
            lo, hi = value_range(unsigned)
            if hi < 1 << stored:
                return arr, (lo, hi)
            arr = unsigned & ((1 << stored) - 1)
    return arr, None


def _check_first_frame(ds: Any, path: Path, ts: str, rows: int, cols: int) -> None:
    """Check the compressed frame's own header (size, components, RLE segment table) before decoding."""
    from pydicom.encaps import generate_frames

    codec = codec_name(ts)
    raw = _get(ds, "PixelData")
    if not isinstance(raw, (bytes, bytearray)) or len(raw) < 8:
        raise DicomError(f"{path}: corrupt {codec} data in Pixel Data (7FE0,0010): no encapsulated frame")
    try:
        frame = next(generate_frames(raw, number_of_frames=1))
    except StopIteration:
        raise DicomError(f"{path}: corrupt {codec} data in Pixel Data (7FE0,0010): no frame") from None
    except Exception as exc:  # pydicom's encapsulation parser: ValueError, struct.error, ...
        raise DicomError(
            f"{path}: corrupt {codec} data in Pixel Data (7FE0,0010): unreadable fragments ({first_line(exc)})"
        ) from exc
    try:
        check_frame(ts, frame, rows, cols, _int_tag(ds, "BitsAllocated", "(0028,0100)"))
    except DicomError as exc:
        raise DicomError(f"{path}: {exc}") from exc


def _pixel_array(ds: Any, ts: str | None) -> np.ndarray:
    """``ds.pixel_array``, decoded by the fastest installed plugin for ``ts`` (:mod:`bcedge.decoders`).

    The chosen plugin's verdict is final: no retry with pydicom's other plugins, because the
    slower ones accept what the chosen ones refuse (pylibjpeg-libjpeg decodes a truncated
    JPEG-LS or lossless JPEG stream into a partly blank image without an error; CharLS refuses
    it). ``ts`` None (uncompressed) or no listed plugin installed: pydicom's own order.
    """
    from bcedge.decoders import decoding_plugin

    plugin = decoding_plugin(ts) if ts else None
    if plugin is not None:
        ds.pixel_array_options(decoding_plugin=plugin)
    try:
        return ds.pixel_array
    except Exception:
        raise
    except BaseException as exc:
        # pyo3's PanicException derives from BaseException: a Rust decoder (pylibjpeg-rle) whose
        # bounds check stopped on bad data (benchmarks/hostile.py's bomb_rle_runs). Memory-safe,
        # so it is corrupt data like any other decoder's error, not a crash.
        if type(exc).__name__ != "PanicException":
            raise
        raise ValueError(f"{plugin or 'the decoder'} stopped on bad data ({first_line(exc)})") from exc


def _decode(
    ds: Any, path: Path, rows: int, cols: int, mapped: mmap.mmap | None = None
) -> tuple[np.ndarray, tuple[int, int] | None]:
    """Stored values as a (rows, cols) integer array, and their (min, max) when decoding found them
    (else None); maps decoder failures to one-line errors. ``mapped``: the file's map, when
    :func:`_parse` left the Pixel Data in it."""
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts is None:
        # A data set without file meta (forced read): its encoding is what pydicom found.
        from pydicom.dataset import FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

        implicit = getattr(ds, "original_encoding", (True, True))[0]
        if meta is None:
            ds.file_meta = meta = FileMetaDataset()
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit is not False else ExplicitVRLittleEndian
        ts = meta.TransferSyntaxUID
    from pydicom.uid import UID

    ts = UID(str(ts).strip().rstrip("\x00"))
    name = ts.name
    if not ts or not ts.is_transfer_syntax or ts.is_private:
        # A SOP class, a vendor's private syntax, or garbage: pydicom parsed the header by guessing
        # its encoding, but how the pixels are encoded is unknown (GE's private 1.2.840.113619.5.2
        # is implicit VR with big-endian pixels), so nothing is decoded on a guess.
        raise UnsupportedImageError(
            f"{path}: Transfer Syntax UID (0002,0010) {str(ts)[:64]!r} is not a transfer syntax bcedge can decode"
        )
    try:
        fast = _native_pixels(ds, str(ts), rows, cols, mapped)
    except DicomError as exc:
        raise DicomError(f"{path}: {exc}") from None
    if fast is not None:
        return fast
    codec = codec_name(str(ts))
    get_decoder: Any = None
    if ts.is_compressed:
        _check_first_frame(ds, path, str(ts), rows, cols)
        with contextlib.suppress(ImportError):  # pydicom < 3: let pixel_array say what is missing
            from pydicom.pixels import get_decoder
        if get_decoder is not None:
            try:
                decoder = get_decoder(ts)
            except NotImplementedError as exc:
                raise UnsupportedImageError(
                    f"{path}: Transfer Syntax UID (0002,0010) {name} ({ts}) cannot be decoded by pydicom"
                ) from exc
            if not decoder.is_available:
                raise MissingDependencyError(
                    f"{path}: decoding Transfer Syntax {name}", "dicom", "pylibjpeg + pylibjpeg-openjpeg/libjpeg"
                )
    try:
        with _c_stderr_to_debug_log(path):
            arr = _pixel_array(ds, str(ts) if ts.is_compressed else None)
    except MemoryError as exc:
        raise DicomError(f"{path}: decoding Pixel Data (7FE0,0010) ran out of memory") from exc
    except Exception as exc:  # decoders raise ValueError, RuntimeError, EOFError, their own types...
        if ts.is_compressed and get_decoder is None:  # pydicom < 3: no availability check was possible
            msg = str(exc).lower()
            if "missing" in msg or "install" in msg:
                raise MissingDependencyError(
                    f"{path}: decoding Transfer Syntax {name}", "dicom", "pylibjpeg + pylibjpeg-openjpeg/libjpeg"
                ) from exc
        # The decoder is there (checked above): the data are what is wrong.
        what = f"corrupt {codec} data" if ts.is_compressed else "truncated or malformed data"
        # pydicom lists each plugin's reason on its own line: keep them, on one line.
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise DicomError(f"{path}: {what} in Pixel Data (7FE0,0010): {detail}") from exc
    if arr.ndim != 2:
        raise UnsupportedImageError(f"{path}: decoded pixel array has shape {arr.shape}; expected 2-D greyscale")
    if not np.issubdtype(arr.dtype, np.integer):
        raise UnsupportedImageError(f"{path}: decoded pixels are {arr.dtype}; expected integers")
    return arr, None


def display_table(
    ds: Any, stored: np.ndarray, voi: VoiMode = "auto", *, stored_range: tuple[int, int] | None = None
) -> tuple[np.ndarray, int, dict[str, object]]:
    """The whole display pipeline as a lookup table over possible stored values.

    Args:
        ds: dataset (for the LUT tags).
        stored: (H, W) integer stored values (for the robust window's histogram).
        voi: ``auto`` (VOI LUT Sequence, else window, else robust), ``lut``,
            ``window``, ``robust`` or ``none`` (min/max of the stored range).
        stored_range: (min, max) of ``stored`` when already known (the reader's decode finds it);
            None: read from ``stored`` (:func:`value_range`).

    Returns:
        (table float32 in [0, 1], offset, info) with ``pixels = table[stored - offset]``;
        info has ``window``, ``window_source``, ``voi_function``, ``inverted``.
        For unsigned data the table starts at stored value 0 (offset 0), so the
        image can index it directly.
    """
    if voi not in _VOI_MODES:
        raise ConfigError(f"unknown VOI mode {voi!r}; expected one of {', '.join(_VOI_MODES)}")
    lo, hi = stored_range if stored_range is not None else value_range(stored)
    start = min(lo, 0)
    support = np.arange(start, hi + 1, dtype=np.int64)
    values = modality_lut(support, ds)
    used = values[lo - start :]  # modality values of the stored range actually present
    info: dict[str, object] = {"window": None, "voi_function": None}

    has_lut = bool(_get(ds, "VOILUTSequence"))
    mode = voi
    if mode == "auto":
        mode = "lut" if has_lut else "window" if first_window(ds) is not None else "robust"
    if mode == "lut":
        out = apply_voi_lut_sequence(values, ds)
    elif mode == "window":
        out = apply_window(values, ds)
        info["window"] = first_window(ds)
        info["voi_function"] = voi_function(ds)
    elif mode == "robust":
        step = _subsample_step(stored.shape)
        sample = stored[::step, ::step].ravel()
        counts = np.bincount((sample.astype(np.int64) - start) if start else sample, minlength=support.size)
        order = np.argsort(values, kind="stable")  # the modality LUT may be non-monotonic
        center, width = robust_window(values[order], counts[order])
        out = window_linear_exact(values, center, width)
        info["window"] = (center, width)
    else:  # "none"
        vmin = float(used.min())
        span = max(float(used.max()) - vmin, 1.0)
        out = (values - vmin) / span
    info["window_source"] = {"lut": "voi_lut_sequence"}.get(mode, mode)

    inverted = needs_inversion(_tag_str(ds, "PhotometricInterpretation"), _tag_str(ds, "PresentationLUTShape"))
    if inverted:
        out = 1.0 - out
    info["inverted"] = inverted
    return np.clip(out, 0.0, 1.0).astype(np.float32), start, info


def _parse(p: Path) -> tuple[Any, tuple[int, int, int] | None, mmap.mmap | None]:
    """Parse the header (and Pixel Data bytes) of ``p``.

    The file is memory-mapped, so a length field claiming more than the file holds reads only
    what is there; files over :data:`~bcedge.limits.MAX_FILE_BYTES` are refused before mapping.
    In an uncompressed file (:data:`_MAPPED_LE`) values over :data:`_MAP_PIXELS_BYTES` are not
    read: the Pixel Data is then viewed in the map (:func:`_native_pixels`), and anything else
    that large is read by pydicom from the file when asked for (its deferred read, by file name).

    Returns:
        (dataset, first short read or None, the map when values were left in it, else None).
        The map stays open while something views it and closes with its last reference.
    """
    from bcedge.decoders import import_pydicom

    pydicom = import_pydicom()  # the first import in a bcedge infer process: lean (cold start)

    st = p.stat()
    try:
        check_file_size(st.st_size, str(p))
    except InputError as exc:
        raise DicomError(str(exc)) from None
    with open(p, "rb") as fh:
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        ds, short_read, mapped = _parse_mapped(pydicom, p, st, buf)
    except BaseException:
        buf.close()  # nothing views it yet
        raise
    if mapped is None:
        buf.close()
    return ds, short_read, mapped


def _parse_mapped(
    pydicom: Any, p: Path, st: os.stat_result, buf: mmap.mmap
) -> tuple[Any, tuple[int, int, int] | None, mmap.mmap | None]:
    """:func:`_parse` on the file's memory map ``buf`` (``st``: the file's status when it was mapped)."""
    size = st.st_size
    head = buf[:132]
    has_preamble = len(head) == 132 and head[128:132] == b"DICM"
    if not has_preamble and not _looks_like_dataset(head, size):
        kind = _raster_kind(head)
        if kind:
            raise DicomError(
                f"{p}: not a DICOM file, it is a {kind} image; give it a .{kind.lower()} suffix to read it"
            )
        if size < 132:
            raise DicomError(f"{p}: not a DICOM file ({size} bytes, too short for the 132-byte DICOM preamble)")
        raise DicomError(f"{p}: not a DICOM file (no 'DICM' marker at byte 128, no data set at byte 0)")
    start = 132 if has_preamble else 0
    meta_end, ts = _scan_file_meta(buf, start)
    if ts == DEFLATE_SYNTAX:
        return (*_parse_deflated(buf, p, start, meta_end, has_preamble), None)
    reader = _TrackedReader(buf, str(p))
    mapped = ts in _MAPPED_LE
    try:
        ds = pydicom.dcmread(reader, force=not has_preamble, defer_size=_MAP_PIXELS_BYTES if mapped else None)
    except Exception as exc:  # pydicom raises many types on corrupt headers
        raise _header_error(p, size, reader, exc) from exc
    if not has_preamble and "SOPClassUID" not in ds and "PixelData" not in ds:
        raise DicomError(f"{p}: not a DICOM file (no DICM preamble, no SOP Class UID or Pixel Data)")
    if mapped:
        # A deferred value is read from the file by name, as pydicom does for a path, not through this
        # reader: the data set then holds no map (it can be copied and pickled), only the pixels do.
        ds.buffer, ds.fileobj_type, ds.filename, ds.timestamp = None, open, str(p), st.st_mtime
    return ds, reader.short_read, buf if mapped else None


def _header_error(p: Path, size: int, reader: _TrackedReader, exc: BaseException) -> DicomError:
    if reader.short_read is not None:
        return DicomError(f"{p}: truncated DICOM file ({size} bytes): header ends mid-element")
    if isinstance(exc, RecursionError):
        return DicomError(f"{p}: DICOM header is malformed (sequences nested too deeply)")
    return DicomError(f"{p}: DICOM header is malformed ({first_line(exc)})")


def _scan_file_meta(buf: Any, start: int) -> tuple[int, str | None]:
    """(end offset, Transfer Syntax UID) of the file meta group (0002) at ``start``, explicit VR LE.

    Only to spot a deflated data set before pydicom inflates it unbounded; (start, None) when
    there is no readable file meta (pydicom then says what is wrong).
    """
    at, ts = start, None
    while at + 8 <= len(buf):
        group, elem = struct.unpack("<HH", buf[at : at + 4])
        if group != 0x0002:
            break
        vr = bytes(buf[at + 4 : at + 6])
        if vr in (b"OB", b"OW", b"UN", b"UT", b"SQ", b"UC", b"UR"):
            if at + 12 > len(buf):
                break
            length = struct.unpack("<I", buf[at + 8 : at + 12])[0]
            value_at = at + 12
        else:
            length = struct.unpack("<H", buf[at + 6 : at + 8])[0]
            value_at = at + 8
        if length == 0xFFFFFFFF or value_at + length > len(buf):
            break
        if elem == 0x0010:
            ts = bytes(buf[value_at : value_at + length]).rstrip(b"\x00 ").decode("ascii", "replace")
        at = value_at + length
    return at, ts


def _parse_deflated(
    buf: Any, p: Path, start: int, meta_end: int, has_preamble: bool
) -> tuple[Any, tuple[int, int, int] | None]:
    """Parse a Deflated Explicit VR Little Endian file, inflating no more than its header says it needs.

    pydicom inflates the whole data set in one call, however large; here the header is inflated
    first (at most 1 MiB, then :data:`~bcedge.limits.MAX_HEADER_BYTES`), Rows x Columns x Bits
    Allocated give the Pixel Data's size, and the rest is inflated up to that and no further.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.filereader import read_dataset

    def at_pixels(tag: Any, vr: Any, length: Any) -> bool:
        return int(tag) >= 0x7FE00008

    meta_reader = _TrackedReader(buf, str(p))
    meta_reader.seek(start)
    try:
        meta = read_dataset(meta_reader, False, True, stop_when=lambda tag, vr, length: int(tag) >> 16 != 0x0002)
    except Exception as exc:
        raise _header_error(p, len(buf), meta_reader, exc) from exc
    deflated = buf[meta_end:]
    what = f"{p}: the deflated data set"
    header_ds = None
    header_len = 0
    for window in (1 << 20, MAX_HEADER_BYTES):
        head = inflate_limited(deflated, window, what, partial=True)
        stream = io.BytesIO(head)
        try:
            header_ds = read_dataset(stream, False, True, stop_when=at_pixels)
        except Exception:
            header_ds = None
        header_len = stream.tell()
        if header_ds is not None and (header_len < len(head) or len(head) < window):
            break  # stopped at the Pixel Data, or the whole data set fits in the window
        header_ds = None
        if len(head) < window:
            break  # the whole data set is there and still does not parse: say so below
    if header_ds is None:
        raise DicomError(f"{p}: DICOM header is malformed (the deflated data set does not parse)")
    try:
        rows = _int_tag(header_ds, "Rows", "(0028,0010)", 0)
        cols = _int_tag(header_ds, "Columns", "(0028,0011)", 0)
        allocated = _int_tag(header_ds, "BitsAllocated", "(0028,0100)", 16)
        check_image_size(rows or 1, cols or 1, max(1, (allocated + 7) // 8), "Rows x Columns (0028,0010/0011)")
    except InputError as exc:
        raise DicomError(f"{p}: {exc}") from None
    # The header as inflated so far, the pixels Rows x Columns x Bits Allocated promise, and room
    # for the Pixel Data element's own header and trailing padding.
    limit = header_len + rows * cols * max(1, (allocated + 7) // 8) + (64 << 10)
    body = inflate_limited(deflated, min(limit, MAX_FILE_BYTES), what)
    reader = _TrackedReader(io.BytesIO(body), str(p))
    try:
        ds = read_dataset(reader, False, True)
    except Exception as exc:
        raise _header_error(p, len(body), reader, exc) from exc
    preamble = bytes(buf[:128]) if has_preamble else None
    return FileDataset(str(p), ds, preamble=preamble, file_meta=FileMetaDataset(meta)), reader.short_read


def read_dicom(path: str | os.PathLike[str], *, allow_non_mg: bool = False, voi: VoiMode = "auto") -> Mammogram:
    """Read a single-frame greyscale mammogram DICOM.

    Args:
        path: the file.
        allow_non_mg: accept a Modality other than MG.
        voi: VOI choice, see :func:`display_table`.

    Returns:
        A :class:`Mammogram` with float32 pixels in [0, 1], dense tissue bright.

    Raises:
        InputError: missing path, directory, empty file.
        DicomError: not DICOM, truncated, not MG, no pixels, bad sizes, bit depths or LUT tags.
        UnsupportedImageError: multi-frame, RGB or other photometric interpretations.
        MissingDependencyError: compressed pixel data without a decoder installed.
        ConfigError: unknown ``voi``.
    """
    if voi not in _VOI_MODES:
        raise ConfigError(f"unknown VOI mode {voi!r}; expected one of {', '.join(_VOI_MODES)}")
    p = _check_path(path)
    # pydicom warns about every vendor quirk it tolerates; a CLI user should see one
    # line, so the warnings go to the debug log. catch_warnings swaps process-wide
    # state and is not thread-safe: only the main thread does it, worker threads
    # (data loaders) leave warnings alone.
    if threading.current_thread() is not threading.main_thread():
        return _read_dicom_safely(p, allow_non_mg, voi)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return _read_dicom_safely(p, allow_non_mg, voi)
        finally:
            for w in caught:
                _log.debug("%s: %s", p, w.message)


def _read_dicom_safely(p: Path, allow_non_mg: bool, voi: VoiMode) -> Mammogram:
    """:func:`_read_dicom`, with whatever escaped its specific checks turned into one DicomError line.

    The specific checks name the tag; this net only guarantees that a file nobody foresaw
    still gives exit code 2 and one line ("unexpected" marks it, so the fuzzer can count it).
    """
    try:
        return _read_dicom(p, allow_non_mg, voi)
    except BcedgeError:
        raise
    except OSError as exc:
        raise InputError(f"{p}: cannot read: {exc.strerror or exc}") from exc
    except MemoryError as exc:
        raise DicomError(f"{p}: not enough memory to read this file") from exc
    except RecursionError as exc:
        raise DicomError(f"{p}: DICOM data nested too deeply") from exc
    except Exception as exc:
        raise DicomError(f"{p}: unreadable DICOM (unexpected {type(exc).__name__}: {first_line(exc)})") from exc


def _read_dicom(p: Path, allow_non_mg: bool, voi: VoiMode) -> Mammogram:
    ds, short_read, mapped = _parse(p)
    truncated = ""
    if short_read is not None:
        at, wanted, got = short_read
        truncated = f"truncated file: an element at byte {at} needs {wanted} bytes, {got} remain"
    if short_read is not None and "PixelData" not in ds:
        raise DicomError(f"{p}: {truncated}; no Pixel Data (7FE0,0010) was read")
    if short_read is not None:
        # The Pixel Data (or an element after it) claims more bytes than the file holds. Even when
        # Rows x Columns happen to fit in what is there, the length field lies: refuse the file.
        raise DicomError(f"{p}: Pixel Data (7FE0,0010) is incomplete, {truncated}")
    try:
        rows, cols = _validate(ds, p, allow_non_mg)
    except DicomError as exc:
        raise _with_path(exc, p) from exc.__cause__
    try:
        stored, known_range = _decode(ds, p, rows, cols, mapped)
    except DicomError as exc:
        if truncated and not isinstance(exc, UnsupportedImageError):
            raise DicomError(f"{p}: Pixel Data (7FE0,0010) is incomplete, {truncated}") from exc
        raise
    if stored.shape != (rows, cols):
        raise DicomError(f"{p}: decoded {stored.shape} pixels but Rows x Columns (0028,0010/0011) says {rows}x{cols}")
    try:
        table, offset, info = display_table(ds, stored, voi, stored_range=known_range)
        laterality, lat_source = _laterality(ds)
        chest_side = _chest_wall_side(ds)
        view = _view(ds)
        meta_strings = {
            key: _tag_str(ds, key)
            for key in (
                "Modality",
                "PhotometricInterpretation",
                "PresentationIntentType",
                "PresentationLUTShape",
                "Manufacturer",
                "StudyInstanceUID",
                "SeriesInstanceUID",
                "SOPInstanceUID",
            )
        }
        bits_stored = _int_tag(ds, "BitsStored", "(0028,0101)", _int_tag(ds, "BitsAllocated", "(0028,0100)"))
    except DicomError as exc:
        raise _with_path(exc, p) from exc
    spacing, spacing_source = _spacing(ds)
    ts = ds.file_meta.get("TransferSyntaxUID") if getattr(ds, "file_meta", None) is not None else None
    meta = ImageMeta(
        source=str(p),
        rows=rows,
        columns=cols,
        modality=meta_strings["Modality"],
        laterality=laterality,
        laterality_source=lat_source,
        chest_wall_side=chest_side,
        chest_wall_source="PatientOrientation" if chest_side else None,
        view=view,
        photometric=meta_strings["PhotometricInterpretation"],
        presentation_intent=meta_strings["PresentationIntentType"],
        presentation_lut_shape=meta_strings["PresentationLUTShape"],
        inverted=bool(info["inverted"]),
        pixel_spacing_mm=spacing,
        spacing_source=spacing_source,
        bits_stored=bits_stored,
        manufacturer=meta_strings["Manufacturer"],
        study_uid=meta_strings["StudyInstanceUID"],
        series_uid=meta_strings["SeriesInstanceUID"],
        sop_uid=meta_strings["SOPInstanceUID"],
        window=info["window"],  # type: ignore[arg-type]
        window_source=str(info["window_source"]),
        voi_function=info["voi_function"],  # type: ignore[arg-type]
        transfer_syntax=str(ts) if ts else None,
    )
    # The pixels are decoded; the header is kept without them (a full-field scan's Pixel Data is
    # ~17 MB, the rest a few kB). ``stored`` may view those bytes: the array keeps them alive.
    del ds["PixelData"]
    # No full-size float image here: the displayed pixels are made from the stored values when
    # something asks for them (StoredImage.display is the table lookup this function used to do).
    return Mammogram(None, meta, ds, stored=StoredImage(stored, table, offset))  # type: ignore[arg-type]


def _with_path(exc: DicomError, p: Path) -> DicomError:
    """The same error type with the file path in front (LUT helpers do not know the path)."""
    text = str(exc)
    return exc if text.startswith(str(p)) else type(exc)(f"{p}: {text}")


# --------------------------------------------------------------------------- rasters


def _pnm_maxval(data: np.ndarray) -> int | None:
    """Maxval of a binary/ASCII PGM (P5/P2) header, or None for other formats or odd headers."""
    head = data[:512].tobytes()
    if head[:2] not in (b"P2", b"P5"):
        return None
    tokens: list[bytes] = []
    for line in head.split(b"\n"):
        line = line.split(b"#", 1)[0]
        tokens.extend(line.split())
        if len(tokens) >= 4:
            break
    try:
        maxval = int(tokens[3])
    except (IndexError, ValueError):
        return None
    return maxval if 0 < maxval < 65536 else None


def _quiet_opencv(cv2: Any) -> None:
    """Silence OpenCV's own log (it prints "[ERROR...] imdecode_ ..." to stderr for a corrupt file).

    The reader reports the failure as one error line; OpenCV's lines would be a second, third...
    """
    with contextlib.suppress(AttributeError):
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def _c_stderr_to_debug_log(p: Path) -> contextlib.AbstractContextManager[None]:
    """What C decoders write to descriptor 2 goes to the debug log, so a corrupt file costs one
    ``error:`` line (:func:`bcedge.cstderr.c_stderr_to_debug_log`)."""
    return c_stderr_to_debug_log(f"{p}: the image decoder")


def read_raster(path: str | os.PathLike[str]) -> Mammogram:
    """Read an 8/16-bit PNG, PGM, JPEG or TIFF as a mammogram.

    Colour files are converted to grey (OpenCV's BT.601 weights). 8-bit images
    are divided by 255. 16-bit PGMs are divided by their header's maxval; other
    16-bit images by 2**b - 1, where b is the smallest bit depth (8, 10, 12, 14 or
    16) that holds the maximum value, so 12-bit data in a 16-bit PNG are not left
    nearly black. Float TIFFs are taken as already in [0, 1]. Rasters carry no
    laterality or spacing; grey levels are used as stored (no inversion).

    Returns:
        A :class:`Mammogram`: pixels (H, W) float32 in [0, 1].

    Raises:
        InputError: missing, empty or undecodable file, or an unsupported pixel type.
    """
    import cv2

    p = _check_path(path)
    try:
        check_file_size(p.stat().st_size, str(p))
        data = np.fromfile(p, dtype=np.uint8)  # cv2.imread mishandles some non-ASCII paths
    except OSError as exc:
        raise InputError(f"{p}: cannot read: {exc.strerror or exc}") from exc
    # OpenCV allocates what the header claims (and decodes formats by content, not by suffix):
    # only the formats whose header is checked here reach it, and only within the limits.
    try:
        header = raster_header(data)
    except InputError as exc:
        raise InputError(f"{p}: {exc}") from exc
    if header is None:
        if data[:132].tobytes()[128:132] == b"DICM":
            raise InputError(f"{p}: a DICOM file with a raster suffix; rename it to .dcm to read it")
        raise InputError(f"{p}: not a PNG/PGM/JPEG/TIFF/BMP image (unrecognised header)")
    kind, rows, cols, bytes_per_pixel = header
    try:
        check_image_size(rows, cols, bytes_per_pixel, f"the {kind} header")
    except InputError as exc:
        raise InputError(f"{p}: {exc}") from None
    _quiet_opencv(cv2)
    try:
        with _c_stderr_to_debug_log(p):
            img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # OpenCV's assertions and allocation failures
        raise InputError(f"{p}: {kind} data cannot be decoded ({first_line(exc).split(') ')[-1]})") from exc
    except MemoryError as exc:
        raise InputError(f"{p}: not enough memory to decode this {kind} image") from exc
    if img is None:
        raise InputError(f"{p}: not a readable {kind} image (corrupt or truncated data)")
    if img.ndim == 3:
        if img.shape[2] == 4:
            img = img[:, :, :3]
        img = img[:, :, 0] if img.shape[2] == 1 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if img.ndim != 2 or img.size == 0:
        raise InputError(f"{p}: image has shape {img.shape}; expected a 2-D greyscale image")
    maxval = _pnm_maxval(data)
    if img.dtype == np.uint8:
        bits, scale = 8, float(maxval if maxval and maxval < 256 else 255)
    elif img.dtype == np.uint16:
        if maxval and maxval > 255:
            bits, scale = int(maxval).bit_length(), float(maxval)
        else:
            peak = int(img.max())
            bits = next(b for b in (8, 10, 12, 14, 16) if peak < 2**b)
            scale = float(2**bits - 1)
    elif np.issubdtype(img.dtype, np.floating):
        bits, scale = 32, 1.0
    else:
        raise InputError(f"{p}: pixel type {img.dtype} unsupported; expected 8/16-bit unsigned or float")
    meta = ImageMeta(source=str(p), rows=img.shape[0], columns=img.shape[1], bits_stored=bits)
    if img.dtype in (np.uint8, np.uint16):
        # Integer rasters keep their stored values and a table (the same float32 product the
        # float path computes, value by value), so the float image is only made when asked for.
        levels = int(img.max()) + 1
        table = np.arange(levels, dtype=np.float32) * np.float32(1.0 / scale)
        np.clip(table, 0.0, 1.0, out=table)
        return Mammogram(None, meta, stored=StoredImage(img, table, 0))  # type: ignore[arg-type]
    # In place: one float32 image at a time (a 50 MP raster is 200 MB of them).
    pixels = img.astype(np.float32)
    pixels *= np.float32(1.0 / scale)
    np.clip(pixels, 0.0, 1.0, out=pixels)
    np.nan_to_num(pixels, copy=False, nan=0.0)
    return Mammogram(pixels, meta)


def read_mammogram(path: str | os.PathLike[str], *, allow_non_mg: bool = False, voi: VoiMode = "auto") -> Mammogram:
    """Read a DICOM (by preamble or .dcm suffix) or a raster image (by suffix).

    See :func:`read_dicom` and :func:`read_raster`. A file without a known raster
    suffix is read as DICOM (DICOM files are often named without one).
    """
    p = _check_path(path)
    if is_dicom_file(p):
        return read_dicom(p, allow_non_mg=allow_non_mg, voi=voi)
    if p.suffix.lower() in RASTER_SUFFIXES:
        return read_raster(p)
    return read_dicom(p, allow_non_mg=allow_non_mg, voi=voi)
