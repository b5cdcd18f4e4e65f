"""From the model's probability map to a mask on the original grid and a list of findings.

Steps (DESIGN.md, data flow): threshold, connected components (OpenCV, 8-connected),
drop components under a minimum area (mm² when the scan has a pixel spacing), map
back onto the original pixel grid through :class:`~bcedge.preprocess.Geometry`.

The mask is defined as :meth:`Geometry.to_original` with ``linear`` interpolation of
the probability map, thresholded (``>= threshold``), with components smaller than the
minimum area removed. :func:`postprocess` computes exactly that without ever building
a full-resolution float image: a full-field scan is 3328x2560 (8.5 Mpx), and the
probability map only needs interpolating where it can reach the threshold.

Why the shortcut is exact: bilinear interpolation inside one model-grid cell is a
convex combination of the cell's four corners, so an original pixel can only be
foreground when one of the (at most four) model pixels it interpolates from is. The
foreground therefore lies inside the model-grid foreground components grown by one
model pixel. Those regions are mapped onto the original grid (a few hundred pixels
across for a lesion), merged where they touch, interpolated there with the same
formula ``cv2.resize`` uses (``src = (dst + 0.5) * scale - 0.5``, edge pixels
replicated), thresholded and labelled at full resolution. Components, areas,
centroids and probabilities are those of the full-resolution mask.

More shortcuts, all exact. A component whose cells hold fewer original pixels than the minimum
area is dropped before any full-resolution work (bounds from its model-grid area and box settle
most components; the rest are counted on the model grid). Where boxes overlap, the model-grid
labels are gathered over the overlaps only (a component's pixels lie inside its own box). A box
is thresholded and measured in strips of rows that stay in cache: values under the threshold are
zeroed (``THRESH_TOZERO`` at the largest float32 below the threshold keeps exactly the values
``>=`` it), and so are other components' pixels in the overlaps; the component's own values,
all >= threshold > 0, are then the only nonzero ones, so an unmasked sum (in double) and maximum
give its mean and peak. On the 2944x1920 benchmark scan (3 components, 1.5 M mask pixels) this
took the function from ~17.6 to ~10.7 ms of CPU at one OpenCV thread, and on 512-px CDD-CESM
scans with a few small lesions from ~4.7-5.7 to ~2.0-2.7 ms (medians, interleaved A/B, measured
under load on the 2-core AMD EPYC, AVX/AVX2/FMA/F16C, no AVX-512/VNNI), with outputs identical
on 343 cases (phantom and real scans at four thresholds, 300 random fields; masks and findings
equal, means to 1e-9). ``tests/test_postprocess_real.py`` checks real scans against the definition.

Why one module: every shortcut above is exact only against the one definition of the mask (linear
interpolation of the model grid, threshold, components, minimum area) and shares its taps, labels and
boxes; split up, each part would need the others' private arrays and the proof of exactness would
span files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from bcedge.errors import ConfigError, InputError
from bcedge.preprocess import Geometry, label_type

#: Components smaller than this (mm²) are dropped when the scan has a pixel spacing. 4 mm² is a
#: disc of ~2.3 mm: below the smallest mass a 256-px model resolves (a model pixel is ~0.8 mm² on
#: a full-field scan) and well below the 5 mm masses the study reports.
DEFAULT_MIN_AREA_MM2 = 4.0
#: Without a pixel spacing (PNG input, no spacing tag) the minimum area is this many pixels of a
#: 256-px model grid (~4 mm² on a full-field scan), the same share of the grid at other sizes
#: (:func:`default_min_area_model_px`), converted to original pixels: resolution-independent.
DEFAULT_MIN_AREA_MODEL_PX = 5.0
#: The grid size DEFAULT_MIN_AREA_MODEL_PX is stated for.
_MIN_AREA_GRID = 256
#: When the components' boxes cover more than this fraction of the crop box, the whole crop is
#: interpolated at once with ``cv2.resize`` (~0.4 ns per output pixel) instead of box by box.
_WHOLE_CROP_FRACTION = 0.2
#: With more components than this (an untrained or confused model), also interpolate the whole crop.
_MANY_COMPONENTS = 256
#: The fixed cost of resolving one overlap of two boxes separately (a few NumPy and OpenCV calls, per strip
#: it spans), in pixels' worth of work: past the box's area, its labels are gathered all at once.
_PART_COST_PX = 16384
#: Up to this many box pairs, overlaps are found in plain Python rather than with NumPy.
_PYTHON_OVERLAPS = 2048
#: Up to this many components whose reach the model-grid bounds leave open are summed one by one over
#: their boxes; with more, one weighted count over the whole grid is cheaper.
_MAX_EXACT_REACH = 32
#: A 2x2 structuring element: anchored at its top-left, a dilation takes the maximum over cell (i, j)'s corners.
_CELL_KERNEL = np.ones((2, 2), np.uint8)
#: A box is thresholded and summed in strips of about this many pixels (1 MiB of float32: in L2/L3), so
#: its probabilities are read from memory once rather than once per pass.
_STRIP_PX = 1 << 18


@dataclass(frozen=True)
class Finding:
    """One connected component of the predicted mask, on the original pixel grid.

    Attributes:
        label: 1..n, ordered by ``max_probability``, descending.
        bbox_px: (row0, col0, row1, col1) in original pixels, row1/col1 exclusive.
        centroid_px: (row, col) centre of mass in original pixel-centre coordinates.
        area_px: number of mask pixels.
        area_mm2: area in mm² (pixel count x row spacing x column spacing), None without spacing.
        bbox_mm: (height_mm, width_mm) of the bounding box, None without spacing.
        max_probability: highest interpolated probability inside the component, in [0, 1].
        mean_probability: mean interpolated probability over the component's pixels, in [0, 1].
    """

    label: int
    bbox_px: tuple[int, int, int, int]
    centroid_px: tuple[float, float]
    area_px: int
    area_mm2: float | None
    bbox_mm: tuple[float, float] | None
    max_probability: float
    mean_probability: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; floats rounded (mm to 0.01, probabilities to 1e-4, centroid to 0.1 px)."""
        return {
            "label": self.label,
            "bbox_px": list(self.bbox_px),
            "centroid_px": [round(self.centroid_px[0], 1), round(self.centroid_px[1], 1)],
            "area_px": self.area_px,
            "area_mm2": None if self.area_mm2 is None else round(self.area_mm2, 2),
            "bbox_mm": None if self.bbox_mm is None else [round(self.bbox_mm[0], 2), round(self.bbox_mm[1], 2)],
            "max_probability": round(self.max_probability, 4),
            "mean_probability": round(self.mean_probability, 4),
        }


def check_threshold(threshold: object) -> float:
    """``threshold`` as a float in (0, 1); ConfigError otherwise."""
    ok = isinstance(threshold, (int, float, np.floating)) and not isinstance(threshold, bool)
    if not ok or not math.isfinite(float(threshold)) or not 0.0 < float(threshold) < 1.0:  # type: ignore[arg-type]
        raise ConfigError(f"threshold is {threshold!r}; expected a probability strictly between 0 and 1")
    return float(threshold)  # type: ignore[arg-type]


def check_min_area(value: object, unit: str) -> float:
    """``value`` as a float >= 0; ConfigError otherwise."""
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)) or float(value) < 0.0:  # type: ignore[arg-type]
        raise ConfigError(f"minimum area is {value!r}; expected a number of {unit} >= 0")
    return float(value)  # type: ignore[arg-type]


def default_min_area_model_px(size: int) -> float:
    """The default minimum component area without a pixel spacing, in pixels of a ``size`` grid.

    :data:`DEFAULT_MIN_AREA_MODEL_PX` at 256 px, scaled with the grid's area, so a 512-px
    model drops the same physical size (20 of its pixels, ~4 mm² on a full-field scan) as a
    256-px one, as the millimetre rule does for scans with a spacing. On validation the 512-px
    mass model's false components per CDD-CESM view fell from 1.33 to 0.78 with Dice unchanged
    (``benchmarks/results/ablation_v2.md``, post-processing table, 5 vs 20 model px).
    """
    return DEFAULT_MIN_AREA_MODEL_PX * (size / _MIN_AREA_GRID) ** 2


def min_area_pixels(
    geometry: Geometry,
    spacing_mm: tuple[float, float] | None,
    min_area_mm2: float = DEFAULT_MIN_AREA_MM2,
    min_area_px: float | None = None,
) -> float:
    """The minimum component area in original pixels.

    With a spacing: ``min_area_mm2 / (row spacing x column spacing)``. Without one:
    ``min_area_px`` when given, else :func:`default_min_area_model_px` model pixels
    converted to original pixels (a model pixel covers ``1 / (scale_row x scale_col)``).
    """
    if spacing_mm is not None:
        return check_min_area(min_area_mm2, "mm²") / (float(spacing_mm[0]) * float(spacing_mm[1]))
    if min_area_px is not None:
        return check_min_area(min_area_px, "pixels")
    sr, sc = geometry.scale
    return default_min_area_model_px(geometry.size) / (sr * sc)


def _check_spacing(spacing_mm: object) -> tuple[float, float] | None:
    if spacing_mm is None:
        return None
    try:
        sy, sx = (float(v) for v in spacing_mm)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise InputError(f"pixel spacing is {spacing_mm!r}; expected (row mm, column mm) or None") from None
    if not (math.isfinite(sy) and math.isfinite(sx) and sy > 0 and sx > 0):
        raise InputError(f"pixel spacing is {spacing_mm!r}; expected two positive numbers of mm")
    return sy, sx


#: (i0, i1, f) interpolation taps along one axis, as :func:`_axis_weights` returns them.
_Taps = tuple[np.ndarray, np.ndarray, np.ndarray]


def _axis_weights(n_out: int, n_in: int, start: int, stop: int) -> _Taps:
    """``cv2.resize`` INTER_LINEAR taps for output pixels ``start..stop-1`` of an ``n_in -> n_out`` axis.

    Returns:
        (i0, i1, f): int arrays of the two source indices and float32 weights of ``i1``,
        so ``out = in[i0] * (1 - f) + in[i1] * f``; outside the source, the edge is
        replicated (weight 0), as OpenCV does.
    """
    scale = n_in / n_out
    pos = (np.arange(start, stop, dtype=np.float64) + 0.5) * scale - 0.5
    i0 = np.floor(pos)
    f = pos - i0
    i0 = i0.astype(np.intp)
    low = i0 < 0
    high = i0 >= n_in - 1
    i0[low] = 0
    f[low] = 0.0
    i0[high] = n_in - 1
    f[high] = 0.0
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, f.astype(np.float32)


def interpolate_box(content: np.ndarray, out_shape: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """The part ``box`` of ``cv2.resize(content, out_shape[::-1], INTER_LINEAR)``, computed alone.

    Args:
        content: (h, w) float32 source (the unflipped content region of the model grid).
        out_shape: (H, W) of the full resized image (the crop box).
        box: (row0, col0, row1, col1) of the wanted part, exclusive ends, inside ``out_shape``.

    Returns:
        (row1 - row0, col1 - col0) float32, equal to the full resize's values there up to
        float32 rounding.
    """
    r0, c0, r1, c1 = box
    h, w = content.shape
    return _interpolate(content, _axis_weights(out_shape[0], h, r0, r1), _axis_weights(out_shape[1], w, c0, c1))


def _slice(taps: _Taps, start: int, stop: int) -> _Taps:
    """The taps of positions ``start..stop-1`` out of an axis' taps."""
    return taps[0][start:stop], taps[1][start:stop], taps[2][start:stop]


def _interpolate(content: np.ndarray, taps_y: _Taps, taps_x: _Taps) -> np.ndarray:
    """:func:`interpolate_box` from the :func:`_axis_weights` of the box's rows and columns."""
    y0, y1, fy = taps_y
    x0, x1, fx = taps_x
    # Horizontal pass first, on the source rows the box spans only (as OpenCV does; taps increase).
    ya = int(y0[0])
    src = content[ya : int(y1[-1]) + 1]
    horizontal = src[:, x0] * (1.0 - fx) + src[:, x1] * fx
    fyc = fy[:, None]
    out = horizontal[y0 - ya] * (1.0 - fyc) + horizontal[y1 - ya] * fyc
    return out.astype(np.float32, copy=False)


def cell_labels(labels: np.ndarray) -> np.ndarray:
    """Component label of each interpolation cell of a model-grid label map.

    Cell ``(i, j)`` spans model pixels ``i..i+1`` x ``j..j+1`` (clamped at the last row and
    column, as the edge is replicated). Its four corners are mutually 8-adjacent, so their
    nonzero labels are all the same component: the cell's label is their maximum.

    Args:
        labels: (h, w) uint16 or int32 labels, 0 = background.

    Returns:
        (h, w), ``labels``' dtype: the label an interpolated pixel in that cell belongs to (0: none).
    """
    if labels.dtype == np.uint16:
        import cv2

        # OpenCV's morphology takes 16-bit but not 32-bit integers; replicating the border clamps as below.
        return cv2.dilate(labels, _CELL_KERNEL, anchor=(0, 0), borderType=cv2.BORDER_REPLICATE)
    padded = np.pad(labels, ((0, 1), (0, 1)), mode="edge")
    out = np.maximum(padded[:-1, :-1], padded[1:, :-1])
    np.maximum(out, padded[:-1, 1:], out=out)
    np.maximum(out, padded[1:, 1:], out=out)
    return out


def postprocess(
    probability: np.ndarray,
    geometry: Geometry,
    *,
    threshold: float,
    min_area_mm2: float = DEFAULT_MIN_AREA_MM2,
    spacing_mm: tuple[float, float] | None = None,
    min_area_px: float | None = None,
) -> tuple[np.ndarray, list[Finding]]:
    """Threshold a probability map, keep the components large enough, return them on the original grid.

    Components are found on the model grid (8-connected pixels ``>= threshold``): the model's
    own resolution, and cheap. Each component is carried to the original grid as the
    pixels of ``Geometry.to_original(probability, interpolation="linear") >= threshold``
    that interpolate from it, and measured there: its area (px, mm²), bounding box,
    centroid and probabilities are those of its full-resolution pixels. A component whose
    full-resolution area is under the minimum is dropped.

    Args:
        probability: (S, S) or (S, S, 1) float32/float64 in [0, 1] on the model grid
            (``geometry.size``), as the backend returned it for one image.
        geometry: what :func:`bcedge.preprocess.preprocess` returned for the image.
        threshold: probability at or above which a pixel is foreground, in (0, 1).
        min_area_mm2: components with a smaller area (mm²) are dropped; used when
            ``spacing_mm`` is known. 0 keeps everything.
        spacing_mm: (row, column) pixel spacing in mm of the original image, or None.
        min_area_px: minimum area in original pixels when ``spacing_mm`` is None
            (default: :func:`default_min_area_model_px` model pixels' worth).

    Returns:
        (mask, findings): mask is (H, W) uint8 in {0, 1} on ``geometry.original_shape``
        (zero outside the crop box); findings are the kept components, labelled 1..n by
        descending maximum probability.

    Raises:
        InputError: the probability map's shape or dtype does not fit ``geometry``, or
            the spacing is not two positive numbers.
        ConfigError: threshold outside (0, 1) or a negative minimum area.
    """
    import cv2

    t = check_threshold(threshold)
    spacing = _check_spacing(spacing_mm)
    prob = np.asarray(probability)
    if prob.ndim == 3 and prob.shape[2] == 1:
        prob = prob[:, :, 0]
    if prob.shape != (geometry.size, geometry.size):
        raise InputError(
            f"probability map has shape {np.asarray(probability).shape}; expected the model grid "
            f"({geometry.size}, {geometry.size})"
        )
    if prob.dtype not in (np.float32, np.float64):
        raise InputError(f"probability map dtype is {prob.dtype}; expected float32 probabilities in [0, 1]")
    min_px = min_area_pixels(geometry, spacing, min_area_mm2, min_area_px)
    t32 = np.float32(t)

    h, w = geometry.original_shape
    mask = np.zeros((h, w), np.uint8)  # calloc: pages never written cost nothing
    ct, cl, ch, cw = geometry.content
    top, left, bottom, right = geometry.crop
    content = prob[ct : ct + ch, cl : cl + cw].astype(np.float32, copy=False)
    if geometry.flipped:
        # OpenCV takes a row stride, not a negative column stride; unflipped, the view needs no copy.
        content = cv2.flip(content, 1)
    fg = (content >= t32).view(np.uint8)
    if not fg.any():
        return mask, []

    crop_h, crop_w = bottom - top, right - left
    ky, kx = crop_h / ch, crop_w / cw
    # 16-bit labels when they cannot overflow (label_type): labelling is then faster and cell_labels one
    # OpenCV dilation.
    _, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8, ltype=label_type((ch, cw)))
    boxes: list[tuple[int, int, int, int]] = []
    for x, y, bw, bh in stats[1:, :4].tolist():
        # Original pixels interpolating from a model row in [y - 1, y + bh] (one model pixel of reach:
        # an interpolated value needs a foreground corner), plus one pixel of slack against rounding.
        # Crop coordinates, exclusive ends.
        boxes.append(
            (
                max(0, math.floor((y - 0.5) * ky - 0.5) - 1),
                max(0, math.floor((x - 0.5) * kx - 0.5) - 1),
                min(crop_h, math.ceil((y + bh + 0.5) * ky - 0.5) + 2),
                min(crop_w, math.ceil((x + bw + 0.5) * kx - 0.5) + 2),
            )
        )
    cells = cell_labels(labels)
    # The interpolation taps of every crop row and column, for all boxes at once (elementwise, so a box's are
    # a slice); the first tap is the model cell a pixel lies in.
    taps_row = _axis_weights(crop_h, ch, 0, crop_h)
    taps_col = _axis_weights(crop_w, cw, 0, crop_w)
    cell_row, cell_col = taps_row[0], taps_col[0]
    # A component's area is at most the number of original pixels in its cells. Under the minimum, it is
    # dropped without full-resolution work (a model's small false positives, often inside a large
    # component's box, cost nothing).
    small = _unreachable(cells, stats, np.bincount(cell_row, minlength=ch), np.bincount(cell_col, minlength=cw), min_px)
    kept = np.flatnonzero(~small[1:]).tolist()  # indices into boxes (label - 1)
    covered = sum((boxes[i][2] - boxes[i][0]) * (boxes[i][3] - boxes[i][1]) for i in kept)
    whole = None
    if covered > _WHOLE_CROP_FRACTION * crop_h * crop_w or len(boxes) > _MANY_COMPONENTS:
        # Large or many components: one cv2.resize of the whole crop beats many NumPy gathers.
        whole = cv2.resize(content, (crop_w, crop_h), interpolation=cv2.INTER_LINEAR)
    overlaps = _overlaps(boxes, kept)
    # THRESH_TOZERO keeps values ``> thresh``: at the largest float32 below t32 it keeps exactly those >= t32.
    below_t = float(np.nextafter(t32, np.float32(-np.inf)))
    found: list[tuple[float, int, tuple[int, int, int, int], tuple[float, float], float]] = []
    for i in kept:
        k, box = i + 1, boxes[i]
        r0, c0, r1, c1 = box
        if whole is not None:
            sub = whole[r0:r1, c0:c1]
        else:
            sub = _interpolate(content, _slice(taps_row, r0, r1), _slice(taps_col, c0, c1))
        # Overlaps as (row0, col0, row1, col1) in box coordinates, with 1 where a pixel's cell is labelled k.
        owned: list[tuple[int, int, int, int, np.ndarray]] = []
        if overlaps[i]:
            # Component j's pixels lie inside its own box, so only the overlaps can hold pixels that
            # interpolate from another component: there, keep the pixels of cells labelled k. Gather the
            # model-grid labels over the overlaps, or over the whole box once when that is less work.
            parts = [
                (max(r0, boxes[j][0]), max(c0, boxes[j][1]), min(r1, boxes[j][2]), min(c1, boxes[j][3]))
                for j in overlaps[i]
            ]
            if sum((q[2] - q[0]) * (q[3] - q[1]) + _PART_COST_PX for q in parts) >= (r1 - r0) * (c1 - c0):
                parts = [box]
            for q0, p0, q1, p1 in parts:
                y0, x0 = cell_row[q0:q1], cell_col[p0:p1]
                ya, xa = int(y0[0]), int(x0[0])  # taps increase along each axis
                # Compare on the model cells the part covers, then gather bytes (less traffic than the
                # labels): columns first, on the few model rows, then whole rows (memcpy).
                own = (cells[ya : int(y0[-1]) + 1, xa : int(x0[-1]) + 1] == k).view(np.uint8)
                owned.append((q0 - r0, p0 - c0, q1 - r0, p1 - c0, own.take(x0 - xa, axis=1).take(y0 - ya, axis=0)))
        # One overlap covering the box: copyTo rewrites every strip's values, no need to threshold them first.
        whole_box = len(owned) == 1 and owned[0][:4] == (0, 0, r1 - r0, c1 - c0)
        # Threshold, resolve overlaps and sum in strips of rows that stay in cache, so the box's probabilities
        # come from memory once. ``values`` is the strip's probabilities on the component, zero elsewhere
        # (all component values are >= threshold > 0): its sum (cv2.sumElems adds float32 in double) and
        # maximum are the component's, with no masked reduction (OpenCV's are scalar loops).
        bh, bw = r1 - r0, c1 - c0
        step = max(1, _STRIP_PX // bw)
        sub_fg = np.empty((bh, bw), np.uint8)
        strip = np.empty((min(step, bh), bw), np.float32)
        total = peak = 0.0
        for a in range(0, bh, step):
            b = min(bh, a + step)
            s, f, values = sub[a:b], sub_fg[a:b], strip[: b - a]
            if whole_box:
                np.greater_equal(s, t32, out=f.view(np.bool_))
            else:
                # Read the probabilities once (zeroing those under the threshold), then take the foreground
                # off the cached result: a value is > 0 exactly where it is >= threshold > 0.
                cv2.threshold(s, below_t, 0.0, cv2.THRESH_TOZERO, dst=values)
                np.greater(values, 0.0, out=f.view(np.bool_))
            for q0, p0, q1, p1, own in owned:
                lo, hi = max(q0, a), min(q1, b)
                if lo < hi:
                    part = f[lo - a : hi - a, p0:p1]
                    np.bitwise_and(part, own[lo - q0 : hi - q0], out=part)
                    # copyTo with a mask leaves the destination alone where the mask is 0: clear it first.
                    v = values[lo - a : hi - a, p0:p1]
                    v.fill(0.0)
                    cv2.copyTo(s[lo - a : hi - a, p0:p1], part, dst=v)
            total += cv2.sumElems(values)[0]
            peak = max(peak, cv2.minMaxLoc(values)[1])
        # Row and column projections give area, bounding box and centroid in two cheap passes.
        rows = cv2.reduce(sub_fg, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel()
        area = int(rows.sum())
        if area == 0 or area < min_px:
            continue
        cols = cv2.reduce(sub_fg, 0, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel()
        ys, xs = np.flatnonzero(rows), np.flatnonzero(cols)
        centroid_r = float(rows @ np.arange(rows.size, dtype=np.float64)) / area
        centroid_c = float(cols @ np.arange(cols.size, dtype=np.float64)) / area
        row0, col0 = top + r0, left + c0
        found.append(
            (
                float(peak),
                area,
                (row0 + int(ys[0]), col0 + int(xs[0]), row0 + int(ys[-1]) + 1, col0 + int(xs[-1]) + 1),
                (row0 + centroid_r, col0 + centroid_c),
                total / area,
            )
        )
        region = mask[row0 : top + r1, col0 : left + c1]
        np.bitwise_or(region, sub_fg, out=region)

    # Highest probability first; ties by larger area, then position, so the order is deterministic.
    found.sort(key=lambda f: (-f[0], -f[1], f[2]))
    findings = []
    for label, (peak, area, bbox, centroid, mean) in enumerate(found, start=1):
        area_mm2 = bbox_mm = None
        if spacing is not None:
            area_mm2 = area * spacing[0] * spacing[1]
            bbox_mm = ((bbox[2] - bbox[0]) * spacing[0], (bbox[3] - bbox[1]) * spacing[1])
        findings.append(
            Finding(
                label=label,
                bbox_px=bbox,
                centroid_px=centroid,
                area_px=area,
                area_mm2=area_mm2,
                bbox_mm=bbox_mm,
                max_probability=min(1.0, max(0.0, peak)),
                mean_probability=min(1.0, max(0.0, mean)),
            )
        )
    return mask, findings


def _unreachable(
    cells: np.ndarray, stats: np.ndarray, per_row: np.ndarray, per_col: np.ndarray, min_px: float
) -> np.ndarray:
    """Which components' cells hold fewer than ``min_px`` original pixels, or none.

    A cell (i, j) holds ``per_row[i] * per_col[j]`` original pixels (those whose first interpolation tap it
    is); a component's ``reach`` is the total over its cells, an upper bound of its full-resolution area.
    The model-grid statistics settle most components without counting: the cells include the component's
    own pixels (so reach >= area x the fewest pixels per cell), and there are at most four per pixel, all
    inside its box grown by one row and column up and left (so reach <= that count x the most per cell).
    The others are counted over that box, or, when there are many, by one weighted count over the grid.

    Args:
        cells: (h, w) :func:`cell_labels` of the model-grid labels.
        stats: (n, 5) ``cv2.connectedComponentsWithStats`` statistics of those labels.
        per_row, per_col: (h,) and (w,) int original rows and columns per model row and column.
        min_px: minimum area in original pixels.

    Returns:
        (n,) bool, True for components to drop (and for the background, index 0).
    """
    import cv2

    area = stats[:, cv2.CC_STAT_AREA].astype(np.int64)
    extent = (stats[:, cv2.CC_STAT_HEIGHT].astype(np.int64) + 1) * (stats[:, cv2.CC_STAT_WIDTH] + 1)
    low = area * (int(per_row.min()) * int(per_col.min()))
    high = np.minimum(4 * area, extent) * (int(per_row.max()) * int(per_col.max()))
    small = (high < min_px) | (high == 0)
    small[0] = True
    open_ = np.flatnonzero(~small & ((low < min_px) | (low == 0)))
    if len(open_) > _MAX_EXACT_REACH:
        reach = np.bincount(cells.ravel(), weights=np.outer(per_row, per_col).ravel(), minlength=len(stats))
        small = (reach < min_px) | (reach == 0)
        small[0] = True
        return small
    for k in open_.tolist():
        x, y, bw, bh = stats[k, :4].tolist()
        y0, x0 = max(0, y - 1), max(0, x - 1)
        reach = int(per_row[y0 : y + bh] @ (cells[y0 : y + bh, x0 : x + bw] == k) @ per_col[x0 : x + bw])
        small[k] = reach < min_px or reach == 0
    return small


def _overlaps(boxes: list[tuple[int, int, int, int]], which: list[int]) -> dict[int, list[int]]:
    """For the boxes ``which`` (indices), the indices of the other (row0, col0, row1, col1) boxes each overlaps."""
    if len(which) * len(boxes) <= _PYTHON_OVERLAPS:
        # A few boxes (the usual case): plain comparisons beat NumPy's per-call overhead.
        return {
            i: [
                j
                for j, (q0, p0, q1, p1) in enumerate(boxes)
                if q0 < boxes[i][2] and boxes[i][0] < q1 and p0 < boxes[i][3] and boxes[i][1] < p1 and j != i
            ]
            for i in which
        }
    b = np.asarray(boxes, dtype=np.int64)
    w = b[which]
    hit = (
        (w[:, None, 0] < b[None, :, 2])
        & (b[None, :, 0] < w[:, None, 2])
        & (w[:, None, 1] < b[None, :, 3])
        & (b[None, :, 1] < w[:, None, 3])
    )
    hit[np.arange(len(which)), which] = False
    return {i: np.flatnonzero(row).tolist() for i, row in zip(which, hit, strict=True)}
