"""Evaluation of predicted masks: the one implementation ``bcedge evaluate`` and ``bcedge benchmark`` share.

What is scored, per image (:func:`score_image`):

* **Pixel scores** of :mod:`bcedge.metrics` (Dice, IoU, precision, recall; per-image
  conventions there) and the study's **loss**, 1 - soft Dice of the probability map
  (:func:`bcedge.metrics.soft_dice_loss`), when the probabilities are given.
* **Lesions**: a ground-truth lesion is one 8-connected component of the ground-truth
  mask; it is **found** when a predicted component overlaps it (shares at least one pixel).
* **False-positive components**: predicted components (8-connected, the connectivity of
  :mod:`bcedge.postprocess`) that overlap no ground-truth lesion pixel.

Images are grouped by source (dataset name) and kind (:func:`summarize`):

* ``pixel``: lesion images with pixel-accurate masks (CDD-CESM, CBIS-DDSM);
* ``circle``: lesion images whose mask is a disc around the lesion (mini-MIAS): Dice against
  a disc is a proxy, so these are never pooled with ``pixel``;
* ``normal``: images without a lesion (empty ground truth), where the figure that matters is
  false-positive components per image.

Each group reports, with ``n`` and a 95 % **percentile bootstrap** interval over images
(:func:`bootstrap_interval`: :data:`BOOTSTRAP_RESAMPLES` resamples of the group's images with
replacement, fixed seed :data:`BOOTSTRAP_SEED`, the 2.5th and 97.5th percentiles of the
statistic): per-image mean Dice, IoU, loss, recall and precision, lesion detection rate
(found lesions / lesions, resampling images, so lesions of one image stay together) and
false-positive components per image. Pooled ("global") Dice is given without an interval.

For ``bcedge evaluate --model`` and ``bcedge benchmark`` the masks are those of
:class:`bcedge.pipeline.Segmenter` on the **original** pixel grid (:func:`score_result`), the
path ``bcedge infer`` takes; ``bcedge evaluate RUN_DIR`` scores the model grid with the same
functions. Runtime-light: NumPy and OpenCV only.

Why one module: the one scoring of ``bcedge evaluate`` and ``bcedge benchmark`` (per-image
scores, grouping, bootstrap, tables); one home keeps both commands' numbers identical.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bcedge.errors import InputError
from bcedge.metrics import counts, scores, soft_dice_loss

if TYPE_CHECKING:
    from bcedge.bench import BenchData, BenchItem
    from bcedge.pipeline import Result

#: Percentile bootstrap settings (documented in the module doc and every report's ``method``).
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
#: Image kinds, in report order.
KINDS = ("pixel", "circle", "normal")
#: Per-image mean metrics of lesion images (the study's table), in report order.
TABLE_METRICS = ("dice", "iou", "loss", "recall", "precision")
#: The pseudo-source that pools every source of one kind (present when there are several sources).
ALL_SOURCES = "all"
#: Resamples drawn at once (bounds the index matrix to ~``_CHUNK x n`` integers).
_CHUNK = 250


@dataclass(frozen=True)
class ImageScore:
    """Scores of one image.

    Attributes:
        id: sample id or file stem.
        source: dataset name (``cdd-cesm``, ``mini-mias``...).
        kind: ``pixel``, ``circle`` or ``normal`` (empty ground truth).
        tp, fp, fn: pixel confusion counts.
        dice, iou, precision, recall: pixel scores (conventions of :mod:`bcedge.metrics`).
        loss: 1 - soft Dice of the probability map, or None when no probabilities were given.
        lesions: ground-truth components.
        found: ground-truth components a predicted component overlaps.
        components: predicted components (8-connected components of the predicted mask).
        false_components: predicted components that overlap no ground-truth lesion.
        findings: findings ``bcedge infer`` reported for the image (None when not scored from a
            :class:`~bcedge.pipeline.Result`). Postprocessing finds components on the model grid and
            carries them to the original grid, where two may touch (one mask component) or one may
            fall apart (several): the two counts usually agree, not always.
    """

    id: str
    source: str
    kind: str
    tp: int
    fp: int
    fn: int
    dice: float
    iou: float
    precision: float
    recall: float
    loss: float | None
    lesions: int
    found: int
    components: int
    false_components: int
    findings: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        return asdict(self)


def image_kind(mask_kind: str, positive: bool) -> str:
    """``normal`` for an empty ground truth, else ``circle`` for disc masks and ``pixel`` otherwise."""
    if not positive:
        return "normal"
    return "circle" if mask_kind == "circle" else "pixel"


def label_components(mask: np.ndarray) -> tuple[int, np.ndarray]:
    """8-connected components of a binary (H, W) mask: (count, (H, W) int32 labels, 0 = background)."""
    import cv2

    n, labels = cv2.connectedComponents(np.ascontiguousarray(mask, dtype=np.uint8), connectivity=8, ltype=cv2.CV_32S)
    return int(n) - 1, labels


def score_image(
    pred: np.ndarray,
    truth: np.ndarray,
    *,
    probability: np.ndarray | None = None,
    id: str = "",
    source: str = "",
    mask_kind: str = "pixel",
) -> ImageScore:
    """Score one predicted mask against its ground truth (same grid).

    Args:
        pred: (H, W) or (H, W, 1) predicted mask, bool or {0, 1} integers (no threshold is applied:
            threshold probabilities first).
        truth: ground-truth mask of the same shape, bool or {0, 1} integers.
        probability: optional (H, W[, 1]) float probabilities in [0, 1] on the same grid, for the loss.
        id: image id (reports).
        source: dataset name (reports group by it).
        mask_kind: the annotation kind: ``pixel``, ``circle`` or ``none``.

    Raises:
        InputError: shapes differ, or ``pred`` is a float array (an unthresholded map).
    """
    p = _plane(pred, "prediction")
    t = _plane(truth, "ground truth")
    if p.shape != t.shape:
        raise InputError(
            f"{id or 'image'}: prediction is {p.shape[1]}x{p.shape[0]}, ground truth {t.shape[1]}x{t.shape[0]}"
        )
    if np.issubdtype(p.dtype, np.floating):
        raise InputError(f"{id or 'image'}: the prediction is a float map; threshold it first")
    p, t = p != 0, t != 0
    c = counts(p, t)
    s = scores(c)
    loss = None
    if probability is not None:
        prob = _plane(probability, "probability map")
        if prob.shape != t.shape:
            raise InputError(f"{id or 'image'}: probability map is {prob.shape}, ground truth {t.shape}")
        loss = soft_dice_loss(prob, t)
    lesions, gt_labels = label_components(t)
    components, pred_labels = label_components(p)
    overlap = p & t
    found = int(np.unique(gt_labels[overlap]).size)
    touching = int(np.unique(pred_labels[overlap]).size)
    return ImageScore(
        id=id,
        source=source,
        kind=image_kind(mask_kind, bool(c.tp + c.fn)),
        tp=c.tp,
        fp=c.fp,
        fn=c.fn,
        dice=s["dice"],
        iou=s["iou"],
        precision=s["precision"],
        recall=s["recall"],
        loss=loss,
        lesions=lesions,
        found=found,
        components=components,
        false_components=components - touching,
    )


def _plane(arr: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim != 2:
        raise InputError(f"{what} has shape {np.asarray(arr).shape}; expected (H, W) or (H, W, 1)")
    return a


def score_result(
    result: Result, truth: np.ndarray, *, id: str = "", source: str = "", mask_kind: str = "pixel"
) -> ImageScore:
    """Score what :meth:`bcedge.pipeline.Segmenter.segment` returned, on the original pixel grid.

    The mask is ``result.mask`` (thresholded, small components removed, as ``bcedge infer``
    writes it); the loss uses the model's probability map carried to the original grid with
    the same linear interpolation the mask is defined by.

    Args:
        result: one segmentation result.
        truth: (H, W) ground truth on the scan's original grid.
    """
    probability = result.geometry.to_original(np.asarray(result.probability, dtype=np.float32), interpolation="linear")
    score = score_image(result.mask, truth, probability=probability, id=id, source=source, mask_kind=mask_kind)
    return dataclasses.replace(score, findings=len(result.findings))


# --------------------------------------------------------------------------- statistics


def bootstrap_interval(
    values: np.ndarray | Sequence[float],
    weights: np.ndarray | Sequence[float] | None = None,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of a mean (or a ratio of sums) over images.

    Each resample draws ``n`` images with replacement; the statistic is ``mean(values)``, or
    ``sum(values) / sum(weights)`` when ``weights`` are given (e.g. found lesions / lesions).
    The interval is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles
    (NumPy's linear interpolation) of the resampled statistics. Deterministic for a seed.

    Args:
        values: (n,) per-image values.
        weights: (n,) per-image denominators (>= 0), or None for a plain mean.

    Returns:
        (low, high), or None when there are no images.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    w = None if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    n = v.size
    if n == 0:
        return None
    if w is not None and w.shape != v.shape:
        raise ValueError(f"{v.size} values but {w.size} weights")
    rng = np.random.default_rng(seed)
    stats = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, _CHUNK):
        k = min(_CHUNK, resamples - start)
        idx = rng.integers(0, n, size=(k, n))
        if w is None:
            stats[start : start + k] = v[idx].mean(axis=1)
        else:
            den = w[idx].sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                stats[start : start + k] = np.where(den > 0, v[idx].sum(axis=1) / np.where(den > 0, den, 1), np.nan)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.nanpercentile(stats, [tail, 100.0 - tail])
    return float(low), float(high)


def estimate(
    values: Sequence[float] | np.ndarray, weights: Sequence[float] | np.ndarray | None = None, **bootstrap: Any
) -> dict[str, Any]:
    """``{"value", "low", "high", "n"}``: the statistic of :func:`bootstrap_interval` and its interval.

    ``n`` counts images; with ``weights`` the dict also has ``"den"`` (their sum) and ``"num"``.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    out: dict[str, Any] = {"value": None, "low": None, "high": None, "n": int(v.size)}
    if v.size == 0:
        return out
    if weights is None:
        out["value"] = float(v.mean())
    else:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        out["num"], out["den"] = _int_or_float(v.sum()), _int_or_float(w.sum())
        out["value"] = float(v.sum() / w.sum()) if w.sum() > 0 else None
    interval = bootstrap_interval(v, weights, **bootstrap)
    if interval is not None and out["value"] is not None:
        out["low"], out["high"] = interval
    return out


def _int_or_float(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


# --------------------------------------------------------------------------- summaries


def summarize_group(scores_: Sequence[ImageScore], **bootstrap: Any) -> dict[str, Any]:
    """The statistics of one group of images of one kind (see the module doc).

    Lesion kinds: ``dice``, ``iou``, ``loss``, ``recall``, ``precision`` (per-image means),
    ``detection_rate`` (found / lesions), ``fp_per_image`` (false components per image), each an
    :func:`estimate`; ``dice_global`` (pooled pixels). ``normal``: ``fp_per_image`` and
    ``flagged_share`` (share of images with any predicted component), and ``findings_per_image``
    (``bcedge infer`` findings per image) when the scores carry findings.
    """
    n = len(scores_)
    out: dict[str, Any] = {"n_images": n}
    kinds = {s.kind for s in scores_}
    if len(kinds) > 1:
        raise ValueError(f"a group holds one kind of image; got {sorted(kinds)}")
    fp = [s.false_components for s in scores_]
    if kinds == {"normal"}:
        out["fp_per_image"] = estimate(fp, **bootstrap)
        out["flagged_share"] = estimate([float(s.components > 0) for s in scores_], **bootstrap)
        if all(s.findings is not None for s in scores_):
            # Every finding on a normal image is a false one: the figure as bcedge infer's findings list it.
            out["findings_per_image"] = estimate([s.findings for s in scores_], **bootstrap)
        return out
    for metric in TABLE_METRICS:
        vals = [getattr(s, metric) for s in scores_]
        out[metric] = estimate([] if any(v is None for v in vals) else vals, **bootstrap)
    tp, fp_px, fn = (sum(getattr(s, k) for s in scores_) for k in ("tp", "fp", "fn"))
    out["dice_global"] = 1.0 if 2 * tp + fp_px + fn == 0 else 2 * tp / (2 * tp + fp_px + fn)
    out["detection_rate"] = estimate([s.found for s in scores_], [s.lesions for s in scores_], **bootstrap)
    out["fp_per_image"] = estimate(fp, **bootstrap)
    return out


def summarize(
    image_scores: Iterable[ImageScore],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
    grid: str = "original",
) -> dict[str, Any]:
    """Group the images by source and kind and summarise each group.

    Returns:
        ``{"grid", "method": {...}, "groups": [{"source", "kind", "n_images", <statistics>}],
        "images": [ImageScore.to_dict()...]}``; groups ordered by source (``all`` last) and
        :data:`KINDS`. Source ``all`` pools every source of a kind, present when there are several.
    """
    items = list(image_scores)
    bootstrap = {"resamples": resamples, "seed": seed, "confidence": confidence}
    sources = sorted({s.source for s in items})
    keys = [(src, kind) for src in sources for kind in KINDS]
    # Pool a kind over sources only where it has several (else the pooled row repeats one source's).
    keys += [(ALL_SOURCES, kind) for kind in KINDS if len({s.source for s in items if s.kind == kind}) > 1]
    groups = []
    for src, kind in keys:
        members = [s for s in items if s.kind == kind and (src == ALL_SOURCES or s.source == src)]
        if members:
            groups.append({"source": src, "kind": kind, **summarize_group(members, **bootstrap)})
    return {
        "grid": grid,
        "method": {
            "lesion": "8-connected component of the ground truth; found when a predicted component overlaps it",
            "false_positive": "predicted 8-connected component overlapping no ground-truth lesion pixel",
            "mean": "per-image mean over the group's images (bcedge.metrics conventions)",
            "loss": "1 - soft Dice of the probability map (smooth 1)",
            "interval": f"percentile bootstrap over images, {resamples} resamples, seed {seed}, {confidence:.0%}",
        },
        "groups": groups,
        "images": [s.to_dict() for s in items],
    }


def find_group(report: Mapping[str, Any], kind: str, source: str | None = None) -> dict[str, Any] | None:
    """The group of ``kind`` from ``source`` (default: the pooled ``all`` group, else the only source's)."""
    groups = [g for g in report["groups"] if g["kind"] == kind]
    if source is None:
        pooled = [g for g in groups if g["source"] == ALL_SOURCES]
        return pooled[0] if pooled else (groups[0] if len(groups) == 1 else None)
    return next((g for g in groups if g["source"] == source), None)


# --------------------------------------------------------------------------- running a bundle


def evaluate_bundle(
    bundle: str | os.PathLike[str],
    data: BenchData,
    *,
    backend: str = "auto",
    artifact: str | None = None,
    threads: int | None = None,
    threshold: float | None = None,
    min_area_mm2: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run a bundle over evaluation images through the ``bcedge infer`` path and summarise.

    Every image goes through :meth:`bcedge.pipeline.Segmenter.segment` (decode, preprocess,
    infer, postprocess) and is scored on its original grid (:func:`score_result`). An image that
    cannot be read is left out and listed under ``skipped``.

    Args:
        bundle: bundle directory.
        data: the images (:class:`bcedge.bench.BenchData`: files or a dataset split).
        backend: backend name or ``auto`` (as ``bcedge infer --backend``).
        artifact: artifact file of the bundle (default: the backend's choice).
        threads: inference threads.
        threshold: probability threshold (None: the bundle's, as ``bcedge infer``).
        min_area_mm2: minimum component area (None: the ``bcedge infer`` default).
        progress: called with (done, total) after each image.

    Returns:
        :func:`summarize`'s report plus ``model`` (what ran), ``postprocess`` (threshold and
        minimum area used), ``data`` and ``skipped``.

    Raises:
        BundleError / BackendError: the bundle or its backend cannot run.
        InputError: no image could be read.
    """
    from bcedge.pipeline import Segmenter

    with Segmenter(
        bundle, backend=backend, artifact=artifact, threads=threads, threshold=threshold, min_area_mm2=min_area_mm2
    ) as seg:
        items = data.items()
        image_scores, skipped = score_items(seg, items, progress=progress)
        model = dict(seg.model_info)
        postprocess = {"threshold": seg.threshold, "min_area_mm2": seg.min_area_mm2}
    report = summarize(image_scores)
    report.update(
        model=model,
        postprocess=postprocess,
        data=data.to_dict(),
        skipped=[{"id": k, "error": v} for k, v in skipped.items()],
    )
    return report


def evaluate_sets(
    bundle: str | os.PathLike[str],
    sets: Mapping[str, BenchData],
    *,
    backend: str = "auto",
    artifact: str | None = None,
    threads: int | None = None,
    threshold: float | None = None,
    min_area_mm2: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluate one bundle on several image sets (splits, subsets, other datasets): cross-dataset figures.

    Args:
        bundle: bundle directory.
        sets: label -> images (e.g. ``{"mini-mias (all)": BenchData.from_split("mini-mias", root, None)}``).
        backend, artifact, threads, threshold, min_area_mm2: as :func:`evaluate_bundle`.
        progress: called with one line per set.

    Returns:
        ``{"model": what ran, "trained_on": {"data", "split", "split_dataset"} from the manifest's
        provenance, and ``fit_on`` from its recipe when the run recorded one (what the model saw in
        training; empty when the bundle does not say),
        "sets": {label: evaluate_bundle report}}``. Each report also gets ``training_overlap``:
        how many of its images the bundle's training split lists under ``train`` or ``val``
        (by sample id; None when the split file is not found), a check that a "generalisation"
        set is not data the model was trained or selected on. It does not see other views of
        a training patient (ids differ); read it as a lower bound on leakage.
    """
    from bcedge.bundle import load_bundle

    provenance = dict(load_bundle(bundle).manifest.provenance or {})
    trained_on = {k: provenance[k] for k in ("data", "split", "split_dataset", "train_on") if k in provenance}
    recipe = provenance.get("recipe")
    if isinstance(recipe, dict) and recipe.get("fit_on"):
        trained_on["fit_on"] = recipe["fit_on"]  # "train+val": a refit, validation images seen too
    seen = training_ids(provenance.get("split"))
    out: dict[str, Any] = {"model": None, "trained_on": trained_on, "sets": {}}
    for label, data in sets.items():
        if progress is not None:
            progress(f"{label}: {data.label}")
        report = evaluate_bundle(
            bundle,
            data,
            backend=backend,
            artifact=artifact,
            threads=threads,
            threshold=threshold,
            min_area_mm2=min_area_mm2,
        )
        if seen is not None:
            ids = [im["id"] for im in report["images"]]
            report["training_overlap"] = {
                "split": seen[0],
                "images": sum(i in seen[1] for i in ids),
                "n": len(ids),
            }
        else:
            report["training_overlap"] = None
        out["model"] = report["model"]
        out["sets"][label] = report
    return out


def training_ids(split: str | os.PathLike[str] | None) -> tuple[str, frozenset[str]] | None:
    """(path, ids under ``train`` and ``val``) of a bundle's training split file, or None when not found.

    A relative path is tried from the working directory, then from the source checkout's root
    (manifests record ``benchmarks/splits/...``).
    """
    from pathlib import Path

    from bcedge.datasets.splits import load_split
    from bcedge.errors import DatasetError

    if not split:
        return None
    candidates = [Path(split)]
    if not Path(split).is_absolute():
        candidates.append(Path(__file__).resolve().parents[1] / split)
    for path in candidates:
        if path.is_file():
            try:
                doc = load_split(path)
            except DatasetError:
                return None
            return str(split), frozenset(i for name in ("train", "val") for i in doc.splits.get(name, ()))
    return None


def score_items(
    seg: Any, items: Sequence[BenchItem], *, progress: Callable[[int, int], None] | None = None
) -> tuple[list[ImageScore], dict[str, str]]:
    """Segment and score each item with ``seg``; (scores, {id: error} of unreadable images or masks).

    Raises:
        InputError: no image could be read.
    """
    out: list[ImageScore] = []
    skipped: dict[str, str] = {}
    for i, item in enumerate(items):
        try:
            mammo = item.decode()
            result = seg.segment(mammo)
            truth = item.mask(mammo.shape)  # the shape alone: no float image made for it
        except InputError as exc:  # a bad scan or mask is reported and left out; a backend failure is not caught
            skipped[item.id] = str(exc)
        else:
            out.append(score_result(result, truth, id=item.id, source=item.source, mask_kind=item.mask_kind))
        if progress is not None:
            progress(i + 1, len(items))
    if not out and skipped:
        raise InputError(f"no evaluation image could be read; first error: {next(iter(skipped.values()))}")
    return out, skipped


# --------------------------------------------------------------------------- tables

#: Columns of :func:`study_rows`: the study's table for lesion images.
STUDY_COLUMNS = ("source", "kind", "n", "Dice", "IoU", "Loss", "Recall", "Precision")
#: Columns of :func:`detection_rows`: lesions found and false-positive components, every group.
DETECTION_COLUMNS = (
    "source",
    "kind",
    "n",
    "lesions",
    "found",
    "found rate",
    "FP/image",
    "flagged",
)


def format_estimate(est: Mapping[str, Any] | None, digits: int = 3, *, interval: bool = True, sep: str = " ") -> str:
    """``0.512 (0.411-0.603)``; ``sep="\n"`` puts the interval on a second line; ``-`` without a value."""
    if not est or est.get("value") is None:
        return "-"
    text = f"{est['value']:.{digits}f}"
    if interval and est.get("low") is not None:
        text += f"{sep}({est['low']:.{digits}f}-{est['high']:.{digits}f})"
    return text


def study_rows(report: Mapping[str, Any], sep: str = " ") -> list[list[str]]:
    """One row of :data:`STUDY_COLUMNS` per lesion group (``pixel``, ``circle``) of a :func:`summarize` report."""
    rows = []
    for g in report["groups"]:
        if g["kind"] == "normal":
            continue
        rows.append(
            [
                g["source"],
                g["kind"],
                str(g["n_images"]),
                format_estimate(g["dice"], sep=sep),
                format_estimate(g["iou"], sep=sep),
                format_estimate(g["loss"], interval=False),
                format_estimate(g["recall"], interval=False),
                format_estimate(g["precision"], interval=False),
            ]
        )
    return rows


def detection_rows(report: Mapping[str, Any], sep: str = " ") -> list[list[str]]:
    """One row of :data:`DETECTION_COLUMNS` per group of a :func:`summarize` report."""
    rows = []
    for g in report["groups"]:
        det = g.get("detection_rate")
        flagged = g.get("flagged_share")
        rows.append(
            [
                g["source"],
                g["kind"],
                str(g["n_images"]),
                "-" if det is None else str(det["den"]),
                "-" if det is None else str(det["num"]),
                format_estimate(det, 2, sep=sep),
                format_estimate(g["fp_per_image"], 2, sep=sep),
                "-" if flagged is None else f"{flagged['value']:.0%}",
            ]
        )
    return rows


def to_markdown(report: Mapping[str, Any]) -> str:
    """A report's two tables (study, detection) in Markdown, with the interval method."""
    lines = []
    for columns, rows in ((STUDY_COLUMNS, study_rows(report)), (DETECTION_COLUMNS, detection_rows(report))):
        if not rows:
            continue
        lines += ["| " + " | ".join(columns) + " |", "|---|---|" + "---:|" * (len(columns) - 2)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    lines.append(
        f"Grid: {report['grid']}. Values with 95 % intervals in parentheses: {report['method']['interval']}. "
        "Found rate: lesions (ground-truth components) a predicted component overlaps. "
        "FP/image: predicted components overlapping no lesion, per image. Flagged: share of images with any."
    )
    return "\n".join(lines) + "\n"
