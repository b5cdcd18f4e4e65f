"""benchmarks/bench_speed_done_when.py: the floor reads the right pixels, and each verdict follows its target."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from bcedge.phantom import make_phantom

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_speed_done_when as done_when


def test_the_floor_passes_over_the_stored_pixels(tmp_path: Path) -> None:
    path = make_phantom(5, laterality="L", view="CC", scale=0.1, bits_stored=12, n_masses=1).write(tmp_path / "a.dcm")
    pixels = pydicom.dcmread(path).pixel_array
    assert pixels.dtype == np.uint16
    assert done_when.floor_once(path, *pixels.shape) == int(pixels.max())


def _doc(warm: float, floor: float, jls: float | None, rate: float, cold: float, busy: bool = False) -> dict[str, Any]:
    return {
        "sections": {
            "warm": {"ratio_warm": warm, "ratio_non_model_floor": floor, "busy": busy},
            "jpeg_ls": {"skipped": "no dcmcjpls"} if jls is None else {"ratio_decode": jls, "busy": False},
            "throughput": {"ratio_pipelined": rate, "busy": False},
            "cold": {"ratio_wall_median": cold, "busy": False},
        }
    }


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (_doc(0.5, 2.0, 1.2, 0.9, 1.0), [True, True, True, True, True]),  # every target exactly met
        (_doc(0.51, 2.1, 1.21, 0.89, 1.01), [False, False, False, False, False]),
        (_doc(0.3, 1.0, None, 0.95, 0.8), [True, True, None, True, True]),  # JPEG-LS not measured
    ],
)
def test_verdicts(doc: dict[str, Any], expected: list[bool | None]) -> None:
    verdicts = done_when.verdicts(doc)
    assert list(verdicts) == list(done_when.TARGETS)
    assert [v["pass"] for v in verdicts.values()] == expected


def test_a_busy_section_is_flagged_on_its_verdicts() -> None:
    verdicts = done_when.verdicts(_doc(0.3, 1.0, 1.0, 0.95, 0.8, busy=True))
    assert [k for k, v in verdicts.items() if v["busy"]] == ["warm_end_to_end", "non_model_vs_floor"]


def test_the_real_content_scan_is_the_validation_view_at_full_field_size(bcedge_data: Path, tmp_path: Path) -> None:
    import cv2

    from bcedge.dicom import read_mammogram
    from bcedge.preprocess import preprocess

    path = done_when.make_real_content_scan(tmp_path, bcedge_data)
    assert path is not None
    mammo = read_mammogram(path)
    assert (mammo.meta.rows, mammo.meta.columns) == done_when.SIZE
    assert mammo.meta.bits_stored == 12 and mammo.meta.laterality == "L"
    assert mammo.meta.pixel_spacing_mm == (0.1, 0.1)
    source = cv2.imread(str(bcedge_data / done_when.REAL_CONTENT_VIEW), cv2.IMREAD_GRAYSCALE)
    # Right side up (the flipped_ copy is upside down), upscaled, 8 bits * 16 + 8.
    small = cv2.resize(mammo.stored.values, source.shape[::-1], interpolation=cv2.INTER_AREA)
    assert np.abs((small.astype(np.float64) - 8) / 16 - source[::-1]).mean() < 2.0
    # The pipeline reads it as it reads the JPEG: no side disagreement, the breast found.
    _, geometry = preprocess(mammo)
    assert geometry.breast_found and geometry.image_side == geometry.chest_wall_side


def test_no_real_content_scan_without_the_data(tmp_path: Path) -> None:
    assert done_when.make_real_content_scan(tmp_path, tmp_path / "missing") is None
