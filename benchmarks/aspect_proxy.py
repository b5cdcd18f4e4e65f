"""Does a model keep its Dice when a real mammogram reaches it at a full-field detector's aspect? (issue #12)

The CDD-CESM files were resized to 512x512 by their source, whatever the detector's aspect, so the
anatomy the model learns from is squashed top to bottom; a full-field scan (e.g. 2944x1920, 0.1 mm)
is read at its own aspect. This re-encodes each pixel-mask lesion view of a split subset as a 12-bit
MONOCHROME2 DICOM (``8-bit value * 16 + 8``, a full-range window, 0.1 mm pixels, laterality and view
from its id) at several sizes, runs it through :class:`bcedge.pipeline.Segmenter` (``bcedge infer``'s
path, original grid) and scores it against its mask resized the same way (nearest):

* ``1.00``: 2048x2048, the file's own aspect at full-field resolution and bit depth (the
  re-encoding alone: bits, size, the millimetre minimum area);
* ``1.25``: 2560x2048 (taller: roughly the aspect of the 24x30 cm detectors);
* ``1.53``: 2944x1920 (the issue's full-field example).

Reports per aspect and per view kind (DM, CM) the mean lesion-image Dice and the lesions found, each
with n and a 95 % bootstrap interval (:func:`bcedge.evaluation.estimate`), and the mean per-image
change against ``1.00`` (paired, with its interval). A proxy: the upscaled files are real in content,
not in detail, and the detectors' true aspects are not recorded in CDD-CESM.

    BCEDGE_DATA=../shared/data python benchmarks/aspect_proxy.py --model bcedge/mass_model \\
        [--artifact model_fp16.tflite] [--subset val] [--out benchmarks/results/aspect_proxy_mass_model.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bcedge.bench.data import BenchData  # noqa: E402
from bcedge.evaluation import estimate, format_estimate, score_image  # noqa: E402
from bcedge.imageio import atomic_write_bytes  # noqa: E402
from bcedge.pipeline import Segmenter  # noqa: E402

#: aspect label -> (rows, columns) of the re-encoded file.
SIZES: dict[str, tuple[int, int]] = {"1.00": (2048, 2048), "1.25": (2560, 2048), "1.53": (2944, 1920)}
SPACING_MM = (0.1, 0.1)


def view_fields(sample_id: str) -> tuple[str | None, str | None, str]:
    """(laterality, view, kind) from a CDD-CESM id ``P<n>_<L|R>_<DM|CM>_<CC|MLO>``; Nones for others."""
    parts = sample_id.split("_")
    if len(parts) == 4 and parts[1] in ("L", "R") and parts[2] in ("DM", "CM"):
        return parts[1], parts[3], parts[2]
    return None, None, "other"


def reencode(image: np.ndarray, size: tuple[int, int], laterality: str | None, view: str | None, path: Path) -> Path:
    """``image`` ((h, w) uint8) upscaled (bicubic) to ``size`` and written as a 12-bit MG DICOM at ``path``."""
    from bcedge.dicom_write import MGTags, write_mg_dicom

    big = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
    tags = MGTags(
        bits_stored=12,
        windows=[(2048.0, 4096.0)],
        laterality=laterality,
        view=view,
        pixel_spacing_mm=SPACING_MM,
        manufacturer="bcedge aspect proxy",
    )
    return write_mg_dicom(path, big.astype(np.uint16) * 16 + 8, tags)


def as_uint8(pixels: np.ndarray) -> np.ndarray:
    """A decoded 8-bit raster's display pixels ((h, w) float in [0, 1]) back to its uint8 values."""
    return np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bcedge/mass_model", help="bundle directory")
    parser.add_argument("--artifact", default=None, help="artifact file (default: what --backend auto picks)")
    parser.add_argument("--data", default="combined-v2")
    parser.add_argument("--root", default=os.environ.get("BCEDGE_DATA"))
    parser.add_argument("--split", default=str(REPO / "benchmarks" / "splits" / "combined-v2.json"))
    parser.add_argument("--subset", default="val", help="split subset (never the test split for choices)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="JSON report")
    args = parser.parse_args(argv)

    data = BenchData.from_command_line(args.data, args.root, args.split, args.subset)
    started = time.time()
    per_view: list[dict[str, Any]] = []
    with (
        Segmenter(args.model, threads=args.threads, artifact=args.artifact) as seg,
        tempfile.TemporaryDirectory() as tmp,
    ):
        for item in data.items():
            laterality, view, kind = view_fields(item.id)
            if item.mask_kind != "pixel" or kind == "other":
                continue  # pixel-mask CDD-CESM lesion views only (MIAS circles are a proxy of their own)
            mammo = item.decode()
            image = as_uint8(mammo.pixels)
            truth = item.mask(mammo.pixels.shape).astype(np.uint8)
            row: dict[str, Any] = {"id": item.id, "kind": kind, "dice": {}, "found": {}, "lesions": None}
            for label, size in SIZES.items():
                path = reencode(image, size, laterality, view, Path(tmp) / "scan.dcm")
                result = seg.segment(path)
                big_truth = cv2.resize(truth, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
                score = score_image(result.mask, big_truth, id=item.id)
                row["dice"][label] = score.dice
                row["found"][label] = score.found
                row["lesions"] = score.lesions
            per_view.append(row)
            print(item.id, {k: round(v, 3) for k, v in row["dice"].items()}, flush=True)
        model = seg.model_info

    summary: dict[str, Any] = {}
    for kind in [*sorted({r["kind"] for r in per_view}), "all"]:
        rows = [r for r in per_view if kind in ("all", r["kind"])]
        group: dict[str, Any] = {}
        for label in SIZES:
            group[label] = {
                "dice": estimate([r["dice"][label] for r in rows]),
                "detection_rate": estimate([r["found"][label] for r in rows], [r["lesions"] for r in rows]),
            }
            if label != "1.00":
                group[label]["dice_change_vs_1.00"] = estimate([r["dice"][label] - r["dice"]["1.00"] for r in rows])
        summary[kind] = group
    doc = {
        "script": "benchmarks/aspect_proxy.py",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "data": data.label,
        "sizes": {k: list(v) for k, v in SIZES.items()},
        "model": {k: model.get(k) for k in ("bundle", "artifact", "sha256", "threads")},
        "threshold": seg.threshold,
        "seconds": round(time.time() - started, 1),
        "summary": summary,
        "views": per_view,
    }
    for kind, group in summary.items():
        cells = [f"{label}: {format_estimate(g['dice'])}" for label, g in group.items()]
        print(f"{kind} (n={group['1.00']['dice']['n']}): " + "; ".join(cells))
    if args.out is not None:
        atomic_write_bytes(args.out, (json.dumps(doc, indent=2) + "\n").encode())
        print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
