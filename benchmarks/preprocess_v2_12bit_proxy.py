"""Preprocessing version 2 vs version 1 on validation images re-encoded as 12-bit stored values (a proxy).

The project's real images are all 8-bit rasters, which version 2 resamples exactly as version 1
(``preprocess_v2_mass_val.json``: identical results), so version 2's own change - averaging stored
values and applying the display curve to the small image - is never exercised on real data. This
proxy exercises it: every image of a split is re-encoded as 12-bit stored values whose display
table is a sigmoid VOI curve (the ``SIGMOID`` VOI LUT function of PS3.3 C.11.2.1.3.1, centre
2048, width ``--width``), chosen so that the table maps the stored values back onto the image's
own displayed values (to 8-bit rounding). Both versions then see the same display curve; they
differ only where the curve bends inside an averaged block. Each image is segmented with the
bundle under version 1 and version 2 (a copy whose manifest says version 2, same artifact) and
scored against its ground truth (:func:`bcedge.evaluation.score_result`), and the two masks
against each other.

    python benchmarks/preprocess_v2_12bit_proxy.py --bundle bcedge/mass_model --data combined-v2 \\
        --root $BCEDGE_DATA --split benchmarks/splits/combined-v2.json --subset val \\
        --artifact model_fp16.tflite [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results" / "preprocess_v2_12bit_proxy.json"
BITS = 12


def sigmoid_table(width: float, centre: float = 2048.0) -> np.ndarray:
    """(4096,) float32 display table in [0, 1]: the DICOM SIGMOID VOI function, stretched to [0, 1]."""
    s = np.arange(1 << BITS, dtype=np.float64)
    y = 1.0 / (1.0 + np.exp(-4.0 * (s - centre) / width))
    return ((y - y[0]) / (y[-1] - y[0])).astype(np.float32)


def as_12_bit(mammo: Any, table: np.ndarray) -> Any:
    """The Mammogram with 12-bit stored values whose ``table`` lookup gives back its displayed pixels
    (the table entry nearest each displayed value); same metadata, no float pixels kept."""
    from bcedge.dicom import Mammogram, StoredImage

    display = np.asarray(mammo.pixels, dtype=np.float32)
    # table is increasing: the stored value whose entry is nearest each displayed value.
    right = np.clip(np.searchsorted(table, display), 1, table.size - 1)
    left = right - 1
    stored = np.where(display - table[left] <= table[right] - display, left, right).astype(np.uint16)
    return Mammogram(pixels=None, meta=mammo.meta, header=mammo.header, stored=StoredImage(stored, table, 0))  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("--subset", default="val")
    parser.add_argument("--artifact", default=None)
    parser.add_argument("--width", type=float, default=1600.0, help="sigmoid VOI width, stored values")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.subset == "test":
        raise SystemExit("error: this proxy is for choosing a preprocessing version: score it on val, not test")

    from preprocess_v2_gate import with_version

    from bcedge.bench import BenchData
    from bcedge.evaluation import score_result, summarize
    from bcedge.metrics import dice as mask_dice
    from bcedge.pipeline import Segmenter

    table = sigmoid_table(args.width)
    items = BenchData.from_command_line(args.data, args.root, args.split, args.subset, [], None).items()
    rows: list[dict[str, Any]] = []
    scores: dict[int, list[Any]] = {1: [], 2: []}
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with tempfile.TemporaryDirectory() as tmp:
        v2 = with_version(Path(args.bundle), 2, Path(tmp) / "v2")
        with (
            Segmenter(args.bundle, artifact=args.artifact, threads=args.threads) as seg1,
            Segmenter(v2, artifact=seg1.artifact.file, threads=args.threads) as seg2,
        ):
            assert (seg1.config.version, seg2.config.version) == (1, 2)
            model = seg1.model_info
            for item in items:
                mammo = as_12_bit(item.decode(), table)
                truth = item.mask(mammo.shape)
                r1, r2 = seg1.segment(mammo), seg2.segment(mammo)
                s1 = score_result(r1, truth, id=item.id, source=item.source, mask_kind=item.mask_kind)
                s2 = score_result(r2, truth, id=item.id, source=item.source, mask_kind=item.mask_kind)
                scores[1].append(s1)
                scores[2].append(s2)
                rows.append(
                    {
                        "id": item.id,
                        "dice_v1": round(s1.dice, 4),
                        "dice_v2": round(s2.dice, 4),
                        "mask_dice_v1_v2": round(mask_dice(r1.mask != 0, r2.mask != 0), 4),
                        "found": [s1.found, s2.found],
                        "false_components": [s1.false_components, s2.false_components],
                        "preprocess_ms": [round(r1.timing_ms["preprocess"], 2), round(r2.timing_ms["preprocess"], 2)],
                    }
                )
    summary = {}
    for v in (1, 2):
        lesion = [s for s in scores[v] if s.lesions > 0]
        normal = [s for s in scores[v] if s.lesions == 0]
        summary[f"version_{v}"] = {
            "dice_lesion_images": round(sum(s.dice for s in lesion) / len(lesion), 4),
            "lesions": sum(s.lesions for s in lesion),
            "found": sum(s.found for s in lesion),
            "fp_components_per_normal_image": round(sum(s.false_components for s in normal) / max(1, len(normal)), 4),
            "n_lesion_images": len(lesion),
            "n_normal_images": len(normal),
            "groups": summarize(scores[v])["groups"],
        }
    both = [r["mask_dice_v1_v2"] for r in rows]
    doc = {
        "what": __doc__.splitlines()[0],
        "when": started,
        "bundle": args.bundle,
        "data": {"dataset": args.data, "split": args.split, "subset": args.subset},
        "encoding": f"12-bit stored values, sigmoid VOI table (centre 2048, width {args.width}), nearest table entry",
        "model": model,
        **summary,
        "delta_dice_lesion_images": round(
            summary["version_2"]["dice_lesion_images"] - summary["version_1"]["dice_lesion_images"], 4
        ),
        "mask_dice_v1_vs_v2": {"median": round(float(np.median(both)), 4), "min": round(min(both), 4)},
        "images": rows,
    }
    Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    for v in (1, 2):
        s = summary[f"version_{v}"]
        print(
            f"v{v}: lesion-image Dice {s['dice_lesion_images']}, found {s['found']}/{s['lesions']}, "
            f"FP/normal {s['fp_components_per_normal_image']}"
        )
    print(f"mask Dice v1 vs v2: {doc['mask_dice_v1_vs_v2']}; written {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
