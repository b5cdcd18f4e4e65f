"""Does a model's predicted area follow the lesion's? (issue #12, session 12)

Reads the per-image records of ``bcedge evaluate --json`` or ``benchmarks/eval_cross_dataset.py``
(``tp``, ``fp``, ``fn`` on the original grid) and, for the pixel-mask lesion images of one source,
fits ``log(predicted area) = a + slope * log(true area)``: a slope near 1 means outlines that
grow with the lesion, near 0 one blob size for every lesion (what the shipped model does; see
README "One blob size for every lesion"). Also the Pearson correlation of the logs, the median
ratio predicted / true area for the smaller and the larger half of the lesions, and the mean
Dice of each half. Intervals: percentile bootstrap over images (the seed and resample count of
:mod:`bcedge.evaluation`). Images with no predicted pixel are left out of the fit (their log
area is undefined) and counted.

The predicted area is the whole predicted mask of a view (``tp + fp``): the outline on the lesion
and any false component elsewhere on the same view. ``benchmarks/outline_probe.py`` separates the
two (session 13: on the shipped model's training views the outline alone has slope 0.36, the whole
mask 0.22).

Usage::

    python benchmarks/area_agreement.py REPORT.json [...] [--source cdd-cesm] [--set 'CDD-CESM DM'] [--out OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bcedge.evaluation import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, CONFIDENCE  # noqa: E402


def image_records(report: dict, set_name: str | None = None) -> list[dict]:
    """Per-image records of an evaluate report, or of a cross-dataset report's sets (those whose
    name contains ``set_name``, or all)."""
    if "images" in report:
        return list(report["images"])
    return [
        im
        for run in report.get("runs", [])
        for name, s in run.get("sets", {}).items()
        if set_name is None or set_name in name
        for im in s["images"]
    ]


def log_area_fit(true_area: np.ndarray, pred_area: np.ndarray) -> tuple[float, float]:
    """(slope, correlation) of log predicted against log true area; (n,) float arrays, > 0."""
    x, y = np.log(true_area), np.log(pred_area)
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    slope = float(np.polyfit(x, y, 1)[0])
    return slope, float(np.corrcoef(x, y)[0, 1])


def agreement(records: list[dict], source: str = "cdd-cesm") -> dict:
    """Slope, correlation and size-half figures for ``source``'s pixel-mask lesion images."""
    rows = [r for r in records if r.get("source") == source and r.get("kind") == "pixel" and r["tp"] + r["fn"] > 0]
    true_area = np.array([r["tp"] + r["fn"] for r in rows], dtype=np.float64)
    pred_area = np.array([r["tp"] + r["fp"] for r in rows], dtype=np.float64)
    dice = np.array([r["dice"] for r in rows], dtype=np.float64)
    keep = pred_area > 0
    t, p = true_area[keep], pred_area[keep]
    if t.size < 3:
        raise ValueError(f"{t.size} {source} pixel-mask lesion images with a prediction: a fit needs 3 or more")
    slope, corr = log_area_fit(t, p)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    boot = np.array([log_area_fit(t[i], p[i]) for i in rng.integers(0, t.size, size=(BOOTSTRAP_RESAMPLES, t.size))])
    tail = (1.0 - CONFIDENCE) / 2.0 * 100.0
    lo, hi = np.nanpercentile(boot, [tail, 100.0 - tail], axis=0)
    small = true_area <= np.median(true_area)
    halves = {}
    for name, sel in (("smaller_half", small), ("larger_half", ~small)):
        ratio = pred_area[sel] / true_area[sel]
        halves[name] = {
            "n": int(sel.sum()),
            "true_area_px_median": float(np.median(true_area[sel])),
            "pred_over_true_median": float(np.median(ratio)),
            "dice_mean": float(dice[sel].mean()),
        }
    return {
        "source": source,
        "n_images": len(rows),
        "n_without_prediction": int((~keep).sum()),
        "slope": {"value": slope, "low": float(lo[0]), "high": float(hi[0]), "n": int(t.size)},
        "correlation": {"value": corr, "low": float(lo[1]), "high": float(hi[1]), "n": int(t.size)},
        **halves,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+", type=Path)
    ap.add_argument("--source", default="cdd-cesm")
    ap.add_argument("--set", dest="set_name", help="cross-dataset reports: only sets whose name contains this")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    result = {"script": "benchmarks/area_agreement.py", "source": args.source, "set": args.set_name, "reports": {}}
    for path in args.reports:
        try:
            a = agreement(image_records(json.loads(path.read_text()), args.set_name), args.source)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            print(f"error: {path}: {exc}", file=sys.stderr)
            return 2
        result["reports"][str(path)] = a
        s, c, sm, lg = a["slope"], a["correlation"], a["smaller_half"], a["larger_half"]
        print(
            f"{path}: n={a['n_images']} slope {s['value']:.2f} ({s['low']:.2f}-{s['high']:.2f}) "
            f"corr {c['value']:.2f} ({c['low']:.2f}-{c['high']:.2f}); predicted/true area, median: "
            f"smaller half {sm['pred_over_true_median']:.2f} (Dice {sm['dice_mean']:.3f}), "
            f"larger half {lg['pred_over_true_median']:.2f} (Dice {lg['dice_mean']:.3f})"
        )
    if args.out:
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
