"""Where the benchmark's (and ``bcedge evaluate --model``'s) evaluation images come from.

:class:`BenchData` is plain data (it crosses to a row's worker process as JSON); its
:meth:`~BenchData.items` are :class:`BenchItem` s whose pixels and masks are read lazily.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bcedge.errors import ConfigError, InputError

if TYPE_CHECKING:
    from bcedge.datasets.base import Sample
    from bcedge.dicom import Mammogram


@dataclass(frozen=True)
class BenchData:
    """Where the evaluation images come from; plain data so it crosses to a worker process as JSON.

    Use :meth:`from_files` (image + mask pairs, e.g. the bundled sample scan) or
    :meth:`from_split` (a registered dataset restricted to one split of a split file).

    Attributes:
        kind: ``files`` or ``dataset``.
        files: (image path, mask path or None) pairs, for ``files``.
        dataset: registered dataset name (:mod:`bcedge.datasets.registry`), for ``dataset``.
        root: the dataset's folder.
        split: path of the split JSON file (None: every image of the dataset).
        split_name: ``train``, ``val`` or ``test``.
        options: reader options (``kind=CM``...).
        limit: use only the first ``limit`` images (None: all).
        label: how reports name the data.
    """

    kind: str
    files: tuple[tuple[str, str | None], ...] = ()
    dataset: str | None = None
    root: str | None = None
    split: str | None = None
    split_name: str = "test"
    options: dict[str, Any] = field(default_factory=dict)
    limit: int | None = None
    label: str = ""

    @classmethod
    def from_files(
        cls, pairs: Iterable[tuple[str | os.PathLike[str], str | os.PathLike[str] | None]], label: str = ""
    ) -> BenchData:
        """Images with optional lesion masks (PNG/DICOM, same size as the image; None: no lesion)."""
        files = tuple((str(Path(img)), None if mask is None else str(Path(mask))) for img, mask in pairs)
        if not files:
            raise ConfigError("no evaluation images given")
        for img, mask in files:
            for path in (img, mask):
                if path is not None and not Path(path).is_file():
                    raise InputError(f"{path}: evaluation file not found")
        return cls(kind="files", files=files, label=label or f"{len(files)} file(s)")

    @classmethod
    def from_split(
        cls,
        dataset: str,
        root: str | os.PathLike[str],
        split: str | os.PathLike[str] | None,
        split_name: str = "test",
        *,
        options: dict[str, Any] | None = None,
        limit: int | None = None,
    ) -> BenchData:
        """A dataset split (``open_dataset(dataset, root, **options)`` filtered by ``split``'s ``split_name``).

        ``split`` None takes every image of the dataset (e.g. a dataset a model never saw in training).
        """
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ConfigError(f"limit is {limit!r}; expected a positive integer or None")
        label = f"{dataset} {Path(split).name}[{split_name}]" if split is not None else f"{dataset} (every image)"
        return cls(
            kind="dataset",
            dataset=dataset,
            root=str(root),
            split=None if split is None else str(split),
            split_name=split_name,
            options=dict(options or {}),
            limit=limit,
            label=label,
        )

    @classmethod
    def from_command_line(
        cls,
        dataset: str,
        root: str | os.PathLike[str] | None,
        split: str | os.PathLike[str] | None,
        split_name: str = "test",
        options: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> BenchData:
        """:meth:`from_split` from command-line values: root defaults to ``$BCEDGE_DATA``, options are ``KEY=VALUE``.

        Raises:
            ConfigError: no root and no ``BCEDGE_DATA``; a malformed option.
        """
        from bcedge.datasets.registry import parse_options

        if root is None:
            env_root = os.environ.get("BCEDGE_DATA")
            if not env_root:
                raise ConfigError("--data needs --root (the dataset folder) or BCEDGE_DATA set")
            root = env_root
        return cls.from_split(dataset, root, split, split_name, options=parse_options(options), limit=limit)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (also what the report records under ``data``)."""
        out = asdict(self)
        out["files"] = [list(pair) for pair in self.files]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchData:
        """Inverse of :meth:`to_dict`."""
        values = dict(data)
        values["files"] = tuple((str(a), None if b is None else str(b)) for a, b in values.get("files", ()))
        return cls(**values)

    def items(self) -> list[BenchItem]:
        """The evaluation images (pixels are read lazily, by :meth:`BenchItem.decode`).

        Raises:
            DatasetError / InputError: unknown dataset, missing root or split, ids not in the dataset.
        """
        if self.kind == "files":
            out = [_file_item(img, mask) for img, mask in self.files]
        elif self.kind == "dataset":
            from bcedge.datasets.registry import open_dataset
            from bcedge.datasets.splits import filter_samples, load_split

            if not (self.dataset and self.root):
                raise ConfigError("a dataset benchmark needs a dataset name and a root")
            reader = open_dataset(self.dataset, self.root, **self.options)
            samples = list(reader.samples())
            if self.split is not None:
                # Reader options may narrow the dataset its split was made for (e.g. cdd_kind=DM).
                samples = filter_samples(samples, load_split(self.split), self.split_name, strict=not self.options)
            # A lesion reported without a location has an empty mask that is not ground truth.
            out = [_sample_item(s) for s in samples if not s.lesion_unlocated]
        else:
            raise ConfigError(f"benchmark data kind {self.kind!r}; expected 'files' or 'dataset'")
        if self.limit is not None:
            out = out[: self.limit]
        if not out:
            raise InputError(f"no evaluation images in {self.label or self.kind}")
        return out


@dataclass(frozen=True)
class BenchItem:
    """One evaluation image.

    Attributes:
        id: sample id or file stem.
        mask_kind: ``pixel``, ``circle`` or ``none`` (no lesion).
        decode: reads the image: () -> :class:`bcedge.dicom.Mammogram`.
        mask: reads the ground truth: ((H, W)) -> (H, W) uint8 {0, 1}.
        source: dataset name (``files`` for image/mask pairs); evaluation reports group by it.
    """

    id: str
    mask_kind: str
    decode: Callable[[], Mammogram]
    mask: Callable[[tuple[int, int]], np.ndarray]
    source: str = "files"


def _file_item(image: str, mask: str | None) -> BenchItem:
    from bcedge.dicom import read_mammogram

    def read_mask(shape: tuple[int, int]) -> np.ndarray:
        if mask is None:
            return np.zeros(shape, np.uint8)
        from bcedge.datasets.base import read_mask_file

        return read_mask_file(Path(mask), shape)

    return BenchItem(Path(image).stem, "none" if mask is None else "pixel", lambda: read_mammogram(image), read_mask)


def _sample_item(sample: Sample) -> BenchItem:
    kind = sample.mask_kind if sample.has_lesion else "none"
    return BenchItem(sample.id, kind, sample.load_image, sample.load_mask, source=sample.source)


def sample_data(
    phantoms: int = 3, *, seed: int = 0, scale: float = 0.25, workdir: str | os.PathLike[str] | None = None
) -> BenchData:
    """The bundled sample scan (``bcedge/examples/phantom_lcc.dcm`` + mask) and ``phantoms`` more.

    The extra phantoms (:func:`bcedge.phantom.generate`, deterministic for ``seed`` and
    ``scale``) give the latency loop distinct inputs and the Dice more than one image.

    Args:
        phantoms: how many phantoms to add (0: the sample scan alone).
        seed: phantom seed.
        scale: phantom size relative to a full field (0.25: about 830 x 640 pixels).
        workdir: where to write them (a new temporary folder when None; the caller removes it).
    """
    examples = Path(__file__).parent.parent / "examples"
    pairs: list[tuple[str | Path, str | Path | None]] = [
        (examples / "phantom_lcc.dcm", examples / "phantom_lcc_mask.png")
    ]
    if phantoms:
        from bcedge.phantom import generate

        out = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="bcedge-bench-"))
        for image in generate(out, count=phantoms, seed=seed, scale=scale):
            pairs.append((image, out / "masks" / f"{image.stem}.png"))
    label = "bundled sample scan" + (f" + {phantoms} phantoms (seed {seed}, scale {scale:g})" if phantoms else "")
    return BenchData.from_files(pairs, label=label)
