"""Dataset names -> readers: the one table the CLI, training and benchmarks use.

    >>> reader = open_dataset("mini-mias", "/data/mini-mias")      # doctest: +SKIP
    >>> reader = open_dataset("cdd-cesm", "/data/cdd-cesm", kind="CM")  # doctest: +SKIP

Readers are imported only when opened, so listing the names costs nothing and a
reader under construction cannot break the others.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bcedge.datasets.base import DatasetReader
from bcedge.errors import ConfigError, DatasetError


@dataclass(frozen=True)
class DatasetEntry:
    """One registered dataset.

    Attributes:
        name: the name used on the command line.
        target: ``module:attribute`` of the reader class or factory, called as ``target(root, **options)``.
        description: one line for ``bcedge data list``.
    """

    name: str
    target: str
    description: str

    def factory(self) -> Callable[..., DatasetReader]:
        """Import and return the reader class or factory."""
        module, _, attribute = self.target.partition(":")
        try:
            return getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as exc:
            raise DatasetError(f"dataset {self.name!r}: its reader {self.target} is not available ({exc})") from exc


DATASETS: dict[str, DatasetEntry] = {
    e.name: e
    for e in (
        DatasetEntry(
            "mini-mias", "bcedge.datasets.mias:MiniMias", "mini-MIAS: Info.txt + 322 MLO images, circle masks"
        ),
        DatasetEntry(
            "cdd-cesm", "bcedge.datasets.cdd_cesm:CddCesm", "CDD-CESM: image/mask sets or the TCIA release, pixel masks"
        ),
        DatasetEntry(
            "cbis-ddsm",
            "bcedge.datasets.cbis_ddsm:CbisDdsmTcia",
            "CBIS-DDSM in its TCIA layout (DICOM + CSV descriptors)",
        ),
        DatasetEntry(
            "cbis-ddsm-jpeg", "bcedge.datasets.cbis_ddsm:CbisDdsmJpeg", "CBIS-DDSM JPEG re-encoding (Kaggle layout)"
        ),
        DatasetEntry("folder", "bcedge.datasets.folder:FolderDataset", "images/ + masks/ with matching stems"),
        DatasetEntry(
            "phantom", "bcedge.datasets.phantoms:PhantomDataset", "synthetic phantoms written by 'bcedge phantom'"
        ),
        DatasetEntry(
            "combined",
            "bcedge.datasets.combined:real_data_recipe",
            "the project's real data: CDD-CESM DM (pixel) + mini-MIAS (circles); ROOT holds both",
        ),
        DatasetEntry(
            "combined-v2",
            "bcedge.datasets.combined:real_data_recipe_v2",
            "CDD-CESM + extra (each view once, DM+CM, skin-line masks cleaned) + mini-MIAS; ROOT holds all three",
        ),
    )
}
ALIASES = {"mias": "mini-mias", "cdd": "cdd-cesm", "phantoms": "phantom", "cbis": "cbis-ddsm"}


def dataset_names() -> list[str]:
    """Registered dataset names, in table order."""
    return list(DATASETS)


def resolve_name(name: str) -> DatasetEntry:
    """The entry of ``name`` (case-insensitive; a few aliases accepted).

    Raises:
        DatasetError: unknown name.
    """
    key = ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    return DATASETS[key]


def _check_options(entry: DatasetEntry, factory: Callable[..., Any], options: dict[str, Any]) -> None:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(
            f"dataset {entry.name!r} has no option {unknown[0]!r}; options: {', '.join(allowed) or 'none'}"
        )


def open_dataset(name: str, root: str | Path, **options: Any) -> DatasetReader:
    """Open dataset ``name`` stored at ``root``.

    Args:
        name: a registered name (:func:`dataset_names`).
        root: the dataset's folder.
        **options: reader options (e.g. ``kind="CM"`` for cdd-cesm, ``include_other=True`` for mini-mias).

    Raises:
        DatasetError: unknown name, missing root or malformed tree.
        ConfigError: an option the reader does not take.
    """
    entry = resolve_name(name)
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root}: dataset root not found (dataset {entry.name!r})")
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root is a file; expected the {entry.name} folder")
    factory = entry.factory()
    _check_options(entry, factory, options)
    return factory(root, **options)


def _coerce(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in {"true", "yes", "on"}:
        return True
    if lowered in {"false", "no", "off"}:
        return False
    if lowered in {"none", "null"}:
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_options(items: Iterable[str] | None) -> dict[str, Any]:
    """``["kind=CM", "include_other=true"]`` -> ``{"kind": "CM", "include_other": True}``.

    Values become bool (true/false/yes/no), None (none/null), int, float, else stay strings.

    Raises:
        ConfigError: an item without ``=``.
    """
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"option {item!r}; expected KEY=VALUE (e.g. kind=CM)")
        out[key.strip().replace("-", "_")] = _coerce(value)
    return out
