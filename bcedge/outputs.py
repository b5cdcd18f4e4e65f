"""Write what a segmentation produced: mask PNG, overlay PNG, JSON result and a DICOM Segmentation.

Every file is written atomically (a temporary file in the destination folder,
then a rename, :mod:`bcedge.imageio`): an interrupted run leaves either the
previous file or the complete new one, never a partial PNG, JSON or SEG.

Output names, for an input ``scan.dcm`` (the stem is the file name without a
known image suffix, so a PACS file named by its UID keeps every digit)::

    scan_mask.png      full-resolution mask, 1-bit greyscale PNG (black 0, white lesion)
    scan_overlay.png   lesion contours on the displayed mammogram, long side 1024 px
    scan.json          Result.to_dict(): findings, outputs, timing, model, image meta
    scan_seg.dcm       DICOM Segmentation (binary, one segment "Mass") referencing the source

Speed (the issue #6 budget for everything that is not the model is a few ms):

- The mask PNG is written by a small PNG encoder here: one bit per pixel,
  filter type 0, zlib level 1 with the run-length strategy. A 3328x2560 mask
  takes ~2 ms, against ~11 ms for OpenCV's 8-bit PNG and ~6 ms for OpenCV's
  bilevel one. It is a standard PNG (IHDR/IDAT/IEND, greyscale, bit depth 1):
  every viewer shows it black and white; OpenCV reads it back as 0/255 uint8,
  Pillow as mode ``"1"``.
- The SEG is built with highdicom, which checks attributes against a 22 MB
  JSON table of the standard (``module_attribute_map.json``). Parsing that table
  took ~260 ms on the first SEG of every process, against ~10 ms for building
  the SEG itself (profiled with cProfile; bit packing, per-frame checks and
  encoding are a few ms each). :func:`_lazy_standard_tables` replaces the parsed
  table with a mapping that indexes the file once (~10 ms) and parses only the
  modules highdicom looks up; every lookup returns exactly what the full parse
  would, and anything unexpected falls back to the full parse. What remains on
  a process's first SEG is mostly ``import highdicom`` itself (~75-100 ms).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import mmap
import os
import re
import struct
import threading
import time
import uuid
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bcedge import __version__
from bcedge.errors import ConfigError, DicomError, InputError, MissingDependencyError
from bcedge.imageio import atomic_write_bytes, json_default, replace_files

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from bcedge.bundle import ArtifactRecord, Bundle
    from bcedge.pipeline import Result
    from bcedge.postprocess import Finding

_log = logging.getLogger(__name__)

OUTPUT_KINDS = ("mask", "overlay", "json", "seg")
#: Long side of the overlay PNG in pixels (smaller images are not enlarged).
OVERLAY_LONG_SIDE = 1024
#: Overlay contour colour (BGR) and the label colour.
CONTOUR_BGR = (0, 0, 255)
LABEL_BGR = (0, 255, 255)
#: zlib level of the mask PNG (with Z_RLE the level hardly changes speed or size on a mask).
MASK_PNG_ZLIB_LEVEL = 1
#: Longest output stem in UTF-8 bytes: the longest output name adds "_overlay.png" (12 bytes) and a
#: de-duplicating "_NNNN" may follow; 200 leaves room under the usual 255-byte name limit.
MAX_STEM_BYTES = 200
#: Suffixes stripped from an input name to make the output stem (anything else stays, e.g. UID names).
_KNOWN_SUFFIXES = {".dcm", ".dicom", ".dic", ".ima", ".png", ".pgm", ".pnm", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}

#: Series Number of the SEG series (one series per source series and model, see seg_series_instance_uid).
SEG_SERIES_NUMBER = 7301
SEG_SERIES_DESCRIPTION = "bcedge mass segmentation"
SEG_CONTENT_LABEL = "MASS"
SEG_SEGMENT_LABEL = "Mass"
SEG_MANUFACTURER = "bcedge"
#: Namespace of the name-based (SHA-1, ISO/IEC 9834-8) UUIDs behind the SEG UIDs.
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://bcedge/dicom-seg")


# --------------------------------------------------------------------------- names


def parse_kinds(kinds: str | Sequence[str]) -> tuple[str, ...]:
    """Validate output kinds: ``"mask,json"`` or ``["mask", "json"]`` -> ``("mask", "json")``, order kept, no repeats.

    Raises:
        ConfigError: an unknown kind, or none at all.
    """
    items = kinds.split(",") if isinstance(kinds, str) else list(kinds)
    out: list[str] = []
    for item in items:
        kind = str(item).strip().lower()
        if not kind:
            continue
        if kind not in OUTPUT_KINDS:
            raise ConfigError(
                f"unknown output kind {item!r}; expected a comma-separated subset of {','.join(OUTPUT_KINDS)}"
            )
        if kind not in out:
            out.append(kind)
    if not out:
        raise ConfigError(f"no output kind given; expected a comma-separated subset of {','.join(OUTPUT_KINDS)}")
    return tuple(out)


def output_stem(source: str | os.PathLike[str]) -> str:
    """Output name stem for an input path: ``/a/scan.dcm`` -> ``scan``; ``1.2.840.1`` (no image suffix) stays whole.

    An in-memory image (empty source) gets ``mammogram``. A name longer than
    :data:`MAX_STEM_BYTES` (UTF-8) is cut and given a hash of the whole name
    (:func:`shorten_stem`), so every output name stays under the 255-byte limit of
    common file systems, and two long names that differ only at the end still differ.
    """
    name = Path(source).name if str(source) else ""
    if not name:
        return "mammogram"
    suffix = Path(name).suffix
    stem = name[: -len(suffix)] if suffix.lower() in _KNOWN_SUFFIXES and len(name) > len(suffix) else name
    return shorten_stem(stem)


def shorten_stem(stem: str, max_bytes: int | None = None) -> str:
    """``stem`` when it fits in ``max_bytes`` UTF-8 bytes (default :data:`MAX_STEM_BYTES`), else a
    deterministic shorter name: its head (cut at a character boundary) + ``-`` + 16 hex digits of
    the SHA-256 of the whole stem."""
    limit = MAX_STEM_BYTES if max_bytes is None else max_bytes
    raw = stem.encode("utf-8", "surrogateescape")
    if len(raw) <= limit:
        return stem
    digest = hashlib.sha256(raw).hexdigest()[:16]
    head = raw[: limit - len(digest) - 1].decode("utf-8", "ignore")
    return f"{head}-{digest}"


def output_paths(out_dir: str | os.PathLike[str], stem: str, kinds: Sequence[str]) -> dict[str, Path]:
    """Where each kind is written: ``{"mask": out_dir/<stem>_mask.png, ...}`` (kinds validated)."""
    names = {
        "mask": f"{stem}_mask.png",
        "overlay": f"{stem}_overlay.png",
        "json": f"{stem}.json",
        "seg": f"{stem}_seg.dcm",
    }
    return {kind: Path(out_dir) / names[kind] for kind in parse_kinds(kinds)}


# --------------------------------------------------------------------------- mask PNG


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)) & 0xFFFFFFFF)


def _deflate(data: Any, level: int) -> bytes:
    # Z_RLE: a mask is long runs of zero bytes; as fast as the default strategy, files ~2.5x smaller.
    compressor = zlib.compressobj(level, zlib.DEFLATED, 15, 8, zlib.Z_RLE)
    return compressor.compress(data) + compressor.flush()


def encode_mask_png(mask: np.ndarray, level: int = MASK_PNG_ZLIB_LEVEL) -> bytes:
    """Encode a binary mask as a 1-bit greyscale PNG.

    Args:
        mask: (H, W) uint8 or bool; nonzero pixels are lesion (white), zero background (black).
        level: zlib level 0-9.

    Returns:
        The PNG file's bytes (OpenCV decodes them to (H, W) uint8 in {0, 255}).
    """
    if mask.ndim != 2 or mask.size == 0:
        raise InputError(f"a mask must be a non-empty 2-D array; got shape {mask.shape}")
    h, w = mask.shape
    bits = np.packbits(mask if mask.dtype == bool else mask != 0, axis=1)
    # Each scanline starts with its filter-type byte (0: none); the packed bits follow.
    raw = np.zeros((h, bits.shape[1] + 1), np.uint8)
    raw[:, 1:] = bits
    header = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)  # bit depth 1, greyscale, deflate, filter 0, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", _deflate(raw.data, level))
        + _png_chunk(b"IEND", b"")
    )


def write_mask(path: str | os.PathLike[str], mask: np.ndarray) -> Path:
    """Write ``mask`` ((H, W) uint8 {0, 1} or bool, original resolution) as a 1-bit PNG, atomically."""
    return atomic_write_bytes(path, encode_mask_png(mask))


# --------------------------------------------------------------------------- overlay PNG


def render_overlay(
    pixels: np.ndarray,
    mask: np.ndarray,
    findings: Sequence[Finding] = (),
    *,
    long_side: int = OVERLAY_LONG_SIDE,
) -> np.ndarray:
    """Draw lesion contours and finding numbers on the displayed mammogram, downscaled for viewing.

    Args:
        pixels: (H, W) float32 in [0, 1] (or uint8), as displayed (dense tissue bright).
        mask: (H, W) uint8 {0, 1} or bool on the same grid.
        findings: drawn as their ``label`` number beside their bounding box.
        long_side: the longer side of the result in pixels; images already smaller keep their size.

    Returns:
        (h, w, 3) uint8 BGR image, h/w = H/W scaled so that max(h, w) <= ``long_side``.
    """
    import cv2

    if pixels.shape[:2] != mask.shape:
        raise InputError(f"overlay: image shape {pixels.shape} and mask shape {mask.shape} differ")
    h, w = mask.shape
    scale = min(1.0, long_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    grey = pixels if scale == 1.0 else cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    if grey.dtype != np.uint8:
        grey = cv2.convertScaleAbs(grey, alpha=255.0)  # float [0, 1] -> rounded, saturated uint8
    image = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    # Contours come from the full-resolution mask (exact outline), scaled onto the small image.
    m8 = mask.view(np.uint8) if mask.dtype == bool else mask
    contours, _ = cv2.findContours(m8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    thickness = max(1, round(max(size) / 512))
    if contours:
        scaled = [np.round((c.astype(np.float32) + 0.5) * scale - 0.5).astype(np.int32) for c in contours]
        cv2.drawContours(image, scaled, -1, CONTOUR_BGR, thickness, lineType=cv2.LINE_AA)
    font_scale = 0.45 * thickness
    for finding in findings:
        row0, col0, _, _ = finding.bbox_px
        org = (int(col0 * scale), max(12 * thickness, int(row0 * scale) - 4))
        text = f"{finding.label} ({finding.max_probability:.2f})"
        cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
        cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, font_scale, LABEL_BGR, thickness, cv2.LINE_AA)
    return image


def encode_overlay_png(result: Result, *, long_side: int = OVERLAY_LONG_SIDE) -> bytes:
    """:func:`render_overlay` of ``result`` as PNG file bytes."""
    import cv2

    image = render_overlay(result.mammogram.pixels, result.mask, result.findings, long_side=long_side)
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise InputError(f"{result.source or 'overlay'}: could not encode the overlay PNG")
    return buf.tobytes()


def write_overlay(path: str | os.PathLike[str], result: Result, *, long_side: int = OVERLAY_LONG_SIDE) -> Path:
    """Write :func:`render_overlay` of ``result`` as a PNG, atomically."""
    return atomic_write_bytes(path, encode_overlay_png(result, long_side=long_side))


# --------------------------------------------------------------------------- JSON


def result_json(result: Result) -> bytes:
    """``result.to_dict()`` as UTF-8 JSON (indent 2, trailing newline)."""
    return (json.dumps(result.to_dict(), indent=2, default=json_default) + "\n").encode("utf-8")


def write_json(path: str | os.PathLike[str], result: Result) -> Path:
    """Write :func:`result_json` atomically."""
    return atomic_write_bytes(path, result_json(result))


# --------------------------------------------------------------------------- DICOM SEG: UIDs


def _model_identity(bundle: Bundle, artifact: ArtifactRecord | None) -> str:
    """The model file's SHA-256, or (no artifact given) a digest of every artifact of the bundle."""
    if artifact is not None:
        return artifact.sha256
    return "bundle:" + ",".join(sorted(a.sha256 for a in bundle.manifest.artifacts))


def _uid(*parts: str) -> str:
    # A name-based UUID (ISO/IEC 9834-8 / RFC 4122 v5) under the 2.25 root: deterministic, <= 44 characters.
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, chr(31).join(parts)).int}"


def _settings_key(bundle: Bundle, threshold: float | None) -> str:
    # Only a threshold other than the bundle's changes the UIDs: the default run (what a node resends
    # after a crash) keeps the UID of (source, model) alone, while a different threshold, which makes a
    # different mask, must not reuse that UID.
    if threshold is None or abs(float(threshold) - bundle.threshold) < 1e-9:
        return ""
    return f"threshold={float(threshold):.6g}"


def seg_sop_instance_uid(
    source_sop_uid: str, bundle: Bundle, artifact: ArtifactRecord | None = None, *, threshold: float | None = None
) -> str:
    """The SEG's SOP Instance UID: a pure function of the source image and the model.

    The same source SOP Instance UID with the same model artifact (and threshold) always gives
    the same UID, so a SEG sent again after a crash is recognised as the same instance by a PACS.

    Args:
        source_sop_uid: SOP Instance UID (0008,0018) of the segmented image.
        bundle: the model bundle.
        artifact: the artifact that ran (its SHA-256 is used); None: every artifact of the bundle.
        threshold: the threshold used; None or the bundle's default leaves the UID unchanged.

    Returns:
        A ``2.25.<decimal UUID>`` UID.
    """
    return _uid("sop", str(source_sop_uid), _model_identity(bundle, artifact), _settings_key(bundle, threshold))


def seg_series_instance_uid(
    source_series_uid: str, bundle: Bundle, artifact: ArtifactRecord | None = None, *, threshold: float | None = None
) -> str:
    """The SEG's Series Instance UID: one SEG series per source series and model (deterministic, as above)."""
    return _uid("series", str(source_series_uid), _model_identity(bundle, artifact), _settings_key(bundle, threshold))


# --------------------------------------------------------------------------- DICOM SEG: highdicom speed-up


class _LazyModuleMap(Mapping[str, list]):
    """highdicom's module -> attributes table, parsed one module at a time from the raw JSON.

    The file is a pretty-printed JSON object whose top-level keys sit at the start of a line
    indented by exactly two spaces (deeper levels are indented further), so one scan finds
    every module's byte range. A module is parsed on first lookup. If the layout is not the
    expected one, or a slice does not parse, the whole table is parsed as highdicom would.
    """

    _KEY = re.compile(rb'\n  "([^"\n]+)": ')

    def __init__(self, load_raw: Callable[[], bytes | mmap.mmap], load_full: Callable[[], dict[str, list]]) -> None:
        self._load_raw = load_raw
        self._load_full = load_full
        self._lock = threading.Lock()
        self._raw: bytes | mmap.mmap | None = None
        self._spans: dict[str, tuple[int, int]] | None = None
        self._parsed: dict[str, list] = {}
        self._full: dict[str, list] | None = None

    def _index(self) -> dict[str, tuple[int, int]] | None:
        with self._lock:
            if self._spans is None and self._full is None:
                raw = self._load_raw()
                marks = [(m.group(1).decode("utf-8"), m.start(), m.end()) for m in self._KEY.finditer(raw)]
                spans = {}
                for i, (key, _, start) in enumerate(marks):
                    end = marks[i + 1][1] if i + 1 < len(marks) else raw.rfind(b"}")
                    spans[key] = (start, end)
                if not spans:
                    self._full = self._load_full()
                else:
                    self._raw, self._spans = raw, spans
            return self._spans

    def _fallback(self) -> dict[str, list]:
        with self._lock:
            if self._full is None:
                self._full = self._load_full()
                self._raw, self._spans = None, None
            return self._full

    def __getitem__(self, key: str) -> list:
        if key in self._parsed:
            return self._parsed[key]
        spans = self._index()
        if spans is None or self._raw is None:
            return self._fallback()[key]
        start, end = spans[key]  # KeyError for an unknown module, as with the full dict
        try:
            value = json.loads(self._raw[start:end].rstrip().rstrip(b","))
        except ValueError:
            return self._fallback()[key]
        self._parsed[key] = value
        return value

    def __contains__(self, key: object) -> bool:
        spans = self._index()
        return key in (spans if spans is not None else self._fallback())

    def __iter__(self) -> Iterator[str]:
        spans = self._index()
        return iter(list(spans if spans is not None else self._fallback()))

    def __len__(self) -> int:
        spans = self._index()
        return len(spans if spans is not None else self._fallback())


def _map_file(table: Any) -> bytes | mmap.mmap:
    """The table's bytes: memory-mapped when it is a plain file (no 22 MB copy, ~8 ms less), else read."""
    try:
        with open(os.fspath(table), "rb") as f:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (TypeError, OSError, ValueError):
        return table.read_bytes()


_LAZY_LOCK = threading.Lock()
_LAZY_INSTALLED = False


def _lazy_standard_tables() -> bool:
    """Make highdicom parse its 22 MB module table lazily (see the module docstring); True when installed.

    highdicom reads the table through ``get_module_attribute_map()`` in ``highdicom._standard_utils``
    and the modules that imported the name (``highdicom.base``, ``highdicom.image``). Each binding
    that still points at the original function is replaced by one returning the lazy mapping; a
    highdicom whose layout differs is left alone (correct, only slower).
    """
    global _LAZY_INSTALLED
    with _LAZY_LOCK:
        if _LAZY_INSTALLED:
            return True
        try:
            import importlib

            su = importlib.import_module("highdicom._standard_utils")
            original = su.get_module_attribute_map
            from importlib import resources

            table = resources.files("highdicom") / "_standard" / "module_attribute_map.json"
            if not table.is_file():
                return False
        except (ImportError, AttributeError, TypeError, OSError):
            return False
        lazy = _LazyModuleMap(lambda: _map_file(table), original)

        def get_module_attribute_map() -> Mapping[str, list]:
            return lazy

        get_module_attribute_map.original = original  # type: ignore[attr-defined]  # for tests and debugging

        for name in ("highdicom._standard_utils", "highdicom.base", "highdicom.image"):
            module = importlib.import_module(name)
            if getattr(module, "get_module_attribute_map", None) is original:
                module.get_module_attribute_map = get_module_attribute_map
        _LAZY_INSTALLED = True
        return True


def _highdicom() -> Any:
    try:
        import highdicom
    except ImportError as exc:
        raise MissingDependencyError("writing a DICOM SEG", "seg", "highdicom") from exc
    _lazy_standard_tables()
    return highdicom


def preload_seg() -> None:
    """Import highdicom and index its tables now (a server calls this at start-up, not on its first scan).

    Raises:
        MissingDependencyError: highdicom is not installed.
    """
    _highdicom()
    from highdicom._standard_utils import get_module_attribute_map

    len(get_module_attribute_map())


# --------------------------------------------------------------------------- DICOM SEG: build and write


def read_source_header(source_path: str | os.PathLike[str], shape: tuple[int, int] | None = None) -> Dataset:
    """Read a source image's header (no pixels), made fit for a SEG (:func:`~bcedge.seg_source.prepare_source_header`).

    For callers that have no parsed header; :func:`build_seg` uses ``result.mammogram.header``
    (read once by the reader) when there is one. What was changed is logged without values.

    Args:
        source_path: the DICOM file that was segmented.
        shape: (rows, columns) of the mask; must equal the source's Rows/Columns.

    Raises:
        DicomError: unreadable file, or a missing/invalid UID or size attribute, or a size mismatch.
    """
    import pydicom

    path = Path(source_path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's warnings quote values: patient data
            ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types on malformed headers
        text = str(exc).strip().splitlines()
        raise DicomError(
            f"{path}: cannot read the source DICOM header for the SEG: {type(exc).__name__}: {text[0] if text else ''}"
        ) from exc
    return _prepared(ds, path, shape)


def _prepared(ds: Dataset, path: str | os.PathLike[str], shape: tuple[int, int] | None) -> Dataset:
    """:func:`~bcedge.seg_source.prepare_source_header`, with its notes logged (attribute names only)."""
    from bcedge.seg_source import prepare_source_header

    header, notes = prepare_source_header(ds, str(path), shape)
    if notes:
        _log.warning("%s: source header adjusted for the DICOM SEG: %s", path, "; ".join(notes))
    return header


def build_seg(
    result: Result,
    *,
    bundle: Bundle,
    source_path: str | os.PathLike[str] | None = None,
    artifact: ArtifactRecord | None = None,
    source: Dataset | None = None,
) -> Dataset:
    """Build the DICOM Segmentation (binary, one segment "Mass") of ``result`` with highdicom.

    The SEG references the source image (Referenced Series/Instance), copies its patient and
    study attributes, names the algorithm (model name; bcedge version, artifact format,
    precision and SHA-256) and has deterministic UIDs (:func:`seg_sop_instance_uid`).

    Args:
        result: the segmentation; ``result.mask`` (H, W) uint8 {0, 1} on the source grid.
        bundle: the model bundle that produced it.
        source_path: the source DICOM (default :func:`source_file` of ``result``).
        artifact: the artifact that ran (default: the one ``result.model`` names, :func:`artifact_of`;
            failing that, every artifact of the bundle together identifies the model).
        source: an already prepared header (:func:`read_source_header`); default: the header the
            reader parsed (``result.mammogram.header``, so the file is read once and a file without
            the 128-byte preamble gets a SEG too), made fit for the SEG, else ``source_path`` read again.

    Returns:
        A ``highdicom.seg.Segmentation`` (a pydicom Dataset).

    Raises:
        MissingDependencyError: highdicom is not installed.
        DicomError: the source cannot be referenced (see :func:`read_source_header`), or highdicom
            refused the header (one line naming the problem, exit 2).
    """
    hd = _highdicom()
    from pydicom.sr.codedict import codes

    if artifact is None:
        artifact = artifact_of(result, bundle)
    mask = np.asarray(result.mask)
    if source_path is None:
        source_path = source_file(result)
    if source is None:
        header = getattr(result.mammogram, "header", None)
        source = _prepared(header, source_path, mask.shape) if header is not None else None
    if source is None:
        source = read_source_header(source_path, mask.shape)
    sop_uid = str(source.SOPInstanceUID)
    meta_uid = getattr(result.mammogram.meta, "sop_uid", None)
    if meta_uid and meta_uid != sop_uid:
        raise DicomError(
            f"{source_path}: SOP Instance UID (0008,0018) {sop_uid} is not that of the segmented image ({meta_uid})"
        )
    manifest = bundle.manifest
    model_name = str(manifest.model.get("name") or manifest.model.get("architecture") or "bcedge model")
    version = f"bcedge {__version__}"
    if artifact is not None:
        version += f" {artifact.format}/{artifact.precision} {artifact.sha256[:12]}"
    threshold = float(getattr(result, "threshold", bundle.threshold))
    algorithm = hd.AlgorithmIdentificationSequence(
        name=model_name[:64],
        family=codes.DCM.ArtificialIntelligence,
        version=version[:64],
        parameters={"threshold": f"{threshold:g}"},
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEG_SEGMENT_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Mass,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        anatomic_regions=[codes.SCT.Breast],
    )
    model_id = (artifact.sha256 if artifact is not None else _model_identity(bundle, None).split(":")[-1])[:16]
    from bcedge.seg_source import PROJECTION_SOP_CLASSES, restore_sop_class, stand_in_sop_class

    real_class = None
    if str(source.SOPClassUID) not in PROJECTION_SOP_CLASSES:
        notes: list[str] = []
        source = copy.deepcopy(source)  # a prepared (plain) header; the caller's keeps its class
        real_class = stand_in_sop_class(source, notes)
        _log.warning("%s: %s", source_path, "; ".join(notes))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            seg = hd.seg.Segmentation(
                source_images=[source],
                # (frames=1, H, W, segments=1) bool. The segment-stacked 4-D form is checked with one max();
                # the 3-D label-map form goes through np.setxor1d, whose first call imports numpy.ma (~40 ms).
                pixel_array=(mask != 0)[np.newaxis, :, :, np.newaxis],
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=[segment],
                series_instance_uid=seg_series_instance_uid(
                    source.SeriesInstanceUID, bundle, artifact, threshold=threshold
                ),
                series_number=SEG_SERIES_NUMBER,
                sop_instance_uid=seg_sop_instance_uid(sop_uid, bundle, artifact, threshold=threshold),
                instance_number=1,
                manufacturer=SEG_MANUFACTURER,
                manufacturer_model_name=model_name[:64],
                software_versions=version[:64],
                device_serial_number=model_id,
                content_label=SEG_CONTENT_LABEL,
                content_description=f"{model_name} masses"[:64],
                series_description=SEG_SERIES_DESCRIPTION,
                # A SEG of a 2-D image has exactly one frame; keep it even when nothing was found
                # (an empty segment says "looked, found nothing", which a viewer can show).
                omit_empty_frames=False,
            )
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            # Whatever highdicom still refuses once the header was prepared: one line, exit 2.
            text = str(exc).strip().splitlines()
            raise DicomError(
                f"{source_path}: cannot build a DICOM SEG for this header: {type(exc).__name__}: "
                f"{text[0] if text else ''}"
            ) from exc
    if caught:
        # highdicom's person-name warning and pydicom's value warnings quote the values: count them only.
        _log.debug("%s: %d library warnings while building the SEG (values not logged)", source_path, len(caught))
    if real_class is not None:
        restore_sop_class(seg, sop_uid, real_class)
    # General Image: Patient Orientation (0020,0020) is Type 2C for images without a patient
    # plane (MG is a projection); the SEG frame has the source's orientation, so copy it.
    seg.PatientOrientation = source.get("PatientOrientation", "")
    # highdicom draws a random Dimension Organization UID; derive it from the SEG's own UID so a
    # SEG written again for the same image and model differs only in its creation date and time.
    organization = _uid("dimension-organization", str(seg.SOPInstanceUID))
    for item in (*seg.get("DimensionOrganizationSequence", ()), *seg.get("DimensionIndexSequence", ())):
        if "DimensionOrganizationUID" in item:
            item.DimensionOrganizationUID = organization
    return seg


def encode_seg(seg: Dataset) -> bytes:
    """The SEG's file bytes (DICOM Part 10, with file meta)."""
    from io import BytesIO

    buf = BytesIO()
    seg.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_seg(
    path: str | os.PathLike[str],
    result: Result,
    *,
    bundle: Bundle,
    source_path: str | os.PathLike[str] | None = None,
    artifact: ArtifactRecord | None = None,
) -> Path:
    """Build the SEG of ``result`` (:func:`build_seg`) and write it to ``path`` atomically."""
    seg = build_seg(result, bundle=bundle, source_path=source_path, artifact=artifact)
    return atomic_write_bytes(path, encode_seg(seg))


def artifact_of(result: Result, bundle: Bundle) -> ArtifactRecord | None:
    """The bundle's record of the artifact that produced ``result`` (from ``result.model``), or None."""
    model = getattr(result, "model", None) or {}
    for record in bundle.manifest.artifacts:
        if record.file == model.get("artifact") and record.sha256 == model.get("sha256"):
            return record
    return None


def source_file(result: Result) -> str:
    """The file ``result`` was read from: ``result.source``, else the path its metadata records ('' if none)."""
    return str(result.source or getattr(result.mammogram.meta, "source", "") or "")


def is_dicom_source(result: Result) -> bool:
    """Whether ``result`` was read from a DICOM file (which a SEG can reference); False for rasters."""
    return bool(source_file(result)) and result.mammogram.meta.transfer_syntax is not None


# --------------------------------------------------------------------------- all outputs


def write_outputs(
    result: Result,
    out_dir: str | os.PathLike[str],
    kinds: str | Sequence[str],
    *,
    bundle: Bundle,
    artifact: ArtifactRecord | None = None,
    stem: str | None = None,
) -> dict[str, Path]:
    """Write the requested outputs of one scan under ``out_dir``, all or nothing.

    Every output is first encoded in memory (mask, overlay, SEG, then the JSON, so it lists every
    other output), then all are written together by :func:`bcedge.imageio.replace_files`: either
    every file has its new content, or (a failure part-way: disk full, permissions, a name the
    file system refuses) every file the folder held before is back as it was and no new file is
    left. A raster input cannot have a SEG: ``seg`` is then skipped with a one-line warning
    (logged), not an error. Adds ``result.timing_ms["write"]`` (ms; the JSON file holds the time
    up to its own encoding) and fills ``result.outputs`` (kind -> path) once the files are there.

    Args:
        result: what :meth:`bcedge.pipeline.Segmenter.segment` returned.
        out_dir: destination folder (created when missing).
        kinds: subset of :data:`OUTPUT_KINDS` (a list or ``"mask,json"``).
        bundle: the bundle that produced ``result`` (SEG algorithm identification, UIDs).
        artifact: the artifact that ran (SEG UIDs and version); default: the one ``result.model``
            names (:func:`artifact_of`); see :func:`seg_sop_instance_uid`.
        stem: output name stem; default :func:`output_stem` of ``result.source``.

    Returns:
        kind -> path written.

    Raises:
        ConfigError: unknown kind.
        InputError / DicomError: a file could not be written (the cause is the OSError), or the
            SEG source is unusable; nothing under ``out_dir`` changed.
        MissingDependencyError: ``seg`` asked for without highdicom.
    """
    start = time.perf_counter()
    paths = output_paths(out_dir, stem or output_stem(result.source), kinds)
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {out_dir}: {exc.strerror or exc}") from exc
    content: dict[str, bytes] = {}
    if "mask" in paths:
        content["mask"] = encode_mask_png(result.mask)
    if "overlay" in paths:
        content["overlay"] = encode_overlay_png(result)
    if "seg" in paths:
        if is_dicom_source(result):
            content["seg"] = encode_seg(build_seg(result, bundle=bundle, artifact=artifact))
        else:
            what = source_file(result) or "in-memory image"
            _log.warning("%s: not read from a DICOM file, so no DICOM SEG was written (a SEG references one)", what)
    before = dict(result.outputs)
    if "json" in paths:
        result.outputs.update({kind: str(paths[kind]) for kind in (*content, "json")})
        result.timing_ms["write"] = (time.perf_counter() - start) * 1000.0
        content["json"] = result_json(result)
    try:
        replace_files({paths[kind]: data for kind, data in content.items()})
    except OSError as exc:
        result.outputs.clear()
        result.outputs.update(before)
        raise InputError(f"cannot write outputs under {out_dir}: {exc.strerror or exc}") from exc
    written = {kind: paths[kind] for kind in content}
    result.outputs.update({kind: str(path) for kind, path in written.items()})
    result.timing_ms["write"] = (time.perf_counter() - start) * 1000.0
    return written
