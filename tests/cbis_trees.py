"""Build tiny CBIS-DDSM trees in the published layouts, for tests.

Each tree holds the same handful of cases (see :data:`CASES`), chosen to hit the
collection's quirks: CSV paths that do not match the disk, ROI mask and crop in
either order and with swapped series labels, two abnormalities on one image, a
row whose ROI files are absent, a row whose full mammogram is absent, a mask of
another size than its image, a test-set CSV and calcification CSVs.

Layouts (``build_tcia_tree(base, layout)`` / ``build_jpeg_tree(base)``):

* ``nbia``: current NBIA Data Retriever names,
  ``CBIS-DDSM/<subject>/07-20-2016-DDSM-NA-<n>/1.000000-<series description>-<n>/1-1.dcm``.
* ``classic``: older NBIA names that the CSV paths spell,
  ``CBIS-DDSM/<subject>/<study uid>/<series uid>/000000.dcm``.
* ``metadata``: NBIA names under an unusual folder, found only through ``metadata.csv``
  (``File Location`` with Windows separators).
* Kaggle JPEG: ``csv/dicom_info.csv`` + case CSVs, ``jpeg/<series uid>/1-NNN.jpg``.
"""

from __future__ import annotations

import csv
import itertools
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from bcedge.dicom_write import MGTags, write_mg_dicom

FULL_SHAPE = (64, 48)  # rows, cols of every full mammogram
CROP_SHAPE = (10, 12)
WRONG_SHAPE = (60, 44)  # a mask that does not fit its image (still > half its area)

MASS_HEADER = [
    "patient_id", "breast_density", "left or right breast", "image view", "abnormality id", "abnormality type",
    "mass shape", "mass margins", "assessment", "pathology", "subtlety", "image file path",
    "cropped image file path", "ROI mask file path",
]  # fmt: skip
CALC_HEADER = [
    "patient_id", "breast density", "left or right breast", "image view", "abnormality id", "abnormality type",
    "calc type", "calc distribution", "assessment", "pathology", "subtlety", "image file path",
    "cropped image file path", "ROI mask file path",
]  # fmt: skip
METADATA_HEADER = [
    "Series UID", "Collection", "3rd Party Analysis", "Data Description URI", "Subject ID", "Study UID",
    "Study Description", "Study Date", "Series Description", "Manufacturer", "Modality", "SOP Class Name",
    "SOP Class UID", "Number of Images", "File Size", "File Location", "Download Timestamp",
]  # fmt: skip
DICOM_INFO_HEADER = [
    "file_path", "image_path", "AccessionNumber", "BitsAllocated", "BitsStored", "BodyPartExamined", "Columns",
    "ContentDate", "ContentTime", "ConversionType", "HighBit", "InstanceNumber", "LargestImagePixelValue",
    "Laterality", "Modality", "PatientBirthDate", "PatientID", "PatientName", "PatientOrientation", "PatientSex",
    "PhotometricInterpretation", "PixelRepresentation", "ReferringPhysicianName", "Rows", "SOPClassUID",
    "SOPInstanceUID", "SamplesPerPixel", "SecondaryCaptureDeviceManufacturer",
    "SecondaryCaptureDeviceManufacturerModelName", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
    "SmallestImagePixelValue", "SpecificCharacterSet", "StudyDate", "StudyID", "StudyInstanceUID", "StudyTime",
]  # fmt: skip


@dataclass(frozen=True)
class Abn:
    """One abnormality and how its ROI files are laid out.

    ``arrangement``: ``mask-first`` / ``crop-first`` (mask and crop in one series, in that
    order: 1-1/1-2 or 000000/000001; the CSV always claims mask = 000001), ``separate`` (two
    series, right labels), ``separate-swapped`` (two series, mask in the "cropped images"
    one), ``absent`` (no ROI files), ``wrong-size`` (mask-first, mask of WRONG_SHAPE).
    """

    abn_id: int
    pathology: str
    center: tuple[int, int]  # row, col
    radius: int
    arrangement: str = "mask-first"


@dataclass(frozen=True)
class Case:
    kind: str  # mass / calc
    split: str  # train / test
    pid: str
    side: str
    view: str
    abns: tuple[Abn, ...]
    full_present: bool = True
    messy_paths: bool = False  # CSV path cells with blanks and a line break

    @property
    def image_id(self) -> str:
        prefix = {"mass": "Mass", "calc": "Calc"}[self.kind] + ("-Training" if self.split == "train" else "-Test")
        return f"{prefix}_{self.pid}_{self.side}_{self.view}"


CASES: tuple[Case, ...] = (
    Case("mass", "train", "P_00001", "LEFT", "CC", (Abn(1, "MALIGNANT", (20, 15), 6, "crop-first"),)),
    Case(
        "mass",
        "train",
        "P_00004",
        "RIGHT",
        "MLO",
        (
            Abn(1, "BENIGN", (18, 14), 6, "mask-first"),
            Abn(2, "BENIGN_WITHOUT_CALLBACK", (45, 30), 7, "separate-swapped"),
        ),
        messy_paths=True,
    ),
    Case("mass", "train", "P_00009", "LEFT", "MLO", (Abn(1, "BENIGN", (30, 20), 5, "absent"),)),
    Case("mass", "train", "P_00011", "LEFT", "CC", (Abn(1, "BENIGN", (30, 20), 5),), full_present=False),
    Case("mass", "train", "P_00015", "RIGHT", "CC", (Abn(1, "MALIGNANT", (30, 20), 5, "wrong-size"),)),
    Case("mass", "test", "P_00016", "LEFT", "CC", (Abn(1, "MALIGNANT", (40, 25), 8, "separate"),)),
    Case("calc", "train", "P_00005", "RIGHT", "CC", (Abn(1, "MALIGNANT", (25, 20), 4, "crop-first"),)),
    Case("calc", "test", "P_00038", "LEFT", "CC", (Abn(1, "BENIGN", (35, 22), 4, "mask-first"),)),
)

#: What a reader must yield for the mass CSVs (default options).
EXPECTED_MASS_IDS = ["Mass-Test_P_00016_LEFT_CC", "Mass-Training_P_00001_LEFT_CC", "Mass-Training_P_00004_RIGHT_MLO"]
EXPECTED_CALC_IDS = ["Calc-Test_P_00038_LEFT_CC", "Calc-Training_P_00005_RIGHT_CC"]
EXPECTED_MISSING = 2  # P_00009 (ROI files absent) and P_00011 (full mammogram absent)
EXPECTED_MISMATCHED = ["Mass-Training_P_00015_RIGHT_CC"]


@dataclass
class Tree:
    """A built tree: where to point the reader, and the truth to compare with."""

    root: Path
    layout: str
    masks: dict[str, list[Path]] = field(default_factory=dict)  # image id -> true mask files, by abnormality id
    fulls: dict[str, Path] = field(default_factory=dict)
    cases: dict[str, Case] = field(default_factory=dict)


def disc(shape: tuple[int, int], center: tuple[int, int], radius: int) -> np.ndarray:
    """(H, W) uint8 {0, 1} disc."""
    out = np.zeros(shape, np.uint8)
    cv2.circle(out, (center[1], center[0]), radius, 1, thickness=-1)
    return out


def expected_mask(case: Case) -> np.ndarray:
    """(H, W) uint8 {0, 1}: union of the case's discs on the full image grid."""
    out = np.zeros(FULL_SHAPE, np.uint8)
    for a in case.abns:
        out |= disc(FULL_SHAPE, a.center, a.radius)
    return out


class _Uids:
    def __init__(self) -> None:
        self._n = itertools.count(1000)

    def __call__(self) -> str:
        return f"1.3.6.1.4.1.9590.100.1.2.{next(self._n)}4227222131896498076114346122289"


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _full_pixels(seed: int, dtype: type = np.uint16) -> np.ndarray:
    top = 4095 if dtype is np.uint16 else 255
    return _rng(seed).integers(0, top, FULL_SHAPE).astype(dtype)


def _crop_pixels(seed: int, dtype: type = np.uint16) -> np.ndarray:
    top = 4095 if dtype is np.uint16 else 255
    return _rng(seed).integers(1, top, CROP_SHAPE).astype(dtype)


def _mask_pixels(a: Abn) -> np.ndarray:
    shape = WRONG_SHAPE if a.arrangement == "wrong-size" else FULL_SHAPE
    return disc(shape, a.center, a.radius) * 255


def _write_case_csvs(
    folder: Path,
    csv_paths: dict[str, tuple[str, dict[int, tuple[str, str]]]],
    kinds: tuple[str, ...] = ("mass", "calc"),
) -> None:
    """csv_paths: image id -> (image file path, {abn id: (crop path, roi path)})."""
    folder.mkdir(parents=True, exist_ok=True)
    for kind in kinds:
        for split in ("train", "test"):
            header = MASS_HEADER if kind == "mass" else CALC_HEADER
            name = f"{kind}_case_description_{split}_set.csv"
            with open(folder / name, "w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(header)
                for case in CASES:
                    if case.kind != kind or case.split != split:
                        continue
                    image_path, per_abn = csv_paths[case.image_id]
                    for a in case.abns:
                        crop_path, roi_path = per_abn[a.abn_id]
                        if case.messy_paths:  # as in the published CSVs: blanks and a trailing line break
                            image_path_cell, roi_path_cell = f" {image_path} ", f"{roi_path}\n"
                        else:
                            image_path_cell, roi_path_cell = image_path, roi_path
                        descr = ["OVAL", "CIRCUMSCRIBED"] if kind == "mass" else ["PLEOMORPHIC", "CLUSTERED"]
                        writer.writerow(
                            [case.pid, "3", case.side, case.view, a.abn_id, kind if kind == "mass" else "calcification",
                             *descr, "4", a.pathology, "3", image_path_cell, crop_path, roi_path_cell]
                        )  # fmt: skip


def build_tcia_tree(base: Path, layout: str = "nbia") -> Tree:
    """Write the TCIA/NBIA layout under ``base``; return where to point the reader and the truth."""
    if layout not in ("nbia", "classic", "metadata"):
        raise ValueError(layout)
    uid = _Uids()
    counter = itertools.count(10000)
    base.mkdir(parents=True, exist_ok=True)
    images = base / "NBIA download" / "CBIS-DDSM" if layout == "metadata" else base / "CBIS-DDSM"
    tree = Tree(root=base, layout=layout)
    csv_paths: dict[str, tuple[str, dict[int, tuple[str, str]]]] = {}
    meta_rows: list[list[str]] = []
    tags = MGTags(laterality=None, view=None, bits_stored=12)
    mask_tags = MGTags(laterality=None, view=None, bits_stored=8)

    study_names: dict[str, str] = {}

    def series_dir(subject: str, study: str, series: str, description: str) -> Path:
        if layout == "classic":
            folder = images / subject / study / series
        else:
            study_name = study_names.setdefault(study, f"07-20-2016-DDSM-NA-{next(counter)}")
            folder = images / subject / study_name / f"1.000000-{description}-{next(counter)}"
        rel = folder.relative_to(base)
        meta_rows.append(
            [series, "CBIS-DDSM", "NO", "", subject, study, "DDSM", "07-20-2016", description, "", "MG", "", "", "1",
             "1 KB", ".\\" + "\\".join(rel.parts), "2024-01-01"]
        )  # fmt: skip
        return folder

    def fname(i: int) -> str:
        return f"{i - 1:06d}.dcm" if layout == "classic" else f"1-{i}.dcm"

    for seed, case in enumerate(CASES):
        tree.cases[case.image_id] = case
        study, series = uid(), uid()
        image_csv = f"{case.image_id}/{study}/{series}/000000.dcm"
        if case.full_present:
            full = series_dir(case.image_id, study, series, "full mammogram images") / fname(1)
            write_mg_dicom(full, _full_pixels(seed), tags)
            tree.fulls[case.image_id] = full
        per_abn: dict[int, tuple[str, str]] = {}
        masks = []
        for a in case.abns:
            subject = f"{case.image_id}_{a.abn_id}"
            roi_study, roi_series, crop_series = uid(), uid(), uid()
            crop_csv = f"{subject}/{roi_study}/{roi_series}/000000.dcm"
            roi_csv = f"{subject}/{roi_study}/{roi_series}/000001.dcm"
            per_abn[a.abn_id] = (crop_csv, roi_csv)
            if a.arrangement == "absent":
                continue
            crop = _crop_pixels(seed * 10 + a.abn_id)
            mask = _mask_pixels(a)
            if a.arrangement in ("mask-first", "crop-first", "wrong-size"):
                folder = series_dir(subject, roi_study, roi_series, "ROI mask images")
                order = ("crop", "mask") if a.arrangement == "crop-first" else ("mask", "crop")
                paths = {what: folder / fname(i) for i, what in enumerate(order, start=1)}
            else:
                swapped = a.arrangement == "separate-swapped"
                mask_dir = series_dir(
                    subject, roi_study, roi_series, "cropped images" if swapped else "ROI mask images"
                )
                crop_dir = series_dir(
                    subject, roi_study, crop_series, "ROI mask images" if swapped else "cropped images"
                )
                paths = {"mask": mask_dir / fname(1), "crop": crop_dir / fname(1)}
            write_mg_dicom(paths["mask"], mask.astype(np.uint16), mask_tags)
            write_mg_dicom(paths["crop"], crop, tags)
            masks.append(paths["mask"])
        tree.masks[case.image_id] = masks
        csv_paths[case.image_id] = (image_csv, per_abn)

    # The descriptor CSVs live beside CBIS-DDSM/ (downloaded apart from the images).
    _write_case_csvs(base, csv_paths)
    if layout == "metadata":
        with open(base / "metadata.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(METADATA_HEADER)
            writer.writerows(meta_rows)
    return tree


def _write_jpeg(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    buf.tofile(str(path))


def build_jpeg_tree(base: Path) -> Tree:
    """Write the Kaggle JPEG layout (``csv/``, ``jpeg/<uid>/1-NNN.jpg``) under ``base``."""
    uid = _Uids()
    counter = itertools.count(101)
    base.mkdir(parents=True, exist_ok=True)
    tree = Tree(root=base, layout="kaggle-jpeg")
    csv_paths: dict[str, tuple[str, dict[int, tuple[str, str]]]] = {}
    info_rows: list[dict[str, str]] = []

    def add(patient: str, study: str, series: str, description: str, img: np.ndarray, write: bool = True) -> Path:
        name = f"1-{next(counter)}"
        path = base / "jpeg" / series / f"{name}.jpg"
        if write:
            _write_jpeg(path, img)
        info_rows.append(
            {
                "file_path": f"CBIS-DDSM/dicom/{series}/{name}.dcm",
                "image_path": f"CBIS-DDSM/jpeg/{series}/{name}.jpg",
                "BitsAllocated": "16" if "mask" not in description else "8",
                "BodyPartExamined": "BREAST",
                "Columns": str(img.shape[1]),
                "Rows": str(img.shape[0]),
                "Laterality": patient.split("_")[3][0],
                "Modality": "MG",
                "PatientID": patient,
                "PatientName": patient,
                "PatientOrientation": patient.split("_")[4],
                "PhotometricInterpretation": "MONOCHROME2",
                "SeriesDescription": description,
                "SeriesInstanceUID": series,
                "StudyInstanceUID": study,
            }
        )
        return path

    for seed, case in enumerate(CASES):
        tree.cases[case.image_id] = case
        study, series = uid(), uid()
        full = add(
            case.image_id, study, series, "full mammogram images", _full_pixels(seed, np.uint8), case.full_present
        )
        if case.full_present:
            tree.fulls[case.image_id] = full
        per_abn: dict[int, tuple[str, str]] = {}
        masks = []
        for a in case.abns:
            subject = f"{case.image_id}_{a.abn_id}"
            roi_study, roi_series, crop_series = uid(), uid(), uid()
            same = a.arrangement in ("mask-first", "crop-first", "wrong-size")
            per_abn[a.abn_id] = (
                f"{subject}/{roi_study}/{roi_series if same else crop_series}/000000.dcm",
                f"{subject}/{roi_study}/{roi_series}/000001.dcm",
            )
            if a.arrangement == "absent":
                continue
            mask = _mask_pixels(a).astype(np.uint8)
            crop = _crop_pixels(seed * 10 + a.abn_id, np.uint8)
            # dicom_info labels each image; crop-first and separate-swapped carry the labels the wrong way round.
            swapped = a.arrangement in ("crop-first", "separate-swapped")
            mask_label, crop_label = (
                ("cropped images", "ROI mask images") if swapped else ("ROI mask images", "cropped images")
            )
            if a.arrangement == "crop-first":
                add(subject, roi_study, roi_series, crop_label, crop)
                masks.append(add(subject, roi_study, roi_series, mask_label, mask))
            else:
                masks.append(add(subject, roi_study, roi_series, mask_label, mask))
                add(subject, roi_study, roi_series if same else crop_series, crop_label, crop)
        tree.masks[case.image_id] = masks
        csv_paths[case.image_id] = (f"{case.image_id}/{study}/{series}/000000.dcm", per_abn)

    _write_case_csvs(base / "csv", csv_paths)
    with open(base / "csv" / "dicom_info.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=DICOM_INFO_HEADER, restval="")
        writer.writeheader()
        writer.writerows(info_rows)
    return tree
