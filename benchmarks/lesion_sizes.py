"""Lesion sizes on the model grid, per split and source (issue #12): what sizes the model learns from.

For each lesion component (8-connected, :func:`bcedge.evaluation.label_components`) of the
preprocessed masks (the one preprocessing, through the training cache), the equivalent diameter
``2 * sqrt(area / pi)`` in model pixels; reported per split (train, val) and per (source, mask kind)
as n, quartiles, 10th/90th percentiles and the share under 20 px. An 8 mm mass on a full-field scan is
~14 px of the 512 px grid (README, "Accuracy on real mammograms"). Masks only: no model is run, and the
test split is not read.

    python benchmarks/lesion_sizes.py --cache CACHE --out benchmarks/results/lesion_sizes.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SMALL_PX = 20.0


def diameters(masks: np.ndarray) -> list[float]:
    """Equivalent diameters (model px) of every lesion component of (N, S, S[, 1]) {0, 1} masks."""
    from bcedge.evaluation import label_components

    out: list[float] = []
    for mask in masks.reshape(masks.shape[0], masks.shape[1], masks.shape[2]):
        n, labels = label_components(mask)
        if n:
            areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
            out += [float(2.0 * np.sqrt(a / np.pi)) for a in areas]
    return out


def summary(values: list[float]) -> dict:
    """n, percentiles 10/25/50/75/90 (rounded to 0.1 px) and the share under :data:`SMALL_PX`."""
    if not values:
        return {"n": 0}
    p = np.percentile(values, [10, 25, 50, 75, 90])
    return {
        "n": len(values),
        "percentiles_10_25_50_75_90": [round(float(v), 1) for v in p],
        f"share_under_{SMALL_PX:g}px": round(float(np.mean(np.asarray(values) < SMALL_PX)), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="combined-v2")
    parser.add_argument("--root", type=Path, default=None, help="data root (default: $BCEDGE_DATA)")
    parser.add_argument("--split", type=Path, default=REPO / "benchmarks/splits/combined-v2.json")
    parser.add_argument("--size", type=int, default=512, help="model grid")
    parser.add_argument("--cache", type=Path, required=True, help="preprocessed-array cache")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    import os

    from bcedge.errors import BcedgeError
    from bcedge.imageio import atomic_write_bytes
    from bcedge.preprocess import PreprocessConfig
    from training.data import prepare_split_sets

    root = args.root or os.environ.get("BCEDGE_DATA")
    if not root:
        raise SystemExit("error: --root or BCEDGE_DATA is needed")
    try:
        sets, _ = prepare_split_sets((args.data,), root, args.split, PreprocessConfig(size=args.size), args.cache)
    except (BcedgeError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    groups: dict[str, dict] = {}
    for name in ("train", "val"):  # never test
        if name not in sets:
            continue
        s = sets[name]
        for key in sorted(set(zip(s.sources, s.mask_kinds, strict=True))):
            if key[1] == "none":
                continue
            keep = [i for i in range(len(s)) if (s.sources[i], s.mask_kinds[i]) == key]
            groups[f"{name}/{key[0]}/{key[1]}"] = {"images": len(keep), **summary(diameters(s.masks[keep]))}
    doc = {
        "script": "benchmarks/lesion_sizes.py",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["python", "benchmarks/lesion_sizes.py", *sys.argv[1:]]),
        "data": args.data,
        "split": str(args.split.name),
        "grid_px": args.size,
        "unit": "equivalent diameter of each lesion component, model px",
        "groups": groups,
    }
    atomic_write_bytes(args.out, (json.dumps(doc, indent=1) + "\n").encode())
    print(json.dumps(groups, indent=1))


if __name__ == "__main__":
    main()
