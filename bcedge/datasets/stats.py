"""Dataset statistics: counts and lesion-area distributions, overall and per split.

A *lesion* is one disc of a circle annotation (area ``pi r^2``) or one 8-connected
component of a sample's merged pixel mask (area = its pixel count). Areas in mm²
use ``extra["pixel_spacing_mm"]`` when the reader sets it (mini-MIAS: 0.2 mm), else
the DICOM header's Pixel Spacing / Imager Pixel Spacing; rasters without either
have no mm² area.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from bcedge.datasets._files import image_size
from bcedge.datasets.base import Sample, read_mask_file
from bcedge.datasets.splits import Split
from bcedge.errors import DatasetError

_QUANTILES = {"min": 0.0, "p25": 0.25, "median": 0.5, "p75": 0.75, "max": 1.0}


def sample_spacing(sample: Sample) -> tuple[float, float] | None:
    """(row, col) pixel spacing in mm of a sample's image, or None when unknown.

    Reads ``extra["pixel_spacing_mm"]`` (``"0.2"`` or ``"0.1,0.1"``), else the DICOM header
    (without pixel data).
    """
    text = sample.extra.get("pixel_spacing_mm")
    if text:
        try:
            values = [float(v) for v in str(text).replace("\\", ",").split(",")]
        except ValueError as exc:
            raise DatasetError(f"{sample.id}: pixel_spacing_mm {text!r} is not a number") from exc
        return (values[0], values[-1])
    path = Path(sample.image_path)
    if path.suffix.lower() in {".dcm", ".dicom", ""}:
        import pydicom

        from bcedge.dicom import _spacing

        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            return None
        spacing, _ = _spacing(ds)
        return spacing
    return None


def lesion_areas_px(sample: Sample) -> list[float]:
    """Area in pixels of each lesion of ``sample`` (discs: pi r^2; masks: connected components)."""
    areas = [math.pi * r * r for _, _, r in sample.circles]
    if sample.mask_paths:
        import cv2

        shape = image_size(sample.mask_paths[0])
        merged = np.zeros(shape, np.uint8)
        for path in sample.mask_paths:
            merged |= read_mask_file(path, shape)
        n, _, stats, _ = cv2.connectedComponentsWithStats(merged, connectivity=8)
        areas.extend(float(a) for a in stats[1:n, cv2.CC_STAT_AREA])
    return areas


def _distribution(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    arr = np.asarray(values, np.float64)
    out = {k: float(np.quantile(arr, q)) for k, q in _QUANTILES.items()}
    out["mean"] = float(arr.mean())
    return out


Measured = dict[str, tuple[list[float], "tuple[float, float] | None"]]


def measure(sample: Sample, *, read_masks: bool = True) -> tuple[list[float], tuple[float, float] | None]:
    """(lesion areas in pixels, pixel spacing in mm or None) of one sample."""
    if not sample.has_lesion:
        return [], None
    if read_masks or not sample.mask_paths:
        areas = lesion_areas_px(sample)
    else:
        areas = [math.pi * r * r for _, _, r in sample.circles]
    return areas, (sample_spacing(sample) if areas else None)


def group_stats(
    samples: list[Sample], *, read_masks: bool = True, measured: Measured | None = None
) -> dict[str, object]:
    """Counts and area distributions of one group of samples.

    Args:
        samples: the group.
        read_masks: measure pixel-mask lesions (reads each mask file once).
        measured: per-sample results of :func:`measure` already computed (by id).

    Returns:
        dict with ``images``, ``patients``, ``with_lesion`` (images whose mask marks a
        lesion), ``lesion_unlocated``, ``without_lesion``, ``by_source`` (images, patients
        and with_lesion per source), ``mask_kinds``, ``pathology``, ``lesions`` (count),
        ``area_px`` and ``area_mm2`` (min/p25/median/p75/max/mean, or None) and
        ``lesions_with_mm`` (how many lesions had a known spacing). With
        ``read_masks=False`` pixel-mask lesions are not measured (``areas_from_masks`` False).
    """
    areas_px: list[float] = []
    areas_mm: list[float] = []
    by_source: dict[str, dict[str, int]] = {}
    patients_by_source: dict[str, set[str]] = {}
    for sample in samples:
        src = by_source.setdefault(sample.source, {"images": 0, "patients": 0, "with_lesion": 0})
        src["images"] += 1
        src["with_lesion"] += sample.has_lesion
        patients_by_source.setdefault(sample.source, set()).add(sample.patient_id)
        if not sample.has_lesion:
            continue
        if measured is not None and sample.id in measured:
            lesion_px, spacing = measured[sample.id]
        else:
            lesion_px, spacing = measure(sample, read_masks=read_masks)
        areas_px.extend(lesion_px)
        if spacing is not None:
            areas_mm.extend(a * spacing[0] * spacing[1] for a in lesion_px)
    for source, entry in by_source.items():
        entry["patients"] = len(patients_by_source[source])
    return {
        "images": len(samples),
        "patients": len({s.patient_id for s in samples}),
        "with_lesion": sum(s.has_lesion for s in samples),
        "lesion_unlocated": sum(s.lesion_unlocated for s in samples),
        "without_lesion": sum(not s.has_lesion and not s.lesion_unlocated for s in samples),
        "by_source": dict(sorted(by_source.items())),
        "mask_kinds": dict(sorted(Counter(s.mask_kind for s in samples).items())),
        "pathology": dict(sorted(Counter(s.pathology or "unknown" for s in samples).items())),
        "lesions": len(areas_px),
        "lesions_with_mm": len(areas_mm),
        "area_px": _distribution(areas_px),
        "area_mm2": _distribution(areas_mm),
        "areas_from_masks": read_masks,
    }


def dataset_stats(
    samples: Iterable[Sample],
    *,
    split: Split | None = None,
    read_masks: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, dict[str, object]]:
    """Statistics of all samples and of each split.

    Args:
        samples: the dataset's samples.
        split: a split file's content; without it, the samples' official split
            (``Sample.split``) is used when they carry one.
        read_masks: measure pixel-mask lesions (reads each mask file once).
        progress: called as ``progress(done, total)`` while samples are measured.

    Returns:
        ``{"all": group, "<split>": group, ...}`` (see :func:`group_stats`). Samples a split
        file does not name are counted in ``"unassigned"``.

    Raises:
        DatasetError: the split file names ids that are not in the dataset.
    """
    items = list(samples)
    groups: dict[str, list[Sample]] = {"all": items}
    if split is not None:
        from bcedge.datasets.splits import filter_samples

        of = split.split_of()
        for name in split.splits:
            groups[name] = filter_samples(items, split, name)
        unassigned = [s for s in items if s.id not in of]
        if unassigned:
            groups["unassigned"] = unassigned
    elif any(s.split for s in items):
        for name in sorted({s.split or "none" for s in items}):
            groups[name] = [s for s in items if (s.split or "none") == name]
    measured: Measured = {}
    for done, sample in enumerate(items, 1):
        measured[sample.id] = measure(sample, read_masks=read_masks)
        if progress is not None:
            progress(done, len(items))
    return {key: group_stats(group, read_masks=read_masks, measured=measured) for key, group in groups.items()}


def format_area(dist: Mapping[str, float] | None, digits: int = 0) -> str:
    """``median [p25-p75] (min-max)`` of an area distribution, or ``-``."""
    if not dist:
        return "-"
    f = f"{{:.{digits}f}}"
    return (
        f"{f.format(dist['median'])} [{f.format(dist['p25'])}-{f.format(dist['p75'])}] "
        f"({f.format(dist['min'])}-{f.format(dist['max'])})"
    )
