"""Plain folder reader: ``ROOT/images/<stem>.<ext>`` with ``ROOT/masks/<stem>.<ext>``.

* Images: any of PNG, PGM/PNM, JPEG, TIFF, BMP or DICOM (``.dcm``); the sample id is
  the file stem, which must be unique.
* Masks: ``masks/<stem>.<ext>`` (any mask format), and/or a folder ``masks/<stem>/``
  whose files are merged (one file per lesion). A mask is lesion where its largest
  channel exceeds half the type's range (see :func:`bcedge.datasets.base.read_mask_file`).
* An image without a mask is a lesion-free image (``missing_mask="empty"``, default) or
  an error (``missing_mask="error"``). A mask file that is entirely background also
  means "no lesion": it is read once at listing time so that ``has_lesion`` is honest
  (``check_empty=False`` skips that read).
* Optional ``ROOT/samples.csv`` with a header ``id`` and any of ``patient_id``,
  ``laterality``, ``view``, ``pathology``, ``split``: per-image metadata. Without it
  every image is its own patient.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from bcedge.datasets._files import IMAGE_SUFFIXES, MASK_SUFFIXES, files_with_suffix, image_size, natural_key
from bcedge.datasets.base import Sample, read_mask_file
from bcedge.errors import ConfigError, DatasetError

_META_COLUMNS = ("patient_id", "laterality", "view", "pathology", "split")


def _is_empty_mask(path: Path) -> bool:
    return not read_mask_file(path, image_size(path)).any()


class FolderDataset:
    """Reader of an ``images/`` + ``masks/`` folder pair.

    Args:
        root: folder holding ``images/`` (and usually ``masks/``).
        missing_mask: ``empty`` (no lesion) or ``error`` when an image has no mask.
        check_empty: read each mask once so an all-background mask means "no lesion".
        name: the source name written into each sample.
        images, masks: sub-folder names.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        missing_mask: Literal["empty", "error"] = "empty",
        check_empty: bool = True,
        name: str = "folder",
        images: str = "images",
        masks: str = "masks",
    ) -> None:
        self.root = Path(root)
        if missing_mask not in ("empty", "error"):
            raise ConfigError(f"missing_mask={missing_mask!r}; expected 'empty' or 'error'")
        self.image_dir = self.root / images
        self.mask_dir = self.root / masks
        if not self.image_dir.is_dir():
            raise DatasetError(f"{self.root}: no {images}/ folder; expected {images}/ and {masks}/ with matching stems")
        self.missing_mask = missing_mask
        self.check_empty = check_empty
        self.name = name

    def _metadata(self) -> dict[str, dict[str, str]]:
        path = self.root / "samples.csv"
        if not path.is_file():
            return {}
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if "id" not in (reader.fieldnames or []):
                raise DatasetError(f"{path}: header has no 'id' column (got {reader.fieldnames})")
            return {row["id"].strip(): {k: (row.get(k) or "").strip() for k in _META_COLUMNS} for row in reader}

    def _masks(self) -> dict[str, list[Path]]:
        found: dict[str, list[Path]] = {}
        if not self.mask_dir.is_dir():
            return found
        for entry in sorted(self.mask_dir.iterdir()):
            if entry.is_dir():
                found.setdefault(entry.name, []).extend(files_with_suffix(entry, MASK_SUFFIXES))
            elif entry.suffix.lower() in MASK_SUFFIXES and not entry.name.startswith("."):
                found.setdefault(entry.stem, []).append(entry)
        return found

    def samples(self) -> Iterator[Sample]:
        """Yield one sample per image, sorted by stem (numbers in numeric order)."""
        images: dict[str, Path] = {}
        for path in files_with_suffix(self.image_dir, IMAGE_SUFFIXES):
            if path.stem in images:
                raise DatasetError(
                    f"{path}: stem {path.stem!r} also used by {images[path.stem].name}; stems must be unique"
                )
            images[path.stem] = path
        if not images:
            raise DatasetError(f"{self.image_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
        masks = self._masks()
        meta = self._metadata()
        unknown = sorted(set(meta) - set(images))
        if unknown:
            raise DatasetError(f"{self.root / 'samples.csv'}: {len(unknown)} ids have no image, e.g. {unknown[0]!r}")
        for stem in sorted(images, key=natural_key):
            mask_paths = masks.get(stem, [])
            extra: dict[str, str] = {}
            if not mask_paths and self.missing_mask == "error":
                raise DatasetError(f"{images[stem]}: no mask {self.mask_dir / stem}.* (missing_mask='error')")
            if mask_paths and self.check_empty:
                empty = [p for p in mask_paths if _is_empty_mask(p)]
                if empty:
                    extra["empty_mask_files"] = str(len(empty))
                mask_paths = [p for p in mask_paths if p not in empty]
            row = meta.get(stem, {})
            laterality = (row.get("laterality") or "").upper() or None
            if laterality not in (None, "L", "R"):
                raise DatasetError(f"{self.root / 'samples.csv'}: laterality {laterality!r} of {stem}; expected L or R")
            yield Sample(
                id=stem,
                patient_id=row.get("patient_id") or stem,
                source=self.name,
                image_path=images[stem],
                mask_paths=tuple(mask_paths),
                laterality=laterality,
                view=(row.get("view") or "").upper() or None,
                pathology=row.get("pathology") or None,
                mask_kind="pixel" if mask_paths else "none",
                split=row.get("split") or None,
                extra=extra,
            )
