"""Read a mammogram (MG DICOM or a PNG/PGM/JPEG/TIFF raster) into a :class:`Mammogram`.

The pixel path follows the DICOM display pipeline (PS3.4 N.2, PS3.3 C.11):

    stored values -> Modality LUT (Rescale Slope/Intercept or Modality LUT Sequence)
                  -> VOI (VOI LUT Sequence, else Window Center/Width with VOI LUT
                     Function LINEAR / LINEAR_EXACT / SIGMOID, first window)
                  -> Presentation (MONOCHROME1 and/or Presentation LUT Shape INVERSE)
                  -> float32 in [0, 1], dense tissue bright.

Speed: the three steps depend only on the stored value, so they are evaluated
once over every possible stored value (at most 2**16) and the image is mapped
through that table in one pass. A full-field 3328x2560 scan costs one
``np.take`` instead of a dozen full-resolution float passes.

Inversion: in DX/MG, MONOCHROME1 normally comes with Presentation LUT Shape
INVERSE. Both say the same thing (low values display white), so the image is
inverted exactly once when either says so.

FOR PROCESSING images (and any image without a VOI) carry no display window:
bcedge applies a *robust window*, linear between the 0.5th and 99.5th
percentiles of the modality values (on a 4x subsampled grid), documented in
``ImageMeta.window_source == "robust"``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from bcedge.errors import DicomError, InputError, MissingDependencyError, UnsupportedImageError

#: Refuse images above this many pixels before decoding (a corrupt header can claim anything).
MAX_MEGAPIXELS = 100.0
#: Percentiles of the robust window used when an image carries no VOI.
ROBUST_PERCENTILES = (0.5, 99.5)
RASTER_SUFFIXES = {".png", ".pgm", ".pnm", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
#: Transfer syntaxes whose pixel data need a decoder plugin (the `dicom` extra).
_MONO = ("MONOCHROME1", "MONOCHROME2")

VoiMode = Literal["auto", "lut", "window", "robust", "none"]


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
        view: ``CC``, ``MLO``, ``ML``, ``LM``, ... or None.
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
class Mammogram:
    """A mammogram ready for preprocessing.

    Attributes:
        pixels: (H, W) float32 in [0, 1], as displayed: dense tissue bright,
            background dark. Original resolution, no geometric change.
        meta: what was read about it.
    """

    pixels: np.ndarray
    meta: ImageMeta

    def with_meta(self, **changes: object) -> Mammogram:
        """A copy whose meta has ``changes`` applied (e.g. laterality from a file name)."""
        return Mammogram(self.pixels, replace(self.meta, **changes))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- file checks


def _check_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, expected an image file")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: empty file (0 bytes)")
    return p


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


# --------------------------------------------------------------------------- LUT steps
# Small pure functions over arrays of modality values; each takes what it needs from
# the dataset, so tests can drive them one by one.


def modality_lut(values: np.ndarray, ds: object) -> np.ndarray:
    """Modality LUT: Rescale Slope/Intercept (0028,1053/1052) or Modality LUT Sequence (0028,3000).

    Args:
        values: stored values, any integer shape.
        ds: the pydicom dataset.

    Returns:
        float64 modality values, same shape.
    """
    from pydicom.pixels import apply_modality_lut

    if "ModalityLUTSequence" in ds or "RescaleSlope" in ds or "RescaleIntercept" in ds:
        return np.asarray(apply_modality_lut(values, ds), dtype=np.float64)
    return values.astype(np.float64)


def window_linear(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """VOI LUT Function LINEAR (PS3.3 C.11.2.1.2.1) onto [0, 1]. ``width`` >= 1."""
    if width < 1:
        raise DicomError(f"Window Width (0028,1051) is {width}; LINEAR needs >= 1")
    y = (x - (center - 0.5)) / (width - 1) + 0.5 if width > 1 else (x > center - 0.5) * 1.0
    y = np.where(x <= center - 0.5 - (width - 1) / 2, 0.0, y)
    y = np.where(x > center - 0.5 + (width - 1) / 2, 1.0, y)
    return np.clip(y, 0.0, 1.0)


def window_linear_exact(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """VOI LUT Function LINEAR_EXACT (PS3.3 C.11.2.1.3.2) onto [0, 1]. ``width`` > 0."""
    if width <= 0:
        raise DicomError(f"Window Width (0028,1051) is {width}; LINEAR_EXACT needs > 0")
    return np.clip((x - center) / width + 0.5, 0.0, 1.0)


def window_sigmoid(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """VOI LUT Function SIGMOID (PS3.3 C.11.2.1.3.1) onto (0, 1). ``width`` > 0."""
    if width <= 0:
        raise DicomError(f"Window Width (0028,1051) is {width}; SIGMOID needs > 0")
    return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))


_WINDOW_FUNCTIONS = {
    "LINEAR": window_linear,
    "LINEAR_EXACT": window_linear_exact,
    "SIGMOID": window_sigmoid,
}


def first_window(ds: object) -> tuple[float, float] | None:
    """(center, width) of the first window in Window Center/Width (0028,1050/1051), or None."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    from pydicom.multival import MultiValue

    c, w = ds.WindowCenter, ds.WindowWidth
    c = c[0] if isinstance(c, (MultiValue, list, tuple)) else c
    w = w[0] if isinstance(w, (MultiValue, list, tuple)) else w
    try:
        return float(c), float(w)
    except (TypeError, ValueError) as exc:
        raise DicomError(f"Window Center/Width (0028,1050/1051) unreadable: {c!r}/{w!r}") from exc


def apply_window(x: np.ndarray, ds: object) -> np.ndarray:
    """Window Center/Width with the VOI LUT Function (0028,1056), default LINEAR; onto [0, 1]."""
    cw = first_window(ds)
    if cw is None:
        raise DicomError("no Window Center/Width (0028,1050/1051) to apply")
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    if function not in _WINDOW_FUNCTIONS:
        raise DicomError(
            f"VOI LUT Function (0028,1056) {function!r} unsupported; expected LINEAR, LINEAR_EXACT or SIGMOID"
        )
    return _WINDOW_FUNCTIONS[function](x, *cw)


def apply_voi_lut_sequence(x: np.ndarray, ds: object) -> np.ndarray:
    """First item of the VOI LUT Sequence (0028,3010) onto [0, 1].

    Values below the first mapped value take the first entry, above the last take
    the last entry (PS3.3 C.11.2.1.1). The output is divided by 2**bits - 1 from
    LUT Descriptor (0028,3002); when the data exceed that (a known vendor quirk)
    the bit depth is taken from the data instead.
    """
    item = ds.VOILUTSequence[0]
    try:
        n, first, bits = (int(v) for v in item.LUTDescriptor)
    except (AttributeError, TypeError, ValueError) as exc:
        raise DicomError("VOI LUT Sequence (0028,3010) has no valid LUT Descriptor (0028,3002)") from exc
    n = n or 65536
    data = item.LUTData
    if isinstance(data, (bytes, bytearray)):
        lut = np.frombuffer(data, dtype="<u2" if bits > 8 or len(data) == 2 * n else "u1")
    else:
        lut = np.atleast_1d(np.asarray(data))
    lut = lut.astype(np.float64)[:n]
    if lut.size == 0:
        raise DicomError("VOI LUT Sequence (0028,3010) has empty LUT Data (0028,3006)")
    # First Mapped is US or SS depending on the pixel representation; undo a wrap-around.
    if first >= 32768 and int(ds.get("PixelRepresentation", 0)) == 1:
        first -= 65536
    top = max(float(2**bits - 1), float(lut.max()))
    idx = np.clip(np.rint(x - first), 0, lut.size - 1).astype(np.intp)
    return lut[idx] / top


def needs_inversion(photometric: str | None, lut_shape: str | None) -> bool:
    """True when grey levels must be inverted to show dense tissue bright.

    MONOCHROME1 means low values display white; Presentation LUT Shape INVERSE
    (2050,0020) says the same. They come together in DX/MG files and describe
    one inversion, so the answer is a logical OR, never an XOR.
    """
    return photometric == "MONOCHROME1" or (lut_shape or "").upper() == "INVERSE"


def robust_window(values: np.ndarray, counts: np.ndarray | None = None) -> tuple[float, float]:
    """(center, width) spanning the 0.5th to 99.5th percentile of ``values``.

    Args:
        values: modality values (1-D), or the support of a histogram.
        counts: histogram counts for ``values``; None for raw samples.
    """
    lo_q, hi_q = (q / 100.0 for q in ROBUST_PERCENTILES)
    if counts is None:
        lo, hi = np.quantile(values, [lo_q, hi_q])
    else:
        cdf = np.cumsum(counts, dtype=np.float64)
        cdf /= cdf[-1]
        lo = values[min(np.searchsorted(cdf, lo_q), values.size - 1)]
        hi = values[min(np.searchsorted(cdf, hi_q), values.size - 1)]
    lo, hi = float(lo), float(hi)
    if hi <= lo:
        hi = lo + 1.0
    return (lo + hi) / 2.0, hi - lo


# --------------------------------------------------------------------------- DICOM


def _tag_str(ds: object, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _laterality(ds: object) -> tuple[str | None, str | None]:
    for keyword in ("ImageLaterality", "Laterality"):
        value = (_tag_str(ds, keyword) or "").upper()
        if value in {"L", "R"}:
            return value, keyword
    # Patient Orientation (0020,0020) names the row direction first. Mammograms are
    # stored in the standard hanging orientation (chest wall at the image edge facing
    # the other breast), so rows of a left breast run towards the nipple (A...) and
    # rows of a right breast towards the chest wall (P...). Other values say nothing.
    orient = ds.get("PatientOrientation")
    if orient is not None and not isinstance(orient, str) and len(orient) == 2:
        row_dir = str(orient[0]).upper()
        if row_dir.startswith("A"):
            return "L", "PatientOrientation"
        if row_dir.startswith("P"):
            return "R", "PatientOrientation"
    return None, None


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


def _view(ds: object) -> str | None:
    value = (_tag_str(ds, "ViewPosition") or "").upper()
    if value and value not in {"FLATFIELD", "UNKNOWN"}:
        return value
    for item in ds.get("ViewCodeSequence", []) or []:
        meaning = str(item.get("CodeMeaning", "")).strip().lower()
        if meaning in _VIEW_MEANINGS:
            return _VIEW_MEANINGS[meaning]
    return value or None


def _spacing(ds: object) -> tuple[tuple[float, float] | None, str | None]:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is None:
            continue
        try:
            row, col = (float(v) for v in value)
        except (TypeError, ValueError):
            continue
        if row > 0 and col > 0:
            return (row, col), keyword
    return None, None


def _int_tag(ds: object, keyword: str, tag: str, default: int | None = None) -> int:
    value = ds.get(keyword, default)
    if value is None:
        raise DicomError(f"missing {keyword} {tag}")
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise DicomError(f"{keyword} {tag} is not an integer: {value!r}") from exc


def _validate(ds: object, path: Path, allow_non_mg: bool) -> tuple[int, int]:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
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
            f"{path}: Bits Allocated (0028,0100) {allocated} / Bits Stored {stored}; expected 8 or 16 allocated"
        )
    return rows, cols


def _decode(ds: object, path: Path) -> np.ndarray:
    """Stored values as an integer array; maps decoder failures to one-line errors."""
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    try:
        arr = ds.pixel_array
    except (RuntimeError, NotImplementedError) as exc:
        msg = str(exc).lower()
        if "handler" in msg or "plugin" in msg or "decoder" in msg or "missing" in msg or "install" in msg:
            name = getattr(ts, "name", ts)
            raise MissingDependencyError(
                f"{path}: decoding Transfer Syntax {name}", "dicom", "pylibjpeg + pylibjpeg-openjpeg/libjpeg"
            ) from exc
        raise DicomError(f"{path}: Pixel Data (7FE0,0010) cannot be decoded: {exc}") from exc
    except (ValueError, EOFError, OSError, KeyError, AttributeError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DicomError(f"{path}: Pixel Data (7FE0,0010) is truncated or malformed ({first})") from exc
    if arr.ndim != 2:
        raise UnsupportedImageError(f"{path}: decoded pixel array has shape {arr.shape}; expected 2-D greyscale")
    return arr


def display_table(ds: object, stored: np.ndarray, voi: VoiMode = "auto") -> tuple[np.ndarray, int, dict[str, object]]:
    """The whole display pipeline as a lookup table over possible stored values.

    Args:
        ds: dataset (for the LUT tags).
        stored: (H, W) integer stored values (for the robust window's histogram).
        voi: ``auto`` (VOI LUT Sequence, else window, else robust), ``lut``,
            ``window``, ``robust`` or ``none`` (min/max of the stored range).

    Returns:
        (table float32 in [0, 1], offset, info) with ``pixels = table[stored - offset]``;
        info has ``window``, ``window_source``, ``voi_function``, ``inverted``.
    """
    lo, hi = int(stored.min()), int(stored.max())
    support = np.arange(lo, hi + 1, dtype=np.int64)
    values = modality_lut(support, ds)
    info: dict[str, object] = {"window": None, "voi_function": None}

    has_lut = "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0
    has_window = first_window(ds) is not None
    mode = voi
    if mode == "auto":
        mode = "lut" if has_lut else "window" if has_window else "robust"
    if mode == "lut":
        if not has_lut:
            raise DicomError("no VOI LUT Sequence (0028,3010) in the file")
        out = apply_voi_lut_sequence(values, ds)
    elif mode == "window":
        out = apply_window(values, ds)
        info["window"] = first_window(ds)
        info["voi_function"] = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    elif mode == "robust":
        # Histogram on a 4x subsampled grid: percentiles need no full-resolution pass.
        counts = np.bincount((stored[::4, ::4].ravel() - lo).astype(np.intp), minlength=support.size)
        order = np.argsort(values, kind="stable")  # modality LUT may be non-monotonic
        center, width = robust_window(values[order], counts[order])
        out = window_linear_exact(values, center, width)
        info["window"] = (center, width)
    elif mode == "none":
        span = max(float(values.max() - values.min()), 1.0)
        out = (values - values.min()) / span
    else:
        raise DicomError(f"unknown VOI mode {voi!r}; expected auto, lut, window, robust or none")
    info["window_source"] = {"lut": "voi_lut_sequence"}.get(mode, mode)

    photometric = _tag_str(ds, "PhotometricInterpretation")
    inverted = needs_inversion(photometric, _tag_str(ds, "PresentationLUTShape"))
    if inverted:
        out = 1.0 - out
    info["inverted"] = inverted
    return np.clip(out, 0.0, 1.0).astype(np.float32), lo, info


def read_dicom(
    path: str | os.PathLike[str], *, allow_non_mg: bool = False, voi: VoiMode = "auto"
) -> Mammogram:
    """Read a single-frame greyscale mammogram DICOM.

    Args:
        path: the file.
        allow_non_mg: accept a Modality other than MG.
        voi: VOI choice, see :func:`display_table`.

    Returns:
        A :class:`Mammogram` with float32 pixels in [0, 1], dense tissue bright.

    Raises:
        DicomError: unreadable, not MG, no pixels, bad sizes or bit depths.
        UnsupportedImageError: multi-frame, RGB or other photometric interpretations.
        MissingDependencyError: compressed pixel data without a decoder installed.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    p = _check_path(path)
    try:
        ds = pydicom.dcmread(p)
    except InvalidDicomError:
        try:  # files without preamble: accept only if they parse into something DICOM-like
            ds = pydicom.dcmread(p, force=True)
        except Exception as exc:
            raise DicomError(f"{p}: not a DICOM file ({type(exc).__name__})") from exc
        if "SOPClassUID" not in ds and "PixelData" not in ds:
            raise DicomError(f"{p}: not a DICOM file (no DICM preamble, no SOP Class UID or Pixel Data)") from None
    except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DicomError(f"{p}: DICOM header is truncated or malformed ({type(exc).__name__})") from exc

    rows, cols = _validate(ds, p, allow_non_mg)
    stored = _decode(ds, p)
    if stored.shape != (rows, cols):
        raise DicomError(f"{p}: decoded {stored.shape} pixels but Rows x Columns says {rows}x{cols}")
    table, offset, info = display_table(ds, stored, voi)
    index = stored.astype(np.intp, copy=False) - offset if offset else stored
    pixels = np.take(table, index)

    laterality, lat_source = _laterality(ds)
    spacing, spacing_source = _spacing(ds)
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    meta = ImageMeta(
        source=str(p),
        rows=rows,
        columns=cols,
        modality=_tag_str(ds, "Modality"),
        laterality=laterality,
        laterality_source=lat_source,
        view=_view(ds),
        photometric=_tag_str(ds, "PhotometricInterpretation"),
        presentation_intent=_tag_str(ds, "PresentationIntentType"),
        presentation_lut_shape=_tag_str(ds, "PresentationLUTShape"),
        inverted=bool(info["inverted"]),
        pixel_spacing_mm=spacing,
        spacing_source=spacing_source,
        bits_stored=int(ds.get("BitsStored", ds.get("BitsAllocated", 16))),
        manufacturer=_tag_str(ds, "Manufacturer"),
        study_uid=_tag_str(ds, "StudyInstanceUID"),
        series_uid=_tag_str(ds, "SeriesInstanceUID"),
        sop_uid=_tag_str(ds, "SOPInstanceUID"),
        window=info["window"],  # type: ignore[arg-type]
        window_source=str(info["window_source"]),
        voi_function=info["voi_function"],  # type: ignore[arg-type]
        transfer_syntax=str(ts) if ts else None,
    )
    return Mammogram(pixels, meta)


# --------------------------------------------------------------------------- rasters


def read_raster(path: str | os.PathLike[str]) -> Mammogram:
    """Read an 8/16-bit PNG, PGM, JPEG or TIFF as a mammogram.

    Colour files are converted to grey (OpenCV's BT.601 weights). 8-bit images
    are divided by 255; 16-bit ones by 2**b - 1, where b is the smallest bit
    depth (8, 10, 12, 14 or 16) that holds the maximum value, so 12-bit data in a
    16-bit PNG are not left nearly black. Rasters carry no laterality or spacing.
    """
    import cv2

    p = _check_path(path)
    data = np.fromfile(p, dtype=np.uint8)  # cv2.imread mishandles some non-ASCII paths
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InputError(f"{p}: not a readable PNG/PGM/JPEG/TIFF image")
    if img.ndim == 3:
        if img.shape[2] == 4:
            img = img[:, :, :3]
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if img.ndim != 2 or img.size == 0:
        raise InputError(f"{p}: image has shape {img.shape}; expected a 2-D greyscale image")
    if img.dtype == np.uint8:
        bits, scale = 8, 255.0
    elif img.dtype == np.uint16:
        peak = int(img.max())
        bits = next(b for b in (8, 10, 12, 14, 16) if peak < 2**b)
        scale = float(2**bits - 1)
    elif np.issubdtype(img.dtype, np.floating):
        bits, scale = 32, 1.0
    else:
        raise InputError(f"{p}: pixel type {img.dtype} unsupported; expected 8/16-bit unsigned or float")
    pixels = np.clip(img.astype(np.float32) / np.float32(scale), 0.0, 1.0)
    meta = ImageMeta(source=str(p), rows=img.shape[0], columns=img.shape[1], bits_stored=bits)
    return Mammogram(pixels, meta)


def read_mammogram(
    path: str | os.PathLike[str], *, allow_non_mg: bool = False, voi: VoiMode = "auto"
) -> Mammogram:
    """Read a DICOM (by preamble or .dcm suffix) or a raster image (by suffix).

    See :func:`read_dicom` and :func:`read_raster`.
    """
    p = _check_path(path)
    if is_dicom_file(p):
        return read_dicom(p, allow_non_mg=allow_non_mg, voi=voi)
    if p.suffix.lower() in RASTER_SUFFIXES:
        return read_raster(p)
    # Unknown suffix without preamble: DICOM files are often named without one.
    return read_dicom(p, allow_non_mg=allow_non_mg, voi=voi)
