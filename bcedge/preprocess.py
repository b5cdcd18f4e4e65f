"""The one preprocessing: a mammogram in, a model tensor and an invertible :class:`Geometry` out.

Training, export calibration, benchmarks and the runtime all call :func:`preprocess`
with the same frozen :class:`PreprocessConfig` (the bundle manifest records
``config.to_dict()`` and ``config.hash()``). The seed study's steps, each a small
pure function here:

1. **Normalisation** (:func:`intensity_window`, :func:`normalise`): a robust linear
   stretch onto [0, 1] between percentiles of the pixels *inside the breast*.
2. **Border crop** (:func:`frame_margins`, :func:`crop_box`): a thin frame of the
   image edge (film borders, detector edge) is discarded, then the image is cropped
   to the breast's bounding box plus a margin.
3. **Artefact removal** (:func:`breast_mask`): Otsu threshold at the working
   resolution, the breast's connected component kept, everything outside it
   (labels, markers, text, film strips) set to 0.
4. **Horizontal flip** (:func:`chest_wall_side`, :func:`decide_flip`): the chest
   wall goes to ``config.canonical_side``. The header states a side (Patient
   Orientation, else laterality in the standard DICOM orientation); the image
   confirms it (where the breast meets the edge) and wins when it clearly
   disagrees.
5. **Enhancement** (:func:`apply_clahe`): CLAHE on the 8-bit model-resolution image.
6. **Change to square** (:func:`square_layout`): pad, never stretch, to
   ``size`` x ``size``; INTER_AREA for images, nearest neighbour for masks.
7. **Merging masks** (:func:`merge_masks`): the union of every lesion mask.

Speed: with ``version`` 1 the full-resolution displayed float image is touched twice, by two
``cv2.resize(INTER_AREA)`` calls: one to the working image (long side ``work_size``) on which
all analysis runs, and one from the cropped original straight to the model grid. With
``version`` 2 the stored integers are halved (2x2 area, OpenCV's vectorised path) and the
display table is applied to the small images only (see :func:`preprocess`): no full-size float
image exists. Crop, flip and padding are bookkeeping (a slice, a flip and a copy of the small
image).

Coordinates: pixel centres sit at integer (row, col); pixel ``i`` spans
``[i - 0.5, i + 0.5]``. This is OpenCV's resize convention, so every resample here
maps the crop box's outer edges onto the content region's outer edges and the
model <-> original map is one exact axis-aligned affine per axis (see
:class:`Geometry`).

Why one module: the single implementation every stage must share (training, export, benchmarks,
runtime); the steps share the working-image and coordinate conventions above, and splitting them
across modules would invite a second copy of one of them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, NamedTuple

import numpy as np

from bcedge.dicom import Mammogram
from bcedge.errors import ConfigError, InputError

_log = logging.getLogger(__name__)

#: The newest preprocessing algorithm this bcedge implements; bumped whenever the algorithm
#: changes what a given config produces. A config records its version (part of its hash), and
#: :func:`preprocess` runs the version the config names, so a bundle keeps getting the tensors it
#: was trained on. Version 1: the displayed full-resolution float image is resampled (the
#: display LUT applied to every stored pixel first). Version 2: the stored values are resampled
#: first (2x2 area halvings, then one area resize on the small image) and the display LUT is
#: applied to the small image, so no full-size float image is made (see :func:`preprocess`).
PREPROCESS_VERSION = 2
#: Every version :func:`preprocess` implements.
PREPROCESS_VERSIONS = (1, 2)
#: The version a config gets when none is given (and what a config dict without ``version``
#: means: every config written before version 2 existed is version 1).
DEFAULT_PREPROCESS_VERSION = 1

Side = Literal["L", "R"]
SideSource = Literal["laterality", "image", "none"]
NormaliseMode = Literal["percentile", "minmax", "none"]
Interpolation = Literal["nearest", "linear", "cubic"]

#: Bins of the intensity histogram used for percentiles (resolution 1/4095 of the range).
_HIST_BINS = 4096


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class PreprocessConfig:
    """Every knob of :func:`preprocess`; frozen so one config means one tensor.

    Attributes:
        size: side of the square model input, pixels (16..4096).
        work_size: long side of the working image on which the breast is found,
            pixels (64..4096). Images already smaller are used as they are. 512
            keeps the breast outline within ~0.5 mm on a 3328-row scan and the
            analysis at ~3 ms; raise it (to ~2 x ``size``) for large model inputs.
        border_crop: fraction of each image dimension discarded as a frame at each
            edge before anything else (film borders, detector edge), in [0, 0.2).
        crop_margin: margin kept around the breast's bounding box, as a fraction of
            the working image's long side, in [0, 0.5].
        remove_artefacts: set everything outside the breast component to 0. When
            False the breast is still found (for crop, flip and percentiles) but
            labels and markers inside the crop box stay.
        threshold_scale: the breast threshold lies this fraction of the way from
            the background level (the commonest value below Otsu's threshold) to
            Otsu's threshold, in (0, 2]. Otsu alone splits fat from dense tissue
            on mammograms and cuts off the thin breast periphery; 0.2 follows the
            skin line on mini-MIAS (checked by eye on 36 films) and on the phantoms
            without taking in the film's background haze.
        open_size: diameter of the opening that detaches thin strips and labels
            touching the breast, as a fraction of the working image's long side,
            in [0, 0.2].
        canonical_side: where the chest wall ends up: ``L`` (left edge) or ``R``.
        side_source: how the chest-wall side of the input is decided:
            ``laterality`` (the header states it: Patient Orientation when
            present, else the laterality in the standard DICOM orientation, left
            breast = chest wall on the left; the image confirms it and is
            followed, with one warning, when it disagrees with confidence >=
            :data:`SIDE_CONFIDENCE`; the image alone decides when the header
            says nothing), ``image`` (always the image) or ``none`` (never flip).
        normalise: ``percentile`` (stretch between ``percentiles`` of the breast
            pixels), ``minmax`` (breast min..max) or ``none`` (keep [0, 1] as read).
        percentiles: (low, high) percentiles for ``percentile``, 0 <= low < high <= 100.
        clahe: apply CLAHE to the model-resolution image.
        clahe_clip: CLAHE clip limit (OpenCV's ``clipLimit``), > 0.
        clahe_tiles: CLAHE tile grid is ``clahe_tiles`` x ``clahe_tiles`` over the
            square model image, 1..64.
        version: the preprocessing algorithm, one of :data:`PREPROCESS_VERSIONS` (see
            :data:`PREPROCESS_VERSION`). Defaults to :data:`DEFAULT_PREPROCESS_VERSION` (1),
            so configs, caches and bundles made before version 2 keep their meaning; version 2
            gives the same tensors up to resampling order (measured in
            ``benchmarks/results/preprocess_v2_gate.json``) at a fraction of the cost.
        square_image: lay the crop out as if the whole image had first been resized to a
            square (rows scaled by ``W / H`` against columns): for a model whose training files
            were squared from originals of the scan's aspect. The geometry maps the mask back per
            axis, so outputs stay on the original grid; a no-op on square images. The mass model
            leaves it off: its CDD-CESM files are squashed by only ~1.09 against true-aspect films
            (``benchmarks/breast_aspect.py``), so squaring a 2944x1920 scan (1.53x) would take it
            further from them. Left out of :meth:`to_dict` (and the hash) when False, so every
            config made before it keeps its hash.
    """

    size: int = 256
    work_size: int = 512
    border_crop: float = 0.01
    crop_margin: float = 0.02
    remove_artefacts: bool = True
    threshold_scale: float = 0.2
    open_size: float = 0.025
    canonical_side: Side = "L"
    side_source: SideSource = "laterality"
    normalise: NormaliseMode = "percentile"
    percentiles: tuple[float, float] = (1.0, 99.5)
    clahe: bool = True
    clahe_clip: float = 2.0
    clahe_tiles: int = 8
    version: int = DEFAULT_PREPROCESS_VERSION
    square_image: bool = False

    def __post_init__(self) -> None:
        _check_int("size", self.size, 16, 4096)
        _check_int("work_size", self.work_size, 64, 4096)
        _check_float("border_crop", self.border_crop, 0.0, 0.2, hi_open=True)
        _check_float("crop_margin", self.crop_margin, 0.0, 0.5)
        _check_bool("remove_artefacts", self.remove_artefacts)
        _check_float("threshold_scale", self.threshold_scale, 0.0, 2.0, lo_open=True)
        _check_float("open_size", self.open_size, 0.0, 0.2)
        _check_choice("canonical_side", self.canonical_side, ("L", "R"))
        _check_choice("side_source", self.side_source, ("laterality", "image", "none"))
        _check_choice("normalise", self.normalise, ("percentile", "minmax", "none"))
        pct = self.percentiles
        if (
            not isinstance(pct, (tuple, list))
            or len(pct) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pct)
            or not 0.0 <= pct[0] < pct[1] <= 100.0
        ):
            raise ConfigError(f"preprocess percentiles is {pct!r}; expected (low, high) with 0 <= low < high <= 100")
        object.__setattr__(self, "percentiles", (float(pct[0]), float(pct[1])))
        _check_bool("clahe", self.clahe)
        _check_float("clahe_clip", self.clahe_clip, 0.0, 1000.0, lo_open=True)
        _check_int("clahe_tiles", self.clahe_tiles, 1, 64)
        _check_bool("square_image", self.square_image)
        if isinstance(self.version, bool) or self.version not in PREPROCESS_VERSIONS:
            raise ConfigError(
                f"preprocess config version is {self.version!r}, this bcedge implements versions "
                f"{', '.join(map(str, PREPROCESS_VERSIONS))}; the tensors would differ from the ones the model "
                "was trained on"
            )
        # Canonical Python types, so 0 and 0.0 (or np.int64(256) and 256) give the same hash.
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int":
                object.__setattr__(self, f.name, int(value))
            elif f.type == "float":
                object.__setattr__(self, f.name, float(value))
            elif f.type == "bool":
                object.__setattr__(self, f.name, bool(value))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field, ``version`` included.

        A version-1 config gives exactly the dict (and so the hash) it gave before ``version``
        became a field: that key was always written.
        """
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            out[key] = list(value) if isinstance(value, tuple) else value
        if not self.square_image:
            del out["square_image"]  # the dict (and hash) of every config made before the field
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessConfig:
        """Rebuild a config from :meth:`to_dict` output (e.g. a bundle manifest).

        Missing fields take their defaults; a missing ``version`` is
        :data:`DEFAULT_PREPROCESS_VERSION` (every config written before there was a choice).

        Raises:
            ConfigError: unknown key, invalid value, or a preprocessing version this bcedge
                does not implement.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"preprocess config must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown preprocess config key(s) {unknown}; expected some of {sorted(known)}")
        kwargs = dict(data)
        if isinstance(kwargs.get("percentiles"), list):
            kwargs["percentiles"] = tuple(kwargs["percentiles"])
        return cls(**kwargs)

    def hash(self) -> str:
        """First 16 hex digits of the SHA-256 of the canonical JSON of :meth:`to_dict`.

        Canonical: sorted keys, no whitespace, floats in Python's shortest repr, so
        the value is the same in every process and on every machine.
        """
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise ConfigError(f"preprocess {name} is {value!r}; expected an integer in [{lo}, {hi}]")


def _check_float(
    name: str, value: object, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False
) -> None:
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (lo < value if lo_open else lo <= value) and (value < hi if hi_open else value <= hi)
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ConfigError(f"preprocess {name} is {value!r}; expected a number in {interval}")


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"preprocess {name} is {value!r}; expected true or false")


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"preprocess {name} is {value!r}; expected one of {', '.join(choices)}")


# --------------------------------------------------------------------------- geometry

_INTERPOLATIONS = ("nearest", "linear", "cubic")


@dataclass(frozen=True)
class Geometry:
    """What :func:`preprocess` did to the pixel grid, and its exact inverse.

    The map is axis-aligned: the crop box of the original image (edges
    ``[top, bottom) x [left, right)``) is scaled onto the model grid's content
    region (``content``), mirrored left-right when ``flipped``; everything else of
    the model grid is padding (zeros). Per axis, in pixel-centre coordinates::

        model = a * original + b
        a = s, b = c0 + (0.5 - o0) * s - 0.5            (not flipped)
        a = -s, b = c0 + (o1 - 0.5) * s - 0.5           (flipped, columns only)
        s = content extent / crop extent

    where ``o0, o1`` are the crop edges and ``c0`` the content region's first edge.

    Resolution: at ``size`` 256 a model pixel covers ``crop long side / 256``
    original pixels: about 12 pixels (~0.9 mm at 0.07-0.1 mm spacing) for a
    full-field scan. A mask that makes the trip original -> model -> original
    (nearest neighbour down, linear up) can only keep its outline to within about
    half a model pixel, so a 5 mm lesion (about 6 model pixels across) keeps an
    IoU of only ~0.84-0.88 after the round trip (8 mm: ~0.90, 15 mm: ~0.95); at
    ``size`` 1024 the pitch is ~0.22 mm and a 5 mm lesion keeps ~0.95-0.97. The
    model pitch, not this mapping, sets that limit: the reverse trip (a mask on
    the model grid, as a prediction is, mapped to the original and back) gives
    IoU 1.0 with nearest or linear interpolation.

    Attributes:
        original_shape: (H, W) of the input image.
        crop: (top, left, bottom, right) of the crop box in original pixel
            coordinates, bottom/right exclusive (a NumPy slice).
        flipped: whether the crop was mirrored left-right.
        content: (top, left, height, width) of the region of the model grid that
            holds the (scaled, maybe flipped) crop; the rest is zero padding.
        size: side of the square model grid.
        flip_reason: why it was (not) flipped, for humans and logs.
        chest_wall_side: side of the chest wall in the *original* image as decided
            (``L``/``R``), or None when no side could be decided.
        image_side: side of the chest wall seen in the original image by
            :func:`chest_wall_side` (None when no breast was found).
        header_side: side of the chest wall the header stated (Patient
            Orientation, else laterality in the standard orientation), or None;
            compare with ``image_side`` through :attr:`side_conflict`.
        breast_found: False when no breast component was found (blank image): the
            crop is then the whole frame and nothing was zeroed.
        intensity_window: (low, high) of the intensity stretch, in the input's
            [0, 1] units; informational, not used by the mapping.
    """

    original_shape: tuple[int, int]
    crop: tuple[int, int, int, int]
    flipped: bool
    content: tuple[int, int, int, int]
    size: int
    flip_reason: str = ""
    chest_wall_side: str | None = None
    image_side: str | None = None
    header_side: str | None = None
    breast_found: bool = True
    intensity_window: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        h, w = self.original_shape
        top, left, bottom, right = self.crop
        ct, cl, ch, cw = self.content
        if h <= 0 or w <= 0 or not (0 <= top < bottom <= h and 0 <= left < right <= w):
            raise ConfigError(f"geometry crop {self.crop} does not lie inside an image of shape {self.original_shape}")
        if ch <= 0 or cw <= 0 or ct < 0 or cl < 0 or ct + ch > self.size or cl + cw > self.size:
            raise ConfigError(f"geometry content {self.content} does not fit a {self.size}x{self.size} grid")

    # ----------------------------------------------------------------- derived
    @property
    def scale(self) -> tuple[float, float]:
        """(row, col) model pixels per original pixel (equal up to rounding of the content size)."""
        top, left, bottom, right = self.crop
        return self.content[2] / (bottom - top), self.content[3] / (right - left)

    @property
    def padding(self) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) zero padding of the model grid, pixels."""
        ct, cl, ch, cw = self.content
        return ct, self.size - ct - ch, cl, self.size - cl - cw

    @property
    def side_conflict(self) -> bool:
        """True when the header's chest-wall side differs from what the image shows.

        Usually a laterality tag on an image not stored in the standard DICOM
        orientation (sets flipped by their publisher, a scan stored mirrored);
        ``flip_reason`` says which one was followed.
        """
        return None not in (self.header_side, self.image_side) and self.header_side != self.image_side

    def _axis(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """((a_row, b_row), (a_col, b_col)) of ``model = a * original + b``."""
        top, left, bottom, right = self.crop
        ct, cl, ch, cw = self.content
        sr = ch / (bottom - top)
        sc = cw / (right - left)
        row = (sr, ct + (0.5 - top) * sr - 0.5)
        col = (-sc, cl + (right - 0.5) * sc - 0.5) if self.flipped else (sc, cl + (0.5 - left) * sc - 0.5)
        return row, col

    @property
    def affine(self) -> np.ndarray:
        """(2, 3) float64 OpenCV matrix mapping original (x=col, y=row) to model (x, y)."""
        (ar, br), (ac, bc) = self._axis()
        return np.array([[ac, 0.0, bc], [0.0, ar, br]], dtype=np.float64)

    # ----------------------------------------------------------------- points
    def points_to_model(self, rc: np.ndarray) -> np.ndarray:
        """Map (row, col) points from the original grid to the model grid.

        Args:
            rc: (N, 2) float (row, col) in original pixel-centre coordinates.

        Returns:
            (N, 2) float64 (row, col) on the model grid (may fall outside it).
        """
        pts = _points(rc)
        (ar, br), (ac, bc) = self._axis()
        return np.stack([pts[:, 0] * ar + br, pts[:, 1] * ac + bc], axis=1)

    def points_to_original(self, rc: np.ndarray) -> np.ndarray:
        """Exact inverse of :meth:`points_to_model`.

        Args:
            rc: (N, 2) float (row, col) on the model grid.

        Returns:
            (N, 2) float64 (row, col) in original pixel-centre coordinates.
        """
        pts = _points(rc)
        (ar, br), (ac, bc) = self._axis()
        return np.stack([(pts[:, 0] - br) / ar, (pts[:, 1] - bc) / ac], axis=1)

    # ----------------------------------------------------------------- rasters
    def mask_to_model(self, mask: np.ndarray) -> np.ndarray:
        """Carry a mask on the original grid to the model grid (nearest neighbour).

        Each model pixel takes the original pixel its centre falls on, so the
        result lines up with the image tensor pixel for pixel.

        Args:
            mask: (H, W) of ``original_shape``, any numeric or bool dtype; nonzero is foreground.

        Returns:
            (size, size) uint8 in {0, 1}; padding is 0.

        Raises:
            InputError: the mask's shape is not ``original_shape``.
        """
        mask = np.asarray(mask)
        if mask.shape != tuple(self.original_shape):
            raise InputError(f"mask has shape {mask.shape}; expected the original image shape {self.original_shape}")
        ct, cl, ch, cw = self.content
        top, left, bottom, right = self.crop
        (ar, br), (ac, bc) = self._axis()
        # Original coordinate of each content pixel centre, rounded half up, kept inside the crop
        # (floating-point error at the crop edge must not step outside it).
        rows = np.floor((np.arange(ct, ct + ch) - br) / ar + 0.5).astype(np.intp).clip(top, bottom - 1)
        cols = np.floor((np.arange(cl, cl + cw) - bc) / ac + 0.5).astype(np.intp).clip(left, right - 1)
        out = np.zeros((self.size, self.size), np.uint8)
        out[ct : ct + ch, cl : cl + cw] = mask[rows[:, None], cols[None, :]] != 0
        return out

    def to_original(self, arr: np.ndarray, *, interpolation: Interpolation = "linear") -> np.ndarray:
        """Carry a model-grid array (prediction, mask) back to the original grid.

        The content region is un-flipped and resized onto the crop box with
        OpenCV's edge-aligned convention, the exact inverse of the forward map.
        Everything outside the crop box is 0 (it was cropped away, nothing was
        predicted there); padding never reaches the original grid.

        Args:
            arr: (size, size) or (size, size, 1) array, dtype uint8, uint16, int16,
                float32 or float64 (bool is treated as uint8).
            interpolation: ``nearest`` (exact-centre nearest neighbour), ``linear``
                or ``cubic`` (float output of ``cubic`` may overshoot its input range).

        Returns:
            (H, W) of ``original_shape``, same dtype as ``arr`` (uint8 for bool).

        Raises:
            InputError: wrong shape, dtype or interpolation name.
        """
        import cv2

        a = np.asarray(arr)
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[:, :, 0]
        if a.shape != (self.size, self.size):
            raise InputError(
                f"array has shape {np.asarray(arr).shape}; expected the model grid ({self.size}, {self.size})"
            )
        if a.dtype == bool:
            a = a.astype(np.uint8)
        if a.dtype not in (np.uint8, np.uint16, np.int16, np.float32, np.float64):
            raise InputError(f"array dtype {a.dtype} unsupported; expected uint8, uint16, int16, float32 or float64")
        if interpolation not in _INTERPOLATIONS:
            raise InputError(f"interpolation {interpolation!r} unknown; expected one of {', '.join(_INTERPOLATIONS)}")
        flag = {"nearest": cv2.INTER_NEAREST_EXACT, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}
        ct, cl, ch, cw = self.content
        top, left, bottom, right = self.crop
        content = a[ct : ct + ch, cl : cl + cw]
        if self.flipped:
            content = content[:, ::-1]
        resized = cv2.resize(
            np.ascontiguousarray(content), (right - left, bottom - top), interpolation=flag[interpolation]
        )
        out = np.zeros(self.original_shape, a.dtype)
        out[top:bottom, left:right] = resized
        return out

    # ----------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists) with the derived ``scale`` and ``padding`` added."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            out[key] = list(value) if isinstance(value, tuple) else value
        out["scale"] = list(self.scale)
        out["padding"] = list(self.padding)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Geometry:
        """Rebuild from :meth:`to_dict` output (derived keys are ignored).

        Raises:
            ConfigError: missing or unknown keys, or values that do not describe a valid geometry.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"geometry must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"scale", "padding"})
        if unknown:
            raise ConfigError(f"unknown geometry key(s) {unknown}; expected some of {sorted(known)}")
        required = ("original_shape", "crop", "flipped", "content", "size")
        missing = [k for k in required if k not in data]
        if missing:
            raise ConfigError(f"geometry is missing {missing}")
        try:
            kwargs: dict[str, Any] = {
                "original_shape": tuple(int(v) for v in data["original_shape"]),
                "crop": tuple(int(v) for v in data["crop"]),
                "flipped": bool(data["flipped"]),
                "content": tuple(int(v) for v in data["content"]),
                "size": int(data["size"]),
                "flip_reason": str(data.get("flip_reason", "")),
                "chest_wall_side": data.get("chest_wall_side"),
                "image_side": data.get("image_side"),
                "header_side": data.get("header_side"),
                "breast_found": bool(data.get("breast_found", True)),
            }
            window = data.get("intensity_window")
            kwargs["intensity_window"] = None if window is None else (float(window[0]), float(window[1]))
        except (TypeError, ValueError, IndexError) as exc:
            raise ConfigError(f"geometry values are malformed: {exc}") from exc
        if len(kwargs["original_shape"]) != 2 or len(kwargs["crop"]) != 4 or len(kwargs["content"]) != 4:
            raise ConfigError("geometry original_shape needs 2 values, crop and content 4 each")
        return cls(**kwargs)


def _points(rc: np.ndarray) -> np.ndarray:
    pts = np.asarray(rc, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise InputError(f"points have shape {pts.shape}; expected (N, 2) (row, col)")
    return pts


# --------------------------------------------------------------------------- steps


def as_float01(pixels: np.ndarray) -> np.ndarray:
    """The image as float32 in [0, 1] without copying when it already is float32.

    Args:
        pixels: (H, W) float (assumed in [0, 1], as :mod:`bcedge.dicom` returns),
            uint8 (/255) or uint16 (/65535).

    Returns:
        (H, W) float32.

    Raises:
        InputError: not a non-empty 2-D array of a supported dtype.
    """
    arr = np.asarray(pixels)
    if arr.ndim != 2 or arr.size == 0:
        raise InputError(f"image has shape {arr.shape}; expected a non-empty 2-D (H, W) greyscale image")
    if arr.dtype == np.float32:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float32)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) * np.float32(1.0 / 255.0)
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) * np.float32(1.0 / 65535.0)
    raise InputError(f"image dtype {arr.dtype} unsupported; expected float in [0, 1], uint8 or uint16")


def to_work(pixels: np.ndarray, work_size: int) -> tuple[np.ndarray, tuple[float, float]]:
    """Downscale so the long side is ``work_size`` (INTER_AREA); smaller images pass unchanged.

    Args:
        pixels: (H, W) float32 in [0, 1].
        work_size: long side of the result, pixels.

    Returns:
        (work image (h, w) float32 in [0, 1], (h / H, w / W)): the per-axis scale,
        exact because h and w are rounded first.
    """
    import cv2

    h, w = pixels.shape
    long_side = max(h, w)
    if long_side <= work_size:
        return pixels, (1.0, 1.0)
    k = work_size / long_side
    wh, ww = max(1, round(h * k)), max(1, round(w * k))
    work = cv2.resize(pixels, (ww, wh), interpolation=cv2.INTER_AREA)
    return work, (wh / h, ww / w)


def frame_margins(shape: tuple[int, int], border_crop: float) -> tuple[int, int]:
    """(rows, cols) discarded at each edge: ``round(border_crop * H)``, ``round(border_crop * W)``.

    Never so many that nothing is left.
    """
    h, w = shape
    by = min(round(border_crop * h), (h - 1) // 2)
    bx = min(round(border_crop * w), (w - 1) // 2)
    return max(by, 0), max(bx, 0)


@dataclass(frozen=True)
class BreastMask:
    """Result of :func:`breast_mask` on the working image.

    Attributes:
        mask: (h, w) uint8 in {0, 1}: the breast (holes filled), or all zeros.
        found: whether a breast component was found.
        threshold: the foreground level used, in [0, 1] image units.
        bbox: (top, left, bottom, right) of the mask in working pixels (exclusive
            ends), or the inner frame when nothing was found.
        edges: (top, left, bottom, right) booleans: whether the breast reaches
            the discarded frame on that side, and so continues to the image edge
            (the frame was given back to it there). The crop must not discard a
            frame on such a side.
    """

    mask: np.ndarray
    found: bool
    threshold: float
    bbox: tuple[int, int, int, int]
    edges: tuple[bool, bool, bool, bool] = (False, False, False, False)


#: OpenCV makes 16-bit labels only for fewer components than this (it refuses to count to 65535).
_MAX_16BIT_COMPONENTS = 65534


def label_type(shape: tuple[int, int]) -> int:
    """OpenCV's label type for an 8-connected labelling of a (h, w) binary image: 16-bit when it cannot overflow.

    No two 8-connected components share a 2x2 block (its pixels are mutually adjacent), so an image
    holds at most one per block. 16-bit labels are made and compared faster than 32-bit ones, and
    OpenCV's histogram and morphology take them (not 32-bit ones). Same algorithm, same labels.
    """
    import cv2

    h, w = shape
    return cv2.CV_16U if ((h + 1) // 2) * ((w + 1) // 2) < _MAX_16BIT_COMPONENTS else cv2.CV_32S


def breast_mask(
    work: np.ndarray, *, border_crop: float = 0.01, threshold_scale: float = 0.2, open_size: float = 0.025
) -> BreastMask:
    """Find the breast: the border crop and artefact-removal steps on the working image.

    The frame of ``border_crop`` is set to background; pixels above the level
    ``threshold_scale`` of the way from the background level to Otsu's threshold
    (:func:`otsu_split`) are foreground. The foreground is closed and its holes
    filled, so fatty tissue (a mesh of strands around dark fat below the level)
    counts as one solid region; an opening of diameter ``open_size * long side``
    then detaches thin film strips and labels; the largest connected component of
    what remains is the breast (labels, markers and text are smaller, and
    mammograms hold one breast). The component is grown back within the filled
    foreground to recover the skin line, and its holes are filled. Where the
    breast reaches the frame, the frame is breast too: the breast's outermost
    inner row (column) is carried straight out to the image edge, wherever those
    pixels are above the level (``edges`` records the sides).

    Why the close-and-fill: without it the opening dissolves the fatty periphery
    and the axillary tail (strands thinner than the kernel), and the breast shrank
    to its dense core: up to 10 % of the breast fell outside the crop on CDD-CESM
    images. Why the frame rule: the chest wall (and on large breasts the top and
    bottom) runs to the image edge, and a frame discarded there cut 1-3 % of the
    breast on nearly every image.

    Args:
        work: (h, w) float32 in [0, 1], dense tissue bright, background dark.
        border_crop: see :class:`PreprocessConfig`.
        threshold_scale: see :class:`PreprocessConfig`.
        open_size: see :class:`PreprocessConfig`.

    Returns:
        A :class:`BreastMask`. ``found`` is False when the foreground is empty or
        its largest component is under 0.5 % of the image (a blank image).
    """
    import cv2

    h, w = work.shape
    by, bx = frame_margins((h, w), border_crop)
    full = cv2.convertScaleAbs(work, alpha=255.0)  # rounds and saturates to [0, 255]
    u8 = full.copy()
    u8[:by] = 0
    u8[h - by :] = 0
    u8[:, :bx] = 0
    u8[:, w - bx :] = 0
    inner = (by, bx, h - by, w - bx)
    # The histogram leaves the frame out: its artificial zeros would make a flat image look bimodal.
    # OpenCV's histogram counts exactly (float32 holds every count up to 2**24, a 4096x4096 working
    # image's pixels) in ~0.04 ms, NumPy's bincount in ~0.17 (it copies the view to int64 first), on
    # a 512x334 working image (ad-hoc timing, 2-core Intel Xeon, CPU flags avx2 avx512f avx512_vnni).
    hist = cv2.calcHist([u8[by : h - by, bx : w - bx]], [0], None, [256], [0, 256]).ravel().astype(np.float64)
    split = otsu_split(hist)
    if split is None:  # a flat image: nothing to split
        return BreastMask(np.zeros((h, w), np.uint8), False, 0.0, inner)
    otsu, background = split
    level = background + threshold_scale * (otsu - background)
    foreground = (u8 > level).astype(np.uint8)
    k = max(1, round(open_size * max(h, w)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)) if k > 1 else None
    if kernel is not None:
        solid = _fill_holes(foreground)
        core = cv2.morphologyEx(solid, cv2.MORPH_OPEN, kernel)
    else:
        solid = core = foreground
    # Labels only, areas from one histogram of them: connectedComponentsWithStats spends most of its
    # ~1.5 ms (512x334 working image, one thread) on per-pixel box and centroid bookkeeping this
    # never reads; labels plus bincount took ~0.8 ms. Same labelling algorithm, same labels (checked
    # equal at 1, 2 and 4 threads), so the same component wins an area tie. 16-bit labels (below
    # 65534 blocks) are counted by OpenCV's histogram, exactly (float32 holds every count up to 2**24).
    count, labels = cv2.connectedComponents(core, connectivity=8, ltype=label_type((h, w)))
    if count < 2:
        return BreastMask(np.zeros((h, w), np.uint8), False, level / 255.0, inner)
    if labels.dtype == np.uint16:
        areas = cv2.calcHist([labels], [0], None, [count], [0, count]).ravel()
    else:
        areas = np.bincount(labels.ravel(), minlength=count)
    best = 1 + int(np.argmax(areas[1:]))
    if areas[best] < 0.005 * h * w:
        return BreastMask(np.zeros((h, w), np.uint8), False, level / 255.0, inner)
    mask = (labels == best).astype(np.uint8)
    if kernel is not None:
        # Grow back the outline the opening shaved off, but only into (filled) foreground.
        mask = cv2.dilate(mask, kernel) & solid
    # The outer contour of the largest piece, filled: one component, no holes.
    mask = _fill_outer(mask)
    if kernel is not None:
        mask = _follow_chest_wall(mask, solid, k)
    mask, edges = _extend_into_frame(mask, full > level, (by, bx))
    # The box of the nonzero pixels in one pass of OpenCV, not the coordinates of every breast pixel.
    x, y, bw, bh = cv2.boundingRect(mask)
    bbox = (y, x, y + bh, x + bw)
    return BreastMask(mask, True, level / 255.0, bbox, edges)


def _fill_outer(mask: np.ndarray) -> np.ndarray:
    """The largest outer contour of a uint8 {0, 1} mask, filled (one component, no holes)."""
    import cv2

    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    outer = max(contours, key=cv2.contourArea)
    out = np.zeros_like(mask)
    cv2.drawContours(out, [outer], -1, 1, thickness=cv2.FILLED)
    return out


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Every background region of a uint8 {0, 1} mask not connected to the image border set to 1."""
    import cv2

    h, w = mask.shape
    flood = np.zeros((h + 2, w + 2), np.uint8)
    flood[1:-1, 1:-1] = mask
    cv2.floodFill(flood, None, (0, 0), 1)  # the 1-pixel ring makes the border one background region
    return mask | (1 - flood[1:-1, 1:-1])


def _follow_chest_wall(mask: np.ndarray, solid: np.ndarray, width: int) -> np.ndarray:
    """Add the foreground that continues the breast along its chest-wall edge.

    Below (and above) the breast the chest wall, the pectoral muscle and the
    inframammary skin run on along the chest-wall edge (the image or film edge)
    as wedges and strips thinner than the opening, which the opening removed.
    Labels and film strips lie elsewhere, so only a band ``width`` pixels wide
    along the breast's chest-wall side (:func:`chest_wall_side`) is followed, and
    only the pieces of it connected to the breast.

    Args:
        mask: (h, w) uint8 {0, 1} breast.
        solid: (h, w) uint8 {0, 1} filled foreground.
        width: band width, pixels.

    Returns:
        (h, w) uint8 {0, 1}: ``mask`` plus the connected band pieces.
    """
    import cv2

    side, _ = chest_wall_side(mask)
    if side is None:
        return mask
    xs = np.flatnonzero(mask.any(axis=0))
    cols = slice(int(xs[0]), int(xs[0]) + width) if side == "L" else slice(max(0, int(xs[-1]) + 1 - width), None)
    band = np.zeros_like(mask)
    band[:, cols] = solid[:, cols]
    count, labels = cv2.connectedComponents(band | mask, connectivity=8, ltype=label_type(mask.shape))
    # The breast is normally one piece (a filled outer contour), so one label holds it: keep that
    # label's pixels, a compare instead of two gathers (~1 ms of ~17 on a full-field scan). When the
    # check finds breast pixels outside it (a breast in pieces), every piece's label is gathered.
    row = int(np.argmax(mask[:, xs[0]]))
    out = (labels == labels[row, xs[0]]).view(np.uint8)
    if not np.any(mask > out):
        return out
    keep = np.zeros(count, np.uint8)
    keep[labels[mask > 0]] = 1  # the labels the breast belongs to (never 0, the background)
    return keep[labels]


def _extend_into_frame(
    mask: np.ndarray, above: np.ndarray, frame: tuple[int, int]
) -> tuple[np.ndarray, tuple[bool, bool, bool, bool]]:
    """Carry the breast straight out through the frame on every side it reaches.

    Args:
        mask: (h, w) uint8 {0, 1} breast, zero in the frame.
        above: (h, w) bool, pixels above the breast level (frame included).
        frame: (rows, cols) of the frame at each edge.

    Returns:
        (mask with the frame strips filled where the breast's outermost inner
        row/column is breast and the frame pixel is above the level,
        (top, left, bottom, right) whether the breast reached that side).
    """
    h, w = mask.shape
    by, bx = frame
    out = mask.copy()
    edges = [False, False, False, False]
    if by > 0:
        for i, (inner_row, rows) in enumerate(((by, slice(0, by)), (h - by - 1, slice(h - by, h)))):
            line = mask[inner_row]
            if line.any():
                edges[2 * i] = True
                out[rows] |= line[None, :] & above[rows]
    if bx > 0:
        for i, (inner_col, cols) in enumerate(((bx, slice(0, bx)), (w - bx - 1, slice(w - bx, w)))):
            line = mask[:, inner_col]
            if line.any():
                edges[1 + 2 * i] = True
                out[:, cols] |= line[:, None] & above[:, cols]
    return out, (edges[0], edges[1], edges[2], edges[3])


def otsu_split(hist: np.ndarray) -> tuple[float, float] | None:
    """Otsu's threshold of a 256-bin histogram, and the background level (mode of the class below it).

    Unlike ``cv2.THRESH_OTSU``, which takes the *first* best threshold, this takes
    the middle of the range of equally good thresholds: when background and
    breast are separated by a gap of empty bins (clean synthetic or windowed
    digital images), every threshold in the gap is optimal and the first one
    hugs the background.

    Args:
        hist: (256,) float counts of uint8 values.

    Returns:
        (threshold, background level) in 0..255 units (a value is foreground when
        above the threshold), or None when the histogram has fewer than two
        occupied bins.
    """
    total = hist.sum()
    if np.count_nonzero(hist) < 2:
        return None
    p = hist / total
    levels = np.arange(hist.size, dtype=np.float64)
    w0 = np.cumsum(p)  # weight of the class <= t
    m0 = np.cumsum(p * levels)
    mean = m0[-1]
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean * w0 - m0) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = 0.0
    best = between.max()
    ties = np.flatnonzero(between >= best * (1.0 - 1e-9))
    t = int(ties[0] + ties[-1]) // 2
    # The background is the narrow peak of the lower class; its mean would be dragged
    # up by fatty tissue, which often falls below Otsu's threshold too.
    background = int(np.argmax(hist[: t + 1]))
    return float(t), float(background)


def chest_wall_side(mask: np.ndarray) -> tuple[Side | None, float]:
    """Which side of the image the chest wall is on, from the breast mask alone.

    The breast is widest at the chest wall and tapers to the nipple, so the
    outer tenth of the breast's bounding box on the chest-wall side holds more
    breast than the outer tenth on the nipple side (the half-vs-half breast mass
    gives the same answer with a smaller margin). On all 322 mini-MIAS images
    this is right on 321 (with the mask of :func:`breast_mask`); the miss is a
    breast that fills the film edge to edge, with confidence 0.09.

    Args:
        mask: (h, w) uint8/bool breast mask.

    Returns:
        (``L``/``R``, confidence in [0, 1]: |left - right| / (left + right)), or
        (None, 0.0) for an empty mask.
    """
    cols = np.count_nonzero(mask, axis=0)
    xs = np.flatnonzero(cols)
    if xs.size == 0:
        return None, 0.0
    x0, x1 = int(xs[0]), int(xs[-1]) + 1
    k = max(1, (x1 - x0) // 10)
    left = float(cols[x0 : x0 + k].sum())
    right = float(cols[x1 - k : x1].sum())
    if left == right:
        return None, 0.0
    return ("L" if left > right else "R"), abs(left - right) / (left + right)


#: Below this :func:`chest_wall_side` confidence the image does not overrule the header.
#: Measured on the 322 mini-MIAS films (side known from the film number, standard
#: hanging): the image side is wrong on one film (mdb152, a breast filling the film,
#: confidence 0.09) and right on the other 321, all but one of them (0.02) with
#: confidence >= 0.26. So 0.15 lets the header stand on the unsure films and the
#: image win where it is clear.
SIDE_CONFIDENCE = 0.15

_conflict_warned = threading.Event()


class SideDecision(NamedTuple):
    """What :func:`decide_flip` decided.

    Attributes:
        flip: mirror the image left-right.
        side: chest-wall side of the original image as decided, or None.
        reason: a sentence for logs and ``Geometry.flip_reason``.
        header_side: the chest-wall side the header stated (Patient Orientation,
            else laterality in the standard orientation), or None.
    """

    flip: bool
    side: str | None
    reason: str
    header_side: str | None


def header_chest_wall_side(
    laterality: str | None,
    laterality_source: str | None,
    orientation_side: str | None = None,
    orientation_source: str | None = None,
) -> tuple[str | None, str]:
    """The chest-wall side the header states, and where from.

    Patient Orientation (its row direction) describes the stored pixels and wins;
    otherwise laterality read in the standard DICOM orientation (PS3.3 C.8.11.7:
    a left breast is stored ``A\\R``, chest wall on the left; a right one ``P\\L``).

    Returns:
        (``L``/``R`` or None, a description such as ``Patient Orientation`` or
        ``laterality R (ImageLaterality)``; empty when None).
    """
    if orientation_side in ("L", "R"):
        return orientation_side, f"header {orientation_source or 'PatientOrientation'}"
    lat = (laterality or "").upper()
    if lat in ("L", "R"):
        return lat, f"laterality {lat}" + (f" ({laterality_source})" if laterality_source else "")
    return None, ""


def decide_flip(
    laterality: str | None,
    laterality_source: str | None,
    image_side: Side | None,
    image_confidence: float,
    canonical_side: Side = "L",
    side_source: SideSource = "laterality",
    *,
    orientation_side: str | None = None,
    orientation_source: str | None = None,
) -> SideDecision:
    """Decide the horizontal flip that puts the chest wall on ``canonical_side``.

    With ``side_source="laterality"`` the header states the side
    (:func:`header_chest_wall_side`) and the image confirms it. When the image
    sees the chest wall on the other side with confidence >= :data:`SIDE_CONFIDENCE`
    the image wins (a scan stored mirrored, a laterality tag on a set its
    publisher flipped) and one warning is logged per process (no identifiers;
    later ones at debug level): flipping by a wrong header would put the chest
    wall on the wrong side and the crop and model would see a mirrored breast.
    Without a header side the image decides; with ``side_source="image"`` it
    always does.

    Args:
        laterality, laterality_source: ``ImageMeta.laterality`` and its source.
        image_side, image_confidence: :func:`chest_wall_side` of the breast mask.
        canonical_side: where the chest wall must end up.
        side_source: see :class:`PreprocessConfig`.
        orientation_side, orientation_source: ``ImageMeta.chest_wall_side`` and
            its source (Patient Orientation), or None.

    Returns:
        A :class:`SideDecision`.
    """
    header, header_why = header_chest_wall_side(laterality, laterality_source, orientation_side, orientation_source)
    if side_source == "none":
        return SideDecision(False, None, "flip disabled (side_source=none)", header)
    seen = f"image: chest wall on {image_side} (confidence {image_confidence:.2f})"
    if side_source == "laterality" and header is not None:
        if image_side is None or image_side == header:
            side: str | None = header
            why = header_why + (", confirmed by the image" if image_side == header else "")
        elif image_confidence >= SIDE_CONFIDENCE:
            side = image_side
            why = f"{seen}, overruling {header_why} (chest wall {header})"
            _warn_conflict(header_why, header, image_side, image_confidence)
        else:
            side = header
            why = f"{header_why}; the image weakly suggests {image_side} (confidence {image_confidence:.2f})"
    elif image_side is not None:
        side = image_side
        why = seen + (", header states no side" if side_source == "laterality" else "")
    else:
        return SideDecision(False, None, "no header side and no breast found: not flipped", header)
    flip = side != canonical_side
    return SideDecision(flip, side, f"{'flipped' if flip else 'not flipped'}: {why}", header)


def _warn_conflict(header_why: str, header: str, image_side: str, confidence: float) -> None:
    """Log a header/pixel side disagreement: a warning the first time in a process, then debug."""
    level = logging.DEBUG if _conflict_warned.is_set() else logging.WARNING
    _conflict_warned.set()
    _log.log(
        level,
        "chest-wall side: %s puts the chest wall on %s but the image shows it on %s (confidence %.2f); "
        "following the image%s",
        header_why,
        header,
        image_side,
        confidence,
        "" if level == logging.DEBUG else " (further disagreements are logged at debug level)",
    )


def intensity_window(
    work: np.ndarray, mask: np.ndarray | None, mode: NormaliseMode, percentiles: tuple[float, float]
) -> tuple[float, float]:
    """(low, high) of the normalisation stretch, from the breast pixels.

    Args:
        work: (h, w) float32 in [0, 1].
        mask: (h, w) uint8 breast mask, or None for every pixel.
        mode: ``percentile``, ``minmax`` or ``none`` (gives (0, 1)).
        percentiles: (low, high) percentiles for ``percentile``.

    Returns:
        (low, high) with high > low, in [0, 1] units, quantised to 1/4095.
    """
    if mode == "none":
        return 0.0, 1.0
    q = np.rint(np.clip(work, 0.0, 1.0) * (_HIST_BINS - 1)).astype(np.uint16)
    # The selected values counted by np.bincount: ~0.45 ms instead of ~0.9 for cv2.calcHist with a
    # mask (16-bit input, 4096 bins) at the working size. float32 counts, as calcHist gave.
    selected = q.ravel() if mask is None else q[np.asarray(mask) != 0]
    hist = np.bincount(selected, minlength=_HIST_BINS)[:_HIST_BINS].astype(np.float32)
    total = float(hist.sum())
    if total == 0:
        return 0.0, 1.0
    cdf = np.cumsum(hist) / total
    if mode == "minmax":
        nz = np.flatnonzero(hist)
        lo_i, hi_i = int(nz[0]), int(nz[-1])
    else:
        lo_i = int(np.searchsorted(cdf, percentiles[0] / 100.0, side="left"))
        hi_i = int(np.searchsorted(cdf, percentiles[1] / 100.0, side="left"))
        hi_i = min(hi_i, _HIST_BINS - 1)
    lo, hi = lo_i / (_HIST_BINS - 1), hi_i / (_HIST_BINS - 1)
    if hi <= lo:
        hi = min(1.0, lo + 1.0 / (_HIST_BINS - 1))
        lo = hi - 1.0 / (_HIST_BINS - 1)
    return lo, hi


def normalise(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Linear stretch of [low, high] onto [0, 1], clipped. (H, W) float32 in, float32 out."""
    scale = np.float32(1.0 / (high - low))
    out = (image - np.float32(low)) * scale
    return np.clip(out, 0.0, 1.0, out=out)


def crop_box(
    bbox_work: tuple[int, int, int, int],
    work_scale: tuple[float, float],
    original_shape: tuple[int, int],
    *,
    margin_work: int,
    frame: tuple[int, int, int, int],
) -> tuple[int, int, int, int]:
    """The breast bounding box (working pixels) grown by a margin, in original pixels.

    Args:
        bbox_work: (top, left, bottom, right) in working pixels, exclusive ends.
        work_scale: (row, col) working pixels per original pixel.
        original_shape: (H, W).
        margin_work: margin in working pixels.
        frame: (top, left, bottom, right) discarded frame in original pixels, per
            side; the box stays inside it. 0 on the sides the breast reaches
            (:attr:`BreastMask.edges`), so the chest wall is never cropped.

    Returns:
        (top, left, bottom, right) integer original pixel coordinates, exclusive
        ends, never empty.
    """
    h, w = original_shape
    ky, kx = work_scale
    ft, fl, fb, fr = frame
    t, l_, b, r = bbox_work
    top = max(ft, math.floor((t - margin_work) / ky))
    left = max(fl, math.floor((l_ - margin_work) / kx))
    bottom = min(h - fb, math.ceil((b + margin_work) / ky))
    right = min(w - fr, math.ceil((r + margin_work) / kx))
    if bottom <= top:
        top, bottom = ft, h - fb
    if right <= left:
        left, right = fl, w - fr
    return top, left, bottom, right


def square_layout(
    crop_h: int, crop_w: int, size: int, chest_side: Side = "L", row_scale: float = 1.0
) -> tuple[int, int, int, int]:
    """Where a crop lands on the square model grid: scaled, never stretched (unless ``row_scale`` says so).

    The long side becomes ``size``; the short side keeps the aspect ratio
    (rounded). Horizontal padding goes opposite the chest wall, so the chest wall
    stays on the image edge; vertical padding is split evenly. ``row_scale``: the
    crop's rows count ``row_scale`` times a column (:attr:`PreprocessConfig.square_image`).

    Returns:
        (top, left, height, width) of the content region.
    """
    s = size / max(crop_h * row_scale, crop_w)
    ch = min(size, max(1, round(crop_h * row_scale * s)))
    cw = min(size, max(1, round(crop_w * s)))
    top = (size - ch) // 2
    left = 0 if chest_side == "L" else size - cw
    return top, left, ch, cw


def apply_clahe(image: np.ndarray, clip: float, tiles: int) -> np.ndarray:
    """CLAHE on the 8-bit version of a [0, 1] image; float32 [0, 1] out (256 levels).

    8 bits, not 16: OpenCV's 16-bit CLAHE uses 65536 bins per tile, so on a
    model-sized tile its clip limit collapses to one count per bin and it
    degenerates into plain histogram equalisation.

    Args:
        image: (H, W) float32 in [0, 1].
        clip: clip limit.
        tiles: tile grid side.
    """
    import cv2

    u8 = cv2.convertScaleAbs(image, alpha=255.0)
    out = cv2.createCLAHE(clipLimit=clip, tileGridSize=(tiles, tiles)).apply(u8)
    return out.astype(np.float32) * np.float32(1.0 / 255.0)


def merge_masks(masks: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Union of lesion masks on one image grid.

    Args:
        masks: (H, W) arrays of any numeric/bool dtype; nonzero is lesion.
        shape: (H, W) of the image; the result's shape even when ``masks`` is empty.

    Returns:
        (H, W) uint8 in {0, 1}.

    Raises:
        InputError: a mask's shape differs from ``shape``.
    """
    out = np.zeros(tuple(shape), np.uint8)
    for i, m in enumerate(masks):
        arr = np.asarray(m)
        if arr.shape != out.shape:
            raise InputError(f"mask {i} has shape {arr.shape}; expected {out.shape} (the image's)")
        out |= arr != 0
    return out


# --------------------------------------------------------------------------- pipeline


def _content_mask(
    work_mask: np.ndarray, work_scale: tuple[float, float], crop: tuple[int, int, int, int], hw: tuple[int, int]
) -> np.ndarray:
    """The working-grid breast mask resampled onto the (unflipped) content grid, uint8 {0, 1}."""
    import cv2

    top, left, bottom, right = crop
    ch, cw = hw
    ky, kx = work_scale
    sr, sc = ch / (bottom - top), cw / (right - left)
    # content pixel centre i -> original (i + 0.5) / s + o0 - 0.5 -> working (orig + 0.5) * k - 0.5
    m = np.array(
        [[kx / sc, 0.0, (left + 0.5 / sc) * kx - 0.5], [0.0, ky / sr, (top + 0.5 / sr) * ky - 0.5]], np.float64
    )
    warped = cv2.warpAffine(
        work_mask * np.uint8(255),
        m,
        (cw, ch),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    return (warped >= 128).astype(np.uint8)


def preprocess(mammo: Mammogram | np.ndarray, config: PreprocessConfig | None = None) -> tuple[np.ndarray, Geometry]:
    """Turn a mammogram into the model's input tensor.

    ``config.version`` picks the algorithm (:data:`PREPROCESS_VERSIONS`); both run the same
    analysis and geometry on a working image and differ only in how the full-resolution
    image becomes the two small images:

    * version 1: the displayed float image (:attr:`~bcedge.dicom.Mammogram.pixels`, the
      display LUT applied to every stored pixel) is resampled with ``INTER_AREA``, once to
      the working image and once from the crop box to the model grid;
    * version 2 (:func:`_small_images_v2`): the *stored* values are resampled (2x2 area
      halvings while the image stays at least as large as the target, then one
      ``INTER_AREA`` resize of the small result in float32) and the display LUT is applied
      to the small images by linear interpolation between table entries. The crop box is
      grown by at most ``k - 1`` pixels a side so its edges fall on the halvings' ``k`` x
      ``k`` blocks. No full-size float image is made: a 2944x1920 scan costs one ~3 ms pass
      over its stored values instead of a ~14 ms table lookup and two ~14 ms float resizes.
      The order changes the small image slightly where the display curve bends (an average
      of displayed values vs the displayed average): within 0.005 of gate Dice on the
      shipped bundles (``benchmarks/results/preprocess_v2_gate.json``).

    Args:
        mammo: a :class:`~bcedge.dicom.Mammogram` (pixels (H, W) float32 in [0, 1],
            dense tissue bright; ``meta.laterality`` drives the flip), or a bare
            (H, W) array (float in [0, 1], uint8 or uint16; laterality unknown).
        config: the preprocessing; defaults to ``PreprocessConfig()``.

    Returns:
        (tensor, geometry): tensor is (1, size, size, 1) float32 NHWC in [0, 1],
        chest wall on ``config.canonical_side``, zero outside the breast (with
        ``remove_artefacts``) and in the padding; geometry maps it back.

    Raises:
        InputError: the pixels are not a non-empty 2-D greyscale image.
    """
    import cv2

    config = PreprocessConfig() if config is None else config
    if isinstance(mammo, Mammogram):
        meta = mammo.meta
        laterality, lat_source = meta.laterality, meta.laterality_source
        orient_side, orient_source = meta.chest_wall_side, meta.chest_wall_source
    else:
        laterality, lat_source, orient_side, orient_source = None, None, None, None
    source: _StoredSource | None = None
    halved = 0
    if config.version == 1:
        # Made for this call and not kept on the Mammogram (which keeps its stored values).
        pixels = as_float01(mammo.pixels_once() if isinstance(mammo, Mammogram) else mammo)
        shape = (int(pixels.shape[0]), int(pixels.shape[1]))
        work, work_scale = to_work(pixels, config.work_size)
    else:
        source = _StoredSource.of(mammo)
        shape = source.shape
        work, work_scale = source.work_image(config.work_size)

    # 1. Analysis at working resolution: breast, side, intensity window.
    found = breast_mask(
        work, border_crop=config.border_crop, threshold_scale=config.threshold_scale, open_size=config.open_size
    )
    image_side, confidence = chest_wall_side(found.mask) if found.found else (None, 0.0)
    flip, chest_side, reason, header_side = decide_flip(
        laterality,
        lat_source,
        image_side,
        confidence,
        config.canonical_side,
        config.side_source,
        orientation_side=orient_side,
        orientation_source=orient_source,
    )
    low, high = intensity_window(work, found.mask if found.found else None, config.normalise, config.percentiles)

    # 2. Geometry: crop box in original pixels, square layout on the model grid.
    margin = round(config.crop_margin * max(work.shape))
    fy, fx = frame_margins(shape, config.border_crop)
    # No frame is discarded on a side the breast runs into (the chest wall, a large breast's top/bottom).
    frame = tuple(0 if reached else f for reached, f in zip(found.edges, (fy, fx, fy, fx), strict=True))
    crop = crop_box(found.bbox, work_scale, shape, margin_work=margin, frame=frame)  # type: ignore[arg-type]
    # As if the image had been resized to a square first (a model trained on such files): rows count W / H.
    row_scale = shape[1] / shape[0] if config.square_image else 1.0
    if source is not None:
        # Version 2 resamples whole k x k blocks of stored values: the crop grows onto their edges.
        layout0 = square_layout(crop[2] - crop[0], crop[3] - crop[1], config.size, config.canonical_side, row_scale)
        crop, halved = source.snap_crop(crop, (layout0[2], layout0[3]))
    top, left, bottom, right = crop
    layout = square_layout(bottom - top, right - left, config.size, config.canonical_side, row_scale)
    ct, cl, ch, cw = layout
    geometry = Geometry(
        original_shape=shape,
        crop=crop,
        flipped=flip,
        content=layout,
        size=config.size,
        flip_reason=reason,
        chest_wall_side=chest_side,
        image_side=image_side,
        header_side=header_side,
        breast_found=found.found,
        intensity_window=(low, high),
    )

    # 3. The tensor: one INTER_AREA pass from the cropped original, then small-image work.
    if source is None:
        content = cv2.resize(pixels[top:bottom, left:right], (cw, ch), interpolation=cv2.INTER_AREA)
    else:
        content = source.content_image(crop, halved, (ch, cw))
    content = normalise(content, low, high)
    if config.remove_artefacts and found.found:
        content *= _content_mask(found.mask, work_scale, crop, (ch, cw))
    if flip:
        content = cv2.flip(content, 1)
    image = np.zeros((config.size, config.size), np.float32)
    image[ct : ct + ch, cl : cl + cw] = content
    if config.clahe:
        black = image == 0.0
        image = apply_clahe(image, config.clahe_clip, config.clahe_tiles)
        # CLAHE lifts flat black tiles a few levels; what was black (background, removed
        # artefacts, padding, the darkest percentile) stays exactly 0.
        image[black] = 0.0
    return image[None, :, :, None], geometry


def halvings(shape: tuple[int, int], target: tuple[int, int], *, exact: bool = True) -> int:
    """How many 2x2 area halvings version 2 applies before its final resize.

    The largest ``j`` with ``shape / 2**j`` still at least ``target`` on both axes (so the final
    ``INTER_AREA`` resize only shrinks) and, when ``exact``, both sides of ``shape`` divisible
    by ``2**j`` (every halving averages whole 2x2 blocks).

    Args:
        shape: (H, W) of the full-resolution region.
        target: (h, w) it is resampled to.
        exact: require divisibility.
    """
    (h, w), (th, tw) = shape, target
    j = 0
    while h >= 2 * th * (1 << j) and w >= 2 * tw * (1 << j):
        k = 2 << j
        if exact and (h % k or w % k):
            break
        j += 1
    return j


def _halve(values: np.ndarray, times: int) -> np.ndarray:
    """``times`` 2x2 area halvings (OpenCV's exact integer-factor path, rounded to the dtype).

    Sides must be divisible by ``2**times``. Repeated 2x2 beats one k x k block average (2.5 vs
    4.4 ms for k = 4 on a 2944x1920 uint16 image at one thread): OpenCV vectorises the 2x2 case.
    """
    import cv2

    for _ in range(times):
        h, w = values.shape
        values = cv2.resize(values, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    return values


def _grow(lo: int, hi: int, n: int, k: int) -> tuple[int, int, bool] | None:
    """``[lo, hi)`` grown to a length divisible by ``k`` inside ``[0, n)``.

    Returns:
        (lo, hi, aligned): on the image's own ``k`` grid (``aligned``) when that fits, else
        shifted inward from the image edge; None when ``n < k``-rounded length.
    """
    a, b = lo // k * k, -(-hi // k) * k
    if b <= n:
        return a, b, True
    length = -(-(hi - lo) // k) * k
    if length > n:
        return None
    a = min(lo, n - length)
    return a, a + length, False


class _StoredSource:
    """What version 2 resamples: the integer stored values and the display table, or a float image.

    Keeps the whole image's halvings (a small pyramid) so the crop's content image reuses the
    blocks the working image already averaged when the crop box sits on the same grid.

    Attributes:
        values: (H, W) stored integers of 9-16 bits (uint16, int16), or float32 display values.
        stored: the :class:`~bcedge.dicom.StoredImage` with the table for integer ``values``;
            None when ``values`` are display values already.
    """

    def __init__(self, values: np.ndarray, stored: Any) -> None:
        self.values = values
        self.stored = stored
        self._levels: list[np.ndarray] = [values]  # _levels[j]: the whole image halved j times

    @classmethod
    def of(cls, mammo: Mammogram | np.ndarray) -> _StoredSource:
        """The source of a Mammogram (its stored values when it has them) or a bare array.

        Raises:
            InputError: not a non-empty 2-D array of a supported dtype.
        """
        from bcedge.dicom import StoredImage

        # 8-bit values are resampled as displayed floats: a 2x2 average rounded back to 8 bits
        # would lose 2 of them (enough to move a percentile window and flip a borderline lesion
        # on mini-MIAS), and an 8-bit image's float copy is what the reader always paid.
        if isinstance(mammo, Mammogram):
            if mammo.stored is not None and mammo.stored.values.dtype.itemsize > 1:
                return cls(mammo.stored.values, mammo.stored)
            return cls(as_float01(mammo.pixels), None)
        arr = np.asarray(mammo)
        if arr.ndim == 2 and arr.size and arr.dtype == np.uint16:
            # as_float01's scaling, as a table: uint16 / 65535.
            table = np.arange(65536, dtype=np.float32) * np.float32(1.0 / 65535.0)
            return cls(arr, StoredImage(arr, table, 0))
        return cls(as_float01(arr), None)

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W)."""
        return int(self.values.shape[0]), int(self.values.shape[1])

    def _level(self, j: int) -> np.ndarray:
        """The whole image halved ``j`` times (its sides must be divisible by ``2**j``)."""
        while len(self._levels) <= j:
            self._levels.append(_halve(self._levels[-1], 1))
        return self._levels[j]

    def _finish(self, small: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
        """The halved region to ``out_hw`` (one INTER_AREA resize), displayed: float32 [0, 1]."""
        import cv2

        out_h, out_w = out_hw
        if small.size <= 4 * out_h * out_w or self.stored is None:
            # Small already (or float): the last resize in float32, no rounding to integers.
            small = small.astype(np.float32, copy=False)
        # else: a large image with no factor of 2 to halve by: resize the integers (rounding to
        # them) rather than make a full-size float copy.
        if small.shape != (out_h, out_w):
            small = cv2.resize(small, (out_w, out_h), interpolation=cv2.INTER_AREA)
        if self.stored is None:
            return small.astype(np.float32, copy=False)
        return self.stored.display_values(small)

    def work_image(self, work_size: int) -> tuple[np.ndarray, tuple[float, float]]:
        """Version 2's :func:`to_work`: the same size and scale, from the stored values.

        Returns:
            (work image (h, w) float32 in [0, 1], (h / H, w / W)).
        """
        h, w = self.shape
        long_side = max(h, w)
        if long_side <= work_size:
            return self._finish(self.values, (h, w)), (1.0, 1.0)
        k = work_size / long_side
        wh, ww = max(1, round(h * k)), max(1, round(w * k))
        return self._finish(self._level(halvings((h, w), (wh, ww))), (wh, ww)), (wh / h, ww / w)

    def snap_crop(
        self, crop: tuple[int, int, int, int], content_hw: tuple[int, int]
    ) -> tuple[tuple[int, int, int, int], int]:
        """The crop box grown (by less than ``2**j`` pixels a side) onto the blocks ``j`` halvings average.

        ``j`` is the most halvings that leave the box at least the content size; the box goes
        onto the image's own ``2**j`` grid when that fits (its halvings are then the working
        image's), else it is only grown to a multiple of ``2**j``; fewer halvings are tried when
        neither fits.

        Returns:
            ((top, left, bottom, right) containing ``crop`` inside the image, j).
        """
        top, left, bottom, right = crop
        h, w = self.shape
        j = halvings((bottom - top, right - left), content_hw, exact=False)
        while j > 0:
            k = 1 << j
            rows, cols = _grow(top, bottom, h, k), _grow(left, right, w, k)
            if rows is not None and cols is not None:
                return (rows[0], cols[0], rows[1], cols[1]), j
            j -= 1
        return crop, 0

    def content_image(self, crop: tuple[int, int, int, int], j: int, content_hw: tuple[int, int]) -> np.ndarray:
        """The crop box (from :meth:`snap_crop`, sides divisible by ``2**j``) halved and resized to
        the content size, displayed: (ch, cw) float32 in [0, 1].

        Halvings that would take the box below the content size (the layout of the grown box can
        be a pixel larger) are skipped. The result does not depend on whether the whole image's
        halvings are reused: on the image's grid they average the same blocks.
        """
        top, left, bottom, right = crop
        ch, cw = content_hw
        while j > 0 and ((bottom - top) >> j < ch or (right - left) >> j < cw):
            j -= 1
        k = 1 << j
        h, w = self.shape
        if j and not (top % k or left % k or h % k or w % k):
            region = self._level(j)[top // k : bottom // k, left // k : right // k]
        else:
            region = _halve(self.values[top:bottom, left:right], j)
        return self._finish(region, content_hw)


def preprocess_mask(mask: np.ndarray, geometry: Geometry) -> np.ndarray:
    """A lesion mask on the original grid, carried to the model grid like its image.

    Args:
        mask: (H, W) of ``geometry.original_shape``; nonzero is lesion.
        geometry: what :func:`preprocess` returned for the image.

    Returns:
        (size, size) uint8 in {0, 1}.
    """
    return geometry.mask_to_model(mask)
