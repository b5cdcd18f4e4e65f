"""What running only the breast's columns buys on real images, and what it changes (issue #14).

For a bundle's any-width TFLite artifacts (``bcedge export``'s default since session 15) and the
images of a dataset split, each image goes through the one preprocessing and the model twice: on
the column block the runtime picks (:func:`bcedge.backends.tflite.column_block`, ``columns=breast``,
what every bcedge command runs) and on the whole square (``columns=square``, what a fixed-width
artifact runs). Reports:

* the block widths (how many of the square's columns the breast needs), per source;
* agreement: mask Dice between the two at the bundle threshold, per image (min, mean) and pooled,
  and the largest probability difference inside the block (no ground truth is read: the split's
  masks are not used, so any split may be measured);
* speed: per-image model time of each mode, interleaved round by round (the order alternates), at
  ``--threads``; the breast mode changes width from image to image as a stream of scans does, so
  its re-planning cost is in its figure. Each round records the load of other processes.

    python benchmarks/bench_any_width.py --model bcedge/mass_model --data combined-v2 --root $BCEDGE_DATA \\
        --split benchmarks/splits/combined-v2.json --subset val --out benchmarks/results/any_width.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bcedge.backends.tflite import column_block  # noqa: E402
from bcedge.bench.data import BenchData  # noqa: E402
from bcedge.bench.load import LoadMeter  # noqa: E402
from bcedge.bench.machine import library_versions, machine_info, source_state  # noqa: E402
from bcedge.bundle import load_bundle  # noqa: E402
from bcedge.imageio import atomic_write_bytes  # noqa: E402
from bcedge.preprocess import preprocess  # noqa: E402


def tensors(data: BenchData, config: Any) -> list[tuple[str, str, np.ndarray]]:
    """(image id, source, (1, S, S, 1) float32 tensor) for every image of ``data``."""
    out = []
    for item in data.items():
        tensor, _ = preprocess(item.decode(), config)
        out.append((item.id, item.source, tensor.astype(np.float32, copy=False)))
    return out


def agreement(bundle: Any, record: Any, images: list[tuple[str, str, np.ndarray]]) -> dict[str, Any]:
    """Masks and probabilities of the breast block against the square, one thread (Dice by
    :mod:`bcedge.metrics`, the square's mask as the target)."""
    from bcedge.metrics import Counts, counts, scores

    breast = bundle.open(record, threads=1, columns="breast")
    square = bundle.open(record, threads=1, columns="square")
    try:
        dices, inside, pooled = [], [], Counts(0, 0, 0)
        for _, _, x in images:
            c0, c1 = column_block(x)
            p, q = breast.predict(x)[0, :, :, 0], square.predict(x)[0, :, :, 0]
            c = counts(p, q >= bundle.threshold, bundle.threshold)
            dices.append(scores(c)["dice"])
            pooled = pooled + c
            inside.append(float(np.abs(p - q)[:, c0:c1].max()))
    finally:
        breast.close()
        square.close()
    return {
        "mask_dice_min": round(min(dices), 4),
        "mask_dice_mean": round(float(np.mean(dices)), 5),
        "mask_dice_pooled": round(scores(pooled)["dice"], 5),
        "images_below_0.98": sum(d < 0.98 for d in dices),
        "max_abs_probability_difference_in_block": round(max(inside), 4),
    }


def speed(
    bundle: Any, record: Any, images: list[tuple[str, str, np.ndarray]], threads: int, rounds: int
) -> dict[str, Any]:
    """Per-image model ms of each mode, interleaved rounds (order alternating), ``threads`` threads."""
    backends = {mode: bundle.open(record, threads=threads, columns=mode) for mode in ("breast", "square")}
    try:
        for backend in backends.values():  # warm-up: delegate set-up, first allocations
            backend.predict(images[0][2])
        times: dict[str, list[float]] = {mode: [] for mode in backends}
        loads = []
        for r in range(rounds):
            order = list(backends) if r % 2 == 0 else list(reversed(backends))
            with LoadMeter() as meter:
                for mode in order:
                    for _, _, x in images:
                        t0 = time.perf_counter()
                        backends[mode].predict(x)
                        times[mode].append((time.perf_counter() - t0) * 1e3)
            loads.append(meter.result)
    finally:
        for backend in backends.values():
            backend.close()
    medians = {mode: round(statistics.median(v), 2) for mode, v in times.items()}
    means = {mode: round(float(np.mean(v)), 2) for mode, v in times.items()}
    return {
        "threads": threads,
        "rounds": rounds,
        "ms_per_image_median": medians,
        "ms_per_image_mean": means,
        "ratio_mean_breast_to_square": round(means["breast"] / means["square"], 3),
        "busy_rounds": sum(bool(load.get("busy")) for load in loads),
        "rounds_load": loads,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(REPO / "bcedge" / "mass_model"))
    ap.add_argument("--data", default="combined-v2")
    ap.add_argument("--root", default=None)
    ap.add_argument("--split", default=str(REPO / "benchmarks" / "splits" / "combined-v2.json"))
    ap.add_argument("--subset", default="val")
    ap.add_argument("--option", "-o", action="append", default=[])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    data = BenchData.from_command_line(args.data, args.root, args.split, args.subset, args.option)
    bundle = load_bundle(args.model)
    images = tensors(data, bundle.preprocess_config())
    size = bundle.input_size
    widths: dict[str, list[int]] = {}
    for _, source, x in images:
        c0, c1 = column_block(x)
        widths.setdefault(source, []).append(c1 - c0)
    every = [w for ws in widths.values() for w in ws]
    doc: dict[str, Any] = {
        "script": "benchmarks/bench_any_width.py",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "source": source_state(REPO),
        "bundle": args.model,
        "data": data.to_dict(),
        "n_images": len(images),
        "square": size,
        "block_columns": {
            source: {"n": len(ws), "median": float(np.median(ws)), "min": min(ws), "max": max(ws)}
            for source, ws in {**widths, "all": every}.items()
        },
        "block_share_of_square_mean": round(float(np.mean(every)) / size, 3),
        "machine": machine_info([1, args.threads]),
        "libraries": library_versions(),
        "artifacts": {},
    }
    for record in bundle.manifest.artifacts:
        if record.format != "tflite":
            continue
        print(f"{record.file}: agreement ...", flush=True)
        row = {"agreement": agreement(bundle, record, images)}
        print(f"{record.file}: speed ...", flush=True)
        row["speed"] = speed(bundle, record, images, args.threads, args.rounds)
        doc["artifacts"][record.file] = row
        s, g = row["speed"], row["agreement"]
        mean = s["ms_per_image_mean"]
        print(
            f"  {record.file}: breast {mean['breast']} ms vs square {mean['square']}"
            f" ms per image (mean, {args.threads} threads) = {s['ratio_mean_breast_to_square']}; mask Dice min"
            f" {g['mask_dice_min']} mean {g['mask_dice_mean']}; busy rounds {s['busy_rounds']}/{s['rounds']}"
        )
    print(f"block columns: {doc['block_columns']}")
    atomic_write_bytes(Path(args.out), (json.dumps(doc, indent=2) + "\n").encode())
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
