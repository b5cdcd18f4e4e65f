"""The baseline of issue #14: a naive pydicom + OpenCV + LiteRT script that segments one scan.

What anyone would write in an afternoon, and what ``bcedge infer --outputs json,mask``
is compared against (``benchmarks/bench_cold_start.py``): read the DICOM with pydicom, window it
with the header's first window (MONOCHROME1 inverted) to float32 in [0, 1], resize the whole
image to the model's input with OpenCV, run the ``.tflite`` artifact with LiteRT, resize the
probability map back, threshold it, write the mask PNG and a JSON with the connected components'
boxes. No border crop, no flip, no artefact removal, no checks: not bcedge's preprocessing, and
its masks are not expected to match bcedge's; it is a speed baseline only.

    python benchmarks/naive_infer.py SCAN.dcm MODEL.tflite OUT_DIR [--threads N] [--threshold 0.5]

``load`` and ``segment`` are the same steps for a warm process (``benchmarks/bench_speed_done_when.py``:
the interpreter loaded once, then ``segment`` per scan).

Imports only numpy, pydicom, cv2 and ai_edge_litert (nothing from bcedge).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pydicom
from ai_edge_litert.interpreter import Interpreter


def window(ds: pydicom.Dataset) -> np.ndarray:
    """Stored values -> float32 (H, W) in [0, 1] through rescale and the first window, as displayed."""
    x = ds.pixel_array.astype(np.float32)
    x = x * float(getattr(ds, "RescaleSlope", 1.0)) + float(getattr(ds, "RescaleIntercept", 0.0))
    centre, width = getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)
    if centre is not None and width is not None:
        c = float(centre[0] if isinstance(centre, pydicom.multival.MultiValue) else centre)
        w = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
        x = np.clip((x - (c - 0.5)) / max(w - 1.0, 1.0) + 0.5, 0.0, 1.0)
    else:
        lo, hi = float(x.min()), float(x.max())
        x = (x - lo) / max(hi - lo, 1.0)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        x = 1.0 - x
    return x


def load(model: Path, threads: int) -> Interpreter:
    """The LiteRT interpreter, tensors allocated (an any-width model at its square, as a script would)."""
    interpreter = Interpreter(model_path=str(model), num_threads=threads)
    inp = interpreter.get_input_details()[0]
    signature = [int(v) for v in inp["shape_signature"]]
    if signature[2] == -1:
        interpreter.resize_tensor_input(inp["index"], [1, signature[1], signature[1], signature[3]])
    interpreter.allocate_tensors()
    return interpreter


def segment(interpreter: Interpreter, scan: Path, out: Path, threshold: float) -> dict[str, float]:
    """Read, window, resize, infer, resize back, threshold, write the mask PNG and the JSON.

    Returns:
        Milliseconds of the model call alone (``invoke``), for ``benchmarks/bench_speed_done_when.py``.
    """
    ds = pydicom.dcmread(scan)
    image = window(ds)
    inp, outp = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    size = int(inp["shape"][1])
    small = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    tensor = np.repeat(small[None, :, :, None], int(inp["shape"][3]), axis=3)
    if inp["dtype"] != np.float32:  # a fully quantised model: float -> int8/uint8
        scale, zero = inp["quantization"]
        tensor = np.clip(np.rint(tensor / scale + zero), np.iinfo(inp["dtype"]).min, np.iinfo(inp["dtype"]).max)
    interpreter.set_tensor(inp["index"], tensor.astype(inp["dtype"]))
    t0 = time.perf_counter()
    interpreter.invoke()
    invoke_ms = (time.perf_counter() - t0) * 1e3
    prob = interpreter.get_tensor(outp["index"])[0, :, :, 0]
    if outp["dtype"] != np.float32:
        scale, zero = outp["quantization"]
        prob = (prob.astype(np.float32) - zero) * scale
    prob = cv2.resize(prob.astype(np.float32), (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    mask = (prob >= threshold).astype(np.uint8) * 255

    out.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out / f"{scan.stem}_mask.png"), mask)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    findings = [
        {"bbox_px": [int(y), int(x), int(y + h), int(x + w)], "area_px": int(a)}
        for x, y, w, h, a in stats[1:n].tolist()
    ]
    (out / f"{scan.stem}.json").write_text(json.dumps({"scan": str(scan), "findings": findings}))
    return {"invoke_ms": invoke_ms}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scan", type=Path)
    parser.add_argument("model", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--threshold", type=float, default=0.5)
    args = parser.parse_args()

    segment(load(args.model, args.threads), args.scan, args.out, args.threshold)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
