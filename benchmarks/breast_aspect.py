"""How squashed are the CDD-CESM training files? The breast's height / width against mini-MIAS (issue #12).

CDD-CESM's source resized every file to 512x512, whatever the detector's aspect, and does not record
the originals' sizes. mini-MIAS films are digitised at one pixel pitch on both axes (true aspect).
On MLO views of both, this finds the breast (:func:`bcedge.preprocess.breast_mask` on the working
image, the pipeline's own step) and takes its bounding box's height / width; the ratio of the two
collections' medians estimates the factor by which CDD-CESM's anatomy is squashed top to bottom
(1.0: not at all), with a 95 % bootstrap interval (both collections resampled). An estimate, not a
measurement of the detectors: the two populations, eras and positioning differ.

Why it matters: ``PreprocessConfig.square_image`` lays a scan out as if resized to a square, which
matches the training files only when the scan's aspect equals the originals'. A 2944x1920 scan
squared is squashed 1.53x; if the training files were squashed ~1.1x, that is further from them than
the scan as it is.

    BCEDGE_DATA=../shared/data python benchmarks/breast_aspect.py [--out benchmarks/results/breast_aspect.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bcedge.imageio import atomic_write_bytes  # noqa: E402
from bcedge.preprocess import as_float01, breast_mask, to_work  # noqa: E402

#: Bootstrap resamples and seed of the ratio's interval.
RESAMPLES, SEED = 10000, 0


def height_over_width(image: np.ndarray) -> float | None:
    """The breast's bounding-box height / width on the working image of an (h, w) uint8 image; None if not found."""
    work, _ = to_work(as_float01(image), 512)
    found = breast_mask(work)
    if not found.found:
        return None
    top, left, bottom, right = found.bbox
    return (bottom - top) / (right - left)


def collect(paths: list[Path]) -> list[float]:
    """:func:`height_over_width` of every readable image (a view counted once per file)."""
    out = []
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        ratio = None if image is None else height_over_width(image)
        if ratio is not None:
            out.append(ratio)
    return out


def squash_estimate(true_aspect: list[float], squashed: list[float]) -> dict[str, Any]:
    """median(true) / median(squashed) and its percentile bootstrap interval (both samples resampled)."""
    a, b = np.asarray(true_aspect), np.asarray(squashed)
    rng = np.random.default_rng(SEED)
    stats = np.median(rng.choice(a, (RESAMPLES, a.size)), axis=1) / np.median(
        rng.choice(b, (RESAMPLES, b.size)), axis=1
    )
    low, high = np.percentile(stats, [2.5, 97.5])
    return {"value": float(np.median(a) / np.median(b)), "low": float(low), "high": float(high)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root", type=Path, default=Path(os.environ.get("BCEDGE_DATA", REPO.parent / "shared" / "data"))
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    cdd = sorted(p for p in args.root.glob("cdd-cesm*/**/images/*") if p.is_file())
    groups = {
        "mini-mias (MLO, true aspect)": sorted((args.root / "mini-mias" / "images").glob("*.png")),
        "cdd-cesm DM MLO": [p for p in cdd if re.search(r"_DM_MLO\.", p.name)],
        "cdd-cesm CM MLO": [p for p in cdd if re.search(r"_CM_MLO\.", p.name)],
    }
    ratios = {name: collect(paths) for name, paths in groups.items()}
    summary = {
        name: {"n": len(v), "median": float(np.median(v)), "iqr": [float(q) for q in np.percentile(v, [25, 75])]}
        for name, v in ratios.items()
    }
    truth = ratios["mini-mias (MLO, true aspect)"]
    estimates = {name: squash_estimate(truth, ratios[name]) for name in ("cdd-cesm DM MLO", "cdd-cesm CM MLO")}
    doc = {
        "script": "benchmarks/breast_aspect.py",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "what": "breast bounding-box height / width (working image), MLO views; "
        "squash = median ratio mini-MIAS / CDD-CESM",
        "note": "CDD-CESM files include copies of some views (flipped_/mirrored_), counted per file here",
        "groups": summary,
        "squash_estimate": estimates,
    }
    for name, s in summary.items():
        print(f"{name}: n={s['n']}, height/width median {s['median']:.2f} (IQR {s['iqr'][0]:.2f}-{s['iqr'][1]:.2f})")
    for name, e in estimates.items():
        print(f"squash of {name}: {e['value']:.2f} ({e['low']:.2f}-{e['high']:.2f})")
    if args.out is not None:
        atomic_write_bytes(args.out, (json.dumps(doc, indent=2) + "\n").encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
