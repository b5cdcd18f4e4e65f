"""benchmarks/weight_soup.py: the element-wise mean of checkpoints as a run folder ablation_v2 scores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bcedge.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import weight_soup  # noqa: E402


def _run(tmp: Path, name: str, seed: int, base_filters: int = 4) -> Path:
    """A run folder with a tiny plain UNet (random weights of ``seed``) as best.keras."""
    import keras

    from training.models import build_model

    keras.utils.set_random_seed(seed)
    model = build_model("unet", 32, base_filters=base_filters)
    run = tmp / name
    run.mkdir()
    model.save(run / "best.keras")
    (run / "config.json").write_text(json.dumps({"model": "unet", "size": 32, "data": ["x"], "batch": 2}))
    (run / "state.json").write_text(
        json.dumps({"epoch": 3, "best_epoch": 2, "wall_seconds": 10.0 * seed, "bn_recalibration": {"kept": True}})
    )
    return run


def test_soup_is_the_mean_of_every_weight_and_records_its_ingredients(tmp_path: Path) -> None:
    pytest.importorskip("keras")
    from training.models import load_trained

    a, b = _run(tmp_path, "a", 1), _run(tmp_path, "b", 2)
    state = weight_soup.make_soup(tmp_path / "soup", [str(a), str(b)])
    wa = load_trained(a / "best.keras").get_weights()
    wb = load_trained(b / "best.keras").get_weights()
    ws = load_trained(tmp_path / "soup" / "best.keras").get_weights()
    assert len(ws) == len(wa) and any(not np.allclose(x, y) for x, y in zip(wa, wb, strict=True))
    for x, y, s in zip(wa, wb, ws, strict=True):  # BN moving statistics included
        np.testing.assert_allclose(s, (x.astype(np.float64) + y) / 2, rtol=1e-6, atol=1e-7)
    config = json.loads((tmp_path / "soup" / "config.json").read_text())
    assert config["model"] == "unet" and config["soup_of"]["ingredients"] == [
        str(a / "best.keras"),
        str(b / "best.keras"),
    ]
    assert state["soup_of"]["bn_recalibrated_layers"] == 0 and "bn_recalibration" not in state
    assert state["wall_seconds"] == 30.0  # both ingredient runs' training time


def test_soup_refuses_mismatched_architectures_and_existing_output(tmp_path: Path) -> None:
    pytest.importorskip("keras")
    a, wide = _run(tmp_path, "a", 1), _run(tmp_path, "wide", 2, base_filters=8)
    with pytest.raises(ConfigError, match="another architecture"):
        weight_soup.make_soup(tmp_path / "soup", [str(a), str(wide)])
    assert not (tmp_path / "soup").exists()
    with pytest.raises(ConfigError, match="exists"):
        weight_soup.make_soup(a, [str(a), str(a)])
    with pytest.raises(ConfigError, match="no such checkpoint"):
        weight_soup.ingredient_path(f"{a}:last")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "best.keras").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="cannot load the checkpoint"):
        weight_soup.make_soup(tmp_path / "s3", [str(a), str(broken)])
    # The command line: one error line, exit 2, no traceback.
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "weight_soup.py"), str(tmp_path / "s2"), str(a)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and done.stderr.strip() == "error: a soup needs at least two ingredients"
