"""Losses and metrics for training, in ``keras.ops`` only (TensorFlow, JAX, PyTorch backends).

The metrics follow :mod:`bcedge.metrics` exactly (threshold ``p >= 0.5``, an
image with no lesion and no prediction scores 1, per-image mean or pooled
"global" counts); ``tests/test_training_losses.py`` checks the agreement.

Losses work on (N, H, W, 1) float tensors: ``y_true`` in {0, 1}, ``y_pred``
sigmoid probabilities in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import ops

from bcedge.errors import ConfigError
from bcedge.metrics import METRICS

_EPS = 1e-7
_AXES = (1, 2, 3)


def soft_dice(y_true, y_pred, smooth: float = 1.0):
    """Per-image soft Dice, shape (N,); ``smooth`` makes an empty/empty pair score ~1."""
    y_true = ops.cast(y_true, y_pred.dtype)
    inter = ops.sum(y_true * y_pred, axis=_AXES)
    total = ops.sum(y_true, axis=_AXES) + ops.sum(y_pred, axis=_AXES)
    return (2.0 * inter + smooth) / (total + smooth)


@keras.saving.register_keras_serializable(package="bcedge")
def dice_loss(y_true, y_pred):
    """1 - per-image soft Dice (the quantity the study reports as "loss"), shape (N,)."""
    return 1.0 - soft_dice(y_true, y_pred)


@keras.saving.register_keras_serializable(package="bcedge")
def batch_dice_loss(y_true, y_pred, smooth: float = 1.0):
    """1 - soft Dice pooled over the whole batch, repeated per image, shape (N,).

    Training uses this rather than the per-image form: on an image with no lesion
    the per-image soft Dice is 1 / (sum(p) + 1), which rewards predicting nothing
    anywhere and drove models to the empty mask on our mostly-normal data.
    """
    y_true = ops.cast(y_true, y_pred.dtype)
    inter = ops.sum(y_true * y_pred)
    total = ops.sum(y_true) + ops.sum(y_pred)
    loss = 1.0 - (2.0 * inter + smooth) / (total + smooth)
    return loss * ops.ones_like(ops.sum(y_pred, axis=_AXES))


@keras.saving.register_keras_serializable(package="bcedge")
def lesion_dice_loss(y_true, y_pred, smooth: float = 1.0):
    """1 - per-image soft Dice on the images that hold a lesion, 0 on the others, shape (N,).

    Why not the batch Dice: pooled over a batch, a large lesion's pixels outweigh a
    small one's, and the shipped model (batch Dice) learnt one blob size for every
    lesion: on the combined-v2 training DM views its predicted area hardly follows the
    lesion's (log-log slope 0.22; 8-19x too large on lesions of ~1,000 pixels, about half
    on ~45,000). Per image, every lesion's outline counts the same. Images without a lesion
    are left to the BCE term: their per-image Dice, 1 / (sum(p) + 1), rewards an empty
    mask everywhere (see :func:`batch_dice_loss`).

    Tried in session 12 (run L512, README "One blob size for every lesion"): outlines then
    followed lesion size on the training views (slope 0.44) but validation Dice fell 0.04
    against the same stage with ``bce-dice``; not in the shipped recipe.
    """
    y_true = ops.cast(y_true, y_pred.dtype)
    has_lesion = ops.cast(ops.sum(y_true, axis=_AXES) > 0, y_pred.dtype)
    return has_lesion * (1.0 - soft_dice(y_true, y_pred, smooth))


def bce(y_true, y_pred):
    """Per-image mean binary cross-entropy, shape (N,)."""
    y_true = ops.cast(y_true, y_pred.dtype)
    p = ops.clip(y_pred, _EPS, 1.0 - _EPS)
    return -ops.mean(y_true * ops.log(p) + (1.0 - y_true) * ops.log(1.0 - p), axis=_AXES)


def focal(y_true, y_pred, gamma: float = 2.0, alpha: float = 0.25):
    """Per-image mean binary focal loss (Lin et al. 2017), shape (N,)."""
    y_true = ops.cast(y_true, y_pred.dtype)
    p = ops.clip(y_pred, _EPS, 1.0 - _EPS)
    pt = y_true * p + (1.0 - y_true) * (1.0 - p)
    at = y_true * alpha + (1.0 - y_true) * (1.0 - alpha)
    return -ops.mean(at * ops.power(1.0 - pt, gamma) * ops.log(pt), axis=_AXES)


@keras.saving.register_keras_serializable(package="bcedge")
def bce_dice(y_true, y_pred):
    """BCE + batch Dice loss (the default), shape (N,)."""
    return bce(y_true, y_pred) + batch_dice_loss(y_true, y_pred)


@keras.saving.register_keras_serializable(package="bcedge")
def focal_dice(y_true, y_pred):
    """Focal + batch Dice loss, shape (N,)."""
    return focal(y_true, y_pred) + batch_dice_loss(y_true, y_pred)


def batch_tversky_loss(y_true, y_pred, alpha: float = 0.3, beta: float = 0.7, smooth: float = 1.0):
    """1 - Tversky index pooled over the batch, repeated per image, shape (N,).

    ``alpha`` weighs false positives, ``beta`` false negatives (Salehi et al. 2017);
    beta > alpha trades precision for recall, for small lesions a model tends to miss.
    """
    y_true = ops.cast(y_true, y_pred.dtype)
    tp = ops.sum(y_true * y_pred)
    fp = ops.sum((1.0 - y_true) * y_pred)
    fn = ops.sum(y_true * (1.0 - y_pred))
    loss = 1.0 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)
    return loss * ops.ones_like(ops.sum(y_pred, axis=_AXES))


@keras.saving.register_keras_serializable(package="bcedge")
def bce_tversky(y_true, y_pred):
    """BCE + batch Tversky loss (alpha 0.3, beta 0.7), shape (N,)."""
    return bce(y_true, y_pred) + batch_tversky_loss(y_true, y_pred)


@keras.saving.register_keras_serializable(package="bcedge")
def bce_tversky_fp(y_true, y_pred):
    """BCE + batch Tversky loss weighing false positives (alpha 0.7, beta 0.3), shape (N,).

    The mirror of :func:`bce_tversky`: for a model whose outlines are too wide
    (issue #12: precision 0.42 against recall 0.67 on the test views), a false
    positive pixel costs more than a missed one.
    """
    return bce(y_true, y_pred) + batch_tversky_loss(y_true, y_pred, alpha=0.7, beta=0.3)


@keras.saving.register_keras_serializable(package="bcedge")
def bce_lesion_dice(y_true, y_pred):
    """BCE + per-image Dice on lesion images (:func:`lesion_dice_loss`), shape (N,)."""
    return bce(y_true, y_pred) + lesion_dice_loss(y_true, y_pred)


LOSSES: dict[str, Callable] = {
    "dice": dice_loss,
    "batch-dice": batch_dice_loss,
    "bce-dice": bce_dice,
    "focal-dice": focal_dice,
    "bce-tversky": bce_tversky,
    "bce-tversky-fp": bce_tversky_fp,
    "bce-lesion-dice": bce_lesion_dice,
}


def get_loss(name: str) -> Callable:
    """Loss function by name (a key of :data:`LOSSES`)."""
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; expected one of {', '.join(LOSSES)}")
    return LOSSES[name]


def _ratio(num, den):
    # 1 where the denominator is empty: the convention of bcedge.metrics.
    safe = ops.where(den > 0, den, ops.ones_like(den))
    return ops.where(den > 0, num / safe, ops.ones_like(num))


def _scores(tp, fp, fn) -> dict:
    return {
        "dice": _ratio(2.0 * tp, 2.0 * tp + fp + fn),
        "iou": _ratio(tp, tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
    }


@keras.saving.register_keras_serializable(package="bcedge")
class SegmentationMetric(keras.metrics.Metric):
    """Dice / IoU / precision / recall at a threshold: per-image mean, lesion images only, or pooled.

    Args:
        metric: one of ``dice``, ``iou``, ``precision``, ``recall``.
        mode: ``mean`` (per-image scores averaged), ``positive`` (averaged over images
            with a lesion only: what checkpoint selection watches, since predicting
            nothing scores 1 on every normal image) or ``global`` (pooled TP/FP/FN).
        threshold: prediction threshold (``p >= threshold`` is lesion).
    """

    def __init__(self, metric: str = "dice", mode: str = "mean", threshold: float = 0.5, name: str | None = None, **kw):
        if metric not in METRICS or mode not in ("mean", "positive", "global"):
            raise ConfigError(f"unknown metric {metric!r}/{mode!r}")
        super().__init__(name=name or (metric if mode == "mean" else f"{metric}_{mode}"), **kw)
        self.metric, self.mode, self.threshold = metric, mode, threshold
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")
        self.tp = self.add_variable(shape=(), initializer="zeros", name="tp")
        self.fp = self.add_variable(shape=(), initializer="zeros", name="fp")
        self.fn = self.add_variable(shape=(), initializer="zeros", name="fn")

    def update_state(self, y_true, y_pred, sample_weight=None):
        pred = ops.cast(y_pred >= self.threshold, "float32")
        true = ops.cast(y_true > 0.5, "float32")
        tp = ops.sum(pred * true, axis=_AXES)
        fp = ops.sum(pred, axis=_AXES) - tp
        fn = ops.sum(true, axis=_AXES) - tp
        per_image = _scores(tp, fp, fn)[self.metric]
        weight = ops.cast(tp + fn > 0, "float32") if self.mode == "positive" else ops.ones_like(per_image)
        self.total.assign_add(ops.sum(per_image * weight))
        self.count.assign_add(ops.sum(weight))
        self.tp.assign_add(ops.sum(tp))
        self.fp.assign_add(ops.sum(fp))
        self.fn.assign_add(ops.sum(fn))

    def result(self):
        # Variables become tensors first: JAX cannot trace ops on Keras variables directly.
        tp, fp, fn = (ops.convert_to_tensor(v) for v in (self.tp, self.fp, self.fn))
        if self.mode == "global":
            return _scores(tp, fp, fn)[self.metric]
        return ops.convert_to_tensor(self.total) / ops.maximum(ops.convert_to_tensor(self.count), 1.0)

    def get_config(self) -> dict:
        return {**super().get_config(), "metric": self.metric, "mode": self.mode, "threshold": self.threshold}


def default_metrics(threshold: float = 0.5) -> list[SegmentationMetric]:
    """The study's table metrics (per-image mean), Dice over lesion images, and global Dice."""
    out = [SegmentationMetric(m, "mean", threshold) for m in METRICS]
    out.append(SegmentationMetric("dice", "positive", threshold))
    out.append(SegmentationMetric("dice", "global", threshold))
    return out
