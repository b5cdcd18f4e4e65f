"""Several readers as one dataset, and the project's ``combined`` real-data recipe.

The recipe (``open_dataset("combined", DATA)`` with ``DATA`` the folder holding
``mini-mias/`` and ``cdd-cesm/``, e.g. the shared data directory):

* CDD-CESM low-energy (``DM``) images with their pixel masks (``mask_kind="pixel"``);
* mini-MIAS with circle masks (``mask_kind="circle"``) and its normal / mass-negative
  images (``mask_kind="none"``); images whose mass has no coordinates (mdb059) are
  dropped, since their empty mask is not ground truth.

Sources keep their own ids (``mdb001``, ``P108_L_DM_CC``) and patient ids, which are
prefixed per source (``mias-001``, ``cdd-cesm-P108``); a clash is an error. Report
the two sources apart: circle Dice is a proxy.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from bcedge.datasets._files import natural_key
from bcedge.datasets.base import DatasetReader, Sample
from bcedge.errors import ConfigError, DatasetError


class CombinedDataset:
    """Samples of several readers, sorted by (source, id).

    Args:
        parts: the readers; sample ids must be unique across them.
        name: the dataset's name.
    """

    def __init__(self, parts: Sequence[DatasetReader], name: str = "combined") -> None:
        if not parts:
            raise DatasetError("a combined dataset needs at least one part")
        self.parts = list(parts)
        self.name = name

    def samples(self) -> Iterator[Sample]:
        """Yield every part's samples, sorted by source then id."""
        seen: dict[str, str] = {}
        everything: list[Sample] = []
        for part in self.parts:
            for sample in part.samples():
                if sample.id in seen:
                    raise DatasetError(f"sample id {sample.id!r} appears in both {seen[sample.id]} and {part.name}")
                seen[sample.id] = part.name
                everything.append(sample)
        everything.sort(key=lambda s: (s.source, natural_key(s.id)))
        yield from everything


def real_data_recipe(root: str | Path, *, cdd_kind: str = "DM") -> CombinedDataset:
    """The project's real-data set: ``ROOT/cdd-cesm`` (DM, pixel masks) + ``ROOT/mini-mias`` (circles).

    Raises:
        DatasetError: either folder is missing.
    """
    from bcedge.datasets.cdd_cesm import CddCesm
    from bcedge.datasets.mias import MiniMias

    root = Path(root)
    missing = [name for name in ("mini-mias", "cdd-cesm") if not (root / name).is_dir()]
    if missing:
        raise DatasetError(
            f"{root}: no {' or '.join(missing)}/ folder; 'combined' expects the data folder holding both"
        )
    return CombinedDataset(
        [
            # Files as stored (session 1's reader), so the committed split and figures reproduce.
            CddCesm(root / "cdd-cesm", kind=cdd_kind, restore_orientation=False),  # type: ignore[arg-type]
            MiniMias(root / "mini-mias", unlocated="drop"),
        ],
        name="combined",
    )


def real_data_recipe_v2(
    root: str | Path, *, cdd_kind: str = "both", mask_rule: str = "skin-line-v1", mias: str | None = "all"
) -> CombinedDataset:
    """The real-data set of issue #12: both CDD-CESM folders + mini-MIAS.

    * CDD-CESM from ``ROOT/cdd-cesm`` and ``ROOT/cdd-cesm-extra`` read as one collection:
      each view once (copies merged, acquired orientation restored), a patient's views
      from both folders under one patient id (so a split keeps them together), masks
      cleaned by ``mask_rule`` (default ``skin-line-v1``, :mod:`bcedge.datasets.mask_rules`).
      ``cdd_kind`` ``both`` (default: the split is made over low-energy and contrast
      views), ``DM`` or ``CM`` (narrow the set, e.g. to train without contrast views;
      the split still places every view that is present).
    * mini-MIAS with circle masks and its mass-negative images (the only normal images
      here), as in :func:`real_data_recipe`. ``mias``: ``all`` (default), ``normals``
      (mass-negative images only: negatives without the coarse discs) or ``none``
      (e.g. to measure generalisation to MIAS of a model that never saw it).

    Raises:
        DatasetError: a folder is missing.
    """
    from bcedge.datasets.cdd_cesm import CddCesm
    from bcedge.datasets.mias import MiniMias

    root = Path(root)
    missing = [name for name in ("mini-mias", "cdd-cesm", "cdd-cesm-extra") if not (root / name).is_dir()]
    if missing:
        raise DatasetError(
            f"{root}: no {', '.join(missing)}/ folder; 'combined-v2' expects the data folder holding them"
        )
    mias = "none" if mias is None else mias  # ``-o mias=none`` arrives as None (parse_options)
    if mias not in ("all", "normals", "none"):
        raise ConfigError(f"mias={mias!r}; expected all, normals or none")
    cdd = CddCesm(root / "cdd-cesm", kind=cdd_kind, roots=[root / "cdd-cesm-extra"], mask_rule=mask_rule)  # type: ignore[arg-type]
    parts: list[DatasetReader] = [cdd]  # type: ignore[list-item]
    if mias != "none":
        reader = MiniMias(root / "mini-mias", unlocated="drop")
        parts.append(_NormalsOnly(reader) if mias == "normals" else reader)  # type: ignore[arg-type]
    return CombinedDataset(parts, name="combined-v2")


class _NormalsOnly:
    """A reader's samples without a lesion annotation (its normal / mass-negative images)."""

    def __init__(self, reader: DatasetReader) -> None:
        self.reader = reader
        self.name = reader.name

    def samples(self) -> Iterator[Sample]:
        yield from (s for s in self.reader.samples() if not s.has_lesion)
