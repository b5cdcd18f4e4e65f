"""Lesion copy-paste: real training lesions placed on normal training films.

Why: the training split holds 104 lesion images (74 with pixel masks, 36 of those DM views; 132
lesion components) against 147 normal films, and the shipped model calls dense fibroglandular tissue a mass
(1.6 false components per training lesion view, ``benchmarks/outline_probe.py``). A lesion pasted
onto a normal film at a random breast position, often beside or inside dense tissue, shows the
model the same mass against backgrounds it never had, and the contrast between a mass and the
dense tissue around it, without new annotations (copy-paste augmentation).

How: :class:`LesionBank` cuts every lesion component of the training views with pixel masks
(contrast-enhanced ``CM`` views left out by default: they look unlike the standard mammograms the
model is meant for) with a margin. :func:`paste_lesion` scales and flips one, puts its excess over the ring
of tissue around it in its source onto the ring's level at the target (a mass is judged against
its surroundings; squeezed to stay under white), and blends it in with a feathered edge; the mask
gains the lesion. Pasting runs before the geometric augmentation, so the pasted lesion is warped with
its film. Measured (run CP512, README "Lesion copy-paste"): no gain over its control at n=9.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

#: Preprocessed images are 0 outside the breast; above this counts as breast (patch centres, paste targets).
BREAST_LEVEL = 0.05


@dataclass(frozen=True)
class LesionCrop:
    """One lesion cut from a training view.

    Attributes:
        image: (h, w) float32 in [0, 1], the lesion and a margin of its surroundings.
        mask: (h, w) uint8 in {0, 1}, the lesion component alone.
        ring_mean: mean of ``image`` over the ring of breast tissue around the lesion.
        source_id: the view it came from.
    """

    image: np.ndarray
    mask: np.ndarray
    ring_mean: float
    source_id: str


def _ring(mask: np.ndarray, width: int) -> np.ndarray:
    """(h, w) bool: pixels within ``width`` px of ``mask`` (uint8 {0,1}) but outside it."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    return (cv2.dilate(mask, kernel) > 0) & (mask == 0)


def _solidity(mask: np.ndarray) -> float:
    """Area of ``mask`` (uint8 {0,1}, one component) over the area of its convex hull."""
    points = cv2.findNonZero(mask)
    hull = cv2.contourArea(cv2.convexHull(points))
    return float(mask.sum()) / max(hull, 1.0)


@dataclass(frozen=True)
class LesionBank:
    """Lesion crops to paste (:meth:`from_set`)."""

    crops: tuple[LesionCrop, ...]

    def __len__(self) -> int:
        return len(self.crops)

    @classmethod
    def from_set(
        cls,
        data,
        *,
        exclude_ids_with: str = "_CM_",
        margin: int = 8,
        ring: int = 6,
        min_area: int = 30,
        max_side: int = 200,
        min_solidity: float = 0.6,
    ) -> LesionBank:
        """Cut the lesion components of ``data`` (a :class:`training.data.ArraySet`).

        Only images with pixel masks whose id does not hold ``exclude_ids_with`` ("" keeps all); components under
        ``min_area`` px, over ``max_side`` px on a side, less solid than ``min_solidity`` (area over convex-hull
        area: the thin curved outlines some CDD-CESM masks trace are no mass to paste), or without breast
        tissue around them are left out.
        """
        crops: list[LesionCrop] = []
        for i, (sample_id, kind) in enumerate(zip(data.ids, data.mask_kinds, strict=True)):
            if kind != "pixel" or (exclude_ids_with and exclude_ids_with in sample_id):
                continue
            image = data.images[i, ..., 0]
            mask = (data.masks[i, ..., 0] == 1).astype(np.uint8)
            count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
            s = image.shape[0]
            for label in range(1, count):
                x, y, w, h, area = (int(v) for v in stats[label])
                if area < min_area or max(w, h) > max_side:
                    continue
                y0, y1 = max(y - margin, 0), min(y + h + margin, s)
                x0, x1 = max(x - margin, 0), min(x + w + margin, s)
                crop_mask = (labels[y0:y1, x0:x1] == label).astype(np.uint8)
                if _solidity(crop_mask) < min_solidity:
                    continue
                crop_image = np.ascontiguousarray(image[y0:y1, x0:x1], dtype=np.float32)
                around = _ring(crop_mask, ring) & (crop_image > BREAST_LEVEL)
                if not around.any():
                    continue
                crops.append(LesionCrop(crop_image, crop_mask, float(crop_image[around].mean()), sample_id))
        return cls(tuple(crops))


def paste_lesion(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    bank: LesionBank,
    *,
    scale: tuple[float, float] = (0.6, 1.2),
    ring: int = 6,
    feather: float = 1.5,
    tries: int = 10,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Paste one random lesion of ``bank`` onto ``image`` at a random breast position.

    Args:
        image: (S, S, 1) float32 in [0, 1] (changed in place and returned).
        mask: (S, S, 1) float32 (lesion 1; other values, e.g. hard-negative marks, are kept elsewhere).
        rng: the generator.
        bank: the lesions.
        scale: range of the lesion's random resize.
        ring: width of the surrounding ring whose mean intensity is matched, px.
        feather: Gaussian sigma of the blended edge, px.
        tries: positions tried before giving up (a small breast may not hold the lesion).

    Returns:
        (image, mask, pasted): pasted is False when no position held at least 95 % of the
        lesion on breast tissue with headroom under white; the arrays are then unchanged.
    """
    if not len(bank):
        return image, mask, False
    crop = bank.crops[int(rng.integers(len(bank)))]
    factor = float(rng.uniform(*scale))
    flip_y, flip_x = rng.random() < 0.5, rng.random() < 0.5
    h0, w0 = crop.mask.shape
    h, w = max(round(h0 * factor), 3), max(round(w0 * factor), 3)
    src = cv2.resize(crop.image, (w, h), interpolation=cv2.INTER_LINEAR)
    lesion = (cv2.resize(crop.mask.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5).astype(np.uint8)
    if flip_y:
        src, lesion = src[::-1], lesion[::-1]
    if flip_x:
        src, lesion = src[:, ::-1], lesion[:, ::-1]
    src, lesion = np.ascontiguousarray(src), np.ascontiguousarray(lesion)
    if not lesion.any():
        return image, mask, False
    s = image.shape[0]
    if h >= s or w >= s:
        return image, mask, False
    plane = image[..., 0]
    breast = np.argwhere(plane > BREAST_LEVEL)
    if not len(breast):
        return image, mask, False
    around = _ring(lesion, ring)
    inside = lesion.astype(bool)
    for _ in range(tries):
        cy, cx = breast[int(rng.integers(len(breast)))]
        y0, x0 = int(cy) - h // 2, int(cx) - w // 2
        if y0 < 0 or x0 < 0 or y0 + h > s or x0 + w > s:
            continue
        window = plane[y0 : y0 + h, x0 : x0 + w]
        on_breast = window > BREAST_LEVEL
        if on_breast[inside].mean() < 0.95:
            continue
        target_ring = around & on_breast
        if not target_ring.any():
            continue
        # The lesion's excess over its own surroundings, on the target's surroundings; squeezed (not clipped)
        # when it would pass white, since inside bright dense tissue a mass has little headroom and a
        # clipped, flat white blob is no mass the model will ever see.
        level = float(window[target_ring].mean())
        excess = src - crop.ring_mean
        peak = float(excess[inside].max())
        headroom = 0.98 - level
        if headroom < 0.05:
            continue
        if peak > headroom:
            excess = excess * (headroom / peak)
        shifted = np.clip(level + excess, 0.0, 1.0)
        # Feathered edge: 1 on the lesion, fading over ~2 feather widths outside it; never onto background.
        alpha = np.maximum(cv2.GaussianBlur(lesion.astype(np.float32), (0, 0), feather), inside) * on_breast
        plane[y0 : y0 + h, x0 : x0 + w] = alpha * shifted + (1.0 - alpha) * window
        mask[y0 : y0 + h, x0 : x0 + w, 0][inside] = 1.0
        return image, mask, True
    return image, mask, False
