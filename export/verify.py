"""The accuracy gate: every artifact's Dice, measured through its runtime backend, against Keras.

Each artifact runs through the backend the runtime will use for it
(:func:`bcedge.backends.open_backend`: LiteRT for ``.tflite``, onnxruntime for
``.onnx``...) on the validation split, and is scored with :mod:`bcedge.metrics`.
The Keras model's score on the same images is the reference; an artifact whose Dice
falls more than its tolerance below the reference is marked ``failed`` (the runtime
does not pick it by default) or, with ``--strict``, fails the export.

Which Dice gates: the per-image mean over **lesion-positive** images. Validation sets
of screening data are mostly normal images, on which per-image Dice is 1 for an empty
prediction; the mean over all images therefore rewards a model that predicts nothing,
and a quantised model that loses the lesions entirely could even *gain* all-image Dice.
Both means are recorded; only the lesion-image mean gates (the all-image mean is used
when the split holds no lesion image at all, and the manifest says so).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bcedge.errors import BcedgeError
from bcedge.formats import PRECISION_SPECS
from bcedge.metrics import MetricAccumulator

#: Largest Dice loss (reference minus artifact, on lesion images) an artifact may show, per precision
#: (from :data:`bcedge.formats.PRECISION_SPECS`, where the reasons are written).
DEFAULT_TOLERANCES: dict[str, float] = {p.name: p.tolerance for p in PRECISION_SPECS.values()}

#: How far an artifact's probabilities may stray from the Keras model's on preprocessed images,
#: per precision: ``(max |p - p_keras|, mean |p - p_keras|)`` over every pixel (from
#: :data:`bcedge.formats.PRECISION_SPECS`). Tests hold each format of each architecture to these;
#: the gate itself judges Dice, not probabilities.
OUTPUT_TOLERANCES: dict[str, tuple[float, float]] = {p.name: p.output_tolerance for p in PRECISION_SPECS.values()}


class GateError(BcedgeError):
    """An artifact lost more Dice than its tolerance and ``--strict`` was given."""

    exit_code = 3


@dataclass
class Measurement:
    """What the gate measured on one artifact.

    Attributes:
        metrics: ``dice``/``iou`` (per-image mean over lesion images; over all images when
            there is none), ``dice_all_images``/``iou_all_images``, ``n_images``,
            ``n_lesion_images``, ``gate_metric``, and once gated ``reference_dice``/``delta_dice``.
        gate: ``passed``, ``failed`` or ``not-measured``.
        tolerance: the tolerance applied.
        ms_per_image: mean wall time of ``predict`` per image (rough, after one warm-up call).
        details: what the backend reported (runtime, delegate, providers...).
        probabilities: (N, S, S, 1) float32, the artifact's output, when ``measure`` was asked to keep it.
    """

    metrics: dict[str, Any]
    gate: str = "not-measured"
    tolerance: float | None = None
    ms_per_image: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    probabilities: np.ndarray | None = None


def score(probs: np.ndarray, masks: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """Dice and IoU of predictions against ground truth, over lesion images and over all images.

    Args:
        probs: (N, S, S, 1) float32 probabilities in [0, 1].
        masks: (N, S, S, 1) uint8 {0, 1} ground truth.
        threshold: probability threshold (``p >= threshold`` is foreground).

    Returns:
        ``{"dice", "iou", "dice_all_images", "iou_all_images", "n_images", "n_lesion_images",
        "gate_metric"}``: ``dice``/``iou`` are per-image means over lesion-positive images
        (``gate_metric`` ``"dice_lesion_images"``), or over all images when none has a lesion
        (``gate_metric`` ``"dice_all_images"``).
    """
    if probs.shape != masks.shape:
        raise ValueError(f"predictions {probs.shape} and masks {masks.shape} differ in shape")
    positive = masks.reshape(len(masks), -1).any(axis=1)
    everything = MetricAccumulator(threshold)
    everything.add(probs, masks)
    result_all = everything.result()
    out: dict[str, Any] = {
        "dice_all_images": float(result_all["mean"]["dice"]),
        "iou_all_images": float(result_all["mean"]["iou"]),
        "n_images": len(masks),
        "n_lesion_images": int(positive.sum()),
    }
    if positive.any():
        lesions = MetricAccumulator(threshold)
        lesions.add(probs[positive], masks[positive])
        res = lesions.result()
        out.update(dice=float(res["mean"]["dice"]), iou=float(res["mean"]["iou"]), gate_metric="dice_lesion_images")
    else:
        out.update(dice=out["dice_all_images"], iou=out["iou_all_images"], gate_metric="dice_all_images")
    return out


def gate(dice: float, reference_dice: float, tolerance: float) -> tuple[str, float]:
    """``("passed"|"failed", delta)`` where ``delta = dice - reference_dice``; fails when it drops past ``tolerance``.

    A gain never fails: an artifact may score above the reference by chance.
    """
    delta = float(dice) - float(reference_dice)
    # 1e-9: scores are ratios of pixel counts, exact equality of a tiny loss with the tolerance is not a failure.
    return ("failed" if delta < -float(tolerance) - 1e-9 else "passed"), delta


def run_backend(
    backend: str, path: str | os.PathLike[str], images: np.ndarray, *, threads: int | None = 1
) -> tuple[np.ndarray, float, dict[str, Any]]:
    """Predict ``images`` with one artifact through its runtime backend.

    Args:
        backend: a :data:`bcedge.backends.BACKENDS` name.
        path: the artifact file.
        images: (N, S, S, 1) float32 preprocessed images in [0, 1].
        threads: inference threads (1: a rough single-core timing).

    Returns:
        ``(probs (N, S, S, 1) float32, ms per image, backend details)``.
    """
    from bcedge.backends import open_backend

    with open_backend(backend, path, threads=threads) as model:
        model.predict(images[:1])  # warm-up: allocation and delegate set-up are not inference time
        start = time.perf_counter()
        probs = model.predict(images)
        elapsed = time.perf_counter() - start
        details = dict(getattr(model, "details", {}) or {})
    details.pop("path", None)  # the bundle moves; its manifest records file names
    return probs, 1000.0 * elapsed / max(1, len(images)), details


def measure(
    backend: str,
    path: str | os.PathLike[str],
    images: np.ndarray,
    masks: np.ndarray,
    *,
    reference: dict[str, Any] | None,
    tolerance: float | None,
    threshold: float = 0.5,
    threads: int | None = 1,
    keep_probabilities: bool = False,
) -> Measurement:
    """Score one artifact and gate it against the reference scores.

    Args:
        backend, path: the artifact and the backend that runs it.
        images: (N, S, S, 1) float32 validation images in [0, 1].
        masks: (N, S, S, 1) uint8 {0, 1} their masks.
        reference: :func:`score` of the Keras model on the same images, or None (not gated).
        tolerance: largest allowed Dice loss, or None (not gated).
        threshold: probability threshold.
        threads: inference threads.
        keep_probabilities: keep the artifact's output in the result (to compare two artifacts).
    """
    probs, ms, details = run_backend(backend, path, images, threads=threads)
    metrics = score(probs, masks, threshold)
    result = Measurement(metrics=metrics, ms_per_image=ms, details=details)
    if keep_probabilities:
        result.probabilities = probs
    if reference is not None and tolerance is not None:
        result.gate, delta = gate(metrics["dice"], reference["dice"], tolerance)
        result.tolerance = float(tolerance)
        metrics["reference_dice"] = float(reference["dice"])
        metrics["delta_dice"] = delta
    return result
