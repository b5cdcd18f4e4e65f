"""benchmarks/outline_probe.py: outline vs false components, and the truth-free post-processing rules."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from outline_probe import keep_top, main, peak_relative  # noqa: E402

from bcedge.cli import main as bcedge_main  # noqa: E402


def _view() -> dict:
    """A 40x40 view: the lesion (rows 5-14) predicted with a margin, and one false component."""
    truth = np.zeros((40, 40), bool)
    truth[5:15, 5:15] = True
    pred = np.zeros_like(truth)
    pred[3:17, 3:17] = True
    pred[25:35, 25:35] = True
    prob = np.where(pred, 0.7, 0.0).astype(np.float32)
    prob[5:15, 5:15] = 0.9  # the lesion's core is the most probable
    from outline_probe import components

    return {"truth": truth, "pred": pred, "components": components(pred), "probability": prob}


def test_rules_keep_the_most_probable_component_and_core() -> None:
    view = _view()
    top = keep_top(1)(view)
    assert top[10, 10] and not top[30, 30]
    core = peak_relative(0.9)(view)
    # Each component keeps what reaches 0.9 x its own peak: the lesion's 0.9 core, the flat false one whole.
    assert np.array_equal(core, view["truth"] | (view["pred"] & (np.arange(40)[:, None] >= 25)))
    assert keep_top(2)(view).sum() == view["pred"].sum()


def test_probe_on_phantoms_with_the_demo_bundle(tmp_path: Path) -> None:
    root = tmp_path / "phantoms"
    assert bcedge_main(["phantom", str(root), "--count", "6", "--seed", "2", "--scale", "0.25"]) == 0
    split = tmp_path / "split.json"
    assert bcedge_main(["data", "split", "phantom", "--root", str(root), "--out", str(split)]) == 0
    out = tmp_path / "probe.json"
    args = ["--model", str(ROOT / "bcedge" / "demo_model"), "--artifact", "model_int8.tflite", "--data", "phantom"]
    args += ["--root", str(root), "--split", str(split), "--subset", "train", "--out", str(out)]
    assert main(args) == 0
    doc = json.loads(out.read_text())
    assert doc["n_views"] >= 1 and doc["threshold"] > 0
    dice = doc["dice"]
    # Removing only false components never lowers a view's Dice: the oracle bounds every component filter.
    assert dice["oracle_without_false_components"]["mean"] >= dice["as_predicted"]["mean"]
    assert dice["top1_mean_probability"]["mean"] <= dice["oracle_without_false_components"]["mean"] + 1e-9
    assert 0.0 <= doc["found"]["as_predicted"] <= 1.0


def test_a_missing_bundle_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--model", str(tmp_path / "none"), "--root", str(tmp_path), "--out", str(tmp_path / "o.json")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert not (tmp_path / "o.json").exists()
