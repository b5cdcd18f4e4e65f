"""Calibration and gate images come from the one preprocessing, drawn deterministically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras")

from bcedge.cli import main
from bcedge.errors import ConfigError
from bcedge.preprocess import PreprocessConfig, preprocess
from export.calibration import calibration_images, choose, split_sets
from export.tflite import representative_dataset
from training.run import RunInfo, load_run

SIZE = 64


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory: pytest.TempPathFactory) -> RunInfo:
    """A run description (as ``bcedge train`` writes it) over a phantom split; no model needed here."""
    base = tmp_path_factory.mktemp("calib") / "with space"
    root = base / "phantoms"
    assert main(["phantom", str(root), "--count", "10", "--seed", "5", "--scale", "0.08"]) == 0
    split = base / "split.json"
    assert main(["data", "split", "phantom", "--root", str(root), "--out", str(split)]) == 0
    config = PreprocessConfig(size=SIZE)
    run_config = {
        "model": "unet",
        "data": ["phantom"],
        "root": str(root),
        "split": str(split),
        "preprocess": config.to_dict(),
        "preprocess_hash": config.hash(),
    }
    return RunInfo(base / "run", base / "run" / "best.keras", run_config)


def _direct(samples: dict, ids) -> np.ndarray:
    """The runtime path: read each scan and preprocess it with the run's config."""
    config = PreprocessConfig(size=SIZE)
    return np.stack([preprocess(samples[i].load_image(), config)[0][0] for i in ids])


def test_calibration_images_are_preprocessed_train_images(phantom_run: RunInfo, tmp_path: Path) -> None:
    from bcedge.datasets import open_dataset

    sets, meta = split_sets(phantom_run, tmp_path / "cache")
    assert meta["preprocess_hash"] == phantom_run.config["preprocess_hash"]
    train = sets["train"]
    images, info = calibration_images(phantom_run, 3, tmp_path / "cache", train_images=train.images)
    assert info == {"source": "train split", "n": 3, "seed": 0}
    chosen = choose(len(train), 3)
    assert images.shape == (3, SIZE, SIZE, 1) and images.dtype == np.float32
    assert np.array_equal(images, train.images[chosen])
    # ... which are exactly what the runtime computes from the scans
    samples = {s.id: s for s in open_dataset("phantom", phantom_run.config["root"]).samples()}
    expected = _direct(samples, [train.ids[i] for i in chosen])
    assert np.array_equal(images, expected)
    # and what the TFLite converter is fed, one image per step
    fed = np.concatenate([step[0] for step in representative_dataset(images)()])
    assert np.array_equal(fed, expected)


def test_calibration_from_another_dataset_uses_the_runs_preprocessing(phantom_run: RunInfo, tmp_path: Path) -> None:
    from bcedge.datasets import open_dataset

    other = tmp_path / "other phantoms"
    assert main(["phantom", str(other), "--count", "5", "--seed", "9", "--scale", "0.08"]) == 0
    images, info = calibration_images(phantom_run, 3, tmp_path / "cache", dataset="phantom", root=other)
    assert info["source"] == "dataset phantom" and info["n"] == 3
    samples = list(open_dataset("phantom", other).samples())
    picked = [samples[i] for i in choose(len(samples), 3)]
    assert np.array_equal(images, _direct({s.id: s for s in picked}, [s.id for s in picked]))
    # the dataset's full cache index is left alone: the partial draw has its own
    assert list((tmp_path / "cache").glob("*/index-calib-phantom.json"))
    assert not list((tmp_path / "cache").glob("*/index-phantom.json"))


def test_choose_is_deterministic_and_without_repeats() -> None:
    a, b = choose(50, 10), choose(50, 10)
    assert np.array_equal(a, b) and len(set(a.tolist())) == 10 and a.max() < 50
    assert not np.array_equal(choose(50, 10, seed=1), a)
    assert np.array_equal(choose(4, 200), np.arange(4))  # fewer images than asked: all of them
    with pytest.raises(ConfigError, match="n-calib"):
        choose(10, 0)


def test_calibration_needs_images(phantom_run: RunInfo, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no train images"):
        calibration_images(phantom_run, 5, tmp_path, train_images=np.zeros((0, SIZE, SIZE, 1), np.float32))


def test_load_run_errors_name_what_is_missing(tmp_path: Path) -> None:
    run = tmp_path / "with space" / "run"
    with pytest.raises(ConfigError, match="does not exist"):
        load_run(run)
    run.mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"no best\.keras"):
        load_run(run)
    (run / "best.keras").write_bytes(b"not really a model")
    with pytest.raises(ConfigError, match=r"no config\.json"):
        load_run(run)
    (run / "config.json").write_text("{broken")
    with pytest.raises(ConfigError, match="unreadable"):
        load_run(run)
    (run / "config.json").write_text(json.dumps({"model": "unet"}))
    info = load_run(run)
    assert info.state == {} and info.model_path == run / "best.keras"
    with pytest.raises(ConfigError, match="no 'preprocess' config"):
        info.preprocess_config()
    with pytest.raises(ConfigError, match="names no data/root/split"):
        split_sets(info, tmp_path / "cache")


def test_split_sets_from_an_arrays_file(phantom_run: RunInfo, tmp_path: Path) -> None:
    """A run trained from exported arrays (no source data here) is gated and calibrated on those arrays."""
    from training.data import save_arrays

    sets, meta = split_sets(phantom_run, tmp_path / "cache")
    path = tmp_path / "with space" / "arrays.npz"
    save_arrays(path, sets, meta)
    no_data = RunInfo(phantom_run.run_dir, phantom_run.model_path, {**phantom_run.config, "root": ""})
    got, got_meta = split_sets(no_data, tmp_path / "unused cache", arrays=path)
    assert got_meta["arrays"] == str(path) and got_meta["preprocess_hash"] == meta["preprocess_hash"]
    assert got["val"].ids == sets["val"].ids
    # stored as 16-bit: the same images to within half a step
    assert np.abs(got["train"].images - sets["train"].images).max() <= 0.5 / 65535 + 1e-7
    assert not (tmp_path / "unused cache").exists()
    with pytest.raises(ConfigError, match="names no data/root/split"):
        split_sets(no_data, tmp_path / "cache")  # a root of "" is no root
    other = RunInfo(
        phantom_run.run_dir,
        phantom_run.model_path,
        {**phantom_run.config, "preprocess": PreprocessConfig(size=32).to_dict()},
    )
    with pytest.raises(ConfigError, match="was preprocessed with config"):
        split_sets(other, tmp_path / "cache", arrays=path)
    with pytest.raises(ConfigError, match="does not exist"):
        split_sets(phantom_run, tmp_path / "cache", arrays=tmp_path / "missing.npz")
