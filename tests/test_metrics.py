"""The NumPy reference metrics and their documented conventions."""

from __future__ import annotations

import numpy as np
import pytest

from bcedge import metrics


def _disc(shape: tuple[int, int], center: tuple[int, int], radius: int) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2).astype(np.uint8)


def test_known_overlap() -> None:
    target = np.zeros((10, 10), np.uint8)
    target[2:6, 2:6] = 1  # 16 px
    pred = np.zeros((10, 10), np.float32)
    pred[4:8, 2:6] = 0.9  # 16 px, 8 overlap
    c = metrics.counts(pred, target)
    assert (c.tp, c.fp, c.fn) == (8, 8, 8)
    s = metrics.scores(c)
    assert s["dice"] == pytest.approx(0.5)
    assert s["iou"] == pytest.approx(8 / 24)
    assert s["precision"] == pytest.approx(0.5)
    assert s["recall"] == pytest.approx(0.5)


def test_threshold_is_inclusive() -> None:
    target = np.ones((2, 2), np.uint8)
    assert metrics.dice(np.full((2, 2), 0.5, np.float32), target) == 1.0
    assert metrics.dice(np.full((2, 2), 0.4999, np.float32), target) == 0.0


@pytest.mark.parametrize(
    ("pred_any", "target_any", "expected"),
    [
        (False, False, {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0}),
        (True, False, {"dice": 0.0, "iou": 0.0, "precision": 0.0, "recall": 1.0}),
        (False, True, {"dice": 0.0, "iou": 0.0, "precision": 1.0, "recall": 0.0}),
    ],
)
def test_empty_conventions(pred_any: bool, target_any: bool, expected: dict[str, float]) -> None:
    pred = np.zeros((8, 8), np.uint8)
    target = np.zeros((8, 8), np.uint8)
    pred[1, 1] = pred_any
    target[5, 5] = target_any
    assert metrics.scores(metrics.counts(pred, target)) == expected


def test_mean_and_global_differ_as_defined() -> None:
    big = _disc((64, 64), (32, 32), 20)
    small = _disc((64, 64), (10, 10), 3)
    preds = [big, np.zeros_like(small)]  # big lesion found, small one missed
    result = metrics.evaluate(preds, [big, small])
    assert result["n_images"] == 2
    assert result["mean"]["dice"] == pytest.approx(0.5)
    pooled = big.sum() / (big.sum() + small.sum())
    assert result["global"]["recall"] == pytest.approx(pooled)
    assert result["global"]["dice"] == pytest.approx(2 * big.sum() / (2 * big.sum() + small.sum()))


def test_accumulator_batches_equal_single_images() -> None:
    rng = np.random.default_rng(0)
    probs = rng.random((5, 16, 16, 1)).astype(np.float32)
    targets = (rng.random((5, 16, 16, 1)) > 0.7).astype(np.uint8)
    batched = metrics.MetricAccumulator()
    batched.add(probs, targets)
    single = metrics.evaluate(list(probs), list(targets))
    assert batched.result() == single
    assert batched.n_images == 5


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="pixels"):
        metrics.counts(np.zeros((4, 4)), np.zeros((5, 5)))
