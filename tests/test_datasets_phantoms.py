"""Phantom folder reader and the generate-once cache."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from bcedge.datasets.phantoms import PhantomDataset, generate_cached
from bcedge.errors import DatasetError

phantom = pytest.importorskip("bcedge.phantom")


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantoms") / "with space"
    phantom.generate(out, count=6, seed=1, scale=0.1)
    return out


def test_reader_follows_phantoms_csv(generated: Path) -> None:
    with open(generated / "phantoms.csv", newline="") as fh:
        rows = {r["id"]: r for r in csv.DictReader(fh)}
    samples = list(PhantomDataset(generated).samples())
    assert sorted(s.id for s in samples) == sorted(rows) and [s.id for s in samples] == sorted(rows)
    for sample in samples:
        row = rows[sample.id]
        assert sample.patient_id == row["patient_id"]
        assert sample.laterality == row["laterality"] and sample.view == row["view"]
        assert sample.has_lesion == (int(row["n_masses"]) > 0)
        assert sample.mask_kind == ("pixel" if sample.has_lesion else "none")
        assert sample.image_path.is_file() and sample.extra["pixel_spacing_mm"] == row["spacing_mm"]


def test_masks_load_on_the_image_grid(generated: Path) -> None:
    pytest.importorskip("bcedge.preprocess")
    sample = next(s for s in PhantomDataset(generated).samples() if s.has_lesion)
    image = sample.load_image()
    mask = sample.load_mask(image.pixels.shape)
    assert mask.shape == image.pixels.shape and mask.dtype == np.uint8 and mask.any()
    assert image.meta.laterality == sample.laterality


def test_generate_cached_reuses_a_complete_set(tmp_path: Path) -> None:
    cache = tmp_path / "cache dir"
    first = generate_cached(cache, count=2, seed=3, scale=0.1)
    assert (first / "phantoms.csv").is_file()
    stamp = (first / "phantoms.csv").stat().st_mtime_ns
    again = generate_cached(cache, count=2, seed=3, scale=0.1)
    assert again == first and (first / "phantoms.csv").stat().st_mtime_ns == stamp
    other = generate_cached(cache, count=2, seed=4, scale=0.1)
    assert other != first and len(list(PhantomDataset(other).samples())) == 2


def test_malformed_folders_are_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"phantoms\.csv"):
        PhantomDataset(tmp_path)
    (tmp_path / "phantoms.csv").write_text("id,patient_id\nA,P\n")
    with pytest.raises(DatasetError, match="n_masses"):
        list(PhantomDataset(tmp_path).samples())
    (tmp_path / "phantoms.csv").write_text("id,patient_id,n_masses\nA,P,1\n")
    with pytest.raises(DatasetError, match="not found"):
        list(PhantomDataset(tmp_path).samples())
