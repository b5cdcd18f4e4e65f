"""Output kinds and names: which files a scan's outputs are, and what they are called.

For an input ``scan.dcm`` (the stem is the file name without a known image suffix, so a PACS
file named by its UID keeps every digit)::

    scan_mask.png      full-resolution mask, 1-bit greyscale PNG (black 0, white lesion)
    scan_overlay.png   lesion contours on the displayed mammogram, long side 1024 px
    scan.json          Result.to_dict(): findings, outputs, timing, model, image meta
    scan_seg.dcm       DICOM Segmentation (binary, one segment "Mass") referencing the source
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from bcedge.errors import ConfigError

OUTPUT_KINDS = ("mask", "overlay", "json", "seg")
#: Longest output stem in UTF-8 bytes: the longest output name adds "_overlay.png" (12 bytes) and a
#: de-duplicating "_NNNN" may follow; 200 leaves room under the usual 255-byte name limit.
MAX_STEM_BYTES = 200
#: Suffixes stripped from an input name to make the output stem (anything else stays, e.g. UID names).
_KNOWN_SUFFIXES = {".dcm", ".dicom", ".dic", ".ima", ".png", ".pgm", ".pnm", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


def parse_kinds(kinds: str | Sequence[str]) -> tuple[str, ...]:
    """Validate output kinds: ``"mask,json"`` or ``["mask", "json"]`` -> ``("mask", "json")``, order kept, no repeats.

    Raises:
        ConfigError: an unknown kind, or none at all.
    """
    items = kinds.split(",") if isinstance(kinds, str) else list(kinds)
    out: list[str] = []
    for item in items:
        kind = str(item).strip().lower()
        if not kind:
            continue
        if kind not in OUTPUT_KINDS:
            raise ConfigError(
                f"unknown output kind {item!r}; expected a comma-separated subset of {','.join(OUTPUT_KINDS)}"
            )
        if kind not in out:
            out.append(kind)
    if not out:
        raise ConfigError(f"no output kind given; expected a comma-separated subset of {','.join(OUTPUT_KINDS)}")
    return tuple(out)


def output_stem(source: str | os.PathLike[str]) -> str:
    """Output name stem for an input path: ``/a/scan.dcm`` -> ``scan``; ``1.2.840.1`` (no image suffix) stays whole.

    An in-memory image (empty source) gets ``mammogram``. A name longer than
    :data:`MAX_STEM_BYTES` (UTF-8) is cut and given a hash of the whole name
    (:func:`shorten_stem`), so every output name stays under the 255-byte limit of
    common file systems, and two long names that differ only at the end still differ.
    """
    name = Path(source).name if str(source) else ""
    if not name:
        return "mammogram"
    suffix = Path(name).suffix
    stem = name[: -len(suffix)] if suffix.lower() in _KNOWN_SUFFIXES and len(name) > len(suffix) else name
    return shorten_stem(stem)


def shorten_stem(stem: str, max_bytes: int | None = None) -> str:
    """``stem`` when it fits in ``max_bytes`` UTF-8 bytes (default :data:`MAX_STEM_BYTES`), else a
    deterministic shorter name: its head (cut at a character boundary) + ``-`` + 16 hex digits of
    the SHA-256 of the whole stem."""
    limit = MAX_STEM_BYTES if max_bytes is None else max_bytes
    raw = stem.encode("utf-8", "surrogateescape")
    if len(raw) <= limit:
        return stem
    digest = hashlib.sha256(raw).hexdigest()[:16]
    head = raw[: limit - len(digest) - 1].decode("utf-8", "ignore")
    return f"{head}-{digest}"


def output_paths(out_dir: str | os.PathLike[str], stem: str, kinds: Sequence[str]) -> dict[str, Path]:
    """Where each kind is written: ``{"mask": out_dir/<stem>_mask.png, ...}`` (kinds validated)."""
    names = {
        "mask": f"{stem}_mask.png",
        "overlay": f"{stem}_overlay.png",
        "json": f"{stem}.json",
        "seg": f"{stem}_seg.dcm",
    }
    return {kind: Path(out_dir) / names[kind] for kind in parse_kinds(kinds)}
