"""Model-grid evaluation of a Keras model: ``bcedge evaluate RUN_DIR`` and the reproduction script.

Scores are computed on the model grid (the preprocessed S x S image), as the
study did, with the reference definitions of :mod:`bcedge.metrics`.
:func:`model_grid_report` is what ``bcedge evaluate RUN_DIR`` prints: the statistics of
:mod:`bcedge.evaluation` (per source and kind, lesions found, false-positive components,
bootstrap intervals) on the model grid. :func:`table` is the older per-group layout that
``benchmarks/train_reproduction.py`` records. Groups are reported apart, because they
measure different things:

* ``pixel``: images with pixel-accurate lesion masks (CDD-CESM, CBIS-DDSM);
  the figure comparable to the study's table.
* ``circle``: images whose mask is a disc around the lesion (mini-MIAS); Dice
  against a disc is a proxy.
* ``normal``: images without a lesion; per-image Dice is 1 when nothing is
  predicted, so the useful figure is ``false_positive_rate`` (share of normal
  images with any predicted pixel).
* ``all``: everything together.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bcedge.metrics import MetricAccumulator

GROUPS = ("pixel", "circle", "normal", "all")


def predict(model, images: np.ndarray, batch: int = 8) -> np.ndarray:
    """(N, S, S, 1) float32 probabilities for (N, S, S, 1) float32 images, in batches."""
    out = [
        np.asarray(model.predict_on_batch(images[i : i + batch]), dtype=np.float32)
        for i in range(0, len(images), batch)
    ]
    return np.concatenate(out, axis=0) if out else np.zeros_like(images)


def group_of(mask_kind: str, positive: bool) -> str:
    """Report group of one image: ``pixel``, ``circle`` or ``normal``."""
    if not positive:
        return "normal"
    return "circle" if mask_kind == "circle" else "pixel"


def table(
    probs: np.ndarray,
    masks: np.ndarray,
    mask_kinds: tuple[str, ...],
    loss_fns: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] | None = None,
    threshold: float = 0.5,
) -> dict[str, dict]:
    """Scores per group.

    Args:
        probs: (N, S, S, 1) float32 probabilities.
        masks: (N, S, S, 1) uint8 {0, 1} ground truth.
        mask_kinds: N of ``pixel``/``circle``/``none``.
        loss_fns: name -> per-image loss function ``f(y_true, y_pred) -> (N,)`` (NumPy in, array out).
        threshold: probability threshold.

    Returns:
        ``{group: {"n_images", "mean": {...}, "global": {...}, "loss": {name: mean},
        "false_positive_rate" (normal only)}}`` for every non-empty group.
    """
    positive = masks.reshape(len(masks), -1).any(axis=1)
    groups = np.asarray([group_of(k, bool(p)) for k, p in zip(mask_kinds, positive, strict=True)])
    losses = {}
    for name, fn in (loss_fns or {}).items():
        losses[name] = np.asarray(fn(masks.astype(np.float32), probs), dtype=np.float64)
    out: dict[str, dict] = {}
    for group in GROUPS:
        sel = np.ones(len(masks), bool) if group == "all" else groups == group
        if not sel.any():
            continue
        acc = MetricAccumulator(threshold)
        acc.add(probs[sel], masks[sel])
        result = dict(acc.result())
        result["loss"] = {name: float(values[sel].mean()) for name, values in losses.items()}
        if group == "normal":
            flagged = (probs[sel] >= threshold).reshape(int(sel.sum()), -1).any(axis=1)
            result["false_positive_rate"] = float(flagged.mean())
        out[group] = result
    return out


def model_grid_report(
    probs: np.ndarray,
    masks: np.ndarray,
    mask_kinds: tuple[str, ...],
    sources: tuple[str, ...],
    ids: tuple[str, ...],
    threshold: float = 0.5,
) -> dict:
    """:func:`bcedge.evaluation.summarize` on the model grid: the same statistics as ``bcedge evaluate --model``.

    The mask is the thresholded probability map (``p >= threshold``); unlike the runtime path
    there is no minimum component area and no mapping to the original grid, so the figures
    differ from the original-grid ones.

    Args:
        probs: (N, S, S, 1) float32 probabilities.
        masks: (N, S, S, 1) uint8 {0, 1} ground truth.
        mask_kinds, sources, ids: N of each (``ArraySet`` fields).
    """
    from bcedge.evaluation import score_image, summarize

    scores = [
        score_image(p[..., 0] >= threshold, m[..., 0], probability=p[..., 0], id=i, source=src, mask_kind=k)
        for p, m, k, src, i in zip(probs, masks, mask_kinds, sources, ids, strict=True)
    ]
    return summarize(scores, grid="model")


def format_row(name: str, result: dict, loss_name: str = "dice") -> dict[str, float | int | str]:
    """One row of the study's table from a group's result: Dice, IoU, Loss, Recall, Precision."""
    mean = result["mean"]
    return {
        "model": name,
        "n": result["n_images"],
        "dice": round(mean["dice"], 4),
        "iou": round(mean["iou"], 4),
        "loss": round(result["loss"].get(loss_name, float("nan")), 4),
        "recall": round(mean["recall"], 4),
        "precision": round(mean["precision"], 4),
    }
