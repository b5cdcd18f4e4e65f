"""The operating-point rule of benchmarks/ablation_v2.py (threshold chosen on validation)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import numpy as np
import pytest
from ablation_v2 import _postprocess, choose, merge

from bcedge.errors import ConfigError


def _point(t: float, dice: float, found: float, fp: float | None) -> dict:
    return {
        "threshold": t,
        "dm_dice": {"value": dice},
        "dm_detection": {"value": found},
        "normal_fp_per_image": None if fp is None else {"value": fp},
    }


def test_middle_of_the_near_best_band_under_the_targets() -> None:
    grid = [
        _point(0.3, 0.52, 0.9, 0.9),  # best Dice, too many false positives
        _point(0.4, 0.49, 0.9, 0.4),
        _point(0.5, 0.503, 0.9, 0.3),
        _point(0.6, 0.505, 0.9, 0.1),
        _point(0.7, 0.504, 0.9, 0.0),  # zero false positives is a value, not a missing one
        _point(0.8, 0.30, 0.5, 0.0),  # finds too few
        _point(0.9, 0.0, 0.0, 0.0),  # finds nothing
    ]
    chosen, met = choose(grid)
    assert met and chosen["threshold"] == 0.6  # band 0.5-0.7 (within 0.005 of 0.505): its middle


def test_no_point_meets_the_targets_is_flagged() -> None:
    grid = [_point(0.3, 0.54, 0.93, 0.7), _point(0.5, 0.52, 0.9, 0.6), _point(0.8, 0.01, 0.1, 0.0)]
    chosen, met = choose(grid)
    assert not met and chosen["threshold"] == 0.3  # best Dice among those that find >= 80 %
    chosen, met = choose([_point(0.3, 0.4, 0.6, 0.2), _point(0.5, 0.3, 0.5, 0.1)])
    assert not met and chosen["threshold"] == 0.3  # nothing finds 80 %: best Dice overall


def test_postprocess_minimum_area_and_seed() -> None:
    prob = np.zeros((32, 32), np.float32)
    prob[2:12, 2:12] = 0.9  # a 100-pixel component peaking at 0.9
    prob[20:30, 20:30] = 0.6  # a 100-pixel component peaking at 0.6
    prob[20:30, 22] = 0.72  # ... with a ridge at 0.72 (one column inside it)
    prob[0, 31] = 0.95  # one pixel
    base = _postprocess(prob, 0.5, 0)
    assert base.sum() == 201
    assert _postprocess(prob, 0.5, 2).sum() == 200  # the single pixel is under the area
    seeded = _postprocess(prob, 0.5, 2, seed=0.8)
    assert seeded.sum() == 100 and seeded[5, 5] == 1 and seeded[25, 25] == 0
    # the outline stays at the threshold: the whole 0.6 component is kept when its peak reaches the seed
    assert _postprocess(prob, 0.5, 2, seed=0.7)[20:30, 20:30].all()


def test_merge_replaces_rescored_rows_and_keeps_every_command() -> None:
    old = {"command": "first", "rechosen_with": "second", "rows": [{"run": "A", "v": 1}, {"run": "B", "v": 1}]}
    new = {"command": "third", "machine": {"cpu": "x"}, "rows": [{"run": "B", "v": 2}, {"run": "C", "v": 2}]}
    doc = merge(old, new)
    assert [(r["run"], r["v"]) for r in doc["rows"]] == [("A", 1), ("B", 2), ("C", 2)]
    assert doc["commands"] == ["first", "second", "third"] and doc["machine"] == {"cpu": "x"}
    again = merge(doc, {"command": "fourth", "rows": []})
    assert again["commands"] == ["first", "second", "third", "fourth"] and len(again["rows"]) == 3


def test_add_merges_a_scored_result_and_the_table_names_the_augmentation(tmp_path) -> None:
    """``--merge OLD --add NEW`` adds NEW's rows without re-scoring; the table shows each run's preset."""
    import subprocess

    point = {
        "threshold": 0.5,
        "dm_dice": {"value": 0.5, "low": 0.4, "high": 0.6, "n": 9},
        "dm_detection": {"value": 0.9, "low": 0.8, "high": 1.0, "n": 9},
        "normal_fp_per_image": {"value": 0.2, "low": 0.1, "high": 0.3, "n": 39},
    }

    def row(run: str, preset: str) -> dict:
        recipe = {"model": "unet-mobilenetv2", "loss": "bce-dice", "augment_preset": preset, "lr": 0.001}
        return {
            "run": run,
            "recipe": recipe,
            "chosen": point,
            "epochs_run": 10,
            "best_epoch": 8,
            "n_val_dm": 9,
            "n_val_normal": 39,
            "chosen_under_fp_limit": True,
            "wall_seconds": 600,
        }

    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps({"command": "score A", "rows": [row("A", "strong")]}))
    pasted = row("P", "strong-aspect")
    pasted["recipe"]["paste_lesions"] = 0.5
    new.write_text(json.dumps({"command": "score D", "rows": [row("D", "basic"), pasted]}))
    out, md = tmp_path / "out.json", tmp_path / "out.md"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "ablation_v2.py"
    args = [sys.executable, str(script), "--merge", str(old), "--add", str(new), "--out", str(out)]
    args += ["--markdown", str(md)]
    subprocess.run(args, check=True, capture_output=True)
    doc = json.loads(out.read_text())
    assert [r["run"] for r in doc["rows"]] == ["A", "D", "P"] and doc["commands"] == ["score A", "score D"]
    table = md.read_text().splitlines()
    assert "| augment |" in table[0]
    assert table[2].startswith("| A | unet-mobilenetv2 | scratch | bce-dice | strong |")
    assert table[3].startswith("| D | unet-mobilenetv2 | scratch | bce-dice | basic |")
    assert table[4].startswith("| P | unet-mobilenetv2 | scratch | bce-dice | strong-aspect + paste 0.5 |")
    # --add without --merge is refused with a usage error, nothing written
    bad = subprocess.run([sys.executable, str(script), "--add", str(new), "--out", str(tmp_path / "x.json")])
    assert bad.returncode == 2 and not (tmp_path / "x.json").exists()


def test_an_ensemble_row_scores_the_mean_of_its_members_probabilities(tmp_path, monkeypatch) -> None:
    """``RUN_A+RUN_B:last`` is one row scored on the members' mean probability map."""
    from types import SimpleNamespace

    import ablation_v2

    import training.models

    lesion = np.zeros((32, 32), np.float32)
    lesion[8:20, 8:20] = 1
    val = SimpleNamespace(
        images=np.zeros((2, 32, 32, 1), np.float32),
        masks=np.stack([lesion, np.zeros_like(lesion)])[..., None],
        ids=["P1_L_DM_CC", "mias_normal"],
        sources=["cdd-cesm", "mini-mias"],
        mask_kinds=["pixel", "none"],
    )
    # member a: 0.8 on the lesion, 0.2 elsewhere; member b: 0.2 everywhere -> mean 0.5 on the lesion
    level = {"a": 0.8, "b": 0.2}

    def fake_predict(model, images, tta):
        return np.where(lesion > 0, level[model], 0.2)[None, ..., None].repeat(len(images), 0)

    monkeypatch.setattr(ablation_v2, "_val_arrays", lambda config, cache: val)
    monkeypatch.setattr(ablation_v2, "tta_predict", fake_predict)
    monkeypatch.setattr(training.models, "load_trained", lambda path: Path(path).parent.name)
    config = {"data": ["x"], "split": "s.json", "preprocess": {"size": 32}, "size": 32, "model": "unet"}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    alone = ablation_v2.score_run(tmp_path / "a", tmp_path, {})
    (a, ca), *rest = ablation_v2.parse_spec(f"{tmp_path / 'a'}+{tmp_path / 'b'}:last")
    assert ca == "best" and rest == [(tmp_path / "b", "last")]
    both = ablation_v2.score_run(a, tmp_path, {}, checkpoint=ca, ensemble=tuple(rest))
    assert both["run"] == "ENS a+b:last" and both["ensemble"] == [f"{tmp_path / 'a'}:best", f"{tmp_path / 'b'}:last"]
    assert both["recipe"]["model"] == "unet + unet" and both["wall_seconds"] is None  # no state.json
    dice = {r["threshold"]: r["dm_dice"]["value"] for r in alone["grid"]}
    dice_ens = {r["threshold"]: r["dm_dice"]["value"] for r in both["grid"]}
    assert dice[0.5] == dice[0.7] == 1.0  # member a alone outlines the lesion up to 0.8
    assert dice_ens[0.5] == 1.0 and dice_ens[0.7] == 0.0  # the mean is 0.5 on the lesion
    # members validated on other preprocessing are refused, not averaged
    (tmp_path / "b" / "config.json").write_text(json.dumps({**config, "preprocess": {"size": 64}}))
    with pytest.raises(SystemExit, match="other data or preprocessing"):
        ablation_v2.score_run(a, tmp_path, {}, ensemble=((tmp_path / "b", "best"),))
    # a member refitted on train+val has no validation figure: refused before anything is scored
    (tmp_path / "b" / "config.json").write_text(json.dumps({**config, "fit_on": "train+val"}))
    with pytest.raises(ConfigError, match="trained on the 'val' split"):
        ablation_v2.score_run(a, tmp_path, {}, ensemble=((tmp_path / "b", "best"),))
    with pytest.raises(ConfigError, match="trained on the 'val' split"):
        ablation_v2.score_run(tmp_path / "b", tmp_path, {})


def test_the_script_refuses_a_refit_with_one_line_and_exit_2(tmp_path) -> None:
    """``ablation_v2.py REFIT`` (a run fitted on train+val): one error line, exit 2, nothing written."""
    run = tmp_path / "refit"
    run.mkdir()
    config = {"data": ["x"], "split": "s.json", "preprocess": {"size": 32}, "size": 32, "model": "unet"}
    (run / "config.json").write_text(json.dumps({**config, "fit_on": "train+val"}))
    (run / "best.keras").write_bytes(b"never loaded")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "ablation_v2.py"
    out = tmp_path / "rows.json"
    args = [sys.executable, str(script), str(run), "--cache", str(tmp_path), "--out", str(out)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "trained on the 'val' split" in lines[0] and not out.exists()


def test_zoom_tta_averages_with_a_pass_on_the_enlarged_image(monkeypatch) -> None:
    """``--tta zoom1.5``: the mean of the model-grid pass and a pass at 1.5x, brought back to the grid."""
    import ablation_v2

    import training.evaluate

    seen: list[tuple[int, ...]] = []

    def fake_predict(model, images, batch):  # the identity, doubled on the enlarged grid
        seen.append(images.shape)
        return images * (2.0 if images.shape[1] == 48 else 1.0)

    monkeypatch.setattr(training.evaluate, "predict", fake_predict)
    images = np.full((2, 32, 32, 1), 0.3, np.float32)
    out = ablation_v2.tta_predict(None, images, "zoom1.5")
    assert seen == [(2, 32, 32, 1), (2, 48, 48, 1)]
    assert out.shape == images.shape and np.allclose(out, 0.45)  # (0.3 + 0.6) / 2
    seen.clear()
    assert np.allclose(ablation_v2.tta_predict(None, images, "none"), 0.3) and seen == [(2, 32, 32, 1)]
    assert set(ablation_v2.TTA_MODES) == {"none", "vflip", "zoom1.5", "zoom2"}
