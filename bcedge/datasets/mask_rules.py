"""Documented clean-up rules for published lesion masks that mark more than lesions.

``skin-line-v1`` (CDD-CESM). Several CDD-CESM masks also trace a band along the
breast's skin line (and a few carry JPEG specks of a few pixels); a model trained
on them learns to outline the skin, and a test set scored on them rewards it. The
rule, applied identically to every image of every split (never by hand-picking):

* a mask component is dropped when at least :data:`SKIN_BAND_SHARE` of its pixels
  lie outside the breast or within :data:`SKIN_BAND` x the image's long side of the
  breast outline (the breast here is :func:`breast_region`: a fixed threshold rule of
  its own, so that tuning the runtime's crop never changes the ground truth);
* a component smaller than :data:`MIN_SPECK` of the image is dropped (lossy-mask
  noise; a 1 mm lesion on a 0.1 mm-pixel scan is still above it).

On the 72 CDD-CESM low-energy views of the shared data this drops 28 skin-line
components and 21 specks on 27 views, and leaves one view (``P139_R_DM_MLO``, whose
mask is only a skin trace) without a lesion: such a view becomes "lesion without
location" and is left out of training and scoring, as the readers do for unlocated
lesions (``tests/test_datasets_mask_rules.py`` checks these counts).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RULES = ("", "skin-line-v1")
#: Width of the skin band, as a share of the image's long side (15 px of a 512 image).
SKIN_BAND = 0.03
#: Share of a component's pixels in the band (or outside the breast) that marks it a skin trace.
SKIN_BAND_SHARE = 0.8
#: Components below this share of the image's pixels are specks (26 px of a 512x512 image).
MIN_SPECK = 1e-4


@dataclass(frozen=True)
class CleanReport:
    """What :func:`clean_mask` removed: component counts and pixels."""

    kept: int
    dropped_skin: int
    dropped_specks: int
    pixels_dropped: int


def breast_region(pixels: np.ndarray) -> np.ndarray:
    """The breast as this rule sees it: (H, W) uint8 {0, 1}.

    Pixels above ``background + 0.2 * (Otsu - background)`` (the levels of
    :func:`bcedge.preprocess.otsu_split` on a 256-bin histogram), largest 8-connected
    component, holes filled. No frame crop and no opening: the skin line must stay in.
    """
    import cv2

    from bcedge.preprocess import as_float01, otsu_split

    u8 = cv2.convertScaleAbs(as_float01(np.asarray(pixels)), alpha=255.0)
    split = otsu_split(np.bincount(u8.ravel(), minlength=256).astype(np.float64))
    if split is None:
        return np.zeros(u8.shape, np.uint8)
    otsu, background = split
    foreground = (u8 > background + 0.2 * (otsu - background)).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(foreground, connectivity=8)
    if count < 2:
        return np.zeros(u8.shape, np.uint8)
    best = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    contours, _ = cv2.findContours(best, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros(u8.shape, np.uint8)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled


def clean_mask(mask: np.ndarray, pixels: np.ndarray, rule: str = "skin-line-v1") -> tuple[np.ndarray, CleanReport]:
    """Apply a mask rule.

    Args:
        mask: (H, W) uint8 {0, 1} lesion mask on the image grid.
        pixels: (H, W) image, float in [0, 1] or integer (as read; dense tissue bright).
        rule: one of :data:`RULES` (``""`` returns the mask unchanged).

    Returns:
        (mask (H, W) uint8 {0, 1}, report).
    """
    import cv2

    if rule not in RULES:
        from bcedge.errors import ConfigError

        raise ConfigError(f"unknown mask rule {rule!r}; expected one of {RULES}")
    mask = (np.asarray(mask) > 0).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if not rule or count < 2:
        return mask, CleanReport(max(count - 1, 0), 0, 0, 0)
    h, w = mask.shape
    breast = breast_region(pixels)
    k = max(1, round(SKIN_BAND * max(h, w)))
    inner = cv2.erode(breast, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)))
    band = inner == 0  # the skin band and everything outside the breast
    keep = np.zeros(count, bool)
    skin = specks = 0
    for i in range(1, count):
        area = int(stats[i, cv2.CC_STAT_AREA])
        if area < MIN_SPECK * h * w:
            specks += 1
            continue
        x, y, bw, bh = (
            int(stats[i, j]) for j in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT)
        )
        comp = labels[y : y + bh, x : x + bw] == i
        if np.count_nonzero(comp & band[y : y + bh, x : x + bw]) >= SKIN_BAND_SHARE * area:
            skin += 1
            continue
        keep[i] = True
    out = keep[labels].astype(np.uint8)
    return out, CleanReport(int(keep.sum()), skin, specks, int(mask.sum() - out.sum()))
