"""The DICOM Segmentation: binary, one segment "Mass", referencing the source image, built with highdicom.

The SEG is built from the source header the reader already parsed (``Mammogram.header``), so a
scan is read from disk once; :func:`read_source_header` reads it again only for a result that
carries no header (an in-memory mammogram given with a path). Its UIDs are name-based: the same
source image and model always give the same SEG SOP Instance UID (:func:`seg_sop_instance_uid`).
highdicom's first SEG in a process is made cheaper by :mod:`bcedge.outputs.highdicom_tables`.
"""

from __future__ import annotations

import copy
import logging
import os
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bcedge import __version__
from bcedge.errors import DicomError, MissingDependencyError
from bcedge.imageio import atomic_write_bytes

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from bcedge.bundle import ArtifactRecord, Bundle
    from bcedge.pipeline import Result

# One logger for every output module (the node's redaction filter is attached to it by name).
_log = logging.getLogger("bcedge.outputs")

#: Series Number of the SEG series (one series per source series and model, see seg_series_instance_uid).
SEG_SERIES_NUMBER = 7301
SEG_SERIES_DESCRIPTION = "bcedge mass segmentation"
SEG_CONTENT_LABEL = "MASS"
SEG_SEGMENT_LABEL = "Mass"
SEG_MANUFACTURER = "bcedge"
#: Namespace of the name-based (SHA-1, ISO/IEC 9834-8) UUIDs behind the SEG UIDs.
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://bcedge/dicom-seg")


def _model_identity(bundle: Bundle, artifact: ArtifactRecord | None) -> str:
    """The model file's SHA-256, or (no artifact given) a digest of every artifact of the bundle."""
    if artifact is not None:
        return artifact.sha256
    return "bundle:" + ",".join(sorted(a.sha256 for a in bundle.manifest.artifacts))


def _uid(*parts: str) -> str:
    # A name-based UUID (ISO/IEC 9834-8 / RFC 4122 v5) under the 2.25 root: deterministic, <= 44 characters.
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, chr(31).join(parts)).int}"


def _settings_key(bundle: Bundle, threshold: float | None) -> str:
    # Only a threshold other than the bundle's changes the UIDs: the default run (what a node resends
    # after a crash) keeps the UID of (source, model) alone, while a different threshold, which makes a
    # different mask, must not reuse that UID.
    if threshold is None or abs(float(threshold) - bundle.threshold) < 1e-9:
        return ""
    return f"threshold={float(threshold):.6g}"


def seg_sop_instance_uid(
    source_sop_uid: str, bundle: Bundle, artifact: ArtifactRecord | None = None, *, threshold: float | None = None
) -> str:
    """The SEG's SOP Instance UID: a pure function of the source image and the model.

    The same source SOP Instance UID with the same model artifact (and threshold) always gives
    the same UID, so a SEG sent again after a crash is recognised as the same instance by a PACS.

    Args:
        source_sop_uid: SOP Instance UID (0008,0018) of the segmented image.
        bundle: the model bundle.
        artifact: the artifact that ran (its SHA-256 is used); None: every artifact of the bundle.
        threshold: the threshold used; None or the bundle's default leaves the UID unchanged.

    Returns:
        A ``2.25.<decimal UUID>`` UID.
    """
    return _uid("sop", str(source_sop_uid), _model_identity(bundle, artifact), _settings_key(bundle, threshold))


def seg_series_instance_uid(
    source_series_uid: str, bundle: Bundle, artifact: ArtifactRecord | None = None, *, threshold: float | None = None
) -> str:
    """The SEG's Series Instance UID: one SEG series per source series and model (deterministic, as above)."""
    return _uid("series", str(source_series_uid), _model_identity(bundle, artifact), _settings_key(bundle, threshold))


def _highdicom() -> Any:
    try:
        import highdicom
    except ImportError as exc:
        raise MissingDependencyError("writing a DICOM SEG", "seg", "highdicom") from exc
    from bcedge.outputs.highdicom_tables import install

    install()  # the lazy module table, where this highdicom is one the patch was tested with
    return highdicom


def preload_seg() -> None:
    """Import highdicom and index its tables now (a server calls this at start-up, not on its first scan).

    Raises:
        MissingDependencyError: highdicom is not installed.
    """
    _highdicom()
    from highdicom._standard_utils import get_module_attribute_map

    len(get_module_attribute_map())


def read_source_header(source_path: str | os.PathLike[str], shape: tuple[int, int] | None = None) -> Dataset:
    """Read a source image's header (no pixels), made fit for a SEG (:func:`~bcedge.seg_source.prepare_source_header`).

    For callers that have no parsed header; :func:`build_seg` uses ``result.mammogram.header``
    (read once by the reader) when there is one. What was changed is logged without values.

    Args:
        source_path: the DICOM file that was segmented.
        shape: (rows, columns) of the mask; must equal the source's Rows/Columns.

    Raises:
        DicomError: unreadable file, or a missing/invalid UID or size attribute, or a size mismatch.
    """
    import pydicom

    path = Path(source_path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's warnings quote values: patient data
            ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types on malformed headers
        text = str(exc).strip().splitlines()
        raise DicomError(
            f"{path}: cannot read the source DICOM header for the SEG: {type(exc).__name__}: {text[0] if text else ''}"
        ) from exc
    return _prepared(ds, path, shape)


def _prepared(ds: Dataset, path: str | os.PathLike[str], shape: tuple[int, int] | None) -> Dataset:
    """:func:`~bcedge.seg_source.prepare_source_header`, with its notes logged (attribute names only)."""
    from bcedge.seg_source import prepare_source_header

    header, notes = prepare_source_header(ds, str(path), shape)
    if notes:
        _log.warning("%s: source header adjusted for the DICOM SEG: %s", path, "; ".join(notes))
    return header


def build_seg(
    result: Result,
    *,
    bundle: Bundle,
    source_path: str | os.PathLike[str] | None = None,
    artifact: ArtifactRecord | None = None,
    source: Dataset | None = None,
) -> Dataset:
    """Build the DICOM Segmentation (binary, one segment "Mass") of ``result`` with highdicom.

    The SEG references the source image (Referenced Series/Instance), copies its patient and
    study attributes, names the algorithm (model name; bcedge version, artifact format,
    precision and SHA-256) and has deterministic UIDs (:func:`seg_sop_instance_uid`).

    Args:
        result: the segmentation; ``result.mask`` (H, W) uint8 {0, 1} on the source grid.
        bundle: the model bundle that produced it.
        source_path: the source DICOM (default :func:`source_file` of ``result``).
        artifact: the artifact that ran (default: the one ``result.model`` names, :func:`artifact_of`;
            failing that, every artifact of the bundle together identifies the model).
        source: an already prepared header (:func:`read_source_header`); default: the header the
            reader parsed (``result.mammogram.header``, so the file is read once and a file without
            the 128-byte preamble gets a SEG too), made fit for the SEG, else ``source_path`` read again.

    Returns:
        A ``highdicom.seg.Segmentation`` (a pydicom Dataset).

    Raises:
        MissingDependencyError: highdicom is not installed.
        DicomError: the source cannot be referenced (see :func:`read_source_header`), or highdicom
            refused the header (one line naming the problem, exit 2).
    """
    hd = _highdicom()
    from pydicom.sr.codedict import codes

    if artifact is None:
        artifact = artifact_of(result, bundle)
    mask = np.asarray(result.mask)
    if source_path is None:
        source_path = source_file(result)
    if source is None:
        header = getattr(result.mammogram, "header", None)
        source = _prepared(header, source_path, mask.shape) if header is not None else None
    if source is None:
        source = read_source_header(source_path, mask.shape)
    sop_uid = str(source.SOPInstanceUID)
    meta_uid = getattr(result.mammogram.meta, "sop_uid", None)
    if meta_uid and meta_uid != sop_uid:
        raise DicomError(
            f"{source_path}: SOP Instance UID (0008,0018) {sop_uid} is not that of the segmented image ({meta_uid})"
        )
    manifest = bundle.manifest
    model_name = str(manifest.model.get("name") or manifest.model.get("architecture") or "bcedge model")
    version = f"bcedge {__version__}"
    if artifact is not None:
        version += f" {artifact.format}/{artifact.precision} {artifact.sha256[:12]}"
    threshold = float(getattr(result, "threshold", bundle.threshold))
    algorithm = hd.AlgorithmIdentificationSequence(
        name=model_name[:64],
        family=codes.DCM.ArtificialIntelligence,
        version=version[:64],
        parameters={"threshold": f"{threshold:g}"},
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEG_SEGMENT_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Mass,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        anatomic_regions=[codes.SCT.Breast],
    )
    model_id = (artifact.sha256 if artifact is not None else _model_identity(bundle, None).split(":")[-1])[:16]
    from bcedge.seg_source import PROJECTION_SOP_CLASSES, restore_sop_class, stand_in_sop_class

    real_class = None
    if str(source.SOPClassUID) not in PROJECTION_SOP_CLASSES:
        notes: list[str] = []
        source = copy.deepcopy(source)  # a prepared (plain) header; the caller's keeps its class
        real_class = stand_in_sop_class(source, notes)
        _log.warning("%s: %s", source_path, "; ".join(notes))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            seg = hd.seg.Segmentation(
                source_images=[source],
                # (frames=1, H, W, segments=1) bool. The segment-stacked 4-D form is checked with one max();
                # the 3-D label-map form goes through np.setxor1d, whose first call imports numpy.ma (~40 ms).
                pixel_array=(mask != 0)[np.newaxis, :, :, np.newaxis],
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=[segment],
                series_instance_uid=seg_series_instance_uid(
                    source.SeriesInstanceUID, bundle, artifact, threshold=threshold
                ),
                series_number=SEG_SERIES_NUMBER,
                sop_instance_uid=seg_sop_instance_uid(sop_uid, bundle, artifact, threshold=threshold),
                instance_number=1,
                manufacturer=SEG_MANUFACTURER,
                manufacturer_model_name=model_name[:64],
                software_versions=version[:64],
                device_serial_number=model_id,
                content_label=SEG_CONTENT_LABEL,
                content_description=f"{model_name} masses"[:64],
                series_description=SEG_SERIES_DESCRIPTION,
                # A SEG of a 2-D image has exactly one frame; keep it even when nothing was found
                # (an empty segment says "looked, found nothing", which a viewer can show).
                omit_empty_frames=False,
            )
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            # Whatever highdicom still refuses once the header was prepared: one line, exit 2.
            text = str(exc).strip().splitlines()
            raise DicomError(
                f"{source_path}: cannot build a DICOM SEG for this header: {type(exc).__name__}: "
                f"{text[0] if text else ''}"
            ) from exc
    if caught:
        # highdicom's person-name warning and pydicom's value warnings quote the values: count them only.
        _log.debug("%s: %d library warnings while building the SEG (values not logged)", source_path, len(caught))
    if real_class is not None:
        restore_sop_class(seg, sop_uid, real_class)
    # General Image: Patient Orientation (0020,0020) is Type 2C for images without a patient
    # plane (MG is a projection); the SEG frame has the source's orientation, so copy it.
    seg.PatientOrientation = source.get("PatientOrientation", "")
    # highdicom draws a random Dimension Organization UID; derive it from the SEG's own UID so a
    # SEG written again for the same image and model differs only in its creation date and time.
    organization = _uid("dimension-organization", str(seg.SOPInstanceUID))
    for item in (*seg.get("DimensionOrganizationSequence", ()), *seg.get("DimensionIndexSequence", ())):
        if "DimensionOrganizationUID" in item:
            item.DimensionOrganizationUID = organization
    return seg


def encode_seg(seg: Dataset) -> bytes:
    """The SEG's file bytes (DICOM Part 10, with file meta)."""
    from io import BytesIO

    buf = BytesIO()
    seg.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_seg(
    path: str | os.PathLike[str],
    result: Result,
    *,
    bundle: Bundle,
    source_path: str | os.PathLike[str] | None = None,
    artifact: ArtifactRecord | None = None,
) -> Path:
    """Build the SEG of ``result`` (:func:`build_seg`) and write it to ``path`` atomically."""
    seg = build_seg(result, bundle=bundle, source_path=source_path, artifact=artifact)
    return atomic_write_bytes(path, encode_seg(seg))


def artifact_of(result: Result, bundle: Bundle) -> ArtifactRecord | None:
    """The bundle's record of the artifact that produced ``result`` (from ``result.model``), or None."""
    model = getattr(result, "model", None) or {}
    for record in bundle.manifest.artifacts:
        if record.file == model.get("artifact") and record.sha256 == model.get("sha256"):
            return record
    return None


def source_file(result: Result) -> str:
    """The file ``result`` was read from: ``result.source``, else the path its metadata records ('' if none)."""
    return str(result.source or getattr(result.mammogram.meta, "source", "") or "")


def is_dicom_source(result: Result) -> bool:
    """Whether ``result`` was read from a DICOM file (which a SEG can reference); False for rasters."""
    return bool(source_file(result)) and result.mammogram.meta.transfer_syntax is not None
