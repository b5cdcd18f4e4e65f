"""Training data pipeline and the `bcedge train` / `bcedge evaluate` commands on phantoms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras")

from bcedge.cli import main
from bcedge.errors import ConfigError
from training.augment import AugmentConfig, augment
from training.data import ArraySet, SegmentationData, concat_sets, epoch_order, load_arrays, save_arrays
from training.run import fitted_splits, refuse_scoring_on_fitted


def _set(n: int = 10, size: int = 32) -> ArraySet:
    rng = np.random.default_rng(1)
    images = rng.random((n, size, size, 1)).astype(np.float32)
    masks = np.zeros((n, size, size, 1), np.uint8)
    masks[: n // 3, 8:16, 8:16] = 1
    return ArraySet(images, masks, tuple(f"s{i}" for i in range(n)), ("pixel",) * n, ("syn",) * n)


def test_epoch_order_oversamples_positives_deterministically() -> None:
    positive = np.array([True, False, False, False, False, False])
    a = epoch_order(6, positive, np.random.default_rng([0, 3]), 0.5)
    b = epoch_order(6, positive, np.random.default_rng([0, 3]), 0.5)
    assert np.array_equal(a, b)
    assert (a == 0).sum() == 5  # 1 positive repeated to match 5 negatives
    assert sorted(set(a.tolist())) == list(range(6))  # nothing dropped
    natural = epoch_order(6, positive, np.random.default_rng(0), None)
    assert sorted(natural.tolist()) == list(range(6))


def test_batches_are_a_function_of_seed_epoch_and_index() -> None:
    data = _set()
    one = SegmentationData(data, 4, seed=5, augment_config=AugmentConfig(), positive_fraction=0.5, shuffle=True)
    one.on_epoch_end()  # now at epoch 1
    resumed = SegmentationData(
        data, 4, seed=5, augment_config=AugmentConfig(), positive_fraction=0.5, shuffle=True, epoch=1
    )
    for i in range(len(one)):
        xa, ya = one[i]
        xb, yb = resumed[i]
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    assert xa.dtype == np.float32 and ya.dtype == np.float32


def test_augment_keeps_shapes_range_and_mask_values() -> None:
    data = _set(1, 64)
    rng = np.random.default_rng(0)
    for _ in range(20):
        img, msk = augment(data.images[0], data.masks[0], rng, AugmentConfig(probability=1.0))
        assert img.shape == (64, 64, 1) and msk.shape == (64, 64, 1)
        assert img.min() >= 0.0 and img.max() <= 1.0
        assert set(np.unique(msk)) <= {0, 1}
    image, mask = data.images[0], data.masks[0]
    same_img, same_msk = augment(image, mask, rng, AugmentConfig.off())
    assert same_img is image and same_msk is mask


def test_arrays_round_trip(tmp_path: Path) -> None:
    data = _set()
    path = tmp_path / "with space" / "arrays.npz"
    save_arrays(path, {"train": data}, {"preprocess_hash": "abc"})
    sets, meta = load_arrays(path)
    assert meta == {"preprocess_hash": "abc"}
    got = sets["train"]
    assert got.ids == data.ids and got.mask_kinds == data.mask_kinds
    assert np.array_equal(got.masks, data.masks)
    assert np.abs(got.images - data.images).max() <= 0.5 / 65535 + 1e-7


def test_concat_sets_keeps_order_and_refuses_mixed_sizes() -> None:
    a, b = _set(4), _set(3)
    both = concat_sets([a, b])
    assert len(both) == 7 and both.ids == a.ids + b.ids
    assert np.array_equal(both.images[4:], b.images) and np.array_equal(both.masks[:4], a.masks)
    with pytest.raises(ValueError, match="different image sizes"):
        concat_sets([a, _set(2, size=16)])
    with pytest.raises(ValueError):
        concat_sets([])


def test_fitted_splits_of_old_and_refit_runs() -> None:
    assert fitted_splits({}) == ("train",)  # runs made before --fit-on existed
    assert fitted_splits({"fit_on": "train+val"}) == ("train", "val")
    refuse_scoring_on_fitted({}, "val", "run")  # an ordinary run: val is held out
    refuse_scoring_on_fitted({"fit_on": "train+val"}, "train", "run")  # a training figure stays allowed
    with pytest.raises(ConfigError, match="trained on the 'val' split"):
        refuse_scoring_on_fitted({"fit_on": "train+val"}, "val", "run")


@pytest.mark.slow
def test_train_resume_and_evaluate_on_phantoms(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's smoke run: 1 epoch of `bcedge train` on phantoms, then resume and evaluate."""
    root = tmp_path / "with space" / "phantoms"
    assert main(["phantom", str(root), "--count", "12", "--seed", "3", "--scale", "0.1"]) == 0
    split = tmp_path / "split.json"
    assert main(["data", "split", "phantom", "--root", str(root), "--out", str(split)]) == 0
    run = tmp_path / "run"
    common = [
        "train",
        "--model",
        "unet",
        "--data",
        "phantom",
        "--root",
        str(root),
        "--split",
        str(split),
        "--out",
        str(run),
        "--size",
        "64",
        "--batch",
        "4",
        "--base-filters",
        "8",
        "--cache",
        str(tmp_path / "cache"),
    ]
    assert main([*common, "--epochs", "1"]) == 0
    state = json.loads((run / "state.json").read_text())
    assert state["epoch"] == 1
    for name in ("config.json", "last.keras", "best.keras", "history.csv", "history.json"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["preprocess"]["size"] == 64 and len(config["preprocess_hash"]) == 16

    assert main([*common, "--epochs", "2"]) == 0  # resumes at epoch 2
    state = json.loads((run / "state.json").read_text())
    assert state["epoch"] == 2 and [h["epoch"] for h in state["history"]] == [1, 2]

    capsys.readouterr()
    assert main([*common, "--epochs", "2", "--lr", "0.5"]) == 2  # a different run in the same folder
    assert "holds a different run" in capsys.readouterr().err

    rc = main(["evaluate", str(run), "--json", "-", "--subset", "val", "--cache", str(tmp_path / "cache")])
    assert rc == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)
    assert report["subset"] == "val" and report["grid"] == "model"
    assert report["groups"] and len(report["images"]) == sum(g["n_images"] for g in report["groups"])
    for group in report["groups"]:
        if group["kind"] != "normal":
            assert 0.0 <= group["dice"]["value"] <= 1.0
    assert main(["evaluate", str(run), "--subset", "val", "--cache", str(tmp_path / "cache")]) == 0
    assert "MODEL grid" in capsys.readouterr().out


def test_train_refuses_unknown_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "phantoms"
    assert main(["phantom", str(root), "--count", "6", "--seed", "1", "--scale", "0.06"]) == 0
    split = tmp_path / "split.json"
    assert main(["data", "split", "phantom", "--root", str(root), "--out", str(split)]) == 0
    capsys.readouterr()
    rc = main(
        [
            "train",
            "--model",
            "resnet",
            "--data",
            "phantom",
            "--root",
            str(root),
            "--split",
            str(split),
            "--out",
            str(tmp_path / "run"),
            "--size",
            "64",
            "--epochs",
            "1",
            "--cache",
            str(tmp_path / "c"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "unknown model" in err


@pytest.mark.slow
def test_refit_on_train_and_val_is_never_scored_on_val(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--fit-on train+val`` trains on both splits, records it, and evaluate refuses val (exit 2)."""
    root = tmp_path / "phantoms"
    assert main(["phantom", str(root), "--count", "24", "--seed", "3", "--scale", "0.1"]) == 0
    split = tmp_path / "split.json"
    assert main(["data", "split", "phantom", "--root", str(root), "--out", str(split)]) == 0
    counts = json.loads(split.read_text())["counts"]
    assert counts["test"]["images"] > 0
    run, cache = tmp_path / "refit", str(tmp_path / "cache")
    args = ["train", "--model", "unet", "--data", "phantom", "--root", str(root), "--split", str(split)]
    args += ["--out", str(run), "--size", "64", "--batch", "4", "--base-filters", "8", "--cache", cache]
    capsys.readouterr()
    assert main([*args, "--epochs", "1", "--fit-on", "train+val"]) == 0
    out = capsys.readouterr().out
    n_fit = counts["train"]["images"] + counts["val"]["images"]
    assert f"fit on train+val: {n_fit} images" in out
    assert json.loads((run / "config.json").read_text())["fit_on"] == "train+val"
    assert main(["evaluate", str(run), "--subset", "val", "--cache", cache]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "trained on the 'val' split" in err[0]
    assert main(["evaluate", str(run), "--subset", "test", "--cache", cache, "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["subset"] == "test"
    assert main(["evaluate", str(run), "--subset", "train", "--cache", cache, "--json", "-"]) == 0  # a training figure
    assert json.loads(capsys.readouterr().out)["subset"] == "train"
    assert main([*args, "--epochs", "1", "--fit-on", "everything"]) == 2
    assert "--fit-on 'everything'" in capsys.readouterr().err
