"""Deterministic synthetic mammograms ("phantoms") with lesion masks, written as MG DICOM.

For tests, demos and CI-sized training where real scans cannot travel. Each
phantom has a breast silhouette (CC or MLO, with a pectoral muscle triangle on
MLO), a skin line, fibroglandular texture (1/f**beta noise, beta = 3, denser near
the chest wall), 0-3 masses (round, oval, lobulated, spiculated; 5-30 mm),
optional burned-in labels outside the breast, and quantum-like noise.

Orientation (the standard hanging convention, as :mod:`bcedge.dicom` reads
Patient Orientation (0020,0020)): the chest wall lies on the image edge that
faces the other breast. A LEFT breast has its chest wall on the LEFT image edge
and its nipple pointing right (rows run towards the nipple: ``A\\R`` for CC,
``A\\FR`` for MLO); a RIGHT breast is the mirror image, chest wall on the RIGHT
edge (``P\\L`` for CC, ``P\\FL`` for MLO). On MLO the pectoral muscle sits in
the top corner at the chest wall.

Physical consistency: anatomy is drawn in millimetres on a fixed 0.5 mm work
grid and resampled to the pixel grid, so the same seed at another ``scale`` gives
the same breast and masses (same mm positions and diameters) on a coarser grid;
the pixel spacing grows as the image shrinks. Only the quantum noise, drawn per
pixel, differs between scales.

Reproducibility: every random draw comes from ``numpy.random.default_rng(seed)``
in a fixed order (options given explicitly still consume their draws, so fixing
the laterality does not change the anatomy), and the UIDs and dates are derived
from the seed, so the same call writes byte-identical files.

Why one module: one generator whose random draws happen in one fixed order (reproducibility
above); its parts (silhouette, texture, masses, labels, DICOM header) are only used together.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bcedge.dicom_write import MGTags, build_mg_dataset, save_atomic
from bcedge.errors import ConfigError, InputError
from bcedge.imageio import atomic_write_bytes, write_png

#: Full-field detectors: name -> (pixel spacing mm, rows, columns) at scale 1.0 (~23 x 18 cm fields).
DETECTORS: dict[str, tuple[float, int, int]] = {
    "70um": (0.07, 3328, 2560),
    "85um": (0.085, 2816, 2048),
    "100um": (0.1, 2294, 1914),
}
MASS_SHAPES = ("round", "oval", "lobulated", "spiculated")
#: Mass (core) diameter range in mm.
MASS_DIAMETER_MM = (5.0, 30.0)
MAX_MASSES = 3
BITS_CHOICES = (12, 14, 16)
PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")
#: Power-law exponent of the fibroglandular texture spectrum (P(f) ~ 1/f**beta).
TEXTURE_BETA = 3.0
#: Cell size of the work grid on which smooth anatomy is drawn, in mm.
WORK_CELL_MM = 0.5
#: Smallest image side accepted (rows or columns) after scaling.
MIN_SIDE_PX = 64

# Displayed intensities (dense tissue bright), before conversion to stored values.
_BACKGROUND = 0.03
_LABEL_BRIGHT = 0.97
_LABEL_DARK = 0.25
_PATIENT_ORIENTATION = {
    ("L", "CC"): ["A", "R"],
    ("R", "CC"): ["P", "L"],
    ("L", "MLO"): ["A", "FR"],
    ("R", "MLO"): ["P", "FL"],
}


@dataclass
class Phantom:
    """One synthetic mammogram with its ground truth.

    Attributes:
        stored: (H, W) uint16 stored pixel values within ``tags.bits_stored`` bits,
            laid out as ``tags.photometric`` says (MONOCHROME1: dense tissue low).
        mask: (H, W) uint8 in {0, 1}: union of the mass cores (spicules excluded).
        tags: the DICOM header (UIDs, dates, Patient Orientation in ``extra``).
        masses: one dict per mass: ``centre`` (row, col) in pixels (float),
            ``centre_mm`` (row, col) in mm from the top-left corner, ``diameter_mm``
            (largest core diameter), ``shape``, ``contrast`` (display units on a
            0-1 scale), ``area_px`` (mask pixels).
        breast: (H, W) uint8 in {0, 1}: the breast silhouette (pectoral included).
        pectoral: (H, W) uint8 in {0, 1}: the pectoral muscle (empty on CC).
        labels: (H, W) uint8 in {0, 1}: burned-in markers and ruler (outside the breast).
        seed: the seed it was made from.
        density: fibroglandular density used, in [0, 1].
    """

    stored: np.ndarray
    mask: np.ndarray
    tags: MGTags
    masses: list[dict[str, Any]]
    breast: np.ndarray
    pectoral: np.ndarray
    labels: np.ndarray
    seed: int = 0
    density: float = 0.5

    @property
    def spacing_mm(self) -> float:
        """Isotropic pixel spacing in mm."""
        spacing = self.tags.pixel_spacing_mm
        return float(spacing[0]) if spacing else float("nan")

    def dataset(self) -> Any:
        """The pydicom dataset, with the file meta SOP Instance UID matching the (seeded) dataset one."""
        ds = build_mg_dataset(self.stored, self.tags)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        return ds

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the phantom as an MG DICOM file (atomically); returns the path."""
        return save_atomic(self.dataset(), path)


# --------------------------------------------------------------------------- checks


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"phantom seed must be an integer >= 0, got {seed!r}")
    return int(seed)


def _check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    if value is not None and value not in choices:
        raise ConfigError(f"phantom {name} must be one of {', '.join(map(str, choices))}; got {value!r}")
    return value


def _grid(detector: str, scale: float) -> tuple[int, int, float]:
    """(rows, cols, spacing_mm) for a detector at ``scale``; spacing rounded as the header writes it."""
    if not (isinstance(scale, (int, float)) and 0.0 < scale <= 1.0):
        raise ConfigError(f"phantom scale must be in (0, 1], got {scale!r}")
    spacing0, rows0, cols0 = DETECTORS[detector]
    rows, cols = round(rows0 * scale), round(cols0 * scale)
    if min(rows, cols) < MIN_SIDE_PX:
        smallest = MIN_SIDE_PX / min(rows0, cols0)
        raise ConfigError(f"phantom scale {scale} gives a {rows}x{cols} image; use scale >= {smallest:.3f}")
    # The header stores 6 significant digits; use exactly that value so mm sizes agree on read-back.
    spacing = float(f"{spacing0 / scale:.6g}")
    return rows, cols, spacing


# --------------------------------------------------------------------------- texture


def power_law_noise(rng: np.random.Generator, shape: tuple[int, int], cell_mm: float, beta: float) -> np.ndarray:
    """Gaussian noise whose power spectrum falls as 1/f**beta (mammographic texture has beta ~ 3).

    Args:
        rng: random generator (consumes one (H, W) normal draw).
        shape: (H, W) of the grid.
        cell_mm: grid cell size in mm (sets the frequency axis).
        beta: spectral exponent.

    Returns:
        (H, W) float32, zero mean, unit standard deviation.
    """
    h, w = shape
    fy = np.fft.fftfreq(h, d=cell_mm)[:, None]
    fx = np.fft.rfftfreq(w, d=cell_mm)[None, :]
    # A roll-off below 1/(60 mm) keeps the field from being one breast-sized blob.
    f2 = fy * fy + fx * fx
    # A soft cut at half the grid's Nyquist frequency keeps the grid from showing once resized up.
    nyquist = 0.5 / cell_mm
    gain = (f2 + (1.0 / 60.0) ** 2) ** (-beta / 4.0) * np.exp(-f2 / (0.5 * nyquist) ** 2)
    spectrum = np.fft.rfft2(rng.standard_normal((h, w))) * gain
    out = np.fft.irfft2(spectrum, s=(h, w))
    out -= out.mean()
    out /= max(float(out.std()), 1e-12)
    return out.astype(np.float32)


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


# --------------------------------------------------------------------------- anatomy


@dataclass
class _Anatomy:
    """Random anatomy parameters in mm (canonical orientation: chest wall at x = 0, left edge)."""

    height_mm: float
    width_mm: float
    view: str
    depth_mm: float  # chest wall to nipple
    nipple_y: float
    half_top: float
    half_bottom: float
    power: float
    wobble: list[tuple[float, float, float]]  # (amplitude, cycles over the height, phase)
    pect_width: float
    pect_height: float
    pect_power: float

    def depth(self, y: np.ndarray) -> np.ndarray:
        """Breast extent from the chest wall (mm) for rows at ``y`` mm."""
        t = np.where(y < self.nipple_y, (self.nipple_y - y) / self.half_top, (y - self.nipple_y) / self.half_bottom)
        base = np.clip(1.0 - np.clip(t, 0.0, 1.0) ** self.power, 0.0, 1.0) ** (1.0 / self.power)
        mod = np.ones_like(y)
        for amp, cycles, phase in self.wobble:
            mod = mod + amp * np.sin(2.0 * np.pi * cycles * y / self.height_mm + phase)
        return self.depth_mm * base * mod

    def pectoral_edge(self, y: np.ndarray) -> np.ndarray:
        """Pectoral muscle extent from the chest wall (mm) for rows at ``y`` mm; 0 on CC."""
        if self.view != "MLO":
            return np.zeros_like(y)
        t = np.clip(1.0 - y / self.pect_height, 0.0, 1.0)
        return self.pect_width * t**self.pect_power


def _draw_anatomy(rng: np.random.Generator, view: str, height_mm: float, width_mm: float) -> _Anatomy:
    depth = rng.uniform(0.55, 0.82) * width_mm
    power = rng.uniform(1.8, 2.6)
    wobble = [(rng.uniform(0.0, 0.03) / k, float(k), rng.uniform(0, 2 * np.pi)) for k in (1, 2, 3)]
    nipple = rng.uniform(0.44, 0.56)
    half_top = rng.uniform(0.36, 0.46)
    half_bottom = rng.uniform(0.36, 0.46)
    pect_w, pect_h, pect_p = rng.uniform(0.6, 0.9), rng.uniform(0.32, 0.55), rng.uniform(0.75, 1.0)
    mlo_nipple, mlo_top, mlo_bottom = rng.uniform(0.5, 0.6), rng.uniform(1.05, 1.25), rng.uniform(0.32, 0.4)
    if view == "CC":
        ny = nipple * height_mm
        # Keep the whole CC silhouette inside the field with a few mm to spare.
        top = min(half_top * height_mm, ny - 4.0)
        bottom = min(half_bottom * height_mm, height_mm - ny - 4.0)
    else:
        # MLO: the breast runs off the top edge (axilla) and curves back near the bottom (fold).
        ny = mlo_nipple * height_mm
        top = mlo_top * ny
        bottom = min(mlo_bottom * height_mm, height_mm - ny - 3.0)
    anatomy = _Anatomy(
        height_mm=height_mm,
        width_mm=width_mm,
        view=view,
        depth_mm=depth,
        nipple_y=ny,
        half_top=top,
        half_bottom=bottom,
        power=power,
        wobble=wobble,
        pect_width=0.0,
        pect_height=1.0,
        pect_power=1.0,
    )
    if view == "MLO":
        top_depth = float(anatomy.depth(np.array([0.0]))[0])
        anatomy.pect_width = pect_w * top_depth
        anatomy.pect_height = pect_h * height_mm
        anatomy.pect_power = pect_p
    return anatomy


def _mass_radius_table(rng: np.random.Generator, shape: str, n: int = 360) -> np.ndarray:
    """Core radius r(theta) on ``n`` angles in [0, 2 pi), normalised to max 1."""
    theta = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    p1, p2, p3 = rng.uniform(0.0, 2.0 * np.pi, 3)
    if shape == "round":
        r = 1.0 + 0.03 * np.cos(2 * theta + p1) + 0.02 * np.cos(3 * theta + p2)
    elif shape == "oval":
        b = rng.uniform(0.55, 0.8)
        r = 1.0 / np.sqrt(np.cos(theta - p1) ** 2 + (np.sin(theta - p1) / b) ** 2)
    elif shape == "lobulated":
        k = int(rng.integers(3, 6))
        r = (
            1.0
            + rng.uniform(0.12, 0.22) * np.cos(k * theta + p1)
            + rng.uniform(0.05, 0.1) * np.cos((k + 1) * theta + p2)
        )
    else:  # spiculated: an irregular core; spicules are drawn separately
        r = 1.0 + 0.08 * np.cos(3 * theta + p1) + 0.05 * np.cos(5 * theta + p2) + 0.03 * np.cos(7 * theta + p3)
    return r / r.max()


@dataclass
class _MassPlan:
    shape: str
    diameter_mm: float
    contrast: float
    blur_mm: float
    radii: np.ndarray
    spicules: list[tuple[float, float, float]]  # (angle, length mm beyond the core, width mm)
    centre_mm: tuple[float, float] = (0.0, 0.0)

    @property
    def reach_mm(self) -> float:
        """Radius that the drawn mass (spicules included) can reach."""
        extra = max((length for _, length, _ in self.spicules), default=0.0)
        return self.diameter_mm / 2.0 + extra + 2.0 * self.blur_mm


def _plan_mass(rng: np.random.Generator, shape: str, diameter_mm: float) -> _MassPlan:
    contrast = rng.uniform(0.12, 0.26)
    blur = rng.uniform(0.5, 1.0) if shape == "spiculated" else rng.uniform(0.25, 0.7)
    radii = _mass_radius_table(rng, shape)
    spicules: list[tuple[float, float, float]] = []
    if shape == "spiculated":
        for _ in range(int(rng.integers(8, 17))):
            length = min(rng.uniform(0.5, 1.2) * diameter_mm / 2.0, 10.0)
            spicules.append((rng.uniform(0.0, 2.0 * np.pi), length, rng.uniform(0.3, 0.7)))
    return _MassPlan(shape, diameter_mm, contrast, blur, radii, spicules)


def _draw_mass_specs(rng: np.random.Generator) -> tuple[int, list[tuple[str, float]]]:
    """A drawn mass count (0-3) and a pool of :data:`MAX_MASSES` (shape, log-uniform diameter mm) pairs.

    The pool is always full, so asking for a fixed count consumes the same draws as not asking.
    """
    n = int(rng.choice(MAX_MASSES + 1, p=[0.25, 0.4, 0.22, 0.13]))
    lo, hi = MASS_DIAMETER_MM
    pool = [
        (str(rng.choice(MASS_SHAPES)), float(np.exp(rng.uniform(np.log(lo), np.log(hi))))) for _ in range(MAX_MASSES)
    ]
    return n, pool


def _place_masses(
    rng: np.random.Generator, plans: list[_MassPlan], dist_mm: np.ndarray, cell: tuple[float, float]
) -> list[_MassPlan]:
    """Choose centres (mm) where each mass fits inside the breast, off the pectoral and off the others.

    A mass that does not fit shrinks (down to the smallest diameter) and is dropped if it still does not.
    """
    placed: list[_MassPlan] = []
    cy, cx = cell
    rows, cols = np.nonzero(dist_mm > MASS_DIAMETER_MM[0] / 2.0 + 2.0)
    for plan in plans:
        while True:
            need = plan.reach_mm + 1.0
            ok = dist_mm[rows, cols] > need
            for other in placed:
                gap = plan.diameter_mm / 2.0 + other.diameter_mm / 2.0 + 3.0
                ok &= (
                    ((rows + 0.5) * cy - other.centre_mm[0]) ** 2 + ((cols + 0.5) * cx - other.centre_mm[1]) ** 2
                ) > (gap * gap)
            idx = np.flatnonzero(ok)
            if idx.size:
                k = idx[int(rng.integers(idx.size))]
                plan.centre_mm = ((rows[k] + 0.5) * cy, (cols[k] + 0.5) * cx)
                placed.append(plan)
                break
            if plan.diameter_mm <= MASS_DIAMETER_MM[0]:
                break
            shrink = max(MASS_DIAMETER_MM[0] / plan.diameter_mm, 0.8)
            plan.diameter_mm *= shrink
            plan.spicules = [(a, length * shrink, w) for a, length, w in plan.spicules]
    return placed


def _render_mass(image: np.ndarray, mask: np.ndarray, plan: _MassPlan, spacing: float) -> tuple[float, float, int]:
    """Add one mass to ``image`` (float32, display units) and its core to ``mask`` (uint8), in place.

    Returns:
        (row, col) centre in pixels and the number of core pixels.
    """
    h, w = image.shape
    cr, cc = plan.centre_mm[0] / spacing - 0.5, plan.centre_mm[1] / spacing - 0.5
    reach = plan.reach_mm / spacing + 2.0
    r0, r1 = max(int(cr - reach), 0), min(int(cr + reach) + 2, h)
    c0, c1 = max(int(cc - reach), 0), min(int(cc + reach) + 2, w)
    yy = (np.arange(r0, r1, dtype=np.float32)[:, None] - cr) * spacing
    xx = (np.arange(c0, c1, dtype=np.float32)[None, :] - cc) * spacing
    rho = np.sqrt(yy * yy + xx * xx)
    theta = np.mod(np.arctan2(yy, xx), 2.0 * np.pi)
    table = plan.radii * (plan.diameter_mm / 2.0)
    n = table.size
    radius = np.interp(theta.ravel(), np.arange(n) * (2.0 * np.pi / n), table, period=2.0 * np.pi)
    radius = radius.reshape(theta.shape).astype(np.float32)
    inside = rho <= radius
    # A dome with a soft shoulder: masses are denser in the middle, with a visible but blurred margin.
    dome = np.sqrt(np.clip(1.0 - (rho / radius) ** 2, 0.0, 1.0))
    profile = (inside * (0.45 + 0.55 * dome)).astype(np.float32)
    weight = inside.astype(np.float32)
    sigma = plan.blur_mm / spacing
    if sigma >= 0.3:
        profile = cv2.GaussianBlur(profile, (0, 0), sigma)
        weight = cv2.GaussianBlur(weight, (0, 0), sigma)
    # A mass is denser than the tissue it displaces: lift a fatty (dark) spot under it up to the
    # surrounding level first, keeping the fine texture, then add the mass's own contrast.
    patch = image[r0:r1, c0:c1]
    local = cv2.GaussianBlur(patch, (0, 0), max(0.25 * plan.diameter_mm / spacing, 0.5))
    fill = np.maximum(np.float32(np.percentile(patch, 75)) - local, 0.0) * weight
    if plan.spicules:
        # Spicules taper from the core outwards and keep sharper edges than the core.
        lines = np.zeros_like(profile)
        angles = np.arange(n) * (2.0 * np.pi / n)
        for angle, length, width in plan.spicules:
            start = float(np.interp(angle, angles, table, period=2.0 * np.pi)) * 0.85
            end = start / 0.85 + length
            step = (math.cos(angle) / spacing, math.sin(angle) / spacing)
            for k in range(3):
                a, b = start + (end - start) * k / 3.0, start + (end - start) * (k + 1) / 3.0
                # cv2 takes integer points; 4 fractional bits keep sub-pixel positions.
                pt0 = (round((cc - c0 + a * step[0]) * 16), round((cr - r0 + a * step[1]) * 16))
                pt1 = (round((cc - c0 + b * step[0]) * 16), round((cr - r0 + b * step[1]) * 16))
                thick = max(1, round(width * (1.0 - k / 3.0) / spacing))
                cv2.line(lines, pt0, pt1, 0.7 - 0.15 * k, thick, cv2.LINE_AA, shift=4)
        if 0.15 / spacing >= 0.3:
            lines = cv2.GaussianBlur(lines, (0, 0), 0.15 / spacing)
        profile = np.maximum(profile, lines)
    patch += fill + np.float32(plan.contrast) * profile
    mask[r0:r1, c0:c1] |= inside.astype(np.uint8)
    return float(cr), float(cc), int(np.count_nonzero(inside))


# --------------------------------------------------------------------------- labels


def _free(breast: np.ndarray, labels: np.ndarray, box: tuple[int, int, int, int], margin: int) -> bool:
    r0, r1, c0, c1 = box
    h, w = breast.shape
    if r0 < 0 or c0 < 0 or r1 > h or c1 > w:
        return False
    sl = np.s_[max(r0 - margin, 0) : r1 + margin, max(c0 - margin, 0) : c1 + margin]
    return not breast[sl].any() and not labels[sl].any()


def _burn_labels(
    rng: np.random.Generator,
    image: np.ndarray,
    breast: np.ndarray,
    laterality: str,
    view: str,
    spacing: float,
) -> np.ndarray:
    """Burn a laterality/view marker, a ruler strip and a text line into ``image`` outside the breast.

    Each is placed on the side away from the chest wall, only where it stays at
    least 5 mm from the breast; one that fits nowhere is left out.

    Returns:
        (H, W) uint8 in {0, 1}: the label pixels.
    """
    h, w = image.shape
    labels = np.zeros((h, w), np.uint8)
    margin = max(1, round(5.0 / spacing))
    edge = max(1, round(rng.uniform(6.0, 14.0) / spacing))
    far_side_right = laterality == "L"  # the nipple side, where the field is empty

    def columns(width: int) -> tuple[int, int]:
        return (w - edge - width, w - edge) if far_side_right else (edge, edge + width)

    font = cv2.FONT_HERSHEY_SIMPLEX
    # 1. A bright box with dark text, like a lead marker "L CC".
    text = f"{laterality} {view}" if rng.random() < 0.5 else f"{laterality}{view}"
    box_h = max(6, round(rng.uniform(9.0, 13.0) / spacing))
    (tw, th), base = cv2.getTextSize(text, font, 1.0, 2)
    font_scale = 0.6 * box_h / th
    thick = max(1, round(box_h / 9))
    (tw, th), base = cv2.getTextSize(text, font, font_scale, thick)
    box_w = tw + box_h // 2
    c0, c1 = columns(box_w)
    for r0 in (edge, h - edge - box_h):
        box = (r0, r0 + box_h, c0, c1)
        if _free(breast, labels, box, margin):
            ink = np.zeros((box_h, box_w), np.uint8)  # cv2.putText draws on 8-bit images only
            org = ((box_w - tw) // 2, (box_h + th) // 2)
            cv2.putText(ink, text, org, font, font_scale, 255, thick, cv2.LINE_AA)
            alpha = ink.astype(np.float32) / 255.0
            image[r0 : r0 + box_h, c0:c1] = _LABEL_BRIGHT + (_LABEL_DARK - _LABEL_BRIGHT) * alpha
            labels[r0 : r0 + box_h, c0:c1] = 1
            break
    # 2. A ruler: a bright strip with dark ticks every 5 mm (longer every 10 mm).
    strip_w = max(3, round(6.0 / spacing))
    strip_h = max(8, round(rng.uniform(60.0, 90.0) / spacing))
    c0, c1 = columns(strip_w)
    start = rng.uniform(0.3, 0.5) * h
    for r0 in (int(start), int(h - edge - strip_h), int(edge + 0.15 * h)):
        box = (r0, r0 + strip_h, c0, c1)
        if _free(breast, labels, box, margin):
            patch = np.full((strip_h, strip_w), 0.85, np.float32)
            for k, y in enumerate(np.arange(0.0, strip_h * spacing, 5.0)):
                row = min(round(y / spacing), strip_h - 1)
                length = strip_w if k % 2 == 0 else strip_w // 2
                patch[row : row + max(1, round(0.4 / spacing)), :length] = 0.35
            image[r0 : r0 + strip_h, c0:c1] = patch
            labels[r0 : r0 + strip_h, c0:c1] = 1
            break
    # 3. Plain white text (an operator or institution line) straight onto the background.
    line = f"PHANTOM {int(rng.integers(100, 1000))}"
    text_h = max(5, round(rng.uniform(3.0, 5.0) / spacing))
    (tw, th), base = cv2.getTextSize(line, font, 1.0, 1)
    font_scale = text_h / th
    thick = max(1, round(text_h / 10))
    (tw, th), base = cv2.getTextSize(line, font, font_scale, thick)
    bw, bh = tw + 2, th + base + 2
    c0, c1 = columns(bw)
    r0 = h - edge - bh
    if _free(breast, labels, (r0, r0 + bh, c0, c1), margin):
        ink = np.zeros((bh, bw), np.uint8)
        cv2.putText(ink, line, (1, th + 1), font, font_scale, 255, thick, cv2.LINE_AA)
        alpha = ink.astype(np.float32) / 255.0
        drawn = alpha > 0.2
        region = image[r0 : r0 + bh, c0:c1]
        region[drawn] = _LABEL_BRIGHT * alpha[drawn] + _BACKGROUND * (1.0 - alpha[drawn])
        labels[r0 : r0 + bh, c0:c1] |= drawn.astype(np.uint8)
    return labels


# --------------------------------------------------------------------------- the phantom


def _uid(*parts: object) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["bcedge phantom", *map(str, parts)]))


def make_phantom(
    seed: int,
    *,
    laterality: str | None = None,
    view: str | None = None,
    scale: float = 1.0,
    n_masses: int | None = None,
    masses: Sequence[tuple[str, float]] | None = None,
    detector: str | None = None,
    bits_stored: int | None = None,
    photometric: str | None = None,
    density: float | None = None,
    labels: bool | None = None,
    patient_id: str | None = None,
) -> Phantom:
    """Make one deterministic synthetic mammogram.

    Args:
        seed: integer >= 0; the same arguments give byte-identical pixels and tags.
        laterality: ``L`` or ``R``; None draws one.
        view: ``CC`` or ``MLO``; None draws one.
        scale: in (0, 1]; 1.0 is the detector's full field (up to 3328x2560), smaller
            values shrink the image and grow the spacing so mm sizes stay the same.
        n_masses: 0-3 masses of drawn shapes and sizes; None draws the count.
        masses: explicit (shape, diameter mm) pairs; overrides ``n_masses``.
        detector: a key of :data:`DETECTORS` (sets spacing and size); None draws one.
        bits_stored: 12, 14 or 16; None draws one.
        photometric: ``MONOCHROME1`` (written with Presentation LUT Shape INVERSE)
            or ``MONOCHROME2``; None draws one.
        density: fibroglandular density in [0, 1] (0 fatty, 1 extremely dense); None draws one.
        labels: burn in markers outside the breast; None draws (75 % yes).
        patient_id: Patient ID (0010,0020); default ``PH<seed>``.

    Returns:
        A :class:`Phantom`. A mass that cannot fit inside the breast (after
        shrinking to 5 mm) is left out, so ``len(phantom.masses)`` may be below
        the count asked for.

    Raises:
        ConfigError: an option outside the ranges above.
    """
    seed = _check_seed(seed)
    _check_choice("laterality", laterality, ("L", "R"))
    _check_choice("view", view, ("CC", "MLO"))
    _check_choice("detector", detector, tuple(DETECTORS))
    _check_choice("bits_stored", bits_stored, BITS_CHOICES)
    _check_choice("photometric", photometric, PHOTOMETRICS)
    _check_choice("n_masses", n_masses, tuple(range(MAX_MASSES + 1)))
    if density is not None and not 0.0 <= density <= 1.0:
        raise ConfigError(f"phantom density must be in [0, 1], got {density!r}")
    if masses is not None:
        if len(masses) > MAX_MASSES:
            raise ConfigError(f"phantom takes at most {MAX_MASSES} masses, got {len(masses)}")
        for shape, diameter in masses:
            _check_choice("mass shape", shape, MASS_SHAPES)
            if not MASS_DIAMETER_MM[0] <= diameter <= MASS_DIAMETER_MM[1]:
                raise ConfigError(f"phantom mass diameter must be in 5-30 mm, got {diameter!r}")

    rng = np.random.default_rng(seed)
    # Every choice is drawn, then overridden, so fixing one option leaves the rest unchanged.
    drawn_lat = str(rng.choice(["L", "R"]))
    drawn_view = str(rng.choice(["CC", "MLO"]))
    drawn_det = str(rng.choice(list(DETECTORS)))
    drawn_bits = int(rng.choice(BITS_CHOICES))
    drawn_photo = str(rng.choice(PHOTOMETRICS))
    drawn_density = float(rng.beta(2.0, 2.5))
    drawn_labels = bool(rng.random() < 0.75)
    drawn_count, mass_pool = _draw_mass_specs(rng)
    laterality = laterality or drawn_lat
    view = view or drawn_view
    detector = detector or drawn_det
    bits = bits_stored or drawn_bits
    photometric = photometric or drawn_photo
    density = drawn_density if density is None else float(density)
    with_labels = drawn_labels if labels is None else bool(labels)
    if masses is not None:
        specs = [(str(s), float(d)) for s, d in masses]
    else:
        specs = mass_pool[: drawn_count if n_masses is None else n_masses]
    patient_id = patient_id or f"PH{seed}"

    rows, cols, spacing = _grid(detector, scale)
    spacing0, rows0, cols0 = DETECTORS[detector]
    height_mm, width_mm = rows0 * spacing0, cols0 * spacing0
    anatomy = _draw_anatomy(rng, view, height_mm, width_mm)

    # ---- smooth anatomy on the 0.5 mm work grid (independent of scale)
    gh, gw = round(height_mm / WORK_CELL_MM), round(width_mm / WORK_CELL_MM)
    cy, cx = height_mm / gh, width_mm / gw
    gy = ((np.arange(gh) + 0.5) * cy).astype(np.float64)
    gx = ((np.arange(gw) + 0.5) * cx).astype(np.float64)
    g_depth = anatomy.depth(gy)
    g_breast = (gx[None, :] < g_depth[:, None]).astype(np.uint8)
    g_pect_edge = anatomy.pectoral_edge(gy)
    g_pect = ((gx[None, :] < g_pect_edge[:, None]) & (g_breast > 0)).astype(np.uint8)
    tissue = (g_breast & (1 - g_pect)).astype(np.uint8)
    g_tissue_dist = cv2.distanceTransform(tissue, cv2.DIST_L2, cv2.DIST_MASK_PRECISE) * np.float32(min(cy, cx))

    coarse = power_law_noise(rng, (gh, gw), WORK_CELL_MM, TEXTURE_BETA)
    fine = power_law_noise(rng, (gh, gw), WORK_CELL_MM, 2.2)
    fat_level = rng.uniform(0.26, 0.34)
    gland_gain = rng.uniform(0.3, 0.42)
    pect_level = rng.uniform(0.56, 0.7)
    spread = rng.uniform(0.45, 0.7)
    # Glandular tissue: a cone behind the nipple, densest at the chest wall, under a fat layer near the skin.
    u = np.clip(gx[None, :] / np.maximum(g_depth[:, None], 1e-6), 0.0, 1.0)
    v = (gy[:, None] - anatomy.nipple_y) / (spread * height_mm * 0.5)
    envelope = (1.0 - u) ** 0.6 * np.exp(-0.5 * v * v) * _smoothstep(g_tissue_dist, 2.0, 12.0)
    threshold = 1.1 - 2.0 * density
    gland = envelope / (1.0 + np.exp(-(coarse - threshold) / 0.3))
    work = fat_level + gland_gain * gland + 0.03 * fine
    # The pectoral edge is soft over about a millimetre.
    pect_soft = cv2.GaussianBlur(g_pect.astype(np.float32), (0, 0), 1.0 / WORK_CELL_MM) * g_breast
    work = work * (1.0 - pect_soft) + (pect_level + 0.04 * coarse) * pect_soft
    work = work.astype(np.float32)

    # ---- masses (placed in mm, on the work grid)
    plans = [_plan_mass(rng, shape, diameter) for shape, diameter in specs]
    # Keep masses whole: away from the skin, the pectoral and the image edges (the chest wall included).
    room = np.minimum(g_tissue_dist, np.minimum(gx[None, :], np.minimum(gy, height_mm - gy)[:, None]))
    plans = _place_masses(rng, plans, room.astype(np.float32), (cy, cx))

    # ---- pixel grid
    py = (np.arange(rows) + 0.5) * spacing
    px_depth = anatomy.depth(py) / spacing - 0.5  # columns with centre < depth are inside
    col_index = np.arange(cols, dtype=np.float32)[None, :]
    breast = (col_index < px_depth[:, None].astype(np.float32)).view(np.uint8)
    pect_cols = anatomy.pectoral_edge(py) / spacing - 0.5
    pectoral = ((col_index < pect_cols[:, None].astype(np.float32)).view(np.uint8) & breast).astype(np.uint8)
    interp = cv2.INTER_LINEAR if spacing < WORK_CELL_MM else cv2.INTER_AREA
    image = cv2.resize(work, (cols, rows), interpolation=interp)
    # Thinner tissue at the periphery shows darker; skin is a thin denser rim.
    dist = cv2.distanceTransform(breast, cv2.DIST_L2, cv2.DIST_MASK_5)
    ramp_mm = rng.uniform(6.0, 10.0)
    skin_gain = rng.uniform(0.08, 0.15)
    lut_step = 0.25  # pixels per LUT entry
    d_mm = np.arange(0.0, 30.0 / spacing + 2.0, lut_step, dtype=np.float64) * spacing
    multiplier = 0.55 + 0.45 * (1.0 - np.exp(-d_mm / ramp_mm))
    skin = skin_gain * np.exp(-0.5 * ((d_mm - 0.8) / 0.45) ** 2)
    idx = np.minimum((dist * np.float32(1.0 / lut_step)).astype(np.int32), d_mm.size - 1)
    image *= np.take(multiplier.astype(np.float32), idx)
    image += np.take(skin.astype(np.float32), idx)
    image[breast == 0] = _BACKGROUND

    mask = np.zeros((rows, cols), np.uint8)
    records: list[dict[str, Any]] = []
    for plan in plans:
        r, c, area = _render_mass(image, mask, plan, spacing)
        records.append(
            {
                "centre": (r, c),
                "centre_mm": (float(plan.centre_mm[0]), float(plan.centre_mm[1])),
                "diameter_mm": float(plan.diameter_mm),
                "shape": plan.shape,
                "contrast": float(plan.contrast),
                "area_px": area,
            }
        )
    mask &= breast

    # ---- to the patient's side (a right breast is the mirror image)
    if laterality == "R":
        image, mask, breast, pectoral = (np.ascontiguousarray(a[:, ::-1]) for a in (image, mask, breast, pectoral))
        for rec in records:
            r, c = rec["centre"]
            rec["centre"] = (r, cols - 1 - c)
            rec["centre_mm"] = (rec["centre_mm"][0], cols * spacing - rec["centre_mm"][1])

    # ---- quantum-like noise: variance grows with signal, falls with pixel area
    quantum = rng.uniform(0.008, 0.014) * (0.07 / spacing)
    noise = rng.standard_normal((rows, cols), dtype=np.float32)
    noise *= np.sqrt(image + np.float32(0.05))
    image += np.float32(quantum) * noise
    label_mask = _burn_labels(rng, image, breast, laterality, view, spacing) if with_labels else np.zeros_like(breast)

    # ---- to stored values and a window that frames the breast
    top = float(2**bits - 1)
    offset, span = rng.uniform(0.03, 0.06) * top, rng.uniform(0.85, 0.92) * top
    np.clip(image, 0.0, 1.0, out=image)
    image *= np.float32(span)
    image += np.float32(offset)
    values = np.rint(image).astype(np.uint16)
    sub = values[::4, ::4][breast[::4, ::4] > 0]
    lo_v, hi_v = np.percentile(sub, [0.5, 99.8]) if sub.size else (offset, offset + span)
    # A fatty breast stays grey rather than being stretched to full contrast.
    hi_v = max(float(hi_v), offset + 0.7 * span)
    if mask.any():  # keep the brightest mass inside the window, not clipped flat
        hi_v = max(hi_v, float(values[mask > 0].max()))
    lo_v, hi_v = lo_v - 0.03 * span, hi_v + 0.02 * span
    center, width = round((lo_v + hi_v) / 2.0), max(round(hi_v - lo_v), 2)
    if photometric == "MONOCHROME1":
        stored = (np.uint16(top) - values).astype(np.uint16)
        # LINEAR windows are symmetric about c - 0.5: inverting the stored values moves the centre to top - c + 1.
        windows = [(top - center + 1.0, float(width)), (top - center + 1.0, float(round(width * 1.3)))]
        sign = 1
    else:
        stored = values
        windows = [(float(center), float(width)), (float(center), float(round(width * 1.3)))]
        sign = -1

    day = np.datetime64("2020-01-01") + np.timedelta64(seed % 1500, "D")
    date = str(day).replace("-", "")
    angle = 0 if view == "CC" else (45 if laterality == "R" else -45)
    tags = MGTags(
        bits_stored=bits,
        photometric=photometric,
        windows=windows,
        voi_function="LINEAR",
        laterality=laterality,
        view=view,
        pixel_spacing_mm=(spacing, spacing),
        spacing_tag="ImagerPixelSpacing",
        patient_id=patient_id,
        extra={
            "PatientOrientation": _PATIENT_ORIENTATION[(laterality, view)],
            "StudyInstanceUID": _uid("study", patient_id),
            "SeriesInstanceUID": _uid("series", patient_id, laterality, view, seed),
            "SOPInstanceUID": _uid("sop", patient_id, laterality, view, seed, rows, cols, bits, photometric),
            "StudyDate": date,
            "SeriesDate": date,
            "ContentDate": date,
            "StudyTime": "090000",
            "ContentTime": "090000",
            "StudyID": str(seed % 100000),
            "SeriesNumber": 1 if view == "CC" else 2,
            "InstanceNumber": 1,
            "PatientSex": "F",
            "BodyPartExamined": "BREAST",
            "SeriesDescription": f"{laterality} {view} (synthetic)",
            "ImageComments": f"bcedge synthetic phantom, seed {seed}",
            "BurnedInAnnotation": "YES" if label_mask.any() else "NO",
            "PixelIntensityRelationship": "LOG",
            "PixelIntensityRelationshipSign": sign,
            "PositionerPrimaryAngle": angle,
            "BodyPartThickness": int(rng.integers(35, 70)),
            "DetectorType": "DIRECT",
        },
    )
    return Phantom(
        stored=stored,
        mask=mask,
        tags=tags,
        masses=records,
        breast=breast,
        pectoral=pectoral,
        labels=label_mask,
        seed=seed,
        density=density,
    )


# --------------------------------------------------------------------------- a set of phantoms


CSV_COLUMNS = (
    "id",
    "patient_id",
    "laterality",
    "view",
    "rows",
    "cols",
    "spacing_mm",
    "bits_stored",
    "photometric",
    "n_masses",
    "mass_shapes",
    "mass_diameters_mm",
    "labels",
    "density",
    "seed",
)


def _plan_images(seed: int, count: int) -> list[dict[str, Any]]:
    """Which images to make: patients with one image, one breast in two views, or both breasts in two views."""
    rng = np.random.default_rng([seed, 0x9A7])
    plan: list[dict[str, Any]] = []
    patient = 0
    while len(plan) < count:
        pid = f"PH{seed}-{patient:04d}"
        kind = rng.choice(3, p=[0.3, 0.45, 0.25])  # single, one breast CC+MLO, both breasts CC+MLO
        shared = {
            "patient_id": pid,
            "detector": str(rng.choice(list(DETECTORS))),
            "bits_stored": int(rng.choice(BITS_CHOICES)),
            "photometric": str(rng.choice(PHOTOMETRICS)),
            "density": float(rng.beta(2.0, 2.5)),
        }
        first = str(rng.choice(["L", "R"]))
        sides = [first] if kind < 2 else ["L", "R"]
        for side in sides:
            n_drawn, pool = _draw_mass_specs(rng)
            specs = pool[:n_drawn]  # the same lesions seen in both views of a breast
            views = [str(rng.choice(["CC", "MLO"]))] if kind == 0 else ["CC", "MLO"]
            for view in views:
                plan.append(
                    {
                        **shared,
                        "laterality": side,
                        "view": view,
                        "masses": specs,
                        "labels": bool(rng.random() < 0.75),
                        "seed": int(rng.integers(0, 2**31 - 1)),
                    }
                )
        patient += 1
    return plan[:count]


def generate(out_dir: str | os.PathLike[str], count: int, seed: int = 0, scale: float = 1.0) -> list[Path]:
    """Write ``count`` phantoms as MG DICOM with lesion masks and an index CSV.

    Layout::

        OUT/images/<id>.dcm   the phantoms (ids like ``PH0-0003_L_MLO``)
        OUT/masks/<id>.png    lesion masks, uint8 0/255, same size and stem as the image
        OUT/phantoms.csv      one row per image: see :data:`CSV_COLUMNS`; mass shapes and
                              diameters are ``;``-separated

    Patients get one image, two views (CC + MLO) of one breast, or both breasts
    in two views; the two views of a breast share their lesions' shapes and sizes,
    so patient-level splits are meaningful.

    Args:
        out_dir: destination folder (created when missing; files in it are replaced).
        count: number of images, >= 1.
        seed: integer >= 0; the same seed and scale give byte-identical files.
        scale: in (0, 1]; see :func:`make_phantom`.

    Returns:
        The image paths, in CSV order.

    Raises:
        ConfigError: bad count, seed or scale.
        InputError: ``out_dir`` exists and is not a folder.
    """
    seed = _check_seed(seed)
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ConfigError(f"phantom count must be an integer >= 1, got {count!r}")
    for detector in DETECTORS:  # validate the scale before writing anything
        _grid(detector, scale)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; expected an output folder for phantoms")
    paths: list[Path] = []
    rows_out: list[dict[str, Any]] = []
    for item in _plan_images(seed, int(count)):
        phantom = make_phantom(
            item["seed"],
            laterality=item["laterality"],
            view=item["view"],
            scale=scale,
            masses=item["masses"],
            detector=item["detector"],
            bits_stored=item["bits_stored"],
            photometric=item["photometric"],
            density=item["density"],
            labels=item["labels"],
            patient_id=item["patient_id"],
        )
        stem = f"{item['patient_id']}_{item['laterality']}_{item['view']}"
        paths.append(phantom.write(out / "images" / f"{stem}.dcm"))
        write_png(out / "masks" / f"{stem}.png", phantom.mask * np.uint8(255))
        rows_out.append(
            {
                "id": stem,
                "patient_id": item["patient_id"],
                "laterality": item["laterality"],
                "view": item["view"],
                "rows": phantom.stored.shape[0],
                "cols": phantom.stored.shape[1],
                "spacing_mm": f"{phantom.spacing_mm:.6g}",
                "bits_stored": phantom.tags.bits_stored,
                "photometric": phantom.tags.photometric,
                "n_masses": len(phantom.masses),
                "mass_shapes": ";".join(m["shape"] for m in phantom.masses),
                "mass_diameters_mm": ";".join(f"{m['diameter_mm']:.2f}" for m in phantom.masses),
                "labels": int(phantom.labels.any()),
                "density": f"{phantom.density:.3f}",
                "seed": item["seed"],
            }
        )
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows_out)
    atomic_write_bytes(out / "phantoms.csv", buf.getvalue().encode("utf-8"))
    return paths
