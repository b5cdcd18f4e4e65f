"""Mask clean-up rule ``skin-line-v1``: skin traces and specks go, lesions stay."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from bcedge.datasets.mask_rules import MIN_SPECK, breast_region, clean_mask
from bcedge.errors import ConfigError


def _breast(shape: tuple[int, int] = (256, 200)) -> np.ndarray:
    """A half-disc breast on the left edge, float32 in [0, 1]."""
    img = np.zeros(shape, np.float32)
    cv2.ellipse(img, (0, shape[0] // 2), (150, 110), 0, -90, 90, 0.6, thickness=-1)
    return img


def test_skin_trace_and_specks_are_dropped_lesions_kept() -> None:
    img = _breast()
    breast = breast_region(img)
    assert breast[128, 50] == 1 and breast[128, 190] == 0
    mask = np.zeros(img.shape, np.uint8)
    cv2.circle(mask, (60, 128), 15, 1, thickness=-1)  # a lesion well inside
    cv2.ellipse(mask, (0, 128), (148, 108), 0, -60, 10, 1, thickness=3)  # a band along the skin line
    mask[200, 20] = 1  # a speck
    assert MIN_SPECK * mask.size > 1
    out, report = clean_mask(mask, img)
    assert report.kept == 1 and report.dropped_skin == 1 and report.dropped_specks == 1
    assert out[128, 60] == 1 and out.sum() == int((mask[100:160, 40:80]).sum())
    unchanged, none = clean_mask(mask, img, rule="")
    np.testing.assert_array_equal(unchanged, mask)
    assert none.dropped_skin == 0
    with pytest.raises(ConfigError):
        clean_mask(mask, img, rule="by-hand")


def test_a_lesion_touching_the_skin_is_kept_when_mostly_inside() -> None:
    img = _breast()
    mask = np.zeros(img.shape, np.uint8)
    cv2.circle(mask, (135, 128), 20, 1, thickness=-1)  # reaches the outline at x=150
    out, report = clean_mask(mask, img)
    assert report.kept == 1 and out.sum() == mask.sum()


_DATA = os.environ.get("BCEDGE_DATA")


@pytest.mark.skipif(not _DATA, reason="BCEDGE_DATA is not set (path to the shared real data)")
def test_real_counts_of_the_rule() -> None:
    """The figures the module doc states, over the 72 CDD-CESM DM views of both folders."""
    from bcedge.datasets.cdd_cesm import CddCesm

    root = Path(_DATA or "")
    if not (root / "cdd-cesm-extra").is_dir():
        pytest.skip("cdd-cesm-extra not in BCEDGE_DATA")
    views = skin = specks = 0
    emptied = []
    samples = list(CddCesm(root / "cdd-cesm", kind="DM", roots=[root / "cdd-cesm-extra"]).samples())
    for sample in samples:
        pixels = sample.load_image().pixels
        out, report = clean_mask(sample.load_mask(pixels.shape), pixels)
        skin += report.dropped_skin
        specks += report.dropped_specks
        views += (report.dropped_skin + report.dropped_specks) > 0
        if not out.any():
            emptied.append(sample.id)
    assert (len(samples), views, skin, specks, emptied) == (72, 27, 28, 21, ["P139_R_DM_MLO"])
    ruled = CddCesm(root / "cdd-cesm", kind="DM", roots=[root / "cdd-cesm-extra"], mask_rule="skin-line-v1")
    unlocated = [s.id for s in ruled.samples() if s.lesion_unlocated]
    assert unlocated == ["P139_R_DM_MLO"]
