"""The sample record every dataset reader yields.

A :class:`Sample` names its files and metadata; pixels are read lazily through
:mod:`bcedge.dicom`, so listing a 3000-image collection costs no decoding.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from bcedge.dicom import Mammogram, read_mammogram
from bcedge.errors import DatasetError

MaskKind = Literal["pixel", "circle", "none"]


@dataclass(frozen=True)
class Sample:
    """One image of a dataset with its lesion annotation.

    Attributes:
        id: unique within the dataset and stable across runs (e.g. ``mdb001``).
        patient_id: the patient it belongs to (splits never separate a patient).
        source: dataset name (``mini-mias``, ``cdd-cesm``, ``cbis-ddsm``, ``folder``, ``phantom``).
        image_path: the image file (DICOM or raster).
        mask_paths: pixel mask files whose union is the lesion mask (any of PNG,
            JPEG, DICOM; a pixel is lesion when its largest channel exceeds half
            the type's range: 127 for 8-bit).
        circles: (row, col, radius) discs in image pixels, for circle annotations.
        laterality: ``L``/``R`` from the dataset (overrides the file's own), or None.
        view: ``CC``/``MLO``/... from the dataset, or None.
        pathology: ``benign``, ``malignant``, ``normal`` or the source's own label.
        mask_kind: ``pixel`` masks, ``circle`` discs (coarse; report apart) or ``none``
            (no annotation: a normal image, empty mask).
        split: the official split when the source defines one (``train``/``test``).
        extra: source-specific fields (abnormality ids, assessment, ...).
        undo: a flip that restores the acquired orientation of a copy the source flipped
            (``vflip`` upside down, ``hflip`` left-right, ``""`` none); applied to the image
            and its masks alike on load, so a view reads the same whichever copy was kept.
        mask_rule: a clean-up rule of :mod:`bcedge.datasets.mask_rules` applied to the
            merged mask on load (``""``: the mask as published).
    """

    id: str
    patient_id: str
    source: str
    image_path: Path
    mask_paths: tuple[Path, ...] = ()
    circles: tuple[tuple[float, float, float], ...] = ()
    laterality: str | None = None
    view: str | None = None
    pathology: str | None = None
    mask_kind: MaskKind = "pixel"
    split: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)
    undo: Literal["", "vflip", "hflip"] = ""
    mask_rule: str = ""

    @property
    def has_lesion(self) -> bool:
        """Whether the annotation marks at least one lesion (without reading pixels)."""
        return bool(self.mask_paths or self.circles)

    @property
    def lesion_unlocated(self) -> bool:
        """Whether the source reports a lesion without giving its location.

        Such a sample's empty mask is not ground truth: leave it out of anything
        that scores masks (Dice) or trains on them.
        """
        return self.extra.get("lesion_unlocated") == "true"

    def load_image(self) -> Mammogram:
        """Read the image; dataset laterality/view override what the file says (or lacks)."""
        mammo = read_mammogram(self.image_path)
        if self.undo and mammo.stored is not None:
            # Flip the stored values, not a float copy: the sample keeps the stored path of
            # preprocessing version 2 (resample first, then the display table), as a scan has.
            values = np.ascontiguousarray(undo_flip(mammo.stored.values, self.undo))
            mammo = Mammogram(None, mammo.meta, mammo.header, stored=replace(mammo.stored, values=values))  # type: ignore[arg-type]
        elif self.undo:
            mammo = replace(mammo, pixels=np.ascontiguousarray(undo_flip(mammo.pixels, self.undo)))
        changes: dict[str, object] = {}
        if self.laterality and self.laterality != mammo.meta.laterality:
            changes.update(laterality=self.laterality, laterality_source=f"dataset:{self.source}")
        if self.view and not mammo.meta.view:
            changes["view"] = self.view
        return mammo.with_meta(**changes) if changes else mammo

    def load_mask(self, shape: tuple[int, int], pixels: np.ndarray | None = None) -> np.ndarray:
        """The merged lesion mask on the image grid, after :attr:`mask_rule`.

        Args:
            shape: (H, W) of the image this mask belongs to.
            pixels: the image as :meth:`load_image` returns it, when at hand (a mask rule
                needs it; without it the image is read again).

        Returns:
            (H, W) uint8 in {0, 1}: the union of every mask file and disc.

        Raises:
            DatasetError: a mask file is unreadable or its size differs from the image.
        """
        from bcedge.preprocess import merge_masks

        masks = [read_mask_file(p, shape) for p in self.mask_paths]
        if self.circles:
            import cv2

            disc = np.zeros(shape, np.uint8)
            for row, col, radius in self.circles:
                cv2.circle(disc, (round(col), round(row)), max(round(radius), 1), 1, thickness=-1)
            masks.append(disc)
        # Files and discs are in the stored file's coordinates: undo the source's flip on the union.
        mask = np.ascontiguousarray(undo_flip(merge_masks(masks, shape), self.undo))
        if self.mask_rule and mask.any():
            from bcedge.datasets.mask_rules import clean_mask

            mask = clean_mask(mask, self.load_image().pixels if pixels is None else pixels, self.mask_rule)[0]
        return mask


def undo_flip(pixels: np.ndarray, undo: str) -> np.ndarray:
    """``pixels`` (H, W) with :attr:`Sample.undo` applied (a view, not a copy; H and W unchanged)."""
    if undo == "vflip":
        return pixels[::-1]
    if undo == "hflip":
        return pixels[:, ::-1]
    if undo:
        raise DatasetError(f"unknown orientation undo {undo!r}; expected 'vflip', 'hflip' or ''")
    return pixels


def read_mask_file(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Read one binary lesion mask (PNG/JPEG/TIFF or DICOM) as uint8 {0, 1} of ``shape``.

    A pixel is lesion when its largest channel is above half the dtype's range
    (127 for 8-bit), which handles binary PNGs, anti-aliased RGB masks whose
    lesion colour is pure red or green, and lossy JPEG masks alike.
    """
    import cv2

    if not Path(path).exists():
        raise DatasetError(f"{path}: mask file not found")
    if Path(path).suffix.lower() in {".dcm", ".dicom"} or Path(path).suffix == "":
        import pydicom

        try:
            raw = pydicom.dcmread(path).pixel_array
        except Exception as exc:
            raise DatasetError(f"{path}: unreadable DICOM mask ({type(exc).__name__})") from exc
        top = 255 if raw.max() <= 255 else 65535
    else:
        raw = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise DatasetError(f"{path}: unreadable mask image")
        top = np.iinfo(raw.dtype).max if np.issubdtype(raw.dtype, np.integer) else 1.0
    if raw.ndim == 3:
        raw = raw.max(axis=2)
    mask = (raw > top / 2).astype(np.uint8)
    if mask.shape != tuple(shape):
        raise DatasetError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]}, image is {shape[1]}x{shape[0]}")
    return mask


class DatasetReader(Protocol):
    """What every reader offers: its name and an iterator of samples."""

    name: str

    def samples(self) -> Iterator[Sample]:
        """Yield every sample in a stable order (sorted by id)."""
        ...
