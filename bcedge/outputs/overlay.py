"""The overlay PNG: lesion contours and finding numbers on the displayed mammogram, downscaled for viewing."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bcedge.errors import InputError
from bcedge.imageio import atomic_write_bytes

if TYPE_CHECKING:
    from bcedge.pipeline import Result
    from bcedge.postprocess import Finding

#: Long side of the overlay PNG in pixels (smaller images are not enlarged).
OVERLAY_LONG_SIDE = 1024
#: Overlay contour colour (BGR) and the label colour.
CONTOUR_BGR = (0, 0, 255)
LABEL_BGR = (0, 255, 255)


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
