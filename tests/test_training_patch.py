"""Patch training (``--patch``) and fine-tuning from a trained model (``--init-weights``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras")

from bcedge.cli import main
from training.data import LESION_CENTRED, ArraySet, SegmentationData, crop_patch


def _image_with_lesion(size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    image = np.zeros((size, size, 1), np.float32)
    image[:, : size // 2] = 0.5  # breast on the left half, background 0 on the right
    mask = np.zeros((size, size, 1), np.uint8)
    mask[100:108, 10:18] = 1  # a small lesion near the lower-left corner
    return image, mask


def test_crop_patch_shapes_clamping_and_lesion_share() -> None:
    image, mask = _image_with_lesion()
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(400):
        img, msk = crop_patch(image, mask, rng, 64)
        assert img.shape == (64, 64, 1) and msk.shape == (64, 64, 1)
        hits += int(msk.sum() == mask.sum())  # the whole lesion is inside the window
    # Lesion-centred draws (70 %) always hold the 8x8 lesion (jitter <= a quarter patch);
    # breast-centred ones hold it only sometimes.
    assert LESION_CENTRED * 400 * 0.85 <= hits < 400


def test_crop_patch_without_lesion_stays_on_the_breast() -> None:
    image, _ = _image_with_lesion()
    empty = np.zeros_like(image, np.uint8)
    rng = np.random.default_rng(1)
    for _ in range(100):
        img, _ = crop_patch(image, empty, rng, 32)
        assert (img > 0).mean() > 0.2  # centred on a breast pixel, moved at most 8 px


def test_crop_patch_is_identity_at_full_size() -> None:
    image, mask = _image_with_lesion(64)
    img, msk = crop_patch(image, mask, np.random.default_rng(0), 64)
    assert img is image and msk is mask


def test_patch_batches_are_deterministic() -> None:
    images = np.stack([_image_with_lesion()[0]] * 4)
    masks = np.stack([_image_with_lesion()[1]] * 2 + [np.zeros((128, 128, 1), np.uint8)] * 2)
    data = ArraySet(images, masks, ("a", "b", "c", "d"), ("pixel",) * 4, ("syn",) * 4)
    a = SegmentationData(data, 4, seed=3, shuffle=True, patch=64)
    b = SegmentationData(data, 4, seed=3, shuffle=True, patch=64)
    xa, ya = a[0]
    xb, yb = b[0]
    assert xa.shape == (4, 64, 64, 1) and ya.shape == (4, 64, 64, 1)
    assert np.array_equal(xa, xb) and np.array_equal(ya, yb)


def test_patch_training_saves_a_fixed_size_model_and_fine_tunes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Patches of 32 from 64 px images, validated on whole images; then fine-tuning from it."""
    from training.models import load_trained

    root = tmp_path / "phantoms"
    assert main(["phantom", str(root), "--count", "10", "--seed", "4", "--scale", "0.1"]) == 0
    split = tmp_path / "split.json"
    assert main(["data", "split", "phantom", "--root", str(root), "--out", str(split)]) == 0
    common = ["train", "--model", "unet", "--data", "phantom", "--root", str(root), "--split", str(split)]
    common += ["--size", "64", "--batch", "4", "--base-filters", "8", "--cache", str(tmp_path / "cache")]
    run = tmp_path / "patch"
    assert main([*common, "--out", str(run), "--epochs", "1", "--patch", "32"]) == 0, capsys.readouterr().err
    config = json.loads((run / "config.json").read_text())
    assert config["patch"] == 32
    best = load_trained(run / "best.keras")
    assert tuple(best.input_shape) == (None, 64, 64, 1)  # export and the bundle need a fixed side
    assert tuple(load_trained(run / "last.keras").input_shape) == (None, None, None, 1)  # resumable

    # The final epoch as the selected model (training.promote): fixed size, choice recorded.
    from training.promote import promote_last

    promoted = tmp_path / "promoted"
    state = promote_last(run, promoted, "test")
    assert state["selected_checkpoint"]["file"] == "last.keras" and state["best_epoch"] == 1
    assert tuple(load_trained(promoted / "best.keras").input_shape) == (None, 64, 64, 1)
    with pytest.raises(Exception, match="exists"):
        promote_last(run, promoted, "again")

    tuned = tmp_path / "tuned"
    init = ["--init-weights", str(run / "best.keras")]
    assert main([*common, "--out", str(tuned), "--epochs", "1", "--lr", "0", *init]) == 0
    config = json.loads((tuned / "config.json").read_text())
    assert config["init_weights"] == str(run / "best.keras") and len(config["init_weights_sha256"]) == 64
    # lr 0: the fine-tuned weights are the initial ones (batch-norm statistics aside).
    a, b = best.get_weights(), load_trained(tuned / "last.keras").get_weights()
    conv = [i for i, w in enumerate(a) if w.ndim == 4]
    assert conv and all(np.array_equal(a[i], b[i]) for i in conv)

    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "x"), "--patch", "48"]) == 2
    assert "multiple of 32" in capsys.readouterr().err
    narrower = [*common[:-4], "--base-filters", "4", "--cache", str(tmp_path / "cache")]
    assert main([*narrower, "--out", str(tmp_path / "y"), *init]) == 2
    assert "other layers" in capsys.readouterr().err
