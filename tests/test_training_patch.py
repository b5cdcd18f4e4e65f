"""Patch training (``--patch``) and fine-tuning from a trained model (``--init-weights``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras")

from bcedge.cli import main
from training.data import HARD_VALUE, LESION_CENTRED, ArraySet, SegmentationData, crop_patch, mine_hard_negatives


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


def _normal_with_dense_spot(size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A lesion-free image: breast on the left half, a bright 8x8 spot (what a model took for a mass)
    at its top, and the spot's pixels marked as hard negatives."""
    image = np.zeros((size, size, 1), np.float32)
    image[:, : size // 2] = 0.5
    image[4:12, 4:12] = 0.9
    hard = np.zeros((size, size), bool)
    hard[4:12, 4:12] = True
    return image, hard


def test_crop_patch_centres_the_asked_share_on_hard_negatives() -> None:
    image, hard = _normal_with_dense_spot()
    mask = np.where(hard, HARD_VALUE, 0).astype(np.float32)[..., None]
    rng = np.random.default_rng(2)
    spot = [bool((crop_patch(image, mask, rng, 32, hard_share=1.0)[0] == np.float32(0.9)).any()) for _ in range(200)]
    assert all(spot)  # every patch not centred on a lesion is centred on the spot (jitter <= 8 px)
    rng = np.random.default_rng(2)
    plain = [bool((crop_patch(image, mask, rng, 32)[0] == np.float32(0.9)).any()) for _ in range(200)]
    assert sum(plain) < 60  # without the share, the spot is one place of the breast among many


def test_hard_negative_batches_hand_the_model_lesion_masks_only() -> None:
    lesion_image, lesion_mask = _image_with_lesion()
    normal_image, hard = _normal_with_dense_spot()
    data = ArraySet(
        np.stack([lesion_image, normal_image]),
        np.stack([lesion_mask, np.zeros_like(lesion_mask)]),
        ("lesion", "normal"),
        ("pixel", "none"),
        ("syn", "syn"),
    )
    maps = np.stack([np.zeros_like(hard), hard])
    batches = SegmentationData(data, 2, seed=5, shuffle=True, patch=32, hard=maps, hard_share=1.0)
    for i in range(len(batches)):
        images, masks = batches[i]
        assert set(np.unique(masks).tolist()) <= {0.0, 1.0}
    # The normal image's patch is always on its spot; its mask stays empty (hard pixels are no lesion).
    order = batches.order_at(0)
    images, masks = batches[0]
    k = int(np.flatnonzero(order[: len(images)] == 1)[0])
    assert (images[k] == np.float32(0.9)).any() and masks[k].sum() == 0
    with pytest.raises(ValueError, match="do not match"):
        SegmentationData(data, 2, patch=32, hard=maps[:, :64], hard_share=0.5)


def test_mine_hard_negatives_keeps_false_positives_inside_the_breast() -> None:
    image, mask = _image_with_lesion()
    prob = np.zeros((1, 128, 128, 1), np.float32)
    prob[0, 96:112, 6:22] = 0.8  # covers the lesion (true positive) and its surround (false positive)
    prob[0, 50:60, 100:110] = 0.9  # outside the breast (image 0 there): not a hard negative

    class Fixed:
        def predict(self, batch: np.ndarray, verbose: int = 0) -> np.ndarray:
            return np.repeat(prob, len(batch), axis=0)

    data = ArraySet(image[None], mask[None], ("a",), ("pixel",), ("syn",))
    hard = mine_hard_negatives(Fixed(), data)
    expected = (prob[0, ..., 0] >= 0.5) & (mask[..., 0] == 0) & (image[..., 0] > 0.05)
    assert hard.shape == (1, 128, 128) and np.array_equal(hard[0], expected)
    assert hard[0, 96:112, 6:22].sum() == 16 * 16 - 64 and not hard[0, 50:60, 100:110].any()


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
    # --paste-lesions is recorded (the phantom masses are pasted onto the lesion-free phantoms; lr 0 keeps the weights).
    assert main([*common, "--out", str(tuned), "--epochs", "1", "--lr", "0", *init, "--paste-lesions", "0.25"]) == 0
    config = json.loads((tuned / "config.json").read_text())
    assert config["init_weights"] == str(run / "best.keras") and len(config["init_weights_sha256"]) == 64
    assert config["paste_lesions"] == 0.25
    # lr 0: the fine-tuned weights are the initial ones (batch-norm statistics aside).
    a, b = best.get_weights(), load_trained(tuned / "last.keras").get_weights()
    conv = [i for i, w in enumerate(a) if w.ndim == 4]
    assert conv and all(np.array_equal(a[i], b[i]) for i in conv)

    # Hard negatives: the start model's false positives mined once, kept in the run folder for a resume.
    hard_run = tmp_path / "hard"
    hard_args = [*common, "--patch", "32", *init, "--hard-negatives", "0.5"]
    assert main([*hard_args, "--out", str(hard_run), "--epochs", "1"]) == 0, capsys.readouterr().err
    assert json.loads((hard_run / "config.json").read_text())["hard_negatives"] == 0.5
    with np.load(hard_run / "hard_negatives.npz") as mined:
        assert tuple(mined["shape"][1:]) == (64, 64) and len(mined["ids"]) == mined["shape"][0]
    assert main([*hard_args, "--out", str(hard_run), "--epochs", "2"]) == 0, capsys.readouterr().err
    assert json.loads((hard_run / "state.json").read_text())["epoch"] == 2
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "h"), "--hard-negatives", "0.5"]) == 2
    assert "needs --init-weights" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "f"), "--freeze-encoder"]) == 2  # common trains a plain UNet
    assert "no encoder" in capsys.readouterr().err and not (tmp_path / "f").exists()

    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "x"), "--patch", "48"]) == 2
    assert "multiple of 32" in capsys.readouterr().err
    narrower = [*common[:-4], "--base-filters", "4", "--cache", str(tmp_path / "cache")]
    assert main([*narrower, "--out", str(tmp_path / "y"), *init]) == 2
    assert "other layers" in capsys.readouterr().err


def test_hard_negative_maps_are_checked_before_they_are_unpacked(tmp_path: Path) -> None:
    """The run folder's maps load back; a recorded shape that is not the training masks', other ids or a
    file that is not an npz are one ConfigError, never an allocation of the declared size."""
    from bcedge.errors import ConfigError
    from training.train import HARD_NEGATIVES, _load_hard_negatives

    data = ArraySet(np.zeros((2, 16, 16, 1), np.float32), np.zeros((2, 16, 16, 1), np.uint8), ("a", "b"),
                    ("pixel",) * 2, ("syn",) * 2)  # fmt: skip
    hard = np.zeros((2, 16, 16), bool)
    hard[0, 3, 4] = True
    path = tmp_path / HARD_NEGATIVES

    def save(shape: tuple[int, ...], ids: tuple[str, ...] = ("a", "b")) -> None:
        np.savez_compressed(path, hard=np.packbits(hard, axis=-1), shape=np.asarray(shape), ids=np.asarray(ids))

    save(hard.shape)
    assert np.array_equal(_load_hard_negatives(tmp_path, data), hard)
    for shape, ids in (((2, 10**6, 10**6), ("a", "b")), (hard.shape, ("a", "c"))):
        save(shape, ids)
        with pytest.raises(ConfigError, match="other training images"):
            _load_hard_negatives(tmp_path, data)
    path.write_bytes(b"not an npz")
    with pytest.raises(ConfigError, match="unreadable"):
        _load_hard_negatives(tmp_path, data)
