"""How many float layers a full-INT8 TFLite model needs: Dice against FP32 on VALIDATION.

For a training run, converts full-integer INT8 with the N layers the TFLite quantisation
debugger ranks worst (:func:`export.tflite.debug_ranking`) kept in float, for each N given,
and scores each artifact beside the bundle's dynamic-range INT8 on the run's validation
split (model grid): task Dice on lesion images at 0.5 and at the bundle threshold, its
change against the FP32 artifact, and mask Dice against FP32 (pixels over threshold).
``bcedge export --int8-float-layers N`` then exports the chosen N with the accuracy gate.

    python benchmarks/int8_float_layers.py RUN_DIR --fp32 BUNDLE/model_fp32.tflite \\
        --dynamic BUNDLE/model_dynamic.tflite --cache CACHE --n 0 3 8 --out RESULT.json

Issue #12 (session 6): ``benchmarks/results/int8_float_layers_P512L.json`` came from the first
version of this script (the same converter and debugger calls, written in /tmp before
``export.tflite.debug_ranking`` existed); the test split is never read here.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def predict(content: bytes, images: np.ndarray, threads: int = 2) -> np.ndarray:
    """(N, S, S, 1) float32 probabilities of a TFLite model, one image per call."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=content, num_threads=threads)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    probs = np.empty(images.shape, np.float32)
    for k in range(len(images)):
        interp.set_tensor(inp["index"], images[k : k + 1].astype(np.float32))
        interp.invoke()
        probs[k] = interp.get_tensor(out["index"])[0]
    return probs


def rate(content: bytes, reference: np.ndarray, images: np.ndarray, masks: np.ndarray, thresholds) -> dict:
    """Task Dice, its change against the reference, and mask agreement with it, per threshold."""
    from export.verify import score

    probs = predict(content, images)
    row: dict = {"size_mb": len(content) / 1e6}
    for t in thresholds:
        got, ref = score(probs, masks, t), score(reference, masks, t)
        a, b = probs >= t, reference >= t
        row[f"dice@{t}"] = got["dice"]
        row[f"delta@{t}"] = got["dice"] - ref["dice"]
        row[f"mask_dice_vs_fp32@{t}"] = float(2 * (a & b).sum() / max(1, int(a.sum() + b.sum())))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--fp32", type=Path, required=True, help="the run's FP32 TFLite artifact (the reference)")
    parser.add_argument("--dynamic", type=Path, default=None, help="a dynamic-range INT8 artifact to score beside")
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--n", type=int, nargs="+", default=[0, 3, 8])
    parser.add_argument("--threshold", type=float, default=0.65, help="the bundle's threshold (besides 0.5)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from bcedge.bench import machine_info
    from bcedge.imageio import atomic_write_bytes
    from export import tflite
    from export.bundle_builder import load_keras_model
    from export.calibration import calibration_images, split_sets
    from training.run import load_run

    run = load_run(args.run)
    sets, _ = split_sets(run, args.cache)
    val = sets["val"]
    calib, _ = calibration_images(run, 200, args.cache, train_images=sets["train"].images)
    thresholds = (0.5, args.threshold)
    reference = predict(args.fp32.read_bytes(), val.images)
    rows: dict = {}
    if args.dynamic is not None:
        rows["dynamic"] = rate(args.dynamic.read_bytes(), reference, val.images, val.masks, thresholds)
    with tempfile.TemporaryDirectory() as tmp:
        model = load_keras_model(run.model_path)
        saved = tflite.export_saved_model(model, Path(tmp) / "saved", int(run.config["size"]))
        ranking = tflite.debug_ranking(saved, calib) if any(n > 0 for n in args.n) else []
        for n in args.n:
            kept = [r["tensor"] for r in ranking[:n]]
            content = tflite.convert(saved, "int8", calib_images=calib, float_layers=kept)
            rows[f"int8_float{n}"] = rate(content, reference, val.images, val.masks, thresholds)
            print(n, json.dumps(rows[f"int8_float{n}"]), flush=True)
    doc = {
        "what": "full INT8 with the N worst-quantised layers in float vs FP32, validation split, model grid",
        "command": " ".join(["python", "benchmarks/int8_float_layers.py", *sys.argv[1:]]),
        "machine": machine_info(),
        "n_val_images": len(val.images),
        "ranking": ranking[:20],
        "rows": rows,
    }
    atomic_write_bytes(args.out, (json.dumps(doc, indent=1, default=str) + "\n").encode())


if __name__ == "__main__":
    main()
