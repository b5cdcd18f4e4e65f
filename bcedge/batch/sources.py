"""What ``bcedge batch`` processes: a folder tree, a manifest of paths, or a DICOMweb server.

Every scan becomes a :class:`ScanRef` whose ``key`` names the scan itself, not the run:

- a file: ``file:<absolute path>:<size>:<mtime_ns>`` (a file replaced in place gets a new key
  and is processed again; reading a header per file to find its SOP Instance UID would cost a
  file open per scan before the first one is processed);
- a DICOMweb instance: ``sop:<SOP Instance UID>`` (from the QIDO-RS answer).

The ledger (:mod:`bcedge.batch.ledger`) pairs the key with the model artifact's sha256 and the
result-changing settings, so a new model re-runs everything and a re-run of the same command
skips what is done.

Each ref also carries its output stem, relative to ``--out``: the folder tree is mirrored
(``sub/dir/scan.dcm`` -> ``sub/dir/scan``), a DICOMweb instance goes under its study
(``<StudyUID>/<SOPUID>``), a manifest's files are named by file name (``_2``, ``_3``... when two
share one, in manifest order). The same source always gives the same stems, which is what lets a
resumed run overwrite a half-finished scan's outputs instead of adding new ones.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bcedge.errors import InputError, MissingDependencyError, first_line

#: Columns a manifest may name the scan path by (first found wins).
MANIFEST_PATH_COLUMNS = ("path", "file", "filename", "image", "scan")
#: Suffixes of files a folder source picks up (besides files that carry the DICOM preamble).
DICOM_SUFFIXES = {".dcm", ".dicom", ".dic", ".ima"}


@dataclass(frozen=True)
class ScanRef:
    """One scan to process (JSON-able, small: it travels through Ray's object store).

    Attributes:
        key: stable identity of the scan (see the module docstring).
        kind: ``file`` or ``dicomweb``.
        path: the file path, or the instance's WADO-RS URL.
        stem: output name stem relative to ``--out`` (``/``-separated; no ``..``).
        size: file size in bytes (-1 when unknown: a DICOMweb instance or a missing file).
        mtime_ns: file modification time in ns (-1 when unknown).
        study_uid, series_uid, sop_uid: DICOM UIDs when the source knows them ('' otherwise;
            files get theirs from the header when read).
    """

    key: str
    kind: str
    path: str
    stem: str
    size: int = -1
    mtime_ns: int = -1
    study_uid: str = ""
    series_uid: str = ""
    sop_uid: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScanRef:
        return cls(**{k: _plain(data[k]) for k in cls.__dataclass_fields__})


def _plain(value: Any) -> Any:
    """NumPy scalars (Ray hands batches back as arrays) to plain Python values."""
    return value.item() if hasattr(value, "item") else value


def file_ref(path: Path, stem: str) -> ScanRef:
    """A ref for a file; a file that cannot be stat'ed gets size/mtime -1 and fails when processed."""
    absolute = os.path.abspath(path)
    try:
        st = os.stat(absolute)
        size, mtime = int(st.st_size), int(st.st_mtime_ns)
    except OSError:
        size, mtime = -1, -1
    return ScanRef(
        key=f"file:{absolute}:{size}:{mtime}", kind="file", path=absolute, stem=stem, size=size, mtime_ns=mtime
    )


def _is_scan_file(path: Path) -> bool:
    from bcedge.dicom import RASTER_SUFFIXES, is_dicom_file

    suffix = path.suffix.lower()
    return suffix in RASTER_SUFFIXES or suffix in DICOM_SUFFIXES or is_dicom_file(path)


def folder_refs(root: str | os.PathLike[str], *, exclude: Path | None = None) -> Iterator[ScanRef]:
    """Every DICOM (by suffix or preamble) and raster file under ``root``, recursively, in sorted order.

    Hidden files and folders (name starting with ``.``) are skipped, as is ``exclude`` (the output
    folder when it lies inside the source). Symbolic links to folders are not followed (no cycles).
    """
    from bcedge.scanjob import unique_stems

    base = Path(root)
    if not base.is_dir():
        raise InputError(f"{root}: not a folder")
    skip = os.path.abspath(exclude) if exclude is not None else None
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and os.path.join(dirpath, d) != skip)
        if skip is not None and os.path.abspath(dirpath) == skip:
            continue
        here = Path(dirpath)
        files = [here / f for f in sorted(filenames) if not f.startswith(".")]
        files = [f for f in files if f.is_file() and _is_scan_file(f)]
        rel_dir = here.relative_to(base).as_posix()
        stems = unique_stems([os.fspath(f) for f in files])
        for f in files:
            stem = stems[os.fspath(f)]
            yield file_ref(f, stem if rel_dir == "." else f"{rel_dir}/{stem}")


def manifest_refs(manifest: str | os.PathLike[str]) -> Iterator[ScanRef]:
    """The files a manifest lists (CSV with a header, or Parquet), in manifest order, repeats dropped.

    The path column is the first of :data:`MANIFEST_PATH_COLUMNS` present. Relative paths are
    relative to the manifest's folder. A listed file that does not exist still becomes a ref: it
    is recorded as a failed scan, not silently dropped.

    Raises:
        InputError: unreadable manifest, or no path column.
    """
    from bcedge.scanjob import unique_stems

    path = Path(manifest)
    paths = _manifest_paths(path)
    resolved: list[str] = []
    seen: set[str] = set()
    for p in paths:
        full = os.path.abspath(path.parent / p)
        if full not in seen:
            seen.add(full)
            resolved.append(full)
    stems = unique_stems(resolved)
    for full in resolved:
        yield file_ref(Path(full), stems[full])


def _manifest_paths(path: Path) -> list[str]:
    suffix = path.suffix.lower()
    try:
        if suffix in {".parquet", ".pq"}:
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise MissingDependencyError("a Parquet manifest", "batch", "pyarrow") from None
            table = pq.read_table(path)
            names = table.column_names
            column = next((c for c in MANIFEST_PATH_COLUMNS if c in names), None)
            if column is None:
                raise InputError(f"{path}: no path column; expected one of {', '.join(MANIFEST_PATH_COLUMNS)}")
            return [str(v) for v in table.column(column).to_pylist() if v]
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            names = [n.strip().lower() for n in reader.fieldnames or []]
            column = next((c for c in MANIFEST_PATH_COLUMNS if c in names), None)
            if column is None:
                raise InputError(
                    f"{path}: no path column; expected a header with one of {', '.join(MANIFEST_PATH_COLUMNS)}"
                )
            original = (reader.fieldnames or [])[names.index(column)]
            return [row[original].strip() for row in reader if (row.get(original) or "").strip()]
    except InputError:
        raise
    except OSError as exc:
        raise InputError(f"{path}: cannot read the manifest ({exc.strerror or exc})") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: not a CSV manifest ({exc})") from exc
    except Exception as exc:  # pyarrow's ArrowInvalid and friends: a file that is not Parquet
        raise InputError(f"{path}: not a Parquet manifest ({first_line(exc)})") from exc


def is_dicomweb_url(source: str) -> bool:
    """Whether SOURCE names a DICOMweb server (``http://`` or ``https://``)."""
    return source.startswith(("http://", "https://"))


def describe_source(source: str) -> str:
    """``dicomweb``, ``manifest`` or ``folder`` for a SOURCE argument (InputError when it is none of them)."""
    if is_dicomweb_url(source):
        return "dicomweb"
    path = Path(source)
    if path.is_dir():
        return "folder"
    if path.is_file():
        if path.suffix.lower() in {".csv", ".parquet", ".pq", ".txt"}:
            return "manifest"
        raise InputError(f"{source}: a file source must be a manifest (.csv or .parquet of paths)")
    raise InputError(f"{source}: no such folder or manifest (or an http(s):// DICOMweb URL)")
