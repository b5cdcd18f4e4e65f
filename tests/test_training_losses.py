"""Keras losses and metrics agree with the NumPy reference in bcedge.metrics."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from bcedge import metrics as ref  # noqa: E402
from training import losses  # noqa: E402


def _batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = np.zeros((6, 32, 32, 1), np.float32)
    y_pred = rng.random((6, 32, 32, 1)).astype(np.float32) * 0.4  # mostly below threshold
    y_true[0, 5:15, 5:15] = 1
    y_pred[0, 8:18, 8:18] = 0.9  # partial overlap
    y_true[1, 10:20, 10:20] = 1  # missed lesion
    y_pred[2, 3:6, 3:6] = 0.7  # false positive on a normal image
    # image 3: empty/empty -> scores 1
    y_true[4, 0:32, 0:16] = 1
    y_pred[4, 0:32, 0:16] = 0.5  # exact hit at the inclusive threshold
    y_true[5, 20:30, 20:30] = 1
    y_pred[5, 22:32, 18:28] = 0.8
    return y_true, y_pred


@pytest.mark.parametrize("metric", ref.METRICS)
@pytest.mark.parametrize("mode", ["mean", "global"])
def test_keras_metric_matches_numpy(metric: str, mode: str) -> None:
    y_true, y_pred = _batch()
    expected = ref.evaluate(list(y_pred), list(y_true))[mode][metric]
    m = losses.SegmentationMetric(metric, mode)
    # Two updates (as over two batches) must accumulate like one.
    m.update_state(y_true[:3], y_pred[:3])
    m.update_state(y_true[3:], y_pred[3:])
    assert float(m.result()) == pytest.approx(expected, abs=1e-6)


def test_losses_shapes_and_order() -> None:
    y_true, _ = _batch()
    perfect = y_true.copy()
    for name in losses.LOSSES:
        fn = losses.get_loss(name)
        good = np.asarray(fn(y_true, np.clip(perfect, 0.001, 0.999)))
        bad = np.asarray(fn(y_true, 1.0 - np.clip(perfect, 0.001, 0.999)))
        assert good.shape == (6,)
        assert np.all(good < bad), name
    # Dice loss of an exact prediction is ~0, of the complement ~1 (where a lesion exists).
    d = np.asarray(losses.dice_loss(y_true, perfect))
    assert np.allclose(d, 0.0, atol=1e-6)


def test_soft_dice_against_numpy() -> None:
    y_true, y_pred = _batch(1)
    got = np.asarray(losses.soft_dice(y_true, y_pred))
    inter = (y_true * y_pred).sum(axis=(1, 2, 3))
    want = (2 * inter + 1) / (y_true.sum(axis=(1, 2, 3)) + y_pred.sum(axis=(1, 2, 3)) + 1)
    assert np.allclose(got, want, rtol=1e-5)
    # The evaluation's "loss" column (bcedge.metrics.soft_dice_loss) is the same quantity per image.
    keras_loss = np.asarray(losses.dice_loss(y_true, y_pred))
    numpy_loss = [ref.soft_dice_loss(p, t) for p, t in zip(y_pred, y_true, strict=True)]
    assert np.allclose(keras_loss, numpy_loss, rtol=1e-5)


def test_unknown_loss_is_config_error() -> None:
    from bcedge.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown loss"):
        losses.get_loss("l2")


def test_lesion_dice_weighs_each_lesion_image_alike() -> None:
    """A small lesion drawn as a blob 9x its area costs ~0.8 per image, however large the
    batch's other lesion; the batch Dice dilutes it; a lesion-free image is left to BCE."""
    y_true = np.zeros((3, 64, 64, 1), np.float32)
    y_pred = np.zeros_like(y_true)
    y_true[0, 4:60, 4:60] = 1  # large lesion, predicted exactly
    y_pred[0, 4:60, 4:60] = 1
    y_true[1, 30:34, 30:34] = 1  # small lesion (16 px) inside a 12x12 blob (144 px)
    y_pred[1, 26:38, 26:38] = 1
    y_pred[2, 0:8, 0:8] = 1  # no lesion, a false blob
    per_image = np.asarray(losses.lesion_dice_loss(y_true, y_pred))
    assert per_image[0] == pytest.approx(0.0, abs=1e-3)
    assert per_image[1] == pytest.approx(1 - (2 * 16 + 1) / (16 + 144 + 1), abs=1e-5)  # 0.795
    assert per_image[2] == 0.0  # BCE's job: per-image Dice would reward empty masks
    pooled = float(np.asarray(losses.batch_dice_loss(y_true, y_pred))[0])
    assert pooled < 0.05 < per_image[1]
    clipped = np.clip(y_pred, 0.001, 0.999)
    combined = np.asarray(losses.get_loss("bce-lesion-dice")(y_true, clipped))
    parts = np.asarray(losses.bce(y_true, clipped)) + np.asarray(losses.lesion_dice_loss(y_true, clipped))
    assert np.allclose(combined, parts, atol=1e-6)
