"""benchmarks/bench_any_width.py on the demo bundle and a few phantoms: the figures it reports are
computed from what the two modes return (a fixed-width artifact: both modes run the square)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

pytest.importorskip("ai_edge_litert")

import bench_any_width

from bcedge.bench.data import BenchData
from bcedge.bundle import load_bundle
from bcedge.phantom import generate

DEMO = Path(__file__).resolve().parents[1] / "bcedge" / "demo_model"


def test_agreement_and_speed_on_a_fixed_width_bundle(tmp_path: Path) -> None:
    generate(tmp_path / "ph", count=3, seed=5, scale=0.1)
    bundle = load_bundle(DEMO)
    images = bench_any_width.tensors(BenchData.from_split("phantom", tmp_path / "ph", None), bundle.preprocess_config())
    assert len(images) >= 3 and images[0][2].shape == (1, bundle.input_size, bundle.input_size, 1)
    (record,) = [r for r in bundle.manifest.artifacts if r.format == "tflite"]
    same = bench_any_width.agreement(bundle, record, images)
    # A fixed-width artifact runs the square in both modes: identical masks and probabilities.
    assert same["mask_dice_min"] == 1.0 and same["max_abs_probability_difference_in_block"] == 0.0
    timed = bench_any_width.speed(bundle, record, images, threads=1, rounds=2)
    assert set(timed["ms_per_image_median"]) == {"breast", "square"}
    assert all(v > 0 for v in timed["ms_per_image_mean"].values()) and len(timed["rounds_load"]) == 2
