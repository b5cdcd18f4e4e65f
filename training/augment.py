"""Training-time augmentation with NumPy and OpenCV (no framework needed).

Geometric changes are small rotations and isotropic scaling about the image
centre; no flips, because preprocessing puts every breast on the canonical side
and a flip would teach the model an orientation it never sees at inference.
Intensity changes are a gamma curve and a contrast/brightness jitter. Image and
mask share the same affine map (linear for the image, nearest for the mask).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random changes; ``AugmentConfig.off()`` disables everything."""

    rotate_deg: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    gamma: tuple[float, float] = (0.8, 1.25)
    contrast: tuple[float, float] = (0.9, 1.1)
    brightness: float = 0.05
    probability: float = 0.8

    @classmethod
    def off(cls) -> AugmentConfig:
        """No augmentation."""
        return cls(0.0, (1.0, 1.0), (1.0, 1.0), (1.0, 1.0), 0.0, 0.0)


def augment(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, config: AugmentConfig = AugmentConfig()
) -> tuple[np.ndarray, np.ndarray]:
    """Randomly transform one training pair.

    Args:
        image: (S, S, 1) float32 in [0, 1].
        mask: (S, S, 1) uint8 or float in {0, 1}.
        rng: the generator (seeded by the caller for reproducibility).
        config: ranges.

    Returns:
        (image, mask) with the same shapes and dtypes; image stays in [0, 1].
    """
    if config.probability <= 0 or rng.random() >= config.probability:
        return image, mask
    size = image.shape[0]
    angle = rng.uniform(-config.rotate_deg, config.rotate_deg)
    scale = rng.uniform(*config.scale)
    if angle != 0.0 or scale != 1.0:
        matrix = cv2.getRotationMatrix2D(((size - 1) / 2.0, (size - 1) / 2.0), angle, scale)
        img2 = cv2.warpAffine(image[..., 0], matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)
        msk2 = cv2.warpAffine(
            np.ascontiguousarray(mask[..., 0]), matrix, (size, size), flags=cv2.INTER_NEAREST, borderValue=0
        )
        image, mask = img2[..., None], msk2[..., None].astype(mask.dtype)
    gamma = rng.uniform(*config.gamma)
    contrast = rng.uniform(*config.contrast)
    shift = rng.uniform(-config.brightness, config.brightness)
    out = np.power(np.clip(image, 0.0, 1.0), gamma, dtype=np.float32)
    # Background stays black: jitter only where there is tissue.
    tissue = out > 0
    out = np.where(tissue, out * contrast + shift, 0.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32), mask
