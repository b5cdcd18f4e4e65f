"""Decoder upsampling: nearest-neighbour resize + conv vs. Conv2DTranspose, after TFLite conversion.

For each model and upsampling variant this builds the Keras model (same seed, so
both variants share every weight outside the upsampling), converts it to TFLite
FP32, dynamic range and full INT8 (representative data: preprocessed training
images from an arrays file written by ``bcedge train --export-arrays``), and
measures on this CPU:

* p50 latency of one 256x256 image over ``--runs`` invocations (after warm-up),
  with ``--threads`` interpreter threads (LiteRT, XNNPACK default delegate);
* fidelity to the Keras output: Dice between the thresholded Keras and TFLite
  masks on the validation images, and the max absolute probability difference.

    python benchmarks/bench_upsampling.py --arrays data.npz --json benchmarks/results/upsampling.json

The models are untrained (seeded He initialisation): their outputs cluster
around one value, so masks are thresholded at the median of the Keras output
rather than 0.5. This measures what the conversion does to each graph, not
segmentation quality; both variants have the same trainable layers apart from
the transpose convolutions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _tflite(model, kind: str, calib: np.ndarray, workdir: Path) -> bytes:
    import tensorflow as tf

    saved = workdir / f"saved_{model.name}_{id(model)}"
    if not saved.exists():
        model.export(str(saved), format="tf_saved_model", verbose=False)
    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    if kind in ("dynamic", "int8"):
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if kind == "int8":

        def rep():
            for img in calib:
                yield [img[None].astype(np.float32)]

        conv.representative_dataset = rep
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return conv.convert()


def _run(blob: bytes, images: np.ndarray, threads: int, runs: int) -> tuple[np.ndarray, float]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=blob, num_threads=threads)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    probs = []
    for img in images:
        interp.set_tensor(inp["index"], img[None].astype(np.float32))
        interp.invoke()
        probs.append(interp.get_tensor(out["index"])[0])
    for _ in range(3):
        interp.invoke()
    times = []
    for i in range(runs):
        interp.set_tensor(inp["index"], images[i % len(images)][None].astype(np.float32))
        t0 = time.perf_counter_ns()
        interp.invoke()
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return np.stack(probs), float(np.median(times))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arrays", type=Path, required=True)
    ap.add_argument("--models", default="unet,unet-mobilenetv2,unet-vgg19")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-calib", type=int, default=32)
    ap.add_argument("--n-val", type=int, default=16)
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args()
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    from bcedge.metrics import dice
    from training.data import load_arrays
    from training.models import build_model

    sets, meta = load_arrays(args.arrays)
    calib = sets["train"].images[: args.n_calib]
    val = sets["val"].images[: args.n_val]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            for up in ("nearest", "transpose"):
                keras.utils.set_random_seed(0)
                model = build_model(name, int(calib.shape[1]), upsampling=up)
                ref = np.asarray(model.predict(val, verbose=0))
                ref_mask = ref >= np.median(ref)  # untrained: compare around the median, not 0.5
                for kind in ("fp32", "dynamic", "int8"):
                    blob = _tflite(model, kind, calib, Path(tmp))
                    probs, p50 = _run(blob, val, args.threads, args.runs)
                    row = {
                        "model": name,
                        "upsampling": up,
                        "precision": kind,
                        "size_mb": round(len(blob) / 1e6, 2),
                        "p50_ms": round(p50, 2),
                        "max_abs_diff": float(np.abs(probs - ref).max()),
                        "mask_dice_vs_keras": float(
                            np.mean([dice(p >= np.median(ref), r) for p, r in zip(probs, ref_mask, strict=True)])
                        ),
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    doc = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": args.threads,
        },
        "arrays": str(args.arrays.name),
        "preprocess_hash": meta.get("preprocess_hash"),
        "rows": rows,
    }
    from bcedge.imageio import atomic_write_bytes

    atomic_write_bytes(args.json, (json.dumps(doc, indent=2) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
