"""Preprocessed-array cache: what training reads, made by the runtime's own preprocessing.

Each sample is stored as the exact output of the one preprocessing::

    image    = preprocess(sample.load_image(), config)[0][0, :, :, 0]      (S, S) float32 in [0, 1]
    mask     = preprocess_mask(sample.load_mask(shape), geometry)           (S, S) uint8 in {0, 1}

so the model trains on the tensors the runtime will feed it (a test asserts equality).

Layout::

    CACHE/<config hash>/config.json                     PreprocessConfig.to_dict() + hash
    CACHE/<config hash>/samples/<source>/<id>.<key>.npz  image, mask, geometry (JSON string)
    CACHE/<config hash>/index-<dataset>.json            one entry per sample + source fingerprints

Reuse and rebuild:

* A different config (any field, or the preprocessing version) has a different hash,
  hence a different folder: nothing is reused across configs.
* ``key`` hashes what the arrays depend on besides the config: the image file's
  SHA-256, each mask file's SHA-256, the discs, the dataset's laterality and view
  (they steer the flip) and the bcedge version (reader or decoder changes must not
  leave stale arrays). A file's SHA-256 is recomputed only when its size or
  modification time differ from the previous index; otherwise the stored digest is used.
* A sample whose ``<id>.<key>.npz`` exists is reused; a changed sample is rebuilt and its
  older files removed.

Every file is written to a temporary name and renamed, and the index is written last,
so an interrupted run leaves complete files only and the next run picks up where it stopped.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bcedge.datasets.base import Sample
from bcedge.errors import DatasetError

CACHE_FORMAT = 1
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe(name: str) -> str:
    return _SAFE.sub("_", name) or "_"


@dataclass(frozen=True)
class FileFingerprint:
    """Identity of a source file: size, modification time (ns) and SHA-256."""

    path: str
    size: int
    mtime_ns: int
    sha256: str


def file_fingerprint(path: Path, previous: FileFingerprint | None = None) -> FileFingerprint:
    """Fingerprint ``path``, reusing ``previous.sha256`` when size and mtime are unchanged.

    Raises:
        DatasetError: the file cannot be read.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read source file ({exc.strerror})") from exc
    if previous is not None and previous.size == st.st_size and previous.mtime_ns == st.st_mtime_ns:
        return FileFingerprint(str(path), st.st_size, st.st_mtime_ns, previous.sha256)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return FileFingerprint(str(path), st.st_size, st.st_mtime_ns, digest.hexdigest())


@dataclass(frozen=True)
class CacheEntry:
    """One cached sample.

    Attributes:
        id, patient_id, source, mask_kind: from the :class:`Sample`.
        has_lesion: the sample's mask marks a lesion.
        lesion_unlocated: the source reports a lesion without location (empty mask is not ground truth).
        file: the ``.npz`` path relative to the config folder.
        key: hash of everything the arrays depend on besides the config.
        sources: fingerprints of the image and mask files.
    """

    id: str
    patient_id: str
    source: str
    mask_kind: str
    has_lesion: bool
    lesion_unlocated: bool
    file: str
    key: str
    sources: tuple[FileFingerprint, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        out = asdict(self)
        out["sources"] = [asdict(f) for f in self.sources]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CacheEntry:
        """Inverse of :meth:`to_dict`."""
        sources = tuple(FileFingerprint(**f) for f in data.get("sources", []))
        return cls(**{**data, "sources": sources})


def sample_key(sample: Sample, fingerprints: Sequence[FileFingerprint]) -> str:
    """Hash of what a sample's arrays depend on besides the preprocessing config."""
    from bcedge import __version__

    doc = {
        "format": CACHE_FORMAT,
        "bcedge": __version__,
        "files": [f.sha256 for f in fingerprints],
        "circles": [list(c) for c in sample.circles],
        "laterality": sample.laterality,
        "view": sample.view,
    }
    # Only when set, so the keys of samples without them stay as they were.
    if sample.undo:
        doc["undo"] = sample.undo
    if sample.mask_rule:
        doc["mask_rule"] = sample.mask_rule
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def preprocess_sample(sample: Sample, config: Any) -> tuple[np.ndarray, np.ndarray, Any]:
    """The training path: preprocess a sample's image and carry its mask along.

    Returns:
        (image (S, S) float32 in [0, 1], mask (S, S) uint8 in {0, 1}, Geometry).
    """
    from bcedge.preprocess import preprocess, preprocess_mask

    mammo = sample.load_image()
    tensor, geometry = preprocess(mammo, config)
    mask = sample.load_mask(mammo.pixels.shape, mammo.pixels)
    return tensor[0, :, :, 0], preprocess_mask(mask, geometry).astype(np.uint8), geometry


def _write_npz(path: Path, **arrays: np.ndarray) -> None:
    from bcedge.imageio import atomic_write_bytes

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


class PreparedCache:
    """A prepared cache of one dataset under one preprocessing config.

    Attributes:
        root: the config folder (``CACHE/<config hash>``).
        config: the :class:`~bcedge.preprocess.PreprocessConfig`.
        dataset: dataset name.
        entries: one per sample, in the dataset's order.
        built, reused: how many samples the last :func:`prepare` computed / found.
    """

    def __init__(self, root: Path, config: Any, dataset: str, entries: list[CacheEntry]) -> None:
        self.root = root
        self.config = config
        self.dataset = dataset
        self.entries = entries
        self.built = 0
        self.reused = 0
        self._by_id = {e.id: e for e in entries}

    def __len__(self) -> int:
        return len(self.entries)

    def load(self, sample_id: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """(image (S, S) float32, mask (S, S) uint8, geometry dict) of one sample.

        Raises:
            DatasetError: unknown id or unreadable file.
        """
        entry = self._by_id.get(sample_id)
        if entry is None:
            raise DatasetError(f"sample {sample_id!r} is not in the cache of {self.dataset!r} at {self.root}")
        path = self.root / entry.file
        try:
            with np.load(path, allow_pickle=False) as data:
                return data["image"], data["mask"], json.loads(str(data["geometry"]))
        except (OSError, KeyError, ValueError) as exc:
            raise DatasetError(f"{path}: unreadable cache file ({exc}); rerun 'bcedge data prepare'") from exc

    def arrays(self, ids: Iterable[str] | None = None) -> dict[str, Any]:
        """Stacked arrays of ``ids`` (default: all), ready for ``training.data.ArraySet(**...)``.

        Returns:
            ``images`` (N, S, S, 1) float32, ``masks`` (N, S, S, 1) uint8, ``ids``,
            ``mask_kinds`` and ``sources`` (tuples of N strings).
        """
        chosen = [e.id for e in self.entries] if ids is None else list(ids)
        size = int(self.config.size)
        images = np.zeros((len(chosen), size, size, 1), np.float32)
        masks = np.zeros((len(chosen), size, size, 1), np.uint8)
        for i, sid in enumerate(chosen):
            image, mask, _ = self.load(sid)
            images[i, :, :, 0] = image
            masks[i, :, :, 0] = mask
        return {
            "images": images,
            "masks": masks,
            "ids": tuple(chosen),
            "mask_kinds": tuple(self._by_id[s].mask_kind for s in chosen),
            "sources": tuple(self._by_id[s].source for s in chosen),
        }


def _index_path(root: Path, dataset: str) -> Path:
    return root / f"index-{_safe(dataset)}.json"


def _read_index(path: Path) -> dict[str, CacheEntry]:
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != CACHE_FORMAT:
            return {}
        return {e["id"]: CacheEntry.from_dict(e) for e in doc["entries"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # a damaged index only costs re-hashing; the arrays are still found by key


def config_root(cache_dir: str | Path, config: Any) -> Path:
    """``cache_dir/<config hash>``."""
    return Path(cache_dir) / config.hash()


def prepare(
    samples: Iterable[Sample],
    config: Any,
    cache_dir: str | Path,
    *,
    dataset: str,
    progress: Callable[[int, int, bool], None] | None = None,
) -> PreparedCache:
    """Preprocess ``samples`` into ``cache_dir``, reusing whatever is unchanged.

    Args:
        samples: the samples to cache (e.g. a whole dataset, or one split).
        config: a :class:`~bcedge.preprocess.PreprocessConfig`.
        cache_dir: the cache folder (shared by configs and datasets).
        dataset: name of the dataset (one index per dataset and config).
        progress: called as ``progress(done, total, reused)`` after each sample.

    Returns:
        The prepared cache, with ``built`` and ``reused`` counts.

    Raises:
        DatasetError: a source file is unreadable or sample ids repeat.
    """
    from bcedge.imageio import atomic_write_bytes

    items = list(samples)
    ids = [s.id for s in items]
    if len(set(ids)) != len(ids):
        raise DatasetError(f"dataset {dataset!r}: sample ids repeat; a cache needs unique ids")
    root = config_root(cache_dir, config)
    root.mkdir(parents=True, exist_ok=True)
    config_doc = {"hash": config.hash(), "config": config.to_dict()}
    config_path = root / "config.json"
    if not config_path.is_file() or json.loads(config_path.read_text(encoding="utf-8")) != config_doc:
        atomic_write_bytes(config_path, (json.dumps(config_doc, indent=1) + "\n").encode())
    index_path = _index_path(root, dataset)
    previous = _read_index(index_path)
    entries: list[CacheEntry] = []
    built = reused = 0
    for done, sample in enumerate(items, 1):
        old = previous.get(sample.id)
        old_fp = {f.path: f for f in old.sources} if old else {}
        paths = [Path(sample.image_path), *(Path(p) for p in sample.mask_paths)]
        fps = tuple(file_fingerprint(p, old_fp.get(str(p))) for p in paths)
        key = sample_key(sample, fps)
        folder = root / "samples" / _safe(sample.source)
        stem = _safe(sample.id)
        rel = Path("samples") / _safe(sample.source) / f"{stem}.{key}.npz"
        hit = (root / rel).is_file()
        if not hit:
            image, mask, geometry = preprocess_sample(sample, config)
            _write_npz(root / rel, image=image, mask=mask, geometry=np.array(json.dumps(geometry.to_dict())))
            for stale in folder.glob(f"{stem}.*.npz"):
                if stale.name != rel.name and re.fullmatch(rf"{re.escape(stem)}\.[0-9a-f]{{16}}\.npz", stale.name):
                    stale.unlink(missing_ok=True)
            built += 1
        else:
            reused += 1
        entries.append(
            CacheEntry(
                id=sample.id,
                patient_id=sample.patient_id,
                source=sample.source,
                mask_kind=sample.mask_kind,
                has_lesion=sample.has_lesion,
                lesion_unlocated=sample.lesion_unlocated,
                file=rel.as_posix(),
                key=key,
                sources=fps,
            )
        )
        if progress is not None:
            progress(done, len(items), hit)
    doc = {
        "format": CACHE_FORMAT,
        "dataset": dataset,
        "config_hash": config.hash(),
        "entries": [e.to_dict() for e in entries],
    }
    atomic_write_bytes(index_path, (json.dumps(doc, indent=1) + "\n").encode())
    cache = PreparedCache(root, config, dataset, entries)
    cache.built, cache.reused = built, reused
    return cache


def open_cache(cache_dir: str | Path, config: Any, dataset: str) -> PreparedCache:
    """Open a cache :func:`prepare` wrote (no source checks: run ``prepare`` to refresh).

    Raises:
        DatasetError: no index for this dataset and config.
    """
    root = config_root(cache_dir, config)
    index = _read_index(_index_path(root, dataset))
    if not index:
        raise DatasetError(
            f"{root}: no prepared cache of {dataset!r} for preprocess config {config.hash()}; "
            "run 'bcedge data prepare' first"
        )
    return PreparedCache(root, config, dataset, list(index.values()))
