"""CBIS-DDSM readers: the TCIA (NBIA) DICOM download and the Kaggle JPEG re-distribution.

Both readers turn the case-description CSVs into one :class:`~bcedge.datasets.base.Sample`
per full mammogram, whose ``mask_paths`` are the ROI masks of every abnormality of the
selected type on that image (their union is the lesion mask).

Layouts
-------
**TCIA / NBIA download** (:class:`CbisDdsmTcia`, registered as ``cbis-ddsm``)::

    <root>/                                    (or <root>/manifest-*/ as written by NBIA Data Retriever 4.x)
      metadata.csv                             optional: Series UID, Subject ID, Series Description, File Location, ...
      mass_case_description_train_set.csv      the case descriptors, downloaded apart from the images;
      mass_case_description_test_set.csv       looked up in <root>, <root>/csv, the manifest folder,
      calc_case_description_{train,test}_set.csv  or ``csv_dir``
      CBIS-DDSM/
        Mass-Training_P_00001_LEFT_CC/07-20-2016-DDSM-74994/1.000000-full mammogram images-24515/1-1.dcm
        Mass-Training_P_00001_LEFT_CC_1/07-21-2016-DDSM-NA-10723/1.000000-ROI mask images-68232/1-1.dcm, 1-2.dcm
        Calc-Training_P_01437_LEFT_CC_2/09-06-2017-DDSM-NA-95450/1.000000-ROI mask images-78625/1-1.dcm
        Mass-Test_P_00016_LEFT_CC_1/.../1.000000-cropped images-.../1-1.dcm   (crop in its own series)

The older "classic" NBIA naming (``<Subject ID>/<Study UID>/<Series UID>/000000.dcm``),
which is what the CSV paths spell, is read the same way. The first folder is the
*Subject ID*: the image id (``Mass-Training_P_00001_LEFT_CC``) for a full mammogram,
the image id plus ``_<abnormality id>`` for the ROI mask and the cropped lesion.

**Kaggle "CBIS-DDSM: Breast Cancer Image Dataset"** (awsaf49; :class:`CbisDdsmJpeg`,
registered as ``cbis-ddsm-jpeg``)::

    <root>/                                    (or <root>/CBIS-DDSM/)
      csv/dicom_info.csv                       one row per image: file_path (CBIS-DDSM/dicom/<uid>/1-NNN.dcm),
                                               image_path (CBIS-DDSM/jpeg/<uid>/1-NNN.jpg), PatientID (= Subject ID),
                                               SeriesDescription, SeriesInstanceUID, Rows, Columns, ...
      csv/mass_case_description_{train,test}_set.csv, csv/calc_case_description_{train,test}_set.csv
      jpeg/<SeriesInstanceUID>/1-NNN.jpg       8-bit JPEG conversions of every DICOM

``image_path`` keeps the publisher's prefix (``CBIS-DDSM/jpeg/...``); it is resolved from
the ``jpeg`` component onwards under the root the user gives.

Matching and quirks handled
---------------------------
* **CSV paths are not disk paths.** The descriptor CSVs spell
  ``<Subject ID>/<Study UID>/<Series UID>/000000.dcm`` while current NBIA downloads name
  folders ``<date>-DDSM-<n>/1.000000-<series description>-<n>/1-1.dcm``. Only the first
  component (the Subject ID) is trusted; files are found under that subject folder (or
  through ``metadata.csv`` / ``dicom_info.csv`` rows with that Subject ID / PatientID,
  falling back to the Series UID of the CSV path). Stray whitespace and line breaks inside
  CSV path cells (several ``ROI mask file path`` cells end in ``\\n``) are removed, backslashes
  become slashes. CSV headers are compared case-, space- and underscore-insensitively
  (the mass CSV says ``breast_density``, the calc CSV ``breast density``).
* **ROI mask vs. cropped image.** The two share one series in most ROI folders (``1-1.dcm``
  and ``1-2.dcm``, in no fixed order), sit in separate series in others, and the series
  description (folder name, ``metadata.csv``, ``dicom_info.csv`` SeriesDescription) is
  wrong for some. Neither name nor label is trusted: **the ROI mask is the file of the
  abnormality whose Rows x Columns equal the full mammogram's; the smaller files are crops**
  (listed in ``extra["crop_paths"]``). Only sizes are read (DICOM header / JPEG SOF marker).
* **Mask size differs from the image.** Some masks do not have the size of their mammogram,
  some by tens of pixels, some by 15 % with another aspect ratio (e.g. ``Mass-Test_P_00145_LEFT_CC``
  4386x1789 vs. 5041x2056), so no resize can be trusted to align them. Rule: a candidate that
  covers at least half the image's area but has another size is such a mask; the image is
  skipped and listed in :attr:`size_mismatched` (``size_mismatch="skip"``, default), an error
  (``"error"``), or kept with the mask as it is (``"keep"``: :meth:`Sample.load_mask` then raises).
  A candidate under half the area is a crop, and an abnormality with only crops has no mask.
* **Several abnormalities per image** (abnormality id 1, 2, ...): one sample, one mask file each.
* **Missing files.** A CSV row whose full mammogram or ROI mask cannot be found is counted
  (:attr:`missing`, details in :attr:`missing_rows`, one ``UserWarning``) and its image skipped;
  ``strict=True`` raises :class:`~bcedge.errors.DatasetError` instead.
* Labels: laterality ``LEFT``/``RIGHT`` -> ``L``/``R``, view ``CC``/``MLO`` from the CSV;
  pathology ``MALIGNANT`` -> ``malignant``, ``BENIGN`` and ``BENIGN_WITHOUT_CALLBACK`` ->
  ``benign`` (an image is malignant when any abnormality is); the CSV labels per abnormality stay in
  ``extra["pathologies"]``. Split: ``train``/``test`` from the CSV the row comes from.

Sources
-------
* TCIA collection page and descriptor CSVs: https://doi.org/10.7937/K9/TCIA.2016.7O02S9CY ;
  Lee et al., "A curated mammography data set for use in computer-aided detection and
  diagnosis research", Sci. Data 4, 170177 (2017).
* NBIA folder names and metadata.csv columns: public scripts reading the download, e.g.
  ``Calc-Test_P_00038_LEFT_CC_1/08-29-2017-DDSM-NA-94942/1.000000-ROI mask images-18515/1-2.dcm``;
  ``DDSM_Processing.py`` (V. Kumar) using ``metadata.csv`` ``Subject ID``/``Series Description``/
  ``File Location`` (``.\\CBIS-DDSM\\...``); github.com/sposso/CBIS-DDSM-DATASET ``retrieval_utils.py``
  (crop and mask in one or in two series, "no consistent mask naming convention").
* Mask/image size mismatches: github.com/fjeg/ddsm_tools issue #5 (list of affected masks).
* Kaggle layout: kaggle.com/datasets/awsaf49/cbis-ddsm-breast-cancer-image-dataset; readers of it
  such as DeepMind dm_nevis ``ddsm`` handler (``csv/dicom_info.csv``, ``jpeg/<uid>/<file>``, join on the
  first CSV path component = ``PatientID``) and others joining on ``SeriesInstanceUID``; a notebook
  noting rows whose SeriesDescription does not fit the image size.

Why one module: two readers of one collection that share the CSV parsing and the matching rules
above; its length is the data set's quirks, each handled once.
"""

from __future__ import annotations

import abc
import csv
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bcedge.datasets import _files
from bcedge.datasets.base import Sample
from bcedge.errors import ConfigError, DatasetError

Abnormality = Literal["mass", "calc", "both"]
SizeMismatch = Literal["skip", "error", "keep"]

#: Case-description CSV file names, by (abnormality type, split).
CASE_CSVS: dict[tuple[str, str], str] = {
    ("mass", "train"): "mass_case_description_train_set.csv",
    ("mass", "test"): "mass_case_description_test_set.csv",
    ("calc", "train"): "calc_case_description_train_set.csv",
    ("calc", "test"): "calc_case_description_test_set.csv",
}
#: Columns every case CSV must have (normalised: lower case, single spaces).
REQUIRED_COLUMNS = (
    "patient id",
    "left or right breast",
    "image view",
    "abnormality id",
    "pathology",
    "image file path",
    "roi mask file path",
)
#: A candidate at least this fraction of the image's area is a mask, smaller ones are crops.
MASK_MIN_AREA_FRACTION = 0.5
#: Subject IDs of the collection: image id, optionally followed by ``_<abnormality id>``.
SUBJECT_RE = re.compile(r"^(Mass|Calc)-(Training|Test)_P_\d+_(LEFT|RIGHT)_(CC|MLO)(_\d+)?$")

_LATERALITY = {"LEFT": "L", "RIGHT": "R", "L": "L", "R": "R"}
_PATHOLOGY = {"MALIGNANT": "malignant", "BENIGN": "benign", "BENIGN_WITHOUT_CALLBACK": "benign"}
_DICOM_SUFFIXES = {".dcm", ".dicom"}


# --------------------------------------------------------------------------- CSV helpers


def normalise_header(name: str) -> str:
    """``'Breast_Density '`` -> ``'breast density'``: headers differ between the mass and calc CSVs."""
    return " ".join(name.replace("_", " ").replace("\ufeff", "").split()).lower()


def clean_csv_path(value: str | None) -> str:
    """A CSV path cell without whitespace or line breaks, with ``/`` separators and no leading ``./``.

    DICOM UIDs and CBIS-DDSM subject ids hold no spaces, so removing all whitespace is safe;
    several cells of the published CSVs end in a line break inside the quotes.
    """
    text = "".join((value or "").split()).replace("\\", "/")
    while text.startswith("./"):
        text = text[2:]
    return text.strip("/")


def _read_csv(
    path: Path, required: Sequence[str], what: str, key: Callable[[str], str] = normalise_header
) -> tuple[list[str], list[dict[str, str]], list[int]]:
    """Normalised header, rows keyed by it, and the line number each row starts on.

    Raises:
        DatasetError: the file is empty, not UTF-8/CSV, or its header lacks a ``required`` column.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            try:
                header = next(reader)
            except StopIteration:
                raise DatasetError(f"{path}: empty {what}; expected a header row") from None
            keys = [key(h) for h in header]
            absent = [c for c in required if c not in keys]
            if absent:
                raise DatasetError(
                    f"{path}: malformed {what} header, missing column(s) {', '.join(repr(c) for c in absent)}; "
                    f"got {', '.join(repr(h.strip()) for h in header[:16])}"
                )
            rows, lines = [], []
            start = reader.line_num + 1
            for cells in reader:
                if any(c.strip() for c in cells):
                    rows.append({k: (cells[i].strip() if i < len(cells) else "") for i, k in enumerate(keys)})
                    lines.append(start)
                start = reader.line_num + 1
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: {what} is not UTF-8 text ({exc.reason})") from exc
    except csv.Error as exc:
        raise DatasetError(f"{path}: unreadable {what} ({exc})") from exc
    return keys, rows, lines


@dataclass(frozen=True)
class CaseRow:
    """One abnormality: one row of a case-description CSV.

    Attributes:
        kind: ``mass`` or ``calc``.
        split: ``train`` or ``test`` (from the CSV's file name).
        image_id: Subject ID of the full mammogram (first component of ``image file path``).
        patient_id: ``P_00001``.
        laterality: ``L``/``R`` or None when the cell is not LEFT/RIGHT.
        view: ``CC``/``MLO`` (upper-cased cell) or None when empty.
        abnormality_id: the ``abnormality id`` cell (``1``, ``2``, ...).
        pathology: the CSV label, upper case (``MALIGNANT``, ``BENIGN``, ``BENIGN_WITHOUT_CALLBACK``).
        image_path, roi_path, crop_path: cleaned CSV paths (see :func:`clean_csv_path`).
        fields: every cell, keyed by normalised header.
        where: ``<csv file>:<line>``, for messages.
    """

    kind: str
    split: str
    image_id: str
    patient_id: str
    laterality: str | None
    view: str | None
    abnormality_id: str
    pathology: str
    image_path: str
    roi_path: str
    crop_path: str
    fields: dict[str, str] = field(repr=False)
    where: str = ""

    @property
    def roi_subjects(self) -> list[str]:
        """Subject IDs that may hold this abnormality's mask and crop, most likely first."""
        out = []
        for path in (self.roi_path, self.crop_path):
            first = path.split("/", 1)[0]
            if first and first not in out:
                out.append(first)
        fallback = f"{self.image_id}_{self.abnormality_id}"
        if fallback not in out:
            out.append(fallback)
        return out

    @property
    def roi_series_uids(self) -> list[str]:
        """Series UIDs named by the ROI and crop CSV paths (``<subject>/<study>/<series>/<file>``)."""
        out = []
        for path in (self.roi_path, self.crop_path):
            parts = path.split("/")
            if len(parts) >= 4 and parts[-2] not in out:
                out.append(parts[-2])
        return out

    @property
    def image_series_uid(self) -> str | None:
        parts = self.image_path.split("/")
        return parts[-2] if len(parts) >= 4 else None


def read_case_csv(path: Path, kind: str, split: str) -> list[CaseRow]:
    """Parse one case-description CSV.

    Raises:
        DatasetError: the header lacks a required column, or a row has no ``image file path``.
    """
    _, rows, lines = _read_csv(path, REQUIRED_COLUMNS, "case-description CSV")
    out = []
    for cells, line in zip(rows, lines, strict=True):
        where = f"{path.name}:{line}"
        image_path = clean_csv_path(cells.get("image file path"))
        image_id = image_path.split("/", 1)[0]
        if not image_id:
            raise DatasetError(f"{path}: line {line}: empty 'image file path'")
        patient = cells.get("patient id", "").strip()
        out.append(
            CaseRow(
                kind=kind,
                split=split,
                image_id=image_id,
                patient_id=patient or image_id,
                laterality=_LATERALITY.get(cells.get("left or right breast", "").strip().upper()),
                view=cells.get("image view", "").strip().upper() or None,
                abnormality_id=cells.get("abnormality id", "").strip() or "1",
                pathology=cells.get("pathology", "").strip().upper(),
                image_path=image_path,
                roi_path=clean_csv_path(cells.get("roi mask file path")),
                crop_path=clean_csv_path(cells.get("cropped image file path")),
                fields=cells,
                where=where,
            )
        )
    return out


def find_case_csvs(dirs: Iterable[Path], abnormality: Abnormality) -> list[tuple[str, str, Path]]:
    """Locate the case CSVs for ``abnormality``: [(kind, split, path)].

    Raises:
        DatasetError: a needed CSV is in none of ``dirs``.
    """
    dirs = [d for d in dict.fromkeys(dirs) if d.is_dir()]
    kinds = ["mass", "calc"] if abnormality == "both" else [abnormality]
    out, absent = [], []
    for kind in kinds:
        for split in ("train", "test"):
            name = CASE_CSVS[(kind, split)]
            hit = next((d / name for d in dirs if (d / name).is_file()), None)
            if hit is None:
                absent.append(name)
            else:
                out.append((kind, split, hit))
    if absent:
        where = ", ".join(str(d) for d in dirs) or "(no existing folder)"
        raise DatasetError(f"CBIS-DDSM case CSV not found: {', '.join(absent)}; looked in {where}")
    return out


# --------------------------------------------------------------------------- image sizes


def image_size(path: Path) -> tuple[int, int] | None:
    """(rows, cols) of a DICOM, JPEG or PNG file from its header; None when unreadable.

    Listing CBIS-DDSM needs the size of every candidate mask, so pixels are not decoded;
    an unreadable file is counted as missing by the caller.
    """
    try:
        return _files.image_size(path)
    except DatasetError:
        return None


@dataclass(frozen=True)
class Candidate:
    """A file that may be a full mammogram, an ROI mask or a crop.

    Attributes:
        path: the file.
        size: (rows, cols) or None when unreadable.
        hint: the publisher's series description (or folder name); advisory only.
    """

    path: Path
    size: tuple[int, int] | None
    hint: str = ""

    @property
    def area(self) -> int:
        return self.size[0] * self.size[1] if self.size else 0


MaskStatus = Literal["ok", "mismatch", "none"]


def pick_roi_mask(candidates: Sequence[Candidate], full_size: tuple[int, int]) -> tuple[Candidate | None, MaskStatus]:
    """Choose the ROI mask among an abnormality's files by size against the full mammogram.

    Rule: a file of exactly ``full_size`` is the mask (if several, the one labelled
    "mask", then the first by path). Otherwise the largest file is a mask of another
    size when it covers at least :data:`MASK_MIN_AREA_FRACTION` of the image
    (``mismatch``), else there is no mask (``none``: only crops).

    Args:
        candidates: every file found for the abnormality.
        full_size: (rows, cols) of the full mammogram.

    Returns:
        (chosen candidate or None, status).
    """
    same = sorted((c for c in candidates if c.size == tuple(full_size)), key=lambda c: str(c.path))
    if same:
        labelled = [c for c in same if "mask" in c.hint.lower()]
        return (labelled or same)[0], "ok"
    sized = [c for c in candidates if c.size]
    if not sized:
        return None, "none"
    largest = max(sized, key=lambda c: (c.area, str(c.path)))
    if largest.area >= MASK_MIN_AREA_FRACTION * full_size[0] * full_size[1]:
        return largest, "mismatch"
    return None, "none"


def pick_full_image(candidates: Sequence[Candidate], series_uid: str | None = None) -> Candidate | None:
    """The full mammogram among a subject's files: labelled "full mammogram", then the CSV's series, then largest."""
    sized = [c for c in candidates if c.size]
    if not sized:
        return None
    if len(sized) == 1:
        return sized[0]

    def rank(c: Candidate) -> tuple[bool, bool, int, str]:
        return ("full mammogram" in c.hint.lower(), bool(series_uid) and series_uid in str(c.path), c.area, str(c.path))

    return max(sized, key=rank)


# --------------------------------------------------------------------------- the readers


class _CbisReader(abc.ABC):
    """Everything both layouts share: CSV rows -> grouped images -> samples. Subclasses find files."""

    name = "cbis-ddsm"
    layout = ""

    def __init__(
        self,
        root: str | Path,
        *,
        abnormality: Abnormality = "mass",
        strict: bool = False,
        size_mismatch: SizeMismatch = "skip",
    ) -> None:
        if abnormality not in ("mass", "calc", "both"):
            raise ConfigError(f"abnormality={abnormality!r}; expected 'mass', 'calc' or 'both'")
        if size_mismatch not in ("skip", "error", "keep"):
            raise ConfigError(f"size_mismatch={size_mismatch!r}; expected 'skip', 'error' or 'keep'")
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: CBIS-DDSM root folder not found ({self.layout})")
        self.abnormality: Abnormality = abnormality
        self.strict = strict
        self.size_mismatch: SizeMismatch = size_mismatch
        #: One line per CSV row whose full mammogram or ROI mask was not found (filled by :meth:`samples`).
        self.missing_rows: list[str] = []
        #: Image ids whose ROI mask has another size than the image (skipped unless size_mismatch='keep').
        self.size_mismatched: list[str] = []
        self._csvs: list[tuple[str, str, Path]] = []
        self._samples: list[Sample] | None = None

    # -- provided by each layout
    @abc.abstractmethod
    def _full_candidates(self, row: CaseRow) -> list[Candidate]:
        """Files that may be the full mammogram of ``row``."""

    @abc.abstractmethod
    def _roi_candidates(self, row: CaseRow) -> list[Candidate]:
        """Files that may be the ROI mask (or the crop) of ``row``."""

    def _where(self) -> str:
        return str(self.root)

    # -- public API
    @property
    def missing(self) -> int:
        """How many CSV rows were skipped because a file was not found (lists the dataset once)."""
        self._build()
        return len(self.missing_rows)

    @property
    def csv_files(self) -> list[Path]:
        """The case-description CSVs read."""
        return [p for _, _, p in self._csvs]

    def samples(self) -> Iterator[Sample]:
        """Yield one sample per full mammogram that has every mask of its abnormalities, sorted by id."""
        yield from self._build()

    def __len__(self) -> int:
        return len(self._build())

    # -- internals
    def _rows(self) -> list[CaseRow]:
        rows: list[CaseRow] = []
        for kind, split, path in self._csvs:
            rows.extend(read_case_csv(path, kind, split))
        return rows

    def _miss(self, row: CaseRow, what: str) -> None:
        msg = (
            f"{row.where}: {what} of {row.image_id} (abnormality {row.abnormality_id}) not found under {self._where()}"
        )
        if self.strict:
            raise DatasetError(msg)
        self.missing_rows.append(msg)

    def _build(self) -> list[Sample]:
        if self._samples is not None:
            return self._samples
        self.missing_rows, self.size_mismatched = [], []
        groups: dict[str, list[CaseRow]] = {}
        for row in self._rows():
            groups.setdefault(row.image_id, []).append(row)
        samples = []
        for image_id in sorted(groups):
            sample = self._sample(image_id, groups[image_id])
            if sample is not None:
                samples.append(sample)
        if self.missing_rows:
            warnings.warn(
                f"{self.name}: skipped {len(self.missing_rows)} CSV row(s) whose image or ROI mask was not found "
                f"(first: {self.missing_rows[0]}); see the reader's missing_rows",
                stacklevel=3,
            )
        self._samples = samples
        return samples

    def _sample(self, image_id: str, rows: list[CaseRow]) -> Sample | None:
        rows = sorted(rows, key=lambda r: (_int_or(r.abnormality_id), r.abnormality_id, r.where))
        # The published CSVs repeat a few rows verbatim; one mask per abnormality.
        unique: dict[tuple[str, str], CaseRow] = {}
        for r in rows:
            unique.setdefault((r.abnormality_id, r.roi_path), r)
        rows = list(unique.values())
        first = rows[0]
        full = pick_full_image(self._full_candidates(first), first.image_series_uid)
        if full is None or full.size is None:
            for r in rows:
                self._miss(r, "full mammogram")
            return None
        masks: list[Path] = []
        crops: list[Path] = []
        complete, mismatched = True, False
        for r in rows:
            cands = self._roi_candidates(r)
            chosen, status = pick_roi_mask(cands, full.size)
            if chosen is None:
                self._miss(r, "ROI mask")
                complete = False
                continue
            if status == "mismatch":
                mismatched = True
                if self.size_mismatch == "error":
                    raise DatasetError(
                        f"{chosen.path}: ROI mask of {image_id} is {chosen.size[1]}x{chosen.size[0]} "  # type: ignore[index]
                        f"but the image is {full.size[1]}x{full.size[0]} (known CBIS-DDSM defect); "
                        "use size_mismatch='skip' to leave such images out"
                    )
            if chosen.path not in masks:
                masks.append(chosen.path)
            crops.extend(c.path for c in cands if c.path != chosen.path and c.path not in crops)
        if not complete:
            return None
        if mismatched:
            self.size_mismatched.append(image_id)
            if self.size_mismatch == "skip":
                return None
        labels = [_PATHOLOGY.get(r.pathology, r.pathology.lower()) for r in rows]
        pathology = "malignant" if "malignant" in labels else ("benign" if "benign" in labels else labels[0] or None)
        kinds = sorted({r.kind for r in rows})
        extra = {
            "layout": self.layout,
            "abnormality_type": ";".join(kinds),
            "abnormality_ids": ";".join(r.abnormality_id for r in rows),
            "pathologies": ";".join(r.pathology for r in rows),
            "assessments": ";".join(r.fields.get("assessment", "") for r in rows),
            "subtleties": ";".join(r.fields.get("subtlety", "") for r in rows),
            "breast_density": first.fields.get("breast density", ""),
            "crop_paths": ";".join(str(p) for p in crops),
        }
        if "mass" in kinds:
            extra["mass_shapes"] = ";".join(r.fields.get("mass shape", "") for r in rows)
            extra["mass_margins"] = ";".join(r.fields.get("mass margins", "") for r in rows)
        if "calc" in kinds:
            extra["calc_types"] = ";".join(r.fields.get("calc type", "") for r in rows)
            extra["calc_distributions"] = ";".join(r.fields.get("calc distribution", "") for r in rows)
        if mismatched:
            extra["mask_size_mismatch"] = "true"
        return Sample(
            id=image_id,
            patient_id=first.patient_id,
            source=self.name,
            image_path=full.path,
            mask_paths=tuple(masks),
            laterality=first.laterality,
            view=first.view,
            pathology=pathology,
            mask_kind="pixel",
            split=first.split,
            extra=extra,
        )


def _int_or(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 1 << 30


def _dicoms_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in _DICOM_SUFFIXES and p.is_file())


class CbisDdsmTcia(_CbisReader):
    """CBIS-DDSM as downloaded from TCIA with the NBIA Data Retriever (DICOM), plus its case CSVs.

    Args:
        root: the download folder: it holds ``CBIS-DDSM/`` (directly or in a ``manifest-*``
            folder), or is that ``CBIS-DDSM/`` folder itself, or holds a ``metadata.csv`` whose
            ``File Location`` cells point at the series folders.
        abnormality: ``mass`` (default), ``calc`` or ``both`` CSVs.
        csv_dir: folder of the case CSVs, when they are not in ``root``, ``root/csv`` or next to
            the image tree.
        metadata_csv: NBIA ``metadata.csv``; by default looked up in ``root`` and the manifest folder.
        strict: raise on the first CSV row whose files are missing instead of skipping it.
        size_mismatch: ``skip``, ``error`` or ``keep`` images whose mask size differs from theirs.

    Raises:
        DatasetError: root missing, case CSV missing or malformed, no image tree and no metadata.csv.
    """

    name = "cbis-ddsm"
    layout = "tcia"

    def __init__(
        self,
        root: str | Path,
        *,
        abnormality: Abnormality = "mass",
        csv_dir: str | Path | None = None,
        metadata_csv: str | Path | None = None,
        strict: bool = False,
        size_mismatch: SizeMismatch = "skip",
    ) -> None:
        super().__init__(root, abnormality=abnormality, strict=strict, size_mismatch=size_mismatch)
        manifests = sorted(p for p in self.root.glob("manifest-*") if p.is_dir())
        self.tree = self._find_tree(manifests)
        if metadata_csv is not None:
            meta = Path(metadata_csv)
            if not meta.is_file():
                raise DatasetError(f"{meta}: NBIA metadata.csv not found")
        else:
            near = [self.root, *manifests] + ([self.tree.parent] if self.tree else [])
            meta = next((d / "metadata.csv" for d in near if (d / "metadata.csv").is_file()), None)
        self.metadata_csv: Path | None = meta
        self._series: dict[str, list[tuple[Path, str]]] = self._read_metadata(meta) if meta else {}
        if self.tree is None and not self._series:
            raise DatasetError(
                f"{self.root}: no CBIS-DDSM image tree (expected CBIS-DDSM/<Subject ID>/... such as "
                "CBIS-DDSM/Mass-Training_P_00001_LEFT_CC/, subject folders directly in the root, "
                "or an NBIA metadata.csv)"
            )
        if csv_dir is not None and not Path(csv_dir).is_dir():
            raise DatasetError(f"{csv_dir}: csv_dir folder not found")
        dirs = [Path(csv_dir)] if csv_dir is not None else []
        dirs += [self.root, self.root / "csv", *manifests]
        if self.tree is not None:
            dirs += [self.tree.parent, self.tree]
        self._csvs = find_case_csvs(dirs, abnormality)
        self._files: dict[str, list[Candidate]] = {}

    def _where(self) -> str:
        return str(self.tree or self.metadata_csv or self.root)

    def _find_tree(self, manifests: list[Path]) -> Path | None:
        for cand in [self.root / "CBIS-DDSM", *(m / "CBIS-DDSM" for m in manifests)]:
            if cand.is_dir():
                return cand
        if any(SUBJECT_RE.match(p.name) and p.is_dir() for p in self.root.iterdir()):
            return self.root
        return None

    def _read_metadata(self, path: Path) -> dict[str, list[tuple[Path, str]]]:
        _, rows, _ = _read_csv(path, ("subject id", "series description", "file location"), "NBIA metadata.csv")
        out: dict[str, list[tuple[Path, str]]] = {}
        for cells in rows:
            subject = cells["subject id"].strip()
            # Not clean_csv_path: folder names hold the series description and its spaces.
            loc = cells["file location"].strip().replace("\\", "/")
            while loc.startswith("./"):
                loc = loc[2:]
            parts = [p for p in loc.split("/") if p]
            bases = [path.parent / Path(*parts)] if parts else []
            if subject in parts and self.tree is not None:
                bases.append(self.tree / Path(*parts[parts.index(subject) :]))
            folder = next((b for b in bases if b.is_dir()), None)
            if subject and folder is not None:
                out.setdefault(subject, []).append((folder, cells["series description"].strip()))
        return out

    def _subject_files(self, subject: str) -> list[Candidate]:
        if subject in self._files:
            return self._files[subject]
        found: list[tuple[Path, str]] = []
        for folder, desc in self._series.get(subject, []):
            found.extend((p, desc) for p in _dicoms_under(folder))
        if not found and self.tree is not None and (self.tree / subject).is_dir():
            # The series folder name carries the series description in current downloads.
            found = [(p, p.parent.name) for p in _dicoms_under(self.tree / subject)]
        cands = [Candidate(p, image_size(p), hint) for p, hint in dict(found).items()]
        self._files[subject] = cands
        return cands

    def _full_candidates(self, row: CaseRow) -> list[Candidate]:
        return self._subject_files(row.image_id)

    def _roi_candidates(self, row: CaseRow) -> list[Candidate]:
        out: dict[Path, Candidate] = {}
        for subject in row.roi_subjects:
            for c in self._subject_files(subject):
                out.setdefault(c.path, c)
            if out:  # the CSV's own subject answered; the fallback name is for rows without ROI paths
                break
        return list(out.values())


class CbisDdsmJpeg(_CbisReader):
    """The Kaggle JPEG re-distribution of CBIS-DDSM (awsaf49): ``csv/`` and ``jpeg/<SeriesInstanceUID>/``.

    Masks are lossy JPEGs; :func:`~bcedge.datasets.base.read_mask_file` thresholds them at 127.

    Args:
        root: the folder holding ``csv/`` and ``jpeg/`` (or holding ``CBIS-DDSM/`` with them).
        abnormality: ``mass`` (default), ``calc`` or ``both`` CSVs.
        strict: raise on the first CSV row whose files are missing instead of skipping it.
        size_mismatch: ``skip``, ``error`` or ``keep`` images whose mask size differs from theirs.

    Raises:
        DatasetError: root missing, ``csv/dicom_info.csv`` or a case CSV missing or malformed.
    """

    name = "cbis-ddsm-jpeg"
    layout = "kaggle-jpeg"

    def __init__(
        self,
        root: str | Path,
        *,
        abnormality: Abnormality = "mass",
        strict: bool = False,
        size_mismatch: SizeMismatch = "skip",
    ) -> None:
        super().__init__(root, abnormality=abnormality, strict=strict, size_mismatch=size_mismatch)
        base = self.root
        if not (base / "csv").is_dir() and (base / "CBIS-DDSM" / "csv").is_dir():
            base = base / "CBIS-DDSM"
        self.base = base
        info = base / "csv" / "dicom_info.csv"
        if not info.is_file():
            raise DatasetError(f"{info}: dicom_info.csv not found; expected the Kaggle layout <root>/csv, <root>/jpeg")
        self.dicom_info = info
        self._csvs = find_case_csvs([base / "csv", base], abnormality)
        self._by_patient: dict[str, list[int]] = {}
        self._by_series: dict[str, list[int]] = {}
        self._entries: list[tuple[Path, str, str, tuple[int, int] | None]] = []
        self._read_dicom_info(info)
        self._sizes: dict[Path, tuple[int, int] | None] = {}

    def _where(self) -> str:
        return str(self.base / "jpeg")

    def _resolve(self, cell: str, series_uid: str) -> Path:
        parts = [p for p in clean_csv_path(cell).split("/") if p]
        if "jpeg" in parts:
            idx = len(parts) - 1 - parts[::-1].index("jpeg")
            path = self.base.joinpath("jpeg", *parts[idx + 1 :])
        elif parts:
            path = self.base.joinpath(*parts)
        else:
            path = self.base / "jpeg"
        if not path.is_file() and series_uid and parts:
            alt = self.base / "jpeg" / series_uid / parts[-1]
            if alt.is_file():
                return alt
        return path

    def _read_dicom_info(self, info: Path) -> None:
        # Headers compared without case, spaces or underscores: 'SeriesDescription', 'image_path'.
        keys, rows, _ = _read_csv(
            info,
            ("patientid", "seriesdescription"),
            "dicom_info.csv",
            key=lambda h: normalise_header(h).replace(" ", ""),
        )
        if not {"imagepath", "filepath"} & set(keys):
            raise DatasetError(f"{info}: malformed dicom_info.csv header, missing column 'image_path' (or 'file_path')")
        for cells in rows:
            # image_path is CBIS-DDSM/jpeg/<uid>/1-NNN.jpg; file_path names the original .dcm, used only if a JPEG.
            image_cell = next(
                (
                    cells.get(k, "")
                    for k in ("imagepath", "filepath")
                    if cells.get(k, "").lower().endswith((".jpg", ".jpeg"))
                ),
                "",
            )
            if not image_cell:
                continue
            uid = "".join(cells.get("seriesinstanceuid", "").split())
            try:
                dims: tuple[int, int] | None = (int(float(cells["rows"])), int(float(cells["columns"])))
            except (KeyError, ValueError):
                dims = None
            idx = len(self._entries)
            self._entries.append((self._resolve(image_cell, uid), cells.get("seriesdescription", ""), uid, dims))
            patient = "".join(cells.get("patientid", "").split())
            if patient:
                self._by_patient.setdefault(patient, []).append(idx)
            if uid:
                self._by_series.setdefault(uid, []).append(idx)

    def _candidates(self, indices: Iterable[int]) -> list[Candidate]:
        out: dict[Path, Candidate] = {}
        for i in indices:
            path, desc, _, dims = self._entries[i]
            if path in out or not path.is_file():
                continue
            if path not in self._sizes:
                # The JPEG's own header is the truth; dicom_info's Rows/Columns only when it is unreadable.
                self._sizes[path] = image_size(path) or dims
            out[path] = Candidate(path, self._sizes[path], desc)
        return sorted(out.values(), key=lambda c: str(c.path))

    def _full_candidates(self, row: CaseRow) -> list[Candidate]:
        cands = self._candidates(self._by_patient.get(row.image_id, []))
        if not cands and row.image_series_uid:
            cands = self._candidates(self._by_series.get(row.image_series_uid, []))
        return cands

    def _roi_candidates(self, row: CaseRow) -> list[Candidate]:
        for subject in row.roi_subjects:
            cands = self._candidates(self._by_patient.get(subject, []))
            if cands:
                return cands
        indices = [i for uid in row.roi_series_uids for i in self._by_series.get(uid, [])]
        return self._candidates(indices)


__all__ = [
    "CASE_CSVS",
    "REQUIRED_COLUMNS",
    "Candidate",
    "CaseRow",
    "CbisDdsmJpeg",
    "CbisDdsmTcia",
    "clean_csv_path",
    "find_case_csvs",
    "image_size",
    "pick_full_image",
    "pick_roi_mask",
    "read_case_csv",
]
