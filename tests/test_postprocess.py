"""bcedge.postprocess: threshold, components on the model grid, minimum area, mapping back, findings."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

import bcedge.postprocess as postprocess_module
from bcedge.errors import ConfigError, InputError
from bcedge.postprocess import (
    DEFAULT_MIN_AREA_MODEL_PX,
    _axis_weights,
    _unreachable,
    cell_labels,
    default_min_area_model_px,
    interpolate_box,
    min_area_pixels,
    postprocess,
)
from bcedge.preprocess import Geometry, PreprocessConfig, preprocess

S = 64


def random_geometry(rng: np.random.Generator, size: int = S) -> Geometry:
    """A valid geometry of random shape, crop, flip and layout (like preprocess would build)."""
    h, w = int(rng.integers(200, 1200)), int(rng.integers(200, 1200))
    top, left = int(rng.integers(0, 40)), int(rng.integers(0, 40))
    bottom, right = h - int(rng.integers(0, 40)), w - int(rng.integers(0, 40))
    s = size / max(bottom - top, right - left)
    ch = min(size, max(1, round((bottom - top) * s)))
    cw = min(size, max(1, round((right - left) * s)))
    flipped = bool(rng.integers(0, 2))
    ct, cl = (size - ch) // 2, (size - cw if flipped else 0)
    return Geometry((h, w), (top, left, bottom, right), flipped, (ct, cl, ch, cw), size)


def blobs(rng: np.random.Generator, size: int = S, sigma: float = 2.0) -> np.ndarray:
    """(size, size) float32 smooth random field stretched onto [0, 1]: several blobs above any threshold."""
    field = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), sigma)
    return ((field - field.min()) / (field.max() - field.min())).astype(np.float32)


def reference(prob: np.ndarray, geometry: Geometry, threshold: float, min_px: float) -> tuple[np.ndarray, np.ndarray]:
    """The definition, computed the slow way at full resolution.

    Returns:
        (mask (H, W) uint8, the full-resolution interpolated probability).
    """
    fine, full = fine_labels(prob, geometry, threshold)
    areas = np.bincount(fine.ravel())
    keep = (areas >= min_px) & (areas > 0)
    keep[0] = False
    return keep[fine].astype(np.uint8), full


def fine_labels(prob: np.ndarray, geometry: Geometry, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The model-grid component each full-resolution foreground pixel interpolates from, the slow way.

    Returns:
        ((H, W) int64 labels, 0 = background, before the minimum area; the full-resolution probability).
    """
    full = geometry.to_original(prob, interpolation="linear")
    ct, cl, ch, cw = geometry.content
    top, left, bottom, right = geometry.crop
    content = prob[ct : ct + ch, cl : cl + cw]
    if geometry.flipped:
        content = content[:, ::-1]
    fg_model = (content >= np.float32(threshold)).astype(np.uint8)
    _, labels = cv2.connectedComponents(fg_model, connectivity=8)
    cells = cell_labels(labels)
    y0, _, _ = _axis_weights(bottom - top, ch, 0, bottom - top)
    x0, _, _ = _axis_weights(right - left, cw, 0, right - left)
    fine = np.zeros(full.shape, np.int64)
    fine[top:bottom, left:right] = cells[y0][:, x0]
    fine[full < np.float32(threshold)] = 0
    return fine, full


def test_interpolate_box_equals_cv2_resize() -> None:
    rng = np.random.default_rng(1)
    content = rng.random((37, 23)).astype(np.float32)
    full = cv2.resize(content, (301, 455), interpolation=cv2.INTER_LINEAR)
    for box in [(0, 0, 455, 301), (10, 20, 100, 90), (440, 290, 455, 301), (0, 150, 3, 151)]:
        part = interpolate_box(content, (455, 301), box)
        np.testing.assert_allclose(part, full[box[0] : box[2], box[1] : box[3]], atol=2e-6)


@pytest.mark.parametrize("seed", range(12))
def test_mask_equals_full_resolution_definition(seed: int) -> None:
    """The box-by-box fast path gives the mask of to_original + threshold + per-component minimum area."""
    rng = np.random.default_rng(seed)
    geometry = random_geometry(rng)
    prob = blobs(rng, sigma=float(rng.uniform(0.7, 3.0)))
    threshold = float(rng.uniform(0.4, 0.8))
    min_px = float(rng.integers(0, 400))
    mask, findings = postprocess(prob, geometry, threshold=threshold, min_area_px=min_px)
    expected, full = reference(prob, geometry, threshold, min_px)
    assert mask.shape == geometry.original_shape and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1}
    # float32 rounding may only flip pixels sitting on the threshold itself
    differ = (mask != expected) & (np.abs(full - threshold) > 1e-5)
    assert not differ.any()
    assert sum(f.area_px for f in findings) == int(mask.sum())
    for f in findings:
        r0, c0, r1, c1 = f.bbox_px
        assert mask[r0:r1, c0:c1].sum() >= f.area_px >= min_px
        assert r0 <= f.centroid_px[0] < r1 and c0 <= f.centroid_px[1] < c1
        assert threshold <= f.mean_probability <= f.max_probability <= 1.0


@pytest.mark.parametrize("seed", range(4))
def test_images_smaller_than_the_model_grid(seed: int) -> None:
    """A small raster (content upscaled by preprocessing, so mapping back shrinks it) follows the same definition."""
    rng = np.random.default_rng(100 + seed)
    h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
    s = S / max(h, w)
    ch, cw = min(S, max(1, round(h * s))), min(S, max(1, round(w * s)))
    geometry = Geometry(
        (h, w), (0, 0, h, w), bool(seed % 2), ((S - ch) // 2, 0 if seed % 2 == 0 else S - cw, ch, cw), S
    )
    prob = blobs(rng, sigma=2.5)
    mask, findings = postprocess(prob, geometry, threshold=0.6, min_area_px=0)
    expected, full = reference(prob, geometry, 0.6, 0)
    assert not ((mask != expected) & (np.abs(full - 0.6) > 1e-5)).any()
    assert sum(f.area_px for f in findings) == int(mask.sum())


def test_large_regions_take_the_whole_crop_path() -> None:
    """A component covering most of the crop (cv2.resize of the whole crop) gives the same definition."""
    rng = np.random.default_rng(3)
    geometry = random_geometry(rng)
    yy, xx = np.mgrid[:S, :S]
    prob = np.exp(-((yy - 30.0) ** 2 + (xx - 30.0) ** 2) / (2 * 25.0**2)).astype(np.float32)
    mask, findings = postprocess(prob, geometry, threshold=0.3, min_area_px=0)
    expected, full = reference(prob, geometry, 0.3, 0)
    assert len(findings) == 1
    assert not ((mask != expected) & (np.abs(full - 0.3) > 1e-5)).any()


@pytest.mark.parametrize("strip_px", [None, 4096])  # one strip per box / many strips
@pytest.mark.parametrize(("original", "reach"), [(640, 40), (640, 20), (2000, 20)])  # whole crop, box by box
def test_overlapping_components_keep_their_own_peak_and_mean(
    monkeypatch: pytest.MonkeyPatch, original: int, reach: int, strip_px: int | None
) -> None:
    """Brighter pixels of other components inside a component's box count for neither its peak nor its mean.

    An L-shaped 0.7 plateau whose box holds a separate 0.95 blob (kept; its box lies inside the L's, so its own
    labels are gathered over its whole box) and a 0.99 speck (dropped by the minimum area; for the L, both are
    overlaps resolved part by part). A component's pixels mixed up with another's would move its peak to 0.95
    or 0.99 and its mean far off.
    """
    if strip_px is not None:
        monkeypatch.setattr(postprocess_module, "_STRIP_PX", strip_px)
    geometry = Geometry((original, original), (0, 0, original, original), False, (0, 0, S, S), S)
    prob = np.zeros((S, S), np.float32)
    prob[8 : 8 + reach, 8:11] = 0.7
    prob[5 + reach : 8 + reach, 8 : 8 + reach] = 0.7
    prob[12:16, 16:20] = 0.95
    prob[20, 24] = 0.99
    min_px = 5 * (original / S) ** 2  # 5 model pixels: the speck (~1) is dropped, the blob (~20) kept
    mask, findings = postprocess(prob, geometry, threshold=0.5, min_area_px=min_px)
    fine, full = fine_labels(prob, geometry, 0.5)
    expected, kept = [], []
    for k in range(1, int(fine.max()) + 1):
        rows, cols = np.nonzero(fine == k)
        if rows.size >= min_px:
            kept.append(k)
            values = full[rows, cols].astype(np.float64)
            bbox = (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)
            expected.append((float(values.max()), rows.size, bbox, float(values.mean())))
    expected.sort(key=lambda e: -e[0])
    assert [round(e[0], 2) for e in expected] == [0.95, 0.7]
    assert np.array_equal(mask, np.isin(fine, kept))
    assert len(findings) == 2
    for f, (peak, area, bbox, mean) in zip(findings, expected, strict=True):
        assert (f.area_px, f.bbox_px) == (area, bbox)
        assert f.max_probability == pytest.approx(peak, abs=1e-6)
        assert f.mean_probability == pytest.approx(mean, abs=1e-6)


@pytest.mark.parametrize("side", [30, 8])  # whole-crop resize, box by box
def test_pixels_exactly_at_the_threshold_are_foreground(side: int) -> None:
    """At scale 1 interpolation is the identity, so pixels sit exactly on the threshold: they are foreground and
    count in the mean; the float32 just below is not (thresholding keeps values above that neighbour)."""
    t32 = np.float32(0.6)
    geometry = Geometry((S, S), (0, 0, S, S), False, (0, 0, S, S), S)
    prob = np.full((S, S), np.nextafter(t32, np.float32(0.0)), np.float32)
    prob[10 : 10 + side, 10 : 10 + side] = t32
    prob[12, 12:15] = 0.9
    mask, (finding,) = postprocess(prob, geometry, threshold=float(t32), min_area_px=0)
    block = prob[10 : 10 + side, 10 : 10 + side].astype(np.float64)
    assert mask.sum() == finding.area_px == side * side
    assert finding.bbox_px == (10, 10, 10 + side, 10 + side)
    assert finding.max_probability == pytest.approx(0.9, abs=1e-7)
    assert finding.mean_probability == pytest.approx(block.mean(), abs=1e-12)


def test_cell_labels_16_and_32_bit_agree() -> None:
    """16-bit labels take an OpenCV dilation, 32-bit ones NumPy: the same maxima, edges replicated."""
    rng = np.random.default_rng(7)
    for shape in [(1, 1), (1, 9), (9, 1), (37, 23)]:
        labels = rng.integers(0, 6, shape).astype(np.int32)
        assert np.array_equal(cell_labels(labels.astype(np.uint16)), cell_labels(labels))


@pytest.mark.parametrize("exact_limit", [0, 32, 10_000])  # always one count over the grid / default / never
@pytest.mark.parametrize("seed", range(6))
def test_unreachable_equals_the_weighted_count(monkeypatch: pytest.MonkeyPatch, exact_limit: int, seed: int) -> None:
    """Settling components by model-grid bounds and counting the rest gives the weighted count's verdicts."""
    monkeypatch.setattr(postprocess_module, "_MAX_EXACT_REACH", exact_limit)
    rng = np.random.default_rng(200 + seed)
    if seed % 2:
        geometry = random_geometry(rng)  # model grid upscaled: every cell holds original pixels
    else:  # a small raster: the model grid is downscaled, some cells hold none
        h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
        ch, cw = min(S, round(h * S / max(h, w))), min(S, round(w * S / max(h, w)))
        geometry = Geometry((h, w), (0, 0, h, w), False, (0, 0, ch, cw), S)
    _, _, ch, cw = geometry.content
    top, left, bottom, right = geometry.crop
    prob = blobs(rng, sigma=0.8) if seed < 3 else rng.random((S, S)).astype(np.float32)
    fg = (prob[:ch, :cw] >= 0.6).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8, ltype=cv2.CV_16U)
    cells = cell_labels(labels)
    per_row = np.bincount(_axis_weights(bottom - top, ch, 0, bottom - top)[0], minlength=ch)
    per_col = np.bincount(_axis_weights(right - left, cw, 0, right - left)[0], minlength=cw)
    reach = np.bincount(cells.ravel().astype(np.intp), weights=np.outer(per_row, per_col).ravel(), minlength=len(stats))
    for min_px in [0.0, 1.0, *np.quantile(reach[1:], [0.2, 0.5, 0.8]).tolist(), float(reach.max()) + 1]:
        expected = (reach < min_px) | (reach == 0)
        expected[0] = True
        assert np.array_equal(_unreachable(cells, stats, per_row, per_col, min_px), expected)


def test_findings_of_a_known_disc_in_mm() -> None:
    """A disc drawn on the original grid, carried to the model grid and back: area and size in mm."""
    spacing = (0.07, 0.07)
    shape = (3328, 2560)
    truth = np.zeros(shape, np.uint8)
    centre, radius_mm = (1500, 900), 6.0
    cv2.circle(truth, centre[::-1], round(radius_mm / spacing[0]), 1, thickness=-1)
    image = np.full(shape, 0.02, np.float32)
    cv2.rectangle(image, (0, 200), (1800, 3100), 0.6, thickness=-1)  # a "breast" on the left
    _, geometry = preprocess(image, PreprocessConfig(size=256))
    prob = geometry.mask_to_model(truth).astype(np.float32)
    prob = cv2.GaussianBlur(prob, (0, 0), 0.7)  # soft edges, as a model gives
    mask, findings = postprocess(prob, geometry, threshold=0.5, spacing_mm=spacing, min_area_mm2=4.0)
    assert len(findings) == 1
    f = findings[0]
    true_area = math.pi * radius_mm**2
    assert f.area_mm2 == pytest.approx(true_area, rel=0.08)
    assert f.bbox_mm[0] == pytest.approx(2 * radius_mm, abs=1.0)
    assert f.bbox_mm[1] == pytest.approx(2 * radius_mm, abs=1.0)
    assert f.centroid_px == pytest.approx(centre, abs=6.0)
    # the model pitch (~0.75 mm here) bounds how well a 12 mm disc survives the round trip
    inter = np.logical_and(mask, truth).sum()
    assert inter / np.logical_or(mask, truth).sum() > 0.88
    assert f.area_px == int(mask.sum())


def test_min_area_in_mm_drops_small_components() -> None:
    geometry = Geometry((1000, 1000), (0, 0, 1000, 1000), False, (0, 0, 100, 100), 100)
    prob = np.zeros((100, 100), np.float32)
    # >= 0.5 for 0.4/0.9 = 0.44 model px past the outer centres: 9.89 model px = 9.89 mm each way
    prob[10:20, 10:20] = 0.9
    prob[60:62, 60:62] = 0.8  # 1.75 model px each way: ~3 mm²
    _, kept = postprocess(prob, geometry, threshold=0.5, spacing_mm=(0.1, 0.1), min_area_mm2=10.0)
    assert [f.area_mm2 for f in kept] == [pytest.approx(9.89**2, abs=3.0)]
    _, both = postprocess(prob, geometry, threshold=0.5, spacing_mm=(0.1, 0.1), min_area_mm2=0.0)
    assert len(both) == 2
    # ordered by max probability, labels 1..n
    assert [f.label for f in both] == [1, 2]
    assert both[0].max_probability == pytest.approx(0.9) and both[1].max_probability == pytest.approx(0.8)
    # anisotropic spacing: rows and columns scale separately
    _, aniso = postprocess(prob, geometry, threshold=0.5, spacing_mm=(0.1, 0.2), min_area_mm2=0.0)
    assert aniso[0].area_mm2 == pytest.approx(2 * both[0].area_mm2)
    assert aniso[0].bbox_mm[1] == pytest.approx(2 * both[0].bbox_mm[1])


def test_without_spacing_the_minimum_is_in_pixels() -> None:
    """No spacing: the default minimum is DEFAULT_MIN_AREA_MODEL_PX pixels of a 256 grid (500 px here)."""
    geometry = Geometry((2560, 2560), (0, 0, 2560, 2560), False, (0, 0, 256, 256), 256)
    assert min_area_pixels(geometry, None) == pytest.approx(DEFAULT_MIN_AREA_MODEL_PX * 100)
    prob = np.zeros((256, 256), np.float32)
    prob[20:23, 20:23] = 0.8  # >= 0.5 over 2.75 model px each way: ~27.5^2 = 756 px, kept
    prob[60:62, 60:62] = 0.8  # 1.75 model px each way: ~17.5^2 = 306 px, dropped
    _, findings = postprocess(prob, geometry, threshold=0.5)
    assert [f.area_px for f in findings] == [pytest.approx(756, abs=60)]
    assert findings[0].area_mm2 is None and findings[0].bbox_mm is None
    _, both = postprocess(prob, geometry, threshold=0.5, min_area_px=0)
    assert sorted(f.area_px for f in both) == [pytest.approx(306, abs=40), pytest.approx(756, abs=60)]
    _, none = postprocess(prob, geometry, threshold=0.5, min_area_px=10_000)
    assert none == []


def test_default_minimum_is_the_same_share_of_any_grid() -> None:
    """A 512-px model drops what a 256-px one drops on the same image: 4x the model pixels."""
    assert default_min_area_model_px(256) == DEFAULT_MIN_AREA_MODEL_PX
    assert default_min_area_model_px(512) == pytest.approx(4 * DEFAULT_MIN_AREA_MODEL_PX)
    for size in (128, 256, 512):
        geometry = Geometry((2560, 2560), (0, 0, 2560, 2560), False, (0, 0, size, size), size)
        assert min_area_pixels(geometry, None) == pytest.approx(DEFAULT_MIN_AREA_MODEL_PX * 100)


def test_empty_prediction_and_padding_ignored() -> None:
    geometry = Geometry((500, 300), (0, 0, 500, 300), False, (0, 0, 64, 38), 64)
    prob = np.zeros((64, 64), np.float32)
    prob[:, 40:] = 1.0  # padding only: never reaches the original grid
    mask, findings = postprocess(prob, geometry, threshold=0.5)
    assert findings == [] and mask.shape == (500, 300) and not mask.any()


def test_flip_maps_back_to_the_mirrored_side() -> None:
    geometry = Geometry((640, 640), (0, 0, 640, 640), True, (0, 0, 64, 64), 64)
    prob = np.zeros((64, 64), np.float32)
    prob[30:34, 2:6] = 0.9  # near the model grid's left edge = the original's right edge
    mask, (finding,) = postprocess(prob, geometry, threshold=0.5, min_area_px=0)
    assert finding.centroid_px[1] > 560
    assert mask[:, :320].sum() == 0


def test_finding_to_dict_is_json() -> None:
    geometry = Geometry((1000, 1000), (0, 0, 1000, 1000), False, (0, 0, 100, 100), 100)
    prob = np.zeros((100, 100), np.float32)
    prob[10:20, 10:20] = 0.9
    _, (finding,) = postprocess(prob[..., None], geometry, threshold=0.5, spacing_mm=(0.1, 0.1))
    data = json.loads(json.dumps(finding.to_dict()))
    assert set(data) == {
        "label",
        "bbox_px",
        "centroid_px",
        "area_px",
        "area_mm2",
        "bbox_mm",
        "max_probability",
        "mean_probability",
    }
    assert data["bbox_px"] == list(finding.bbox_px) and data["area_px"] == finding.area_px


@pytest.mark.parametrize(
    ("kwargs", "error", "needle"),
    [
        ({"threshold": 0.0}, ConfigError, "strictly between 0 and 1"),
        ({"threshold": 1.5}, ConfigError, "strictly between 0 and 1"),
        ({"threshold": float("nan")}, ConfigError, "threshold"),
        ({"threshold": 0.5, "min_area_mm2": -1.0, "spacing_mm": (0.1, 0.1)}, ConfigError, "mm²"),
        ({"threshold": 0.5, "spacing_mm": (0.1, -0.1)}, InputError, "pixel spacing"),
        ({"threshold": 0.5, "spacing_mm": "x"}, InputError, "pixel spacing"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type, needle: str) -> None:
    geometry = Geometry((100, 100), (0, 0, 100, 100), False, (0, 0, 32, 32), 32)
    with pytest.raises(error, match=needle):
        postprocess(np.zeros((32, 32), np.float32), geometry, **kwargs)


def test_bad_probability_maps() -> None:
    geometry = Geometry((100, 100), (0, 0, 100, 100), False, (0, 0, 32, 32), 32)
    with pytest.raises(InputError, match=r"expected the model grid \(32, 32\)"):
        postprocess(np.zeros((16, 16), np.float32), geometry, threshold=0.5)
    with pytest.raises(InputError, match="dtype is uint8"):
        postprocess(np.zeros((32, 32), np.uint8), geometry, threshold=0.5)
