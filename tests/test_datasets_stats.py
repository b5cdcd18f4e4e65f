"""Dataset statistics: counts, per-lesion areas (discs and mask components), spacing, splits."""

from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from bcedge.datasets.base import Sample
from bcedge.datasets.splits import make_split
from bcedge.datasets.stats import dataset_stats, format_area, lesion_areas_px, sample_spacing


def _mask_file(path: Path, boxes: list[tuple[int, int, int, int]], shape=(40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros(shape, np.uint8)
    for r0, r1, c0, c1 in boxes:
        mask[r0:r1, c0:c1] = 255
    cv2.imwrite(str(path), mask)
    return path


def test_areas_of_discs_and_mask_components(tmp_path: Path) -> None:
    disc = Sample(id="a", patient_id="p", source="s", image_path=tmp_path / "a.png", circles=((5, 5, 2), (9, 9, 3)))
    assert lesion_areas_px(disc) == pytest.approx([math.pi * 4, math.pi * 9])
    two_files = (
        _mask_file(tmp_path / "m one.png", [(0, 4, 0, 5)]),  # 20 px
        _mask_file(tmp_path / "m2.png", [(2, 6, 3, 8), (30, 33, 20, 22)]),  # overlaps the first; plus 6 px apart
    )
    sample = Sample(id="b", patient_id="p", source="s", image_path=tmp_path / "b.png", mask_paths=two_files)
    # Union of the two overlapping boxes: 20 + 20 - overlap(rows 2-3, cols 3-4 = 4) = 36, and a separate 6.
    assert sorted(lesion_areas_px(sample)) == [6.0, 36.0]


def test_spacing_from_extra_and_from_dicom(tmp_path: Path) -> None:
    raster = Sample(
        id="a", patient_id="p", source="s", image_path=tmp_path / "a.png", extra={"pixel_spacing_mm": "0.2"}
    )
    assert sample_spacing(raster) == (0.2, 0.2)
    assert sample_spacing(Sample(id="b", patient_id="p", source="s", image_path=tmp_path / "b.png")) is None
    phantom = pytest.importorskip("bcedge.phantom")
    out = tmp_path / "ph"
    phantom.generate(out, count=1, seed=2, scale=0.1)
    dcm = next((out / "images").glob("*.dcm"))
    spacing = sample_spacing(Sample(id="c", patient_id="p", source="s", image_path=dcm))
    assert spacing is not None and spacing[0] > 0


def test_counts_and_mm_areas_per_split(tmp_path: Path) -> None:
    samples = []
    for p in range(30):
        lesion = p % 2 == 0
        samples.append(
            Sample(
                id=f"x{p}",
                patient_id=f"P{p // 2}",
                source="s" if p < 20 else "t",
                image_path=tmp_path / f"{p}.png",
                circles=((10, 10, 5),) if lesion else (),
                mask_kind="circle" if lesion else "none",
                extra={"pixel_spacing_mm": "0.5"},
            )
        )
    samples.append(
        Sample(id="u", patient_id="PU", source="s", image_path=tmp_path / "u.png", extra={"lesion_unlocated": "true"})
    )
    split = make_split(samples, dataset="toy", seed=0)
    stats = dataset_stats(samples, split=split)
    assert list(stats) == ["all", "train", "val", "test"]
    everything = stats["all"]
    assert everything["images"] == 31 and everything["patients"] == 16
    assert everything["with_lesion"] == 15 and everything["lesion_unlocated"] == 1
    assert everything["without_lesion"] == 15
    assert everything["by_source"]["t"] == {"images": 10, "patients": 5, "with_lesion": 5}
    assert everything["area_px"]["median"] == pytest.approx(math.pi * 25)
    assert everything["area_mm2"]["median"] == pytest.approx(math.pi * 25 * 0.25)
    assert sum(stats[name]["images"] for name in ("train", "val", "test")) == 31
    assert sum(stats[name]["lesions"] for name in ("train", "val", "test")) == 15
    assert format_area(everything["area_px"]) == "79 [79-79] (79-79)" and format_area(None) == "-"


def test_official_split_groups_without_a_split_file(tmp_path: Path) -> None:
    samples = [
        Sample(id=f"i{n}", patient_id=f"p{n}", source="s", image_path=tmp_path / "x", split=sp)
        for n, sp in enumerate(["train", "train", "test"])
    ]
    stats = dataset_stats(samples)
    assert {k: v["images"] for k, v in stats.items()} == {"all": 3, "test": 1, "train": 2}


_DATA = os.environ.get("BCEDGE_DATA")


@pytest.mark.skipif(not _DATA, reason="BCEDGE_DATA is not set (path to the shared real data)")
def test_real_mini_mias_counts() -> None:
    from bcedge.datasets.registry import open_dataset

    stats = dataset_stats(open_dataset("mini-mias", Path(_DATA or "") / "mini-mias").samples())["all"]
    assert stats["images"] == 322 and stats["with_lesion"] == 55
    assert stats["patients"] == 161 and stats["lesion_unlocated"] == 1 and stats["lesions"] == 58
    assert stats["lesions_with_mm"] == 58
    # 0.2 mm pixels: mm² = 0.04 x px.
    assert stats["area_mm2"]["median"] == pytest.approx(stats["area_px"]["median"] * 0.04)
