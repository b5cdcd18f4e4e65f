"""benchmarks/bench_batch.py's fixed/marginal split: the line fit, the cycled scans, the verdicts at scale."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_batch

from bcedge.batch.sources import file_ref


def test_line_fit_recovers_the_fixed_and_per_scan_cost() -> None:
    fit = bench_batch.line_fit([(50, 10.0 + 50 * 0.4), (200, 10.0 + 200 * 0.4), (100, 10.0 + 100 * 0.4)])
    assert fit == pytest.approx({"fixed": 10.0, "per_scan": 0.4})


def test_line_fit_needs_two_distinct_counts() -> None:
    with pytest.raises(ValueError, match="two distinct"):
        bench_batch.line_fit([(50, 20.0), (50, 21.0)])


def test_cycled_scans_are_distinct_scans_of_the_same_pixels(tmp_path: Path) -> None:
    images = []
    for name in ("a.png", "b.png", "c.png"):
        path = tmp_path / "data" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(name.encode() * 10)
        images.append(path)
    scans = bench_batch.cycled_scans(images, 7, tmp_path / "cycled")
    assert len(scans) == 7
    assert scans[:3] == images
    assert [p.read_bytes() for p in scans[3:]] == [p.read_bytes() for p in images + images[:1]]
    # Each is its own scan for bcedge batch (key) and its own output name for both commands (file name).
    assert len({file_ref(p, p.stem).key for p in scans}) == 7
    assert len({p.name for p in scans}) == 7
    assert bench_batch.cycled_scans(images, 2, tmp_path / "unused") == images[:2]


def _run(wall: float, cpu: float, busy: bool = False) -> dict[str, Any]:
    return {
        "scans": 0,
        "wall_s": wall,
        "own_cpu_s": cpu,
        "busy": busy,
        "cpu_s_by_role": {"driver": cpu},
        "ray_system_cpu_s": 0.0,
        "scans_per_s_wall": 1.0,
    }


def test_derive_counts_judges_the_slopes_and_each_count() -> None:
    # infer: 3 s + 0.40 s/scan; batch 1 worker: 12 s + 0.42 s/scan; 2 workers: 14 s + 0.22 s/scan.
    def point(n: int) -> dict[str, Any]:
        return {
            "scans": n,
            "infer": _run(3 + 0.40 * n, 1),
            "batch_1": _run(12 + 0.42 * n, 1),
            "batch_2": _run(14 + 0.22 * n, 1),
        }

    entry: dict[str, Any] = {"at": [point(50), point(200)]}
    bench_batch.derive_counts(entry)
    marginal = entry["marginal"]
    assert marginal["wall_s_per_scan"] == pytest.approx({"infer": 0.40, "batch_1": 0.42, "batch_2": 0.22})
    assert marginal["fixed_wall_s"] == pytest.approx({"infer": 3.0, "batch_1": 12.0, "batch_2": 14.0})
    assert marginal["speedup_2_workers"] == pytest.approx(0.42 / 0.22, abs=1e-3)
    assert marginal["speedup_met"] is True
    assert marginal["ray_overhead_1_worker"] == pytest.approx(0.05, abs=1e-3)
    assert marginal["overhead_met"] is True
    # At 50 scans the fixed costs dominate: neither target is met there, and that is reported, not hidden.
    small = entry["at"][0]["judged"]
    assert small["speedup_met"] is False and small["overhead_met"] is False
    assert small["ray_overhead_1_worker"] == pytest.approx((12 + 21) / (3 + 20) - 1, abs=1e-3)


def test_derive_counts_with_a_failed_step_fits_nothing() -> None:
    entry: dict[str, Any] = {
        "at": [
            {"scans": 50, "infer": _run(23, 1), "batch_1": _run(33, 1), "batch_2": {"error": "Ray did not start"}},
            {"scans": 200, "infer": _run(83, 1), "batch_1": _run(96, 1), "batch_2": _run(58, 1)},
        ]
    }
    bench_batch.derive_counts(entry)
    assert isinstance(entry["fit"], str) and "not derived" in entry["fit"]
    assert "marginal" not in entry
    assert "judged" in entry["at"][1] and "judged" not in entry["at"][0]
