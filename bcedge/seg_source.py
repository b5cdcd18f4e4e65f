"""The source header a DICOM SEG is built from: every header the reader accepts, made fit for the SEG IOD.

highdicom copies the source's Patient, General Study, Patient Study, Clinical Trial and
equipment attributes into the SEG and checks some of them (it raised on a Study Date ``0``, a
Patient's Birth Date month 13, a one-value Pixel Spacing, an unknown Specific Character Set, a
Patient's Sex ``Q``); others it copies as they are, and ``dciodvfy`` then fails the SEG (control
characters in a name, a 100-character Patient ID, a Patient's Age ``abc``). The reader accepts
all of these, because none of them touches the pixels. :func:`prepare_source_header` makes a
copy in which

- every text or number value is checked against its VR (PS3.5 6.2): dates, times, person
  names, code strings, lengths, character repertoire, numbers; a value that fails is removed
  (a Type 2 attribute the SEG copies is kept empty: "present, may be empty"), control
  characters are removed from names and strings, values too long are cut to the VR's maximum;
- an unknown Specific Character Set is replaced by UTF-8 (``ISO_IR 192``) after every value has
  been decoded as pydicom would (its default repertoire for the unknown term);
- a Pixel Spacing without two positive finite values is left out (the SEG then carries no Pixel
  Measures); with a valid one, Slice Thickness comes from Body Part Thickness (0018,11A0), the
  compressed breast thickness the projection integrates over, which highdicom needs to read the
  Pixel Measures back; without it the spacing is left out of the SEG (the source keeps it);
- the Frame of Reference of a projection image is left out (see :func:`prepare_source_header`).

The Type 1 references (Study/Series/SOP Instance UID, SOP Class UID, Rows/Columns) cannot be
invented: a header without valid ones is refused with a one-line :class:`~bcedge.errors.DicomError`
(exit 2). What was changed is returned as a list of short notes naming attributes, never values,
so it can be logged without patient identifiers.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import math
import re
import warnings
from typing import TYPE_CHECKING, Any

from bcedge.errors import DicomError

if TYPE_CHECKING:
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset

#: Type 2 attributes highdicom reads from the source by name; kept (empty) when their value is invalid.
TYPE2_SOURCE = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
#: Type 1 attributes the SEG references; a source without a valid one cannot be referenced.
REQUIRED_SOURCE = {
    "StudyInstanceUID": "(0020,000D)",
    "SeriesInstanceUID": "(0020,000E)",
    "SOPInstanceUID": "(0008,0018)",
    "SOPClassUID": "(0008,0016)",
    "Rows": "(0028,0010)",
    "Columns": "(0028,0011)",
}
#: SOP classes highdicom builds a SEG for without a patient coordinate system (projection images).
PROJECTION_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1.2",  # Digital Mammography X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.2.1",  # - For Processing
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # - For Processing
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
}
MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
UTF8 = "ISO_IR 192"

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_TM = re.compile(r"^([01][0-9]|2[0-3])([0-5][0-9]([0-5][0-9]|60)?)?(\.[0-9]{1,6})?$")
_DT = re.compile(r"^[0-9]{4}([0-9]{2}([0-9]{2}([0-9]{2}([0-9]{2}([0-9]{2}(\.[0-9]{1,6})?)?)?)?)?)?([+-][0-9]{4})?$")
_AS = re.compile(r"^[0-9]{3}[DWMY]$")
_CS = re.compile(r"^[A-Z0-9 _]*$")
_IS = re.compile(r"^[ ]*[+-]?[0-9]+[ ]*$")
_DS = re.compile(r"^[ ]*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?[ ]*$")
#: Characters a single-line string may not hold (PS3.5 6.1.3: control characters other than ESC).
_CONTROL = re.compile(r"[\x00-\x1a\x1c-\x1f\x7f]")
#: Text VRs may also hold CR, LF, FF and TAB.
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")
_MAX_CHARS = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "ST": 1024, "LT": 10240, "UC": None, "UT": None}
_NUMBER_LENGTH = {"DS": 16, "IS": 12}


def _valid_date(text: str) -> bool:
    if not re.fullmatch(r"[0-9]{8}", text):
        return False
    try:
        datetime.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return False
    return True


def _clean_pn(text: str) -> str:
    """A person name without control characters, at most 5 components of 64 characters per group."""
    groups = []
    for group in _CONTROL.sub("", text).split("=")[:3]:
        components = [c.strip() for c in group.split("^")[:5]]
        groups.append("^".join(components)[:64].rstrip("^"))
    return "=".join(groups).rstrip("=")


def _clean_value(vr: str, value: str) -> str | None:
    """``value`` fit for ``vr``, or None when it cannot be made valid."""
    if vr == "DA":
        return value if _valid_date(value) else None
    if vr == "TM":
        return value if _TM.match(value) else None
    if vr == "DT":
        return value if _DT.match(value) else None
    if vr == "AS":
        return value if _AS.match(value) else None
    if vr == "UI":
        return value if len(value) <= 64 and _UID.match(value) else None
    if vr == "PN":
        return _clean_pn(value)
    if vr in ("IS", "DS"):
        if len(value.strip()) > _NUMBER_LENGTH[vr] or not (_IS if vr == "IS" else _DS).match(value):
            return None
        if vr == "IS":
            return value if -(2**31) <= int(value) < 2**31 else None
        return value if math.isfinite(float(value)) else None
    if vr == "CS":
        text = _CONTROL.sub("", value).strip()
        return text if len(text) <= 16 and _CS.match(text) else None
    if vr in ("ST", "LT", "UT"):
        return _TEXT_CONTROL.sub("", value)[: _MAX_CHARS.get(vr) or None]
    if vr in _MAX_CHARS:
        text = _CONTROL.sub("", value).replace("\\", "/")
        limit = _MAX_CHARS[vr]
        return text[:limit] if limit else text
    return value


_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UT"}
#: Enumerated values highdicom checks (its enum raised on anything else).
_ENUMERATED = {"PatientSex": {"M", "F", "O"}}


def _element_values(elem: DataElement) -> list[str]:
    value = elem.value
    if value is None or value == "":
        return []
    items = list(value) if elem.VM > 1 or isinstance(value, (list, tuple)) else [value]
    return ["" if v is None else str(v) for v in items]


def _clean_element(ds: Dataset, elem: DataElement, path: str, notes: list[str]) -> None:
    """Check one element against its VR; fix, empty or delete it (``notes`` says which, without values)."""
    from pydicom.datadict import dictionary_VM

    keyword = elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})"
    label = f"{path}{keyword}"
    try:
        values = _element_values(elem)
    except Exception:  # a raw value pydicom cannot convert: treated as invalid
        values = None
    cleaned: list[str] | None = None
    if values is not None:
        cleaned = []
        for value in values:
            fixed = _clean_value(elem.VR, value)
            if fixed is None:
                cleaned = None
                break
            cleaned.append(fixed)
    if cleaned is not None and keyword in _ENUMERATED and any(v not in _ENUMERATED[keyword] for v in cleaned):
        cleaned = None
    if cleaned is not None:
        try:
            single = dictionary_VM(elem.tag) == "1"
        except KeyError:
            single = False
        if single and len(cleaned) > 1:
            cleaned = cleaned[:1]
            notes.append(f"{label}: kept the first of several values")
        if cleaned != values:
            if values is not None and len(cleaned) == len(values):
                notes.append(f"{label}: characters or length not allowed by {elem.VR} removed")
            elem.value = cleaned[0] if len(cleaned) == 1 else (cleaned or "")
        return
    if not path and keyword in TYPE2_SOURCE:
        elem.value = ""
        notes.append(f"{label}: invalid {elem.VR} value, left empty (Type 2)")
    else:
        del ds[elem.tag]
        notes.append(f"{label}: invalid {elem.VR} value, left out")


def _clean_dataset(ds: Dataset, path: str, notes: list[str], depth: int = 0) -> None:
    """Clean every element of ``ds``; a sequence item that lost an element is removed whole.

    (Which attributes an item needs depends on its macro; an item without one of them would be
    invalid, and one without a value that was invalid is not worth keeping.)
    """
    for tag in list(ds.keys()):
        if tag.is_private or tag.group in (0x0002, 0x7FE0) or tag == 0x00080005:
            continue
        try:
            elem = ds[tag]  # converts a raw element; a value pydicom cannot convert raises here
        except Exception:
            del ds[tag]
            notes.append(f"{path}({tag.group:04X},{tag.element:04X}): unreadable value, left out")
            continue
        if elem.VR == "SQ":
            kept = []
            for index, item in enumerate(elem.value or []):
                item_notes: list[str] = []
                if depth < 4:
                    _clean_dataset(item, f"{path}{elem.keyword or elem.tag}[{index}].", item_notes, depth + 1)
                notes.extend(item_notes)
                if any(note.endswith("left out") for note in item_notes) or depth >= 4:
                    notes.append(f"{path}{elem.keyword or elem.tag}[{index}]: item left out")
                else:
                    kept.append(item)
            if len(kept) != len(elem.value or []):
                if kept:
                    elem.value = kept
                else:
                    del ds[tag]
            continue
        if elem.VR in _TEXT_VRS:
            _clean_element(ds, elem, path, notes)


def _default_charset(ds: Dataset) -> bool:
    value = ds.get("SpecificCharacterSet")
    terms = [value] if isinstance(value, str) else list(value or [])
    return all(str(term).strip() in ("", "ISO_IR 6") for term in terms)


def _has_non_ascii(ds: Dataset, depth: int = 0) -> bool:
    for elem in ds:
        if elem.VR == "SQ":
            if depth < 4 and any(_has_non_ascii(item, depth + 1) for item in elem.value or []):
                return True
        elif elem.VR in ("PN", "LO", "SH", "LT", "ST", "UT", "UC") and not elem.tag.is_private:
            values = elem.value if isinstance(elem.value, (list, tuple)) else [elem.value]
            if any(not str(v).isascii() for v in values if v is not None):
                return True
    return False


def _charset_known(ds: Dataset) -> bool:
    from pydicom.charset import python_encoding

    value = ds.get("SpecificCharacterSet")
    terms = [value] if isinstance(value, str) else list(value or [])
    return all(str(term).strip() in python_encoding for term in terms)


def check_source_header(ds: Dataset, where: str, shape: tuple[int, int] | None = None) -> None:
    """Raise when a SEG cannot reference ``ds``: the check :func:`prepare_source_header` makes, without a copy.

    ``bcedge serve`` runs it on each scan's header right after decoding (through
    :attr:`bcedge.pipeline.Segmenter.check_source`), so a scan whose SEG would be refused anyway
    (no valid Study/Series/SOP Instance UID) is quarantined before its model call (~0.35 s of CPU
    for the 512 px mass model on the 2-core machine) instead of after it. Same message as at
    write time.

    Args:
        ds: the source's header as read (not modified).
        where: the file, for error messages.
        shape: (rows, columns) of the mask; must equal the source's Rows/Columns.

    Raises:
        DicomError: a required UID or size attribute is missing or invalid, or the size differs.
    """
    for keyword, tag in REQUIRED_SOURCE.items():
        try:
            value = ds.get(keyword)
            bad = value in (None, "") or (keyword.endswith("UID") and not _UID.match(str(value)))
            bad = bad or (keyword in ("Rows", "Columns") and not 0 < int(value) < 2**16)
        except Exception:
            bad = True
        if bad:
            raise DicomError(f"{where}: source has no valid {keyword} {tag}; a DICOM SEG cannot reference it")
    if shape is not None and (int(ds.Rows), int(ds.Columns)) != tuple(shape):
        raise DicomError(
            f"{where}: source Rows/Columns (0028,0010)/(0028,0011) are {ds.Rows}x{ds.Columns} but the mask is "
            f"{shape[0]}x{shape[1]}; the SEG must be written against the image that was segmented"
        )


def prepare_source_header(ds: Dataset, where: str, shape: tuple[int, int] | None = None) -> tuple[Dataset, list[str]]:
    """A copy of a source header that highdicom and the SEG IOD accept, and what was changed.

    Args:
        ds: the source's header as read (pixels absent or ignored); not modified.
        where: the file, for error messages.
        shape: (rows, columns) of the mask; must equal the source's Rows/Columns.

    Returns:
        (header copy for :func:`bcedge.outputs.build_seg`, notes naming each changed attribute).

    Raises:
        DicomError: a required UID or size attribute is missing or invalid, or the size differs.
    """
    notes: list[str] = []
    with warnings.catch_warnings():
        # pydicom quotes the values it warns about (patient data); and a header read through a
        # memory map warns that its buffer cannot be deep-copied (the copy needs no buffer).
        warnings.simplefilter("ignore")
        # A plain Dataset of the same elements: a FileDataset read through a memory map carries its
        # buffer, which deepcopy cannot copy (pydicom logs a warning for each copy).
        shallow = _plain(ds)
        src = copy.deepcopy(shallow)
        if "PixelData" in src:
            del src["PixelData"]
        if not _charset_known(src):
            # Every text value to str with pydicom's fallback for the unknown term; a value that cannot
            # be decoded is dealt with element by element below.
            with contextlib.suppress(Exception):
                src.decode()
            src.SpecificCharacterSet = UTF8
            notes.append(f"SpecificCharacterSet: unknown term replaced by {UTF8} (values decoded with the default)")
        check_source_header(src, where, shape)
        _clean_dataset(src, "", notes)
        if _default_charset(src) and _has_non_ascii(src):
            # pydicom decoded bytes outside the default repertoire (it falls back to Latin-1); the SEG
            # states what it holds, in UTF-8.
            src.SpecificCharacterSet = UTF8
            notes.append(f"SpecificCharacterSet: none for non-ASCII text, set to {UTF8}")
        for keyword in TYPE2_SOURCE:
            if keyword not in src:
                setattr(src, keyword, "")
        _spacing(src, notes)
        if "ImageOrientationPatient" not in src:
            # A projection image (MG/DX) has no patient-space plane. When it still carries a Frame of
            # Reference UID, highdicom copies it into the SEG with Pixel Measures but no Slice Thickness,
            # which the standard then requires (dciodvfy: "Missing attribute Type 1C ... SliceThickness")
            # and which a projection does not have. The SEG frame is tied to its source through the
            # Source Image Sequence (Spatial Locations Preserved YES), which is what 2-D viewers use.
            for keyword in ("FrameOfReferenceUID", "PositionReferenceIndicator"):
                if keyword in src:
                    del src[keyword]
    return src, notes


def _plain(ds: Dataset) -> Dataset:
    """A plain Dataset holding the elements (and file meta) of ``ds``, without its file or buffer."""
    from pydicom.dataset import Dataset as PlainDataset

    plain = PlainDataset(ds)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        plain.file_meta = meta
    return plain


def _positive(values: Any, n: int) -> bool:
    try:
        items = list(values) if not isinstance(values, (str, bytes)) and hasattr(values, "__iter__") else [values]
        return len(items) == n and all(math.isfinite(float(v)) and float(v) > 0 for v in items)
    except (TypeError, ValueError):
        return False


def _spacing(src: Dataset, notes: list[str]) -> None:
    """Pixel Spacing: two positive values with a Slice Thickness, or left out (see the module docstring)."""
    if "PixelSpacing" not in src:
        if "SliceThickness" in src:
            del src["SliceThickness"]
        return
    if not _positive(src.PixelSpacing, 2):
        del src["PixelSpacing"]
        notes.append("PixelSpacing: not two positive numbers, left out of the SEG")
        return
    if "SliceThickness" in src and _positive(src.SliceThickness, 1):
        return
    thickness = src.get("BodyPartThickness")
    if thickness is not None and _positive(thickness, 1):
        src.SliceThickness = thickness
        notes.append("SliceThickness: taken from BodyPartThickness for the SEG's Pixel Measures")
        return
    del src["PixelSpacing"]
    notes.append("PixelSpacing: left out of the SEG (no Slice Thickness or Body Part Thickness for Pixel Measures)")


def stand_in_sop_class(src: Dataset, notes: list[str]) -> str | None:
    """For an MG image stored under another IOD's SOP class: the real class, after giving ``src`` MG's.

    highdicom treats a CT or MR SOP class as a volume and asks for its Frame of Reference; the
    reader decoded the file as a mammogram, so the SEG is built as for one and
    :func:`restore_sop_class` puts the real class back into every reference. Returns None when
    ``src`` already has a projection class (nothing changed).
    """
    real = str(src.SOPClassUID)
    if real in PROJECTION_SOP_CLASSES:
        return None
    src.SOPClassUID = MG_FOR_PRESENTATION
    notes.append("SOPClassUID: not a projection image's; the SEG was built as for MG and references the real class")
    return real


def restore_sop_class(seg: Dataset, source_uid: str, real_class: str) -> None:
    """Point every reference to ``source_uid`` in ``seg`` at ``real_class`` (see :func:`stand_in_sop_class`)."""
    stack = [seg]
    while stack:
        item = stack.pop()
        for elem in item:
            if elem.VR == "SQ":
                stack.extend(elem.value)
        if str(item.get("ReferencedSOPInstanceUID", "")) == source_uid and "ReferencedSOPClassUID" in item:
            item.ReferencedSOPClassUID = real_class
