"""Write single-frame MG DICOM files from stored pixel values.

Used by the phantom generator (``bcedge phantom``) and by the tests, which need
DICOMs with exactly the tags a case calls for (MONOCHROME1 + INVERSE, VOI LUT
sequences, rescale, 12/14/16-bit...). One writer, so the two never disagree.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

#: Digital Mammography X-Ray Image Storage, For Presentation / For Processing.
MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
MG_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"

#: SNOMED-RT codes used in View Code Sequence (DICOM CID 4014).
VIEW_CODES: dict[str, tuple[str, str]] = {
    "CC": ("R-10242", "cranio-caudal"),
    "MLO": ("R-10226", "medio-lateral oblique"),
    "ML": ("R-10224", "medio-lateral"),
    "LM": ("R-10228", "latero-medial"),
}


@dataclass
class MGTags:
    """The tags a synthetic MG file carries. Defaults describe a typical FFDM image.

    Attributes:
        bits_stored: significant bits of each stored value (8..16).
        photometric: ``MONOCHROME1`` (low values white) or ``MONOCHROME2``.
        presentation_lut_shape: ``INVERSE``/``IDENTITY`` or None to omit the tag.
            Defaults to the DX/MG rule: INVERSE with MONOCHROME1, IDENTITY otherwise.
        windows: (center, width) pairs in modality units; empty to omit.
        voi_function: ``LINEAR``, ``LINEAR_EXACT``, ``SIGMOID`` or None to omit.
        voi_lut: optional (first_mapped, bits, data) for a VOI LUT Sequence item.
        rescale: optional (slope, intercept).
        pixel_spacing_mm: (row, col) spacing; written as Imager Pixel Spacing when
            ``spacing_tag`` is ``ImagerPixelSpacing``.
        extra: any further keyword -> value, set last (may override the above).
    """

    bits_stored: int = 14
    photometric: str = "MONOCHROME2"
    presentation_lut_shape: str | None = "auto"
    presentation_intent: str = "FOR PRESENTATION"
    windows: Sequence[tuple[float, float]] = ()
    voi_function: str | None = None
    voi_lut: tuple[int, int, Sequence[int]] | None = None
    rescale: tuple[float, float] | None = None
    laterality: str | None = "L"
    view: str | None = "CC"
    pixel_spacing_mm: tuple[float, float] | None = (0.07, 0.07)
    spacing_tag: str = "ImagerPixelSpacing"
    manufacturer: str = "bcedge phantom"
    modality: str = "MG"
    patient_id: str = "PHANTOM"
    extra: Mapping[str, Any] = field(default_factory=dict)


def build_mg_dataset(stored: np.ndarray, tags: MGTags | None = None) -> Dataset:
    """Build an MG dataset around stored pixel values.

    Args:
        stored: (H, W) uint16 (or int16 for signed data) stored values, already
            within ``tags.bits_stored`` bits.
        tags: the header to write; defaults to :class:`MGTags`.

    Returns:
        A dataset with file meta (Explicit VR Little Endian), ready for ``save_as``.
    """
    tags = tags or MGTags()
    if stored.ndim != 2:
        raise ValueError(f"stored pixels must be 2-D, got shape {stored.shape}")
    signed = np.issubdtype(stored.dtype, np.signedinteger)
    arr = stored.astype(np.int16 if signed else np.uint16, copy=False)

    sop_class = MG_FOR_PROCESSING if tags.presentation_intent == "FOR PROCESSING" else MG_FOR_PRESENTATION
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = tags.modality
    ds.PatientID = tags.patient_id
    ds.PatientName = "Phantom^Synthetic"
    today = _dt.date.today().strftime("%Y%m%d")
    ds.StudyDate = ds.ContentDate = today
    ds.Manufacturer = tags.manufacturer
    ds.PresentationIntentType = tags.presentation_intent
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    if tags.laterality:
        ds.ImageLaterality = tags.laterality
    if tags.view:
        ds.ViewPosition = tags.view
        if tags.view in VIEW_CODES:
            code = Dataset()
            code.CodeValue, code.CodeMeaning = VIEW_CODES[tags.view]
            code.CodingSchemeDesignator = "SRT"
            ds.ViewCodeSequence = DicomSequence([code])
    if tags.pixel_spacing_mm:
        setattr(ds, tags.spacing_tag, [f"{v:.6g}" for v in tags.pixel_spacing_mm])

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = tags.photometric
    ds.Rows, ds.Columns = arr.shape
    ds.BitsAllocated = 16
    ds.BitsStored = tags.bits_stored
    ds.HighBit = tags.bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    shape = tags.presentation_lut_shape
    if shape == "auto":
        shape = "INVERSE" if tags.photometric == "MONOCHROME1" else "IDENTITY"
    if shape:
        ds.PresentationLUTShape = shape
    if tags.rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = (f"{v:g}" for v in tags.rescale)
        ds.RescaleType = "US"
    if tags.windows:
        ds.WindowCenter = [f"{c:g}" for c, _ in tags.windows]
        ds.WindowWidth = [f"{w:g}" for _, w in tags.windows]
    if tags.voi_function:
        ds.VOILUTFunction = tags.voi_function
    if tags.voi_lut is not None:
        first, bits, data = tags.voi_lut
        item = Dataset()
        item.LUTDescriptor = [len(data) % 65536, first, bits]
        item.LUTData = [int(v) for v in data]
        item["LUTData"].VR = "US"
        ds.VOILUTSequence = DicomSequence([item])
    for key, value in tags.extra.items():
        setattr(ds, key, value)
    ds.PixelData = arr.tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def save_atomic(ds: Dataset, path: str | os.PathLike[str]) -> Path:
    """Save ``ds`` to ``path`` through a temporary file and an atomic rename."""
    from bcedge.imageio import atomic_write

    return atomic_write(path, lambda tmp: pydicom.dcmwrite(tmp, ds, enforce_file_format=True))


def write_mg_dicom(path: str | os.PathLike[str], stored: np.ndarray, tags: MGTags | None = None) -> Path:
    """Write stored pixel values as a single-frame MG DICOM file (atomically).

    Args:
        path: destination file.
        stored: (H, W) uint16/int16 stored values.
        tags: header; see :class:`MGTags`.

    Returns:
        The written path.
    """
    return save_atomic(build_mg_dataset(stored, tags), path)
