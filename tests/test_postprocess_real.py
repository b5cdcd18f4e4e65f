"""bcedge.postprocess on the shipped mass model's real outputs: every finding equals the full-resolution definition.

The fast path (components on the model grid, boxes interpolated or one whole-crop resize, thresholded and
summed in strips, overlaps resolved by model cell) must give what ``bcedge evaluate`` would get from the slow
definition: the same mask and, component by component, the same area, box, centroid and probabilities.
Run on real scans (``BCEDGE_DATA``) and on a full-field phantom scan (the speed benchmark's kind of
scan: a whole-crop resize with overlapping boxes and dropped components).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pytest

from bcedge.postprocess import Finding, _axis_weights, cell_labels, min_area_pixels
from bcedge.preprocess import Geometry

if TYPE_CHECKING:
    from bcedge.pipeline import Segmenter

MASS_MODEL = Path(__file__).resolve().parents[1] / "bcedge" / "mass_model"
REAL_IMAGES = (
    "cdd-cesm/setA/images/flipped_P132_R_DM_MLO.jpg",  # 5 findings
    "cdd-cesm/setA/images/flipped_P139_R_DM_MLO.jpg",  # 7
    "cdd-cesm/setB/images/flipped_P150_L_DM_CC.jpg",  # 5
    "mini-mias/images/mdb001.png",  # 1, 1024 x 1024
)


def definition(
    prob: np.ndarray, geometry: Geometry, threshold: float, min_px: float
) -> tuple[np.ndarray, list[tuple[float, int, tuple[int, int, int, int], tuple[float, float], float]]]:
    """The mask and findings computed the slow way, at full resolution with NumPy.

    Returns:
        (mask (H, W) uint8 in {0, 1}, [(max probability, area px, bbox (r0, c0, r1, c1), centroid (r, c),
        mean probability)] sorted as :func:`bcedge.postprocess.postprocess` labels them).
    """
    full = geometry.to_original(prob, interpolation="linear")
    ct, cl, ch, cw = geometry.content
    top, left, bottom, right = geometry.crop
    content = prob[ct : ct + ch, cl : cl + cw]
    if geometry.flipped:
        content = content[:, ::-1]
    n, labels = cv2.connectedComponents((content >= np.float32(threshold)).astype(np.uint8), connectivity=8)
    y0, _, _ = _axis_weights(bottom - top, ch, 0, bottom - top)
    x0, _, _ = _axis_weights(right - left, cw, 0, right - left)
    fine = np.zeros(full.shape, np.int64)
    fine[top:bottom, left:right] = cell_labels(labels)[y0][:, x0]
    fine[~(full >= np.float32(threshold))] = 0
    mask = np.zeros(full.shape, np.uint8)
    found = []
    for k in range(1, n):
        rows, cols = np.nonzero(fine == k)
        if rows.size == 0 or rows.size < min_px:
            continue
        mask[rows, cols] = 1
        values = full[rows, cols].astype(np.float64)
        bbox = (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)
        found.append((float(values.max()), int(rows.size), bbox, (rows.mean(), cols.mean()), float(values.mean())))
    found.sort(key=lambda f: (-f[0], -f[1], f[2]))
    return mask, found


def assert_same(
    mask: np.ndarray, findings: list[Finding], prob: np.ndarray, geometry: Geometry, threshold: float, min_px: float
) -> None:
    """The fast path's mask and findings are the definition's (float32 rounding aside)."""
    expected_mask, expected = definition(prob, geometry, threshold, min_px)
    assert np.array_equal(mask, expected_mask)
    assert len(findings) == len(expected)
    for f, (peak, area, bbox, centroid, mean) in zip(findings, expected, strict=True):
        assert (f.area_px, f.bbox_px) == (area, bbox)
        assert f.max_probability == pytest.approx(peak, abs=1e-7)
        assert f.mean_probability == pytest.approx(mean, abs=1e-6)
        assert f.centroid_px == pytest.approx(centroid, abs=1e-6)


@pytest.fixture(scope="module")
def segmenter() -> Iterator[Segmenter]:
    from bcedge.pipeline import Segmenter

    if not (MASS_MODEL / "manifest.json").is_file():
        pytest.skip(f"{MASS_MODEL} is not in this checkout")
    with Segmenter(MASS_MODEL, threads=1) as seg:
        yield seg


@pytest.mark.parametrize("name", REAL_IMAGES)
def test_real_scans_give_the_definition(bcedge_data: Path, segmenter: Segmenter, name: str) -> None:
    path = bcedge_data / name
    if not path.is_file():
        pytest.skip(f"{path} is not in BCEDGE_DATA")
    result = segmenter.segment(path)
    assert result.findings, "the model finds nothing here: the comparison would be vacuous"
    spacing = result.mammogram.meta.pixel_spacing_mm
    min_px = min_area_pixels(result.geometry, spacing, segmenter.min_area_mm2, segmenter.min_area_px)
    assert_same(result.mask, result.findings, result.probability, result.geometry, result.threshold, min_px)


def test_full_field_scan_gives_the_definition(tmp_path: Path, segmenter: Segmenter) -> None:
    """A full-field scan at the shipped threshold and at a lower one (larger, overlapping components)."""
    from bcedge.dicom_write import build_mg_dataset, save_atomic
    from bcedge.phantom import make_phantom
    from bcedge.postprocess import postprocess

    ph = make_phantom(seed=21, laterality="L", view="CC", detector="70um", bits_stored=12, n_masses=2)
    path = save_atomic(build_mg_dataset(ph.stored, ph.tags), tmp_path / "ffdm.dcm")
    result = segmenter.segment(path)
    spacing = result.mammogram.meta.pixel_spacing_mm
    assert result.geometry.original_shape[0] > 2000 and spacing is not None
    min_px = min_area_pixels(result.geometry, spacing, segmenter.min_area_mm2)
    assert_same(result.mask, result.findings, result.probability, result.geometry, result.threshold, min_px)
    for threshold in (0.3, 0.5):
        mask, findings = postprocess(
            result.probability,
            result.geometry,
            threshold=threshold,
            spacing_mm=spacing,
            min_area_mm2=segmenter.min_area_mm2,
        )
        assert_same(mask, findings, result.probability, result.geometry, threshold, min_px)
