"""The crop never removes breast tissue, on every real image in ``$BCEDGE_DATA``.

Every mini-MIAS film and every CDD-CESM image (``cdd-cesm/`` and ``cdd-cesm-extra/``),
as stored and mirrored left-right, goes through :func:`bcedge.preprocess.preprocess`;
at least 99.5 % of its breast pixels must lie inside the crop box.

"Breast pixels" are defined here without any code or parameter of the crop (which
works at the 512-pixel working resolution, Otsu's threshold scaled by 0.2, an
elliptic opening of 2.5 % of the long side, the chest-wall and frame rules):

1. on the full-resolution 8-bit image, the background level is the histogram's
   mode and the bright end is the 99th percentile of the pixels above it;
2. a pixel is tissue when it is above the background by 10 % of that range (at
   least 4 grey levels);
3. the breast is the largest 8-connected tissue region once structures thinner
   than 1.5 % of the long side are cut (an opening with a square of that side,
   outside the image counting as background), plus every tissue pixel within
   half that distance of it.

Step 3 exists because screen films carry film edges and strips (13-20 pixels wide
on the 1024-pixel MIAS films) that touch the breast through the film's border; a
plain largest component would count them as breast.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from bcedge.dicom import read_mammogram
from bcedge.preprocess import preprocess

_DATA = os.environ.get("BCEDGE_DATA")
pytestmark = pytest.mark.skipif(not _DATA, reason="BCEDGE_DATA is not set (path to the shared real data)")

#: Fraction of the breast that must stay inside the crop box.
MIN_KEPT = 0.995


def reference_breast(u8: np.ndarray) -> np.ndarray:
    """(H, W) bool breast pixels of an 8-bit mammogram, by the rule in the module docstring."""
    hist = np.bincount(u8.ravel(), minlength=256)
    background = int(np.argmax(hist))
    above = u8[u8 > background]
    bright = float(np.percentile(above, 99)) if above.size else 255.0
    tissue = (u8 > background + max(4.0, 0.1 * (bright - background))).astype(np.uint8)
    k = max(1, round(0.015 * max(u8.shape)))
    square = np.ones((k, k), np.uint8)
    # Outside the image is background (OpenCV's default border would let a band along the edge survive).
    opened = cv2.morphologyEx(tissue, cv2.MORPH_OPEN, square, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=8)
    if count < 2:
        return np.zeros(u8.shape, bool)
    core = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    return (cv2.dilate(core, square) & tissue) > 0


def _full_field_scan(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 2944x1920 full-field-like scan: a breast that runs off the top, bottom and chest-wall edges.

    Its outer third is fatty: a mesh of thin bright strands around fat darker than
    the breast threshold, the tissue an opening dissolves.

    Returns:
        (image float32 in [0, 1], breast truth bool), chest wall on the left.
    """
    rng = np.random.default_rng(seed)
    h, w = 2944, 1920
    truth = np.zeros((h, w), np.uint8)
    cv2.ellipse(truth, (0, h // 2), (int(0.8 * w), int(0.56 * h)), 0, -90, 90, 1, thickness=-1)
    img = np.full((h, w), 0.02, np.float32)
    dense = np.zeros((h, w), np.uint8)
    cv2.ellipse(dense, (0, h // 2), (int(0.5 * w), int(0.4 * h)), 0, -90, 90, 1, thickness=-1)
    strands = (rng.random((h // 8, w // 8)) > 0.55).astype(np.float32)
    strands = cv2.resize(strands, (w, h), interpolation=cv2.INTER_NEAREST)
    fat = np.where(strands > 0, 0.35, 0.04).astype(np.float32)  # fat below the threshold between strands
    img = np.where(truth > 0, np.where(dense > 0, 0.55, fat), img).astype(np.float32)
    return img, truth > 0


@pytest.mark.parametrize("mirrored", [False, True])
def test_crop_keeps_a_full_field_breast_that_runs_off_three_edges(mirrored: bool) -> None:
    """Not real data: the case the frame and the opening used to cut (13.6 % of one real scan)."""
    img, truth = _full_field_scan()
    if mirrored:
        img, truth = np.ascontiguousarray(img[:, ::-1]), truth[:, ::-1]
    tensor, geometry = preprocess(img)
    top, left, bottom, right = geometry.crop
    assert truth[top:bottom, left:right].sum() / truth.sum() >= MIN_KEPT
    # The artefact mask keeps the fatty periphery too: the model sees the breast, not only its core.
    seen = geometry.to_original(tensor[0, :, :, 0] > 0, interpolation="nearest") > 0
    assert (seen & truth).sum() / truth.sum() > 0.9
    assert geometry.chest_wall_side == ("R" if mirrored else "L")


def _images() -> list[Path]:
    root = Path(_DATA or "")
    files = sorted((root / "mini-mias" / "images").glob("*.png"))
    files += sorted((root / "cdd-cesm").glob("set*/images/*"))
    files += sorted((root / "cdd-cesm-extra" / "images").glob("*"))
    return files


def test_reference_breast_ignores_film_strips_and_labels() -> None:
    img = np.zeros((400, 300), np.uint8)
    cv2.ellipse(img, (0, 200), (180, 150), 0, -90, 90, 120, thickness=-1)
    img[:, 290:294] = 250  # a film strip near the far edge, joined to the breast by a film band
    img[396:, :] = 250
    img[20:50, 240:280] = 250  # a label
    ref = reference_breast(img)
    assert not ref[:, 290:294].any() and not ref[396:, 230:].any() and not ref[20:50, 240:280].any()
    assert ref[200, :180].all() and ref[60:340, 0].all()


def test_crop_keeps_the_breast_on_every_real_image() -> None:
    files = _images()
    if len(files) < 400:
        pytest.skip(f"expected the mini-MIAS and CDD-CESM images under {_DATA}, found {len(files)}")
    worst: list[tuple[float, str]] = []
    for path in files:
        pixels = read_mammogram(path).pixels
        breast = reference_breast(cv2.convertScaleAbs(pixels, alpha=255.0))
        total = int(breast.sum())
        assert total > 0.05 * breast.size, f"{path.name}: the reference found no breast"
        for mirrored in (False, True):
            image = np.ascontiguousarray(pixels[:, ::-1]) if mirrored else pixels
            truth = breast[:, ::-1] if mirrored else breast
            _, geometry = preprocess(image)
            top, left, bottom, right = geometry.crop
            kept = int(truth[top:bottom, left:right].sum()) / total
            worst.append((kept, f"{path.name}{' (mirrored)' if mirrored else ''} crop {geometry.crop}"))
    worst.sort()
    failures = [f"{name}: {kept:.2%} kept" for kept, name in worst if kept < MIN_KEPT]
    assert not failures, f"{len(failures)} of {len(worst)} views lose breast: " + "; ".join(failures[:10])
    print(f"\n{len(worst)} views; least kept {worst[0][0]:.3%} ({worst[0][1]})")
