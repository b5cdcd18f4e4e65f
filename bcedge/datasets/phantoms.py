"""Reader of the synthetic phantoms written by :func:`bcedge.phantom.generate`.

Layout: ``ROOT/phantoms.csv`` (columns ``id``, ``patient_id``, ``laterality``, ``view``,
``n_masses``, ...), ``ROOT/images/<id>.dcm`` and ``ROOT/masks/<id>.png``. A phantom with
``n_masses == 0`` is lesion-free (``mask_kind="none"``, its all-background mask file is
not listed). :func:`generate_cached` writes a set once into a cache folder and reuses it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

from bcedge.datasets._files import natural_key
from bcedge.datasets.base import Sample
from bcedge.errors import DatasetError

CSV_NAME = "phantoms.csv"
_DONE = ".bcedge-complete.json"
_SAMPLE_COLUMNS = frozenset({"id", "patient_id", "laterality", "view"})


class PhantomDataset:
    """Reader of a phantom folder.

    Args:
        root: folder written by :func:`bcedge.phantom.generate` (or ``bcedge phantom``).
    """

    name = "phantom"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.csv_path = self.root / CSV_NAME
        if not self.csv_path.is_file():
            raise DatasetError(f"{self.root}: no {CSV_NAME}; expected a folder written by 'bcedge phantom OUT_DIR'")

    def samples(self) -> Iterator[Sample]:
        """Yield one sample per phantom, sorted by id."""
        with open(self.csv_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = {"id", "n_masses"} - set(reader.fieldnames or [])
            if missing:
                raise DatasetError(f"{self.csv_path}: columns {sorted(missing)} missing (got {reader.fieldnames})")
            rows = list(reader)
        by_id: dict[str, Sample] = {}
        for lineno, row in enumerate(rows, 2):
            sample_id = row["id"].strip()
            try:
                n_masses = int(row["n_masses"])
            except ValueError as exc:
                raise DatasetError(f"{self.csv_path}:{lineno}: n_masses {row['n_masses']!r} is not an integer") from exc
            image = self.root / "images" / f"{sample_id}.dcm"
            if not image.is_file():
                raise DatasetError(f"{self.csv_path}:{lineno}: image {image} not found")
            mask = self.root / "masks" / f"{sample_id}.png"
            if n_masses > 0 and not mask.is_file():
                raise DatasetError(f"{self.csv_path}:{lineno}: {sample_id} has {n_masses} masses but no mask {mask}")
            laterality = (row.get("laterality") or "").strip().upper() or None
            extra = {k: str(v) for k, v in row.items() if k not in _SAMPLE_COLUMNS and v is not None}
            if row.get("spacing_mm"):
                extra["pixel_spacing_mm"] = row["spacing_mm"]
            by_id[sample_id] = Sample(
                id=sample_id,
                patient_id=(row.get("patient_id") or "").strip() or sample_id,
                source=self.name,
                image_path=image,
                mask_paths=(mask,) if n_masses > 0 else (),
                laterality=laterality if laterality in {"L", "R"} else None,
                view=(row.get("view") or "").strip().upper() or None,
                pathology="synthetic" if n_masses > 0 else "normal",
                mask_kind="pixel" if n_masses > 0 else "none",
                extra=extra,
            )
        for key in sorted(by_id, key=natural_key):
            yield by_id[key]


def generate_cached(cache_dir: str | Path, *, count: int = 16, seed: int = 0, scale: float = 0.25) -> Path:
    """Generate a phantom set into ``cache_dir`` once and return its folder.

    The folder is named after the parameters; a marker file written last says the
    set is complete, so an interrupted generation is redone, never half-used.

    Returns:
        ``cache_dir/phantoms-n<count>-s<seed>-x<scale>`` holding ``phantoms.csv``.
    """
    from bcedge.imageio import atomic_write_bytes
    from bcedge.phantom import generate

    params = {"count": count, "seed": seed, "scale": scale}
    out = Path(cache_dir) / f"phantoms-n{count}-s{seed}-x{scale:g}"
    done = out / _DONE
    if done.is_file():
        try:
            if json.loads(done.read_text()) == params:
                return out
        except (OSError, json.JSONDecodeError):
            pass
    generate(out, count=count, seed=seed, scale=scale)
    atomic_write_bytes(done, json.dumps(params).encode())
    return out
