"""Where a model's outline loses Dice on lesion views, and whether post-processing alone wins it back (issue #12).

Runs a bundle through :class:`bcedge.pipeline.Segmenter` (``bcedge infer``'s path, original grid) on
the pixel-mask lesion views of one split subset, and per view splits the predicted mask into the
components that overlap the lesion (*matched*) and those that do not (*false components*). Reports:

* area agreement: log-log slope of predicted against true lesion area, for the matched components
  only and for the whole predicted mask (what ``area_agreement.py`` fits from ``tp + fp``), and the
  median ratio predicted / true area for the smaller and the larger half of the lesions;
* what the false components cost: the mean Dice with every false component removed (an oracle, not a
  method: it needs the truth) beside the real one;
* three post-processing rules that need no truth, each scored as mean Dice (95 % bootstrap interval,
  :func:`bcedge.evaluation.bootstrap_interval`) and lesions found: keep the ``k`` components of highest
  mean probability (k = 1, 2); keep, inside each component, the pixels at or above ``r`` x its peak
  probability (r = 0.9, 0.93); keep, inside each component, the pixels brighter than an Otsu threshold
  of the (blurred) image within it (masses are denser than fat; fibroglandular tissue is too).

Usage::

    python benchmarks/outline_probe.py [--model bcedge/mass_model] [--artifact model_fp16.tflite]
        [--subset train] [-o cdd_kind=DM] [--out benchmarks/results/outline_probe_train.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from area_agreement import log_area_fit  # noqa: E402

from bcedge.bench.data import BenchData  # noqa: E402
from bcedge.errors import BcedgeError  # noqa: E402
from bcedge.evaluation import bootstrap_interval, label_components, score_image  # noqa: E402
from bcedge.imageio import atomic_write_bytes  # noqa: E402
from bcedge.pipeline import Segmenter  # noqa: E402

Rule = Callable[[dict], np.ndarray]


def components(mask: np.ndarray) -> list[np.ndarray]:
    """The 8-connected components of a (H, W) {0, 1} mask (:func:`bcedge.evaluation.label_components`),
    as (H, W) bool arrays."""
    n, labels = label_components(mask)
    return [labels == i for i in range(1, n + 1)]


def keep_top(k: int) -> Rule:
    """Keep the ``k`` components of highest mean probability."""

    def rule(view: dict) -> np.ndarray:
        ranked = sorted(view["components"], key=lambda c: -float(view["probability"][c].mean()))
        return np.logical_or.reduce(ranked[:k], axis=0) if ranked else view["pred"]

    return rule


def peak_relative(r: float) -> Rule:
    """Inside each component keep the pixels at or above ``r`` x the component's peak probability."""

    def rule(view: dict) -> np.ndarray:
        out = np.zeros_like(view["pred"])
        for c in view["components"]:
            out |= c & (view["probability"] >= r * view["probability"][c].max())
        return out

    return rule


def otsu_inside(view: dict) -> np.ndarray:
    """Inside each component keep the pixels brighter than Otsu's threshold of the blurred image there
    (sigma 0.4 % of the long side), the largest piece with holes filled; the whole component when that
    keeps under 15 % of it."""
    image, out = view["image"], np.zeros_like(view["pred"])
    blurred = cv2.GaussianBlur(image, (0, 0), max(1.0, 0.004 * max(image.shape)))
    for c in view["components"]:
        t, _ = cv2.threshold(blurred[c].reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        keep = (c & (blurred > t)).astype(np.uint8)
        if keep.sum() < 0.15 * c.sum():
            out |= c
            continue
        pieces = components(keep)
        largest = max(pieces, key=lambda p: int(p.sum())).astype(np.uint8)
        contours, _ = cv2.findContours(largest, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        out |= cv2.drawContours(np.zeros_like(largest), contours, -1, 1, thickness=-1).astype(bool)
    return out


RULES: dict[str, Rule] = {
    "top1_mean_probability": keep_top(1),
    "top2_mean_probability": keep_top(2),
    "peak_relative_0.9": peak_relative(0.9),
    "peak_relative_0.93": peak_relative(0.93),
    "otsu_inside_component": otsu_inside,
}


def estimate(values: list[float]) -> dict:
    low_high = bootstrap_interval(np.asarray(values, dtype=np.float64))
    return {"mean": round(float(np.mean(values)), 4), "ci95": [round(v, 4) for v in low_high] if low_high else None}


def scored(views: list[dict], preds: list[np.ndarray]) -> tuple[dict, float]:
    """Mean Dice with its interval, and lesions found / lesions, of ``preds`` against the views' truth,
    scored as ``bcedge evaluate`` scores (:func:`bcedge.evaluation.score_image`)."""
    scores = [score_image(p, v["truth"]) for v, p in zip(views, preds, strict=True)]
    found = sum(s.found for s in scores) / max(sum(s.lesions for s in scores), 1)
    return estimate([s.dice for s in scores]), round(found, 3)


def area_figures(true_area: np.ndarray, pred_area: np.ndarray) -> dict:
    """Slope of log predicted on log true area (views with a prediction; ``area_agreement.log_area_fit``)
    and size-half median ratios."""
    ok = pred_area > 0
    slope = log_area_fit(true_area[ok], pred_area[ok])[0]
    small = true_area <= np.median(true_area)
    ratio = pred_area / true_area
    return {
        "slope": None if np.isnan(slope) else round(slope, 3),
        "median_ratio_smaller_half": round(float(np.median(ratio[small & ok])), 2),
        "median_ratio_larger_half": round(float(np.median(ratio[~small & ok])), 2),
        "views_without_prediction": int((~ok).sum()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "bcedge" / "mass_model")
    parser.add_argument("--artifact", default="model_fp16.tflite")
    parser.add_argument("--data", default="combined-v2")
    parser.add_argument("--root", default=os.environ.get("BCEDGE_DATA"))
    parser.add_argument("--split", default=str(REPO / "benchmarks" / "splits" / "combined-v2.json"))
    parser.add_argument("--subset", default="train", choices=["train", "val"], help="never test: rules are chosen here")
    parser.add_argument("-o", "--option", action="append", default=[], help="reader option KEY=VALUE")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if not args.root:
        print("error: --root or BCEDGE_DATA is needed", file=sys.stderr)
        return 2

    try:
        views, threshold = collect(args)
    except (BcedgeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not views:
        print(f"error: no pixel-mask lesion views in {args.data} [{args.subset}]", file=sys.stderr)
        return 2

    truth = [v["truth"] for v in views]
    matched = [
        np.logical_or.reduce([c for c in v["components"] if (c & v["truth"]).any()] or [np.zeros_like(v["pred"])])
        for v in views
    ]
    true_area = np.array([t.sum() for t in truth], dtype=np.float64)
    false_components = [score_image(v["pred"], v["truth"]).false_components for v in views]
    as_predicted, found = scored(views, [v["pred"] for v in views])
    doc = {
        "script": "benchmarks/outline_probe.py",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": os.path.relpath(args.model.resolve(), REPO),
        "artifact": args.artifact,
        "threshold": threshold,
        "data": {"dataset": args.data, "split": Path(args.split).name, "subset": args.subset, "options": args.option},
        "n_views": len(views),
        "area": {
            "matched_components": area_figures(true_area, np.array([m.sum() for m in matched], dtype=np.float64)),
            "whole_prediction": area_figures(true_area, np.array([v["pred"].sum() for v in views], dtype=np.float64)),
        },
        "false_components_per_view": round(float(np.mean(false_components)), 2),
        "false_component_area_share": round(
            1 - sum(float(m.sum()) for m in matched) / max(sum(float(v["pred"].sum()) for v in views), 1.0), 3
        ),
        "dice": {"as_predicted": as_predicted, "oracle_without_false_components": scored(views, matched)[0]},
        "found": {"as_predicted": found},
    }
    for name, rule in RULES.items():
        doc["dice"][name], doc["found"][name] = scored(views, [rule(v) for v in views])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, (json.dumps(doc, indent=1) + "\n").encode())
    print(json.dumps({k: doc[k] for k in ("n_views", "area", "false_components_per_view", "dice", "found")}, indent=1))
    return 0


def collect(args: argparse.Namespace) -> tuple[list[dict], float]:
    """Each pixel-mask lesion view of the subset through the bundle: truth, prediction, its components,
    the probability map on the original grid and the image as uint8; and the threshold used."""
    data = BenchData.from_command_line(args.data, args.root, args.split, args.subset, args.option)
    views: list[dict] = []
    with Segmenter(args.model, "tflite", artifact=args.artifact) as seg:
        for item in data.items():
            if item.mask_kind != "pixel":
                continue
            mammo = item.decode()
            result = seg.segment(mammo)
            truth = item.mask(mammo.pixels.shape).astype(bool)
            if not truth.any():
                continue
            pred = result.mask.astype(bool)
            views.append(
                {
                    "id": item.id,
                    "truth": truth,
                    "pred": pred,
                    "components": components(pred),
                    "probability": result.geometry.to_original(result.probability, interpolation="linear"),
                    "image": (mammo.pixels * 255).astype(np.uint8),
                }
            )
            print(item.id, file=sys.stderr)
        return views, seg.threshold


if __name__ == "__main__":
    raise SystemExit(main())
