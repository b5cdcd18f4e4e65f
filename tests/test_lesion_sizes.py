"""benchmarks/lesion_sizes.py: equivalent diameters of lesion components and their summary."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import lesion_sizes


def test_diameters_per_component_and_summary() -> None:
    masks = np.zeros((2, 64, 64, 1), np.uint8)
    masks[0, 2:12, 2:12] = 1  # 100 px -> 11.28 px
    masks[0, 30:50, 30:50] = 1  # 400 px -> 22.57 px
    masks[1, 5:6, 5:9] = 1  # 4 px -> 2.26 px
    d = sorted(lesion_sizes.diameters(masks))
    assert np.allclose(d, [2 * np.sqrt(a / np.pi) for a in (4, 100, 400)])
    s = lesion_sizes.summary(d)
    assert s["n"] == 3 and s["share_under_20px"] == round(2 / 3, 3)
    assert s["percentiles_10_25_50_75_90"][2] == round(d[1], 1)
    assert lesion_sizes.summary([]) == {"n": 0}
    assert lesion_sizes.diameters(np.zeros((1, 8, 8), np.uint8)) == []
