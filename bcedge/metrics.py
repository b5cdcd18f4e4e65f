"""Segmentation metrics: the one reference definition every stage uses.

Training (Keras metrics), export (accuracy gate), evaluation and benchmarks all
report these numbers; the Keras versions in ``training/`` are tested against
this module.

Conventions:
    * Masks are binary: a probability map is thresholded with ``p >= threshold``
      (default 0.5).
    * **Per-image** scores are computed on each image and then averaged
      ("per-image mean"). An image with no lesion and no prediction scores 1 on
      every metric (nothing to find, nothing wrongly found). An image with no
      lesion but a prediction scores 0 Dice/IoU/precision and recall 1 (no
      lesion was missed). An image with a lesion and no prediction scores 0
      Dice/IoU/recall and precision 1 (nothing wrongly predicted).
    * **Global** scores pool TP/FP/FN over every pixel of every image
      ("dataset-global"); empty denominators score 1 as above.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

METRICS = ("dice", "iou", "precision", "recall")


@dataclass(frozen=True)
class Counts:
    """Pixel confusion counts of one image or a pooled set."""

    tp: int
    fp: int
    fn: int

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)


def binarize(arr: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Probabilities (any float shape) or masks -> bool mask (``p >= threshold``; masks: ``> 0``)."""
    if arr.dtype == bool:
        return arr
    if np.issubdtype(arr.dtype, np.integer):
        return arr > 0
    return arr >= threshold


def counts(pred: np.ndarray, target: np.ndarray, threshold: float = 0.5) -> Counts:
    """Confusion counts for one image.

    Args:
        pred: (H, W) or (H, W, 1) probabilities in [0, 1] (float) or a binary mask.
        target: same shape, binary mask ({0, 1} integers or bool).
        threshold: probability threshold for float ``pred``.
    """
    p = binarize(np.asarray(pred), threshold).reshape(-1)
    t = binarize(np.asarray(target)).reshape(-1)
    if p.shape != t.shape:
        raise ValueError(f"prediction has {p.size} pixels, target {t.size}")
    tp = int(np.count_nonzero(p & t))
    return Counts(tp=tp, fp=int(np.count_nonzero(p)) - tp, fn=int(np.count_nonzero(t)) - tp)


def _ratio(num: float, den: float) -> float:
    return 1.0 if den == 0 else num / den


def scores(c: Counts) -> dict[str, float]:
    """Dice, IoU, precision and recall from confusion counts (conventions in the module doc)."""
    return {
        "dice": _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn),
        "iou": _ratio(c.tp, c.tp + c.fp + c.fn),
        "precision": _ratio(c.tp, c.tp + c.fp),
        "recall": _ratio(c.tp, c.tp + c.fn),
    }


def soft_dice_loss(prob: np.ndarray, target: np.ndarray, smooth: float = 1.0) -> float:
    """1 - soft Dice of one image: the study's "loss" column (``training.losses.dice_loss`` in NumPy).

    ``1 - (2 * sum(t * p) + smooth) / (sum(t) + sum(p) + smooth)``, summed in float64.

    Args:
        prob: (H, W) or (H, W, 1) float probabilities in [0, 1] (not thresholded).
        target: same number of pixels, binary mask ({0, 1} integers or bool).
        smooth: added to both sides so an empty/empty pair scores ~0 loss.
    """
    p = np.asarray(prob, dtype=np.float64).reshape(-1)
    t = binarize(np.asarray(target)).reshape(-1)
    if p.shape != t.shape:
        raise ValueError(f"probability map has {p.size} pixels, target {t.size}")
    inter = float(p[t].sum())
    return 1.0 - (2.0 * inter + smooth) / (float(np.count_nonzero(t)) + float(p.sum()) + smooth)


def dice(pred: np.ndarray, target: np.ndarray, threshold: float = 0.5) -> float:
    """Dice of one image (1.0 when both are empty)."""
    return scores(counts(pred, target, threshold))["dice"]


def iou(pred: np.ndarray, target: np.ndarray, threshold: float = 0.5) -> float:
    """IoU (Jaccard) of one image (1.0 when both are empty)."""
    return scores(counts(pred, target, threshold))["iou"]


@dataclass
class MetricAccumulator:
    """Accumulates per-image and pooled scores over a stream of images.

    Use ``add(pred, target)`` per image (or per batch with a leading N axis), then
    ``result()``.
    """

    threshold: float = 0.5

    def __post_init__(self) -> None:
        self._per_image: list[dict[str, float]] = []
        self._pooled = Counts(0, 0, 0)

    def add(self, pred: np.ndarray, target: np.ndarray) -> None:
        """Add one (H, W[, 1]) image or a batch (N, H, W[, 1])."""
        pred, target = np.asarray(pred), np.asarray(target)
        batch = pred.ndim == 4 or (pred.ndim == 3 and pred.shape[-1] != 1)
        pairs: Iterable[tuple[np.ndarray, np.ndarray]] = zip(pred, target, strict=True) if batch else [(pred, target)]
        for p, t in pairs:
            c = counts(p, t, self.threshold)
            self._per_image.append(scores(c))
            self._pooled = self._pooled + c

    @property
    def n_images(self) -> int:
        """Images added so far."""
        return len(self._per_image)

    def per_image(self) -> list[dict[str, float]]:
        """The score dict of each image, in the order added."""
        return list(self._per_image)

    def result(self) -> dict[str, Mapping[str, float] | int]:
        """``{"n_images", "mean": {metric: per-image mean}, "global": {metric: pooled}}``."""
        if not self._per_image:
            return {"n_images": 0, "mean": {}, "global": {}}
        mean = {m: float(np.mean([s[m] for s in self._per_image])) for m in METRICS}
        return {"n_images": len(self._per_image), "mean": mean, "global": scores(self._pooled)}


def evaluate(preds: Iterable[np.ndarray], targets: Iterable[np.ndarray], threshold: float = 0.5) -> dict:
    """Per-image mean and global scores over paired predictions and targets (see module doc)."""
    acc = MetricAccumulator(threshold)
    for p, t in zip(preds, targets, strict=True):
        acc.add(p, t)
    return acc.result()
