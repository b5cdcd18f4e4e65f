"""mini-MIAS reader: ``Info.txt`` plus 1024x1024 MLO images (PGM as distributed, or PNG re-encodings).

Layout (any of):

    ROOT/Info.txt  ROOT/mdb001.pgm ...            (the original distribution)
    ROOT/Info.txt  ROOT/images/mdb001.png ...     (a lossless PNG re-encoding)

``Info.txt`` has one row per abnormality: ``REFNUM TISSUE CLASS [SEVERITY X Y RADIUS]``.

Decisions (tested in ``tests/test_datasets_mias.py``):

* **Masses** are CIRC, SPIC and MISC. Each row becomes a disc (``mask_kind="circle"``);
  an image with several rows gets the union of its discs. CALC, ARCH and ASYM
  rows are not masses and are left out of the mask unless ``include_other=True``:
  such an image is a mass-negative image (empty mask), its finding kept in
  ``extra["classes"]``.
* **Coordinates** have their origin at the *bottom-left* corner (Info.txt note 3):
  ``row = (H - 1) - y`` with H the real image height (read from the file header),
  ``col = x``.
* **Rows without coordinates** (mdb059, a CIRC mass; three CALC rows) mark a lesion
  with no location. The image is kept by default (``unlocated="keep"``) with an empty
  mask, ``mask_kind="none"`` and ``extra["lesion_unlocated"] == "true"``
  (:attr:`Sample.lesion_unlocated`): its empty mask is *not* ground truth, so Dice-bearing
  sets must leave it out (the ``combined`` recipe reads MIAS with ``unlocated="drop"``,
  which drops such images entirely). An image whose other rows are located keeps those.
* **Patients**: the list is arranged in pairs, one woman per pair: mdb001/mdb002 are the
  right/left MLO of patient ``mias-001``, mdb003/mdb004 of ``mias-002``, ...
* **Laterality**: odd numbers are right breasts, even numbers left (Info.txt note 1).
  This agrees with the images: odd-numbered films have the breast (and the pectoral
  muscle) on the image's right side, even-numbered on the left, i.e. the standard
  hanging orientation :mod:`bcedge.dicom` assumes (chest wall of a left breast on the
  image's left edge). View: MLO for every image.
* **Spacing**: 200 micrometres per pixel (``extra["pixel_spacing_mm"] = "0.2"``), which the
  statistics use for mm areas; rasters carry no spacing of their own.
* ``pathology``: the worst severity (``malignant`` > ``benign``) of the rows in the mask;
  for an image without masked rows, of its other rows, or ``normal`` for NORM images.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bcedge.datasets._files import image_size
from bcedge.datasets.base import Sample
from bcedge.errors import ConfigError, DatasetError

MASS_CLASSES = frozenset({"CIRC", "SPIC", "MISC"})
OTHER_CLASSES = frozenset({"CALC", "ARCH", "ASYM"})
ALL_CLASSES = MASS_CLASSES | OTHER_CLASSES | {"NORM"}
#: mini-MIAS pixel edge (the 50 um originals were reduced to 200 um).
PIXEL_SPACING_MM = 0.2
_ROW = re.compile(r"^(mdb\d{3})\s+([FGD])\s+([A-Z]+)\b(.*)$")


@dataclass(frozen=True)
class MiasRow:
    """One abnormality row of ``Info.txt``.

    Attributes:
        refnum: image id (``mdb001``).
        tissue: background tissue, ``F``/``G``/``D``.
        cls: abnormality class (CALC, CIRC, SPIC, MISC, ARCH, ASYM, NORM).
        severity: ``B``/``M``, or None (NORM).
        x, y, radius: centre (origin bottom-left) and radius in pixels, or None when omitted.
    """

    refnum: str
    tissue: str
    cls: str
    severity: str | None
    x: float | None
    y: float | None
    radius: float | None

    @property
    def located(self) -> bool:
        """Whether the row gives a centre and radius."""
        return self.x is not None and self.y is not None and self.radius is not None


def parse_info(path: Path) -> list[MiasRow]:
    """Parse the abnormality rows of a MIAS ``Info.txt`` (the prose header is skipped).

    Raises:
        DatasetError: the file is missing, has no rows, or a row is malformed.
    """
    try:
        text = Path(path).read_text(encoding="latin-1")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the MIAS Info.txt ({exc.strerror})") from exc
    rows: list[MiasRow] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        match = _ROW.match(line.strip())
        if not match:
            continue
        refnum, tissue, cls, rest = match.groups()
        if cls not in ALL_CLASSES:
            raise DatasetError(f"{path}:{lineno}: class {cls!r} unknown; expected one of {sorted(ALL_CLASSES)}")
        tokens = rest.split()
        severity = tokens[0] if tokens and tokens[0] in {"B", "M"} else None
        numbers = [t for t in tokens[1 if severity else 0 :] if re.fullmatch(r"-?\d+(\.\d+)?", t)]
        x = y = radius = None
        if len(numbers) >= 3:
            x, y, radius = (float(v) for v in numbers[:3])
            if radius <= 0:
                raise DatasetError(f"{path}:{lineno}: radius {radius} of {refnum} must be positive")
        elif numbers:
            raise DatasetError(f"{path}:{lineno}: {refnum} has {len(numbers)} coordinates; expected x y radius or none")
        rows.append(MiasRow(refnum, tissue, cls, severity, x, y, radius))
    if not rows:
        raise DatasetError(f"{path}: no 'mdbNNN TISSUE CLASS ...' rows found; is this the MIAS Info.txt?")
    return rows


def mias_patient_and_laterality(refnum: str) -> tuple[str, str]:
    """``mdb001`` -> (``mias-001``, ``R``); ``mdb002`` -> (``mias-001``, ``L``).

    Films come in pairs of one woman: odd numbers right, even numbers left.
    """
    number = int(refnum[3:])
    return f"mias-{(number + 1) // 2:03d}", "R" if number % 2 else "L"


def _worst(severities: list[str | None]) -> str | None:
    if "M" in severities:
        return "malignant"
    if "B" in severities:
        return "benign"
    return None


class MiniMias:
    """Reader of the mini-MIAS database.

    Args:
        root: folder holding ``Info.txt`` and the images (in it or in ``images/``).
        include_other: also draw CALC, ARCH and ASYM rows as discs (default: masses only).
        unlocated: ``keep`` images whose lesion has no coordinates (flagged
            :attr:`Sample.lesion_unlocated`, empty mask) or ``drop`` them.
    """

    name = "mini-mias"

    def __init__(
        self, root: str | Path, *, include_other: bool = False, unlocated: Literal["keep", "drop"] = "keep"
    ) -> None:
        self.root = Path(root)
        if unlocated not in ("keep", "drop"):
            raise ConfigError(f"unlocated={unlocated!r}; expected 'keep' or 'drop'")
        self.include_other = include_other
        self.unlocated = unlocated
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: mini-MIAS root folder not found")
        self.info_path = self._find_info()

    def _find_info(self) -> Path:
        for candidate in sorted(self.root.iterdir()):
            if candidate.name.lower() == "info.txt":
                return candidate
        raise DatasetError(f"{self.root}: no Info.txt; expected the mini-MIAS folder with Info.txt and mdbNNN images")

    def _image_path(self, refnum: str) -> Path:
        for folder in (self.root / "images", self.root):
            for suffix in (".png", ".pgm", ".PNG", ".PGM"):
                path = folder / f"{refnum}{suffix}"
                if path.is_file():
                    return path
        raise DatasetError(f"{self.root}: image {refnum} (.png or .pgm) not found in {self.root} or its images/ folder")

    def _wanted(self, row: MiasRow) -> bool:
        return row.cls in MASS_CLASSES or (self.include_other and row.cls in OTHER_CLASSES)

    def samples(self) -> Iterator[Sample]:
        """Yield one sample per image, sorted by reference number."""
        by_image: dict[str, list[MiasRow]] = {}
        for row in parse_info(self.info_path):
            by_image.setdefault(row.refnum, []).append(row)
        for refnum in sorted(by_image):
            sample = self._sample(refnum, by_image[refnum])
            if sample is not None:
                yield sample

    def _sample(self, refnum: str, rows: list[MiasRow]) -> Sample | None:
        image_path = self._image_path(refnum)
        patient_id, laterality = mias_patient_and_laterality(refnum)
        wanted = [r for r in rows if self._wanted(r)]
        located = [r for r in wanted if r.located]
        unlocated = [r for r in wanted if not r.located]
        if unlocated and not located and self.unlocated == "drop":
            return None
        circles: tuple[tuple[float, float, float], ...] = ()
        if located:
            height, _ = image_size(image_path)
            # Origin bottom-left: y counts up from the last row.
            circles = tuple((float(height - 1) - r.y, r.x, r.radius) for r in located)  # type: ignore[operator]
        classes = [r.cls for r in rows]
        if wanted:
            pathology = _worst([r.severity for r in wanted])
        elif classes == ["NORM"] or not classes:
            pathology = "normal"
        else:
            pathology = _worst([r.severity for r in rows])
        extra = {
            "classes": ",".join(classes),
            "tissue": rows[0].tissue,
            "pixel_spacing_mm": str(PIXEL_SPACING_MM),
        }
        if unlocated and not located:
            extra["lesion_unlocated"] = "true"
        elif unlocated:
            # Only some rows lack coordinates: the mask is partial, which is worth knowing.
            extra["unlocated_rows"] = str(len(unlocated))
        return Sample(
            id=refnum,
            patient_id=patient_id,
            source=self.name,
            image_path=image_path,
            circles=circles,
            laterality=laterality,
            view="MLO",
            pathology=pathology,
            mask_kind="circle" if circles else "none",
            extra=extra,
        )
