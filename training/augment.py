"""Training-time augmentation with NumPy and OpenCV (no framework needed).

Geometric changes are small rotations and isotropic scaling about the image
centre (or, ``strong-zoom``, the middle of the chest-wall edge), and (``strong``)
an upside-down flip; never a left-right flip, because
preprocessing puts every breast's chest wall on the canonical side and a mirror
would teach the model an orientation it never sees at inference. Intensity
changes are a gamma curve and a contrast/brightness jitter, and (``strong``)
Gaussian blur and noise, which stand in for the detectors, processing and
resolutions of vendors the training data lacks. Image and mask share the same
affine map (linear for the image, nearest for the mask).

Presets (:data:`PRESETS`): ``basic`` (sessions 1-2), ``strong`` (issue #12's
recipe candidate: wider gamma/contrast, rotation 15 deg, scale 0.85-1.2, blur,
noise, vertical flip), ``strong-zoom`` (``strong`` with scale 0.5-1.25 about the
middle of the chest-wall edge), ``strong-aspect`` (``strong`` with the breast's
width scaled by 1/a, a in 0.9-1.6, about the chest-wall edge), ``strong-appearance``
(``strong`` with a random monotone intensity curve and an unsharp mask that softens or
sharpens the tissue) and ``none``.

Why ``strong-zoom``: the CDD-CESM lesions the model learns from are large (median
equivalent diameter ~70 px of the 512 px grid, ~14 % under 20 px; benchmarks/lesion_sizes.py) while an 8 mm
screening mass is ~14 px there, and the shipped model draws nearly one blob size
whatever the lesion's (outline log-log slope 0.36 on its training views). Zooming
out shows it smaller lesions; the anchor keeps the chest wall on its edge, where
preprocessing always puts it, so only the breast's extent changes, not its side.

Why ``strong-aspect``: a scan can reach the model at another aspect than its training files (the
CDD-CESM files were resized to 512x512 by their source, squashing their anatomy by an estimated ~1.09,
``benchmarks/breast_aspect.py``; detectors and positioning differ), and preprocessing (the long side
fitted to the grid) turns a taller breast into a narrower one. On validation views stretched 1.53x top
to bottom the shipped model's Dice moved by up to -0.46 on one view (``benchmarks/aspect_proxy.py``).
Narrowing the breast about the chest wall by a random factor shows the model a range of aspects.

Why ``strong-appearance``: after preprocessing (percentile window, CLAHE) the sources still look
unlike each other: CDD-CESM's low-energy views are crisp and edge-enhanced, with dark fat and bright
strands, while mini-MIAS's digitised films are hazy, low in contrast and bright. A model trained
without mini-MIAS marks ~6 false components on every mini-MIAS normal film (README, "Generalisation
to a source a model never saw"). The curve changes the shape of the intensity mapping (a gamma bends
it only one way) and the unsharp mask the local contrast and texture, both inside the tissue only,
as a vendor's processing would. Session 18 measured it by leaving mini-MIAS out of training (two
seeds per arm): not adopted, the seed moved the false marks on mini-MIAS's normal films more than the
preset did (README, "Appearance augmentation against an unseen source").
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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
    vflip: float = 0.0
    blur_sigma: tuple[float, float] = (0.0, 0.0)
    noise_std: tuple[float, float] = (0.0, 0.0)
    #: Fixed point of rotation and scaling: ``centre`` of the image, or ``chest-wall``, the
    #: middle of the left edge (the canonical chest-wall side), which stays where it is.
    anchor: str = "centre"
    #: Range of ``a``: the image's columns are scaled by ``1 / a`` about the chest-wall edge (column 0)
    #: after the rotation and scaling; (1, 1) draws nothing (the random stream of older presets is kept).
    aspect: tuple[float, float] = (1.0, 1.0)
    #: Largest blend ``s`` (drawn in [0, curve]) of a random monotone intensity curve into the identity,
    #: applied to the tissue after the gamma and contrast; 0 draws nothing (older presets' streams are kept).
    curve: float = 0.0
    #: Range of the unsharp-mask amount ``a`` (``out + a * (out - blur(out))``: a > 0 sharpens, a < 0
    #: softens) and of the blur's sigma in pixels; (0, 0) draws nothing.
    unsharp: tuple[float, float] = (0.0, 0.0)
    unsharp_sigma: tuple[float, float] = (1.0, 4.0)

    def __post_init__(self) -> None:
        if self.anchor not in ("centre", "chest-wall"):
            raise ValueError(f"anchor is {self.anchor!r}; expected 'centre' or 'chest-wall'")

    @classmethod
    def off(cls) -> AugmentConfig:
        """No augmentation."""
        return cls(0.0, (1.0, 1.0), (1.0, 1.0), (1.0, 1.0), 0.0, 0.0)

    @classmethod
    def preset(cls, name: str) -> AugmentConfig | None:
        """The named preset (see the module doc); None for ``none``."""
        if name not in PRESETS:
            from bcedge.errors import ConfigError

            raise ConfigError(f"unknown augmentation {name!r}; expected one of {', '.join(PRESETS)}")
        return PRESETS[name]


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
    squeeze = 1.0 / rng.uniform(*config.aspect) if config.aspect != (1.0, 1.0) else 1.0
    if angle != 0.0 or scale != 1.0 or squeeze != 1.0:
        x0 = 0.0 if config.anchor == "chest-wall" else (size - 1) / 2.0
        matrix = cv2.getRotationMatrix2D((x0, (size - 1) / 2.0), angle, scale)
        matrix[0] *= squeeze  # x' = squeeze * x: column 0, the chest wall, stays on its edge
        img2 = cv2.warpAffine(image[..., 0], matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)
        msk2 = cv2.warpAffine(
            np.ascontiguousarray(mask[..., 0]), matrix, (size, size), flags=cv2.INTER_NEAREST, borderValue=0
        )
        image, mask = img2[..., None], msk2[..., None].astype(mask.dtype)
    if config.vflip > 0 and rng.random() < config.vflip:
        image, mask = image[::-1].copy(), mask[::-1].copy()
    gamma = rng.uniform(*config.gamma)
    contrast = rng.uniform(*config.contrast)
    shift = rng.uniform(-config.brightness, config.brightness)
    out = np.power(np.clip(image, 0.0, 1.0), gamma, dtype=np.float32)
    # Background stays black: jitter only where there is tissue.
    tissue = out > 0
    out = np.where(tissue, out * contrast + shift, 0.0).astype(np.float32)
    if config.curve > 0:
        out = np.where(tissue, _random_curve(np.clip(out, 0.0, 1.0), rng, config.curve), 0.0).astype(np.float32)
    if config.unsharp != (0.0, 0.0):
        amount = rng.uniform(*config.unsharp)
        sigma = rng.uniform(*config.unsharp_sigma)
        soft = cv2.GaussianBlur(out[..., 0], (0, 0), sigma)[..., None]
        out = np.where(tissue, out + np.float32(amount) * (out - soft), 0.0).astype(np.float32)
    if config.blur_sigma[1] > 0:
        sigma = rng.uniform(*config.blur_sigma)
        if sigma > 0.3:
            out = cv2.GaussianBlur(out[..., 0], (0, 0), sigma)[..., None]
    if config.noise_std[1] > 0:
        std = rng.uniform(*config.noise_std)
        out = out + np.where(tissue, rng.normal(0.0, std, out.shape), 0.0).astype(np.float32)
    return np.clip(out, 0.0, 1.0).astype(np.float32), mask


#: Knots of :func:`_random_curve` (inputs, evenly spaced in [0, 1]).
_CURVE_KNOTS = np.linspace(0.0, 1.0, 6, dtype=np.float32)


def _random_curve(values: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """A random monotone map of [0, 1] onto itself, blended with the identity, applied to ``values``.

    The curve is piecewise linear through :data:`_CURVE_KNOTS` with outputs the running sum of
    Dirichlet(2) increments (0 at 0, 1 at 1, increasing): film characteristic curves, vendor
    look-up tables and processing differ in shape, not only in the gamma's one bend. The blend
    ``(1 - s) x + s curve(x)``, ``s ~ U(0, strength)``, keeps it a mild change on average.

    Args:
        values: float32 in [0, 1], any shape.
        rng: the caller's generator.
        strength: the largest blend, in (0, 1].

    Returns:
        float32 in [0, 1], the shape of ``values``; order of values preserved (monotone).
    """
    steps = rng.dirichlet(np.full(len(_CURVE_KNOTS) - 1, 2.0))
    knots_out = np.concatenate([[0.0], np.cumsum(steps)]).astype(np.float32)
    knots_out[-1] = 1.0
    s = np.float32(rng.uniform(0.0, strength))
    mapped = np.interp(values, _CURVE_KNOTS, knots_out).astype(np.float32)
    return (1 - s) * values + s * mapped


PRESETS: dict[str, AugmentConfig | None] = {
    "basic": AugmentConfig(),
    "strong": AugmentConfig(
        rotate_deg=15.0,
        scale=(0.85, 1.2),
        gamma=(0.6, 1.6),
        contrast=(0.75, 1.3),
        brightness=0.08,
        probability=0.9,
        vflip=0.5,
        blur_sigma=(0.0, 1.2),
        noise_std=(0.0, 0.03),
    ),
    "none": None,
}
PRESETS["strong-zoom"] = replace(PRESETS["strong"], scale=(0.5, 1.25), anchor="chest-wall")
PRESETS["strong-aspect"] = replace(PRESETS["strong"], aspect=(0.9, 1.6))
PRESETS["strong-appearance"] = replace(PRESETS["strong"], curve=0.8, unsharp=(-0.6, 1.5))
