"""Patient-level, stratified, deterministic train/val/test splits, stored as JSON.

Rules:

* **Patient level**: every image of a patient goes to the same split.
* **Stratified** by (source, lesion presence): a patient is ``lesion`` when any of its
  images has a mask with a lesion, else ``negative``. Within each stratum the patients
  are dealt to the split whose share lags its target most, so every split gets its
  fraction of each stratum (up to rounding on small strata).
* **Deterministic**: patients are ordered by ``sha256(f"{seed}:{patient_id}")``, which
  depends on nothing but the seed and the ids (no library RNG whose stream may change).
* **Official splits win**: when the samples carry ``Sample.split`` (CBIS-DDSM), official
  ``test`` patients form the test split and validation is carved from the official
  ``train`` patients, taking ``val / (train + val)`` of them per stratum. A patient with
  images in both official splits goes entirely to ``test`` (counted in ``moved_to_test``),
  which keeps the official test set whole and train free of test patients.

File format (``version`` 1)::

    {"version": 1, "dataset": "combined", "seed": 0,
     "fractions": {"train": 0.7, "val": 0.15, "test": 0.15}, "official": false,
     "created": "2025-01-01T00:00:00+00:00",
     "splits": {"train": [ids...], "val": [...], "test": [...]},
     "counts": {"train": {"images": .., "patients": .., "with_lesion": .., "by_source": {..}}, ...}}
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from bcedge.datasets._files import natural_key
from bcedge.datasets.base import DatasetReader, Sample
from bcedge.errors import ConfigError, DatasetError

SPLIT_NAMES = ("train", "val", "test")
FORMAT_VERSION = 1
DEFAULT_FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


@dataclass(frozen=True)
class Split:
    """A split of a dataset's sample ids into train/val/test.

    Attributes:
        dataset: the dataset's name.
        seed: the seed that ordered the patients.
        fractions: target share of patients per split.
        splits: split name -> sorted sample ids.
        official: whether the source's own split decided test.
        created: ISO-8601 UTC time of creation.
        counts: per split: images, patients, with_lesion, by_source (images per source).
        info: anything else worth keeping (e.g. ``moved_to_test``).
    """

    dataset: str
    seed: int
    fractions: Mapping[str, float]
    splits: Mapping[str, tuple[str, ...]]
    official: bool = False
    created: str = ""
    counts: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    info: Mapping[str, object] = field(default_factory=dict)

    def split_of(self) -> dict[str, str]:
        """Sample id -> split name."""
        return {sid: name for name, ids in self.splits.items() for sid in ids}

    def to_dict(self) -> dict[str, object]:
        """The JSON document (see the module doc)."""
        return {
            "version": FORMAT_VERSION,
            "dataset": self.dataset,
            "seed": self.seed,
            "fractions": dict(self.fractions),
            "official": self.official,
            "created": self.created,
            "splits": {name: list(ids) for name, ids in self.splits.items()},
            "counts": {name: dict(c) for name, c in self.counts.items()},
            **({"info": dict(self.info)} if self.info else {}),
        }

    def select(self, samples: Iterable[Sample], name: str) -> list[Sample]:
        """The samples of split ``name``; see :func:`filter_samples`."""
        return filter_samples(samples, self, name)


def check_fractions(fractions: Mapping[str, float] | None) -> dict[str, float]:
    """Validate train/val/test fractions (each in [0, 1], summing to 1, train > 0).

    Raises:
        ConfigError: unknown split name, negative value or a sum other than 1.
    """
    out = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    unknown = sorted(set(out) - set(SPLIT_NAMES))
    if unknown:
        raise ConfigError(f"split fraction {unknown[0]!r}; expected names {', '.join(SPLIT_NAMES)}")
    for name in SPLIT_NAMES:
        out.setdefault(name, 0.0)
        if not 0.0 <= float(out[name]) <= 1.0:
            raise ConfigError(f"{name} fraction {out[name]}; expected a value in [0, 1]")
        out[name] = float(out[name])
    total = sum(out.values())
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(f"split fractions sum to {total:g} ({out}); expected 1")
    if out["train"] <= 0:
        raise ConfigError("train fraction is 0; expected a positive share")
    return {name: out[name] for name in SPLIT_NAMES}


def _order_key(seed: int, patient_id: str) -> str:
    return hashlib.sha256(f"{seed}:{patient_id}".encode()).hexdigest()


def _deal(patients: list[str], targets: Mapping[str, float]) -> dict[str, str]:
    """Assign patients (already in dealing order) to the split lagging its target most."""
    names = [n for n in SPLIT_NAMES if targets.get(n, 0.0) > 0]
    got = dict.fromkeys(names, 0)
    out: dict[str, str] = {}
    for i, patient in enumerate(patients, 1):
        # Lag after this patient if it went elsewhere; ties favour train, then val, then test.
        best = max(names, key=lambda n: (targets[n] * i - got[n], -SPLIT_NAMES.index(n)))
        got[best] += 1
        out[patient] = best
    return out


def _patients(samples: list[Sample]) -> dict[str, list[Sample]]:
    by_patient: dict[str, list[Sample]] = {}
    for sample in samples:
        by_patient.setdefault(sample.patient_id, []).append(sample)
    return by_patient


def stratum(patient_samples: list[Sample]) -> tuple[str, str]:
    """(source, ``lesion``/``negative``) of a patient, the key splits stratify by."""
    source = min(s.source for s in patient_samples)
    return source, "lesion" if any(s.has_lesion for s in patient_samples) else "negative"


def split_counts(samples: Iterable[Sample], split: Split) -> dict[str, dict[str, object]]:
    """Per split: images, patients, images with a lesion, images per source."""
    of = split.split_of()
    counts: dict[str, dict[str, object]] = {}
    groups: dict[str, list[Sample]] = {name: [] for name in split.splits}
    for sample in samples:
        if sample.id in of:
            groups[of[sample.id]].append(sample)
    for name, group in groups.items():
        by_source: dict[str, int] = {}
        for s in group:
            by_source[s.source] = by_source.get(s.source, 0) + 1
        counts[name] = {
            "images": len(group),
            "patients": len({s.patient_id for s in group}),
            "with_lesion": sum(s.has_lesion for s in group),
            "by_source": dict(sorted(by_source.items())),
        }
    return counts


def make_split(
    samples: Iterable[Sample],
    *,
    dataset: str,
    seed: int = 0,
    fractions: Mapping[str, float] | None = None,
    use_official: bool = True,
) -> Split:
    """Split ``samples`` by patient, stratified by (source, lesion presence).

    Args:
        samples: the dataset's samples (ids unique).
        dataset: name stored in the split.
        seed: any integer; the same seed and ids give the same split.
        fractions: share of patients per split (default 0.7/0.15/0.15).
        use_official: honour ``Sample.split`` when the samples carry one.

    Raises:
        DatasetError: duplicate ids, or only some samples carry an official split.
        ConfigError: invalid fractions.
    """
    fracs = check_fractions(fractions)
    items = list(samples)
    if not items:
        raise DatasetError(f"dataset {dataset!r} has no samples to split")
    ids = [s.id for s in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DatasetError(f"dataset {dataset!r}: sample id {dup!r} appears twice; ids must be unique")
    with_official = [s for s in items if s.split]
    official = use_official and bool(with_official)
    if official and len(with_official) != len(items):
        raise DatasetError(
            f"dataset {dataset!r}: {len(with_official)} of {len(items)} samples carry an official split; "
            "expected all or none (use_official=False ignores it)"
        )
    by_patient = _patients(items)
    assignment: dict[str, str] = {}
    info: dict[str, object] = {}
    if official:
        bad = sorted({s.split for s in items} - {"train", "test"})
        if bad:
            raise DatasetError(f"dataset {dataset!r}: official split {bad[0]!r}; expected 'train' or 'test'")
        pool: dict[str, list[Sample]] = {}
        moved = 0
        for patient, group in by_patient.items():
            splits = {s.split for s in group}
            if "test" in splits:
                assignment[patient] = "test"
                moved += len(splits) > 1
            else:
                pool[patient] = group
        info["moved_to_test"] = moved
        train_val = fracs["train"] + fracs["val"]
        targets = {"train": fracs["train"] / train_val, "val": fracs["val"] / train_val, "test": 0.0}
    else:
        pool = by_patient
        targets = fracs
    strata: dict[tuple[str, str], list[str]] = {}
    for patient, group in pool.items():
        strata.setdefault(stratum(group), []).append(patient)
    for key in sorted(strata):
        ordered = sorted(strata[key], key=lambda p: _order_key(seed, p))
        assignment.update(_deal(ordered, targets))
    splits: dict[str, list[str]] = {name: [] for name in SPLIT_NAMES}
    for sample in items:
        splits[assignment[sample.patient_id]].append(sample.id)
    result = Split(
        dataset=dataset,
        seed=seed,
        fractions=fracs,
        splits={name: tuple(sorted(ids, key=natural_key)) for name, ids in splits.items()},
        official=official,
        created=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        info=info,
    )
    return replace(result, counts=split_counts(items, result))


def save_split(split: Split, path: str | Path) -> Path:
    """Write ``split`` as JSON, atomically."""
    from bcedge.imageio import atomic_write_bytes

    text = json.dumps(split.to_dict(), indent=1) + "\n"
    return atomic_write_bytes(path, text.encode())


def load_split(path: str | Path) -> Split:
    """Read a split file written by :func:`save_split`.

    Raises:
        DatasetError: missing file, not JSON, unknown version, or an id in two splits.
    """
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DatasetError(f"{p}: split file not found") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{p}: not a readable JSON split file ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
        got = doc.get("version") if isinstance(doc, dict) else type(doc).__name__
        raise DatasetError(f"{p}: split file version {got!r}; expected {FORMAT_VERSION}")
    raw = doc.get("splits")
    if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
        raise DatasetError(f"{p}: 'splits' must map split names to lists of sample ids")
    seen: dict[str, str] = {}
    for name, ids in raw.items():
        for sid in ids:
            if sid in seen:
                raise DatasetError(f"{p}: sample {sid!r} is in both {seen[sid]!r} and {name!r}")
            seen[sid] = name
    return Split(
        dataset=str(doc.get("dataset", "")),
        seed=int(doc.get("seed", 0)),
        fractions=dict(doc.get("fractions", {})),
        splits={name: tuple(ids) for name, ids in raw.items()},
        official=bool(doc.get("official", False)),
        created=str(doc.get("created", "")),
        counts=dict(doc.get("counts", {})),
        info=dict(doc.get("info", {})),
    )


def filter_samples(samples: Iterable[Sample], split: Split, name: str, *, strict: bool = True) -> list[Sample]:
    """The samples whose id ``split`` puts in ``name``, in the dataset's order.

    Args:
        strict: every id of the split file must be in ``samples``. Pass False when reader
            options narrowed the dataset on purpose (e.g. ``cdd_kind=DM`` over a split made
            with the contrast views too): the split still decides where each present id goes.

    Raises:
        DatasetError: ``name`` is not a split of the file, or (``strict``) the split names
            ids that the dataset does not have (wrong dataset, root or reader options).
    """
    if name not in split.splits:
        raise DatasetError(f"split {name!r} not in the split file; it has {', '.join(split.splits)}")
    items = list(samples)
    present = {s.id for s in items}
    missing = sorted(set().union(*split.splits.values()) - present, key=natural_key)
    if missing and strict:
        raise DatasetError(
            f"the split file names {len(missing)} ids not in the dataset (e.g. {missing[0]!r}); "
            f"it was made for {split.dataset!r}: check the dataset name, root and options"
        )
    wanted = set(split.splits[name])
    return [s for s in items if s.id in wanted]


class SplitDataset:
    """A reader restricted to one split of a split file (itself a :class:`DatasetReader`).

    Args:
        reader: the full dataset.
        split: the split (or a path to its JSON file).
        name: ``train``, ``val`` or ``test``.
    """

    def __init__(self, reader: DatasetReader, split: Split | str | Path, name: str) -> None:
        self.reader = reader
        self.split = split if isinstance(split, Split) else load_split(split)
        self.split_name = name
        self.name = f"{reader.name}[{name}]"

    def samples(self) -> Iterator[Sample]:
        """Yield the split's samples in the dataset's order."""
        yield from filter_samples(self.reader.samples(), self.split, self.split_name)
