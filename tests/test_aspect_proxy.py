"""benchmarks/aspect_proxy.py: view fields from CDD-CESM ids, and the re-encoded scan the pipeline reads."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import aspect_proxy


def test_view_fields() -> None:
    assert aspect_proxy.view_fields("P137_L_DM_MLO") == ("L", "MLO", "DM")
    assert aspect_proxy.view_fields("P285_R_CM_CC") == ("R", "CC", "CM")
    assert aspect_proxy.view_fields("mdb005") == (None, None, "other")


def test_reencode_is_a_12_bit_mg_at_the_asked_size(tmp_path: Path) -> None:
    from bcedge.dicom import read_mammogram

    image = np.zeros((64, 64), np.uint8)
    image[8:56, :40] = 200  # a breast on the left
    path = aspect_proxy.reencode(image, (160, 128), "L", "CC", tmp_path / "a.dcm")
    mammo = read_mammogram(path)
    assert (mammo.meta.rows, mammo.meta.columns) == (160, 128)
    assert mammo.meta.bits_stored == 12 and mammo.meta.laterality == "L" and mammo.meta.view == "CC"
    assert mammo.meta.pixel_spacing_mm == aspect_proxy.SPACING_MM
    stored = mammo.stored.values
    # 8-bit values * 16 + 8 (bicubic overshoots a little at the breast's edge, saturating at 8 bits).
    assert (stored % 16 == 8).all() and stored.min() == 8 and stored.max() <= 255 * 16 + 8
    assert stored[80, 20] == 200 * 16 + 8 and stored[80, 120] == 8
    # Full-range window: the displayed image is the 8-bit one, rescaled.
    assert abs(float(mammo.pixels[80, 20]) - (200 * 16 + 8) / 4095) < 0.01
    assert np.array_equal(aspect_proxy.as_uint8(image / 255.0), image)


def test_breast_aspect_ratio_and_squash_estimate() -> None:
    import breast_aspect

    image = np.zeros((400, 300), np.uint8)
    yy, xx = np.mgrid[:400, :300]
    image[((yy - 200) / 180.0) ** 2 + (xx / 100.0) ** 2 <= 1.0] = 180  # a half-ellipse on the left edge
    ratio = breast_aspect.height_over_width(image)
    assert ratio is not None and abs(ratio - 360 / 100) < 0.25
    squashed = image[::2]  # the same breast squashed 2x top to bottom
    assert abs(breast_aspect.height_over_width(squashed) - ratio / 2) < 0.2
    est = breast_aspect.squash_estimate([2.0] * 20 + [2.2] * 20, [1.0] * 20 + [1.1] * 20)
    assert abs(est["value"] - 2.0) < 0.11 and est["low"] <= est["value"] <= est["high"]
    assert breast_aspect.height_over_width(np.zeros((64, 64), np.uint8)) is None  # nothing to find
