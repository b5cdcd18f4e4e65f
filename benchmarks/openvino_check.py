"""Issue #14 item 3: OpenVINO against LiteRT on the shipped mass model, on this machine.

"Also look at OpenVINO FP32 (0.92x LiteRT's time here) and add it as a backend only if it wins by a
margin worth a dependency." OpenVINO reads the bundle's ``.tflite`` files itself (its TFLite
frontend), so no new artifact is needed to measure it. Per candidate, on this machine:

* the model call at the FFDM phantom's block (512 x 320, what ``bcedge infer`` runs on the done-when
  scan) and at the whole square (512 x 512, what a script without the any-width trick runs), at 1 and
  2 threads: interleaved calls, median, process CPU time and the others' load per row
  (:class:`bcedge.bench.load.LoadMeter`);
* agreement with the bundle's reference on its 4 acceptance images (the square), judged by
  :func:`bcedge.acceptance.compare` with the artifact's own export baseline and precision tolerance:
  whether ``--backend auto``'s on-device check would accept it;
* cold cost in a fresh process: import, read and compile (OpenVINO; with and without its model
  cache ``CACHE_DIR``) or open and allocate (LiteRT), then the first call.

OpenVINO runs with ``INFERENCE_PRECISION_HINT`` ``f32`` (what the issue asked about), ``bf16``
(OpenVINO's default on CPUs with AVX-512 BF16 / AMX) and ``f16``; LiteRT with XNNPACK as ``bcedge``
opens it. Writes ``benchmarks/results/openvino_check.json`` with the CPU flags.

    python benchmarks/openvino_check.py [--runs 15] [--json PATH]

Needs ``pip install openvino`` (not a bcedge dependency).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUNDLE = ROOT / "bcedge" / "mass_model"
RESULTS = HERE / "results" / "openvino_check.json"
#: The FFDM phantom's block (bcedge.backends.tflite: the breast's columns, multiples of 32) and the square.
WIDTHS = (320, 512)
HINTS = ("f32", "bf16", "f16")
ARTIFACTS = ("model_fp16.tflite", "model_dynamic.tflite")

Runner = Callable[[np.ndarray], np.ndarray]


def litert(path: Path, width: int, threads: int) -> Runner:
    """A LiteRT interpreter at (1, 512, width, 1), XNNPACK, ``threads`` threads."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=threads)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.resize_tensor_input(inp["index"], [1, 512, width, 1])
    interp.allocate_tensors()

    def run(x: np.ndarray) -> np.ndarray:
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        return interp.get_tensor(out["index"])

    return run


def openvino(path: Path, width: int, threads: int, hint: str, cache_dir: str | None = None) -> Runner:
    """OpenVINO's CPU plugin on the ``.tflite`` file, reshaped to (1, 512, width, 1), one stream."""
    import openvino as ov

    core = ov.Core()
    if cache_dir:
        core.set_property({"CACHE_DIR": cache_dir})
    model = core.read_model(str(path))
    model.reshape([1, 512, width, 1])
    config = {
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": hint,
    }
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    output = compiled.output(0)

    def run(x: np.ndarray) -> np.ndarray:
        return request.infer({0: x})[output]

    return run


def candidates(width: int, threads: int) -> dict[str, Runner]:
    out = {f"litert {a}": litert(BUNDLE / a, width, threads) for a in ARTIFACTS}
    for artifact in ARTIFACTS:
        for hint in HINTS:
            out[f"openvino {hint} {artifact}"] = openvino(BUNDLE / artifact, width, threads, hint)
    return out


def timings(width: int, threads: int, x: np.ndarray, runs: int) -> dict[str, Any]:
    """Interleaved calls of every candidate (order reversed every other round); median ms and load."""
    from bcedge.bench.load import LoadMeter

    runners = candidates(width, threads)
    for run in runners.values():
        run(x)  # first call: plans, caches
    times: dict[str, list[float]] = {name: [] for name in runners}
    with LoadMeter() as meter:
        for r in range(runs):
            order = list(runners.items()) if r % 2 == 0 else list(runners.items())[::-1]
            for name, run in order:
                t0 = time.perf_counter()
                run(x)
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {
        "width": width,
        "threads": threads,
        "ms_median": {name: round(statistics.median(v), 2) for name, v in times.items()},
        "load": meter.result,
    }


def agreement() -> dict[str, Any]:
    """Each candidate on the 4 acceptance images (square, 2 threads), judged as the on-device check judges."""
    from bcedge.acceptance import baseline_of, compare, load
    from bcedge.bundle import load_bundle
    from bcedge.formats import PRECISION_SPECS

    bundle = load_bundle(BUNDLE)
    data = load(bundle)
    if data is None:
        raise SystemExit(f"{BUNDLE} carries no acceptance data")
    records = {r.file: r for r in bundle.manifest.artifacts}
    out = {}
    for name, run in candidates(512, 2).items():
        artifact = name.split()[-1]
        record = records[artifact]
        probs = np.concatenate([run(np.ascontiguousarray(data.images[i : i + 1])) for i in range(len(data))])
        verdict = compare(
            probs,
            data,
            threshold=bundle.threshold,
            output_tolerance=PRECISION_SPECS[record.precision].output_tolerance,
            baseline=baseline_of(bundle.manifest.acceptance, record.file, record.sha256),
        )
        out[name] = {k: v for k, v in verdict.to_dict().items() if k in ("status", "dice", "mean_abs", "min_dice")}
    return out


_COLD = """
import sys, time
t0 = time.perf_counter()
sys.path.insert(0, {here!r})
import numpy as np
import openvino_check as c
kind, artifact, hint, cache = sys.argv[1:5]
x = np.zeros((1, 512, 320, 1), np.float32)
path = c.BUNDLE / artifact
run = c.litert(path, 320, 2) if kind == "litert" else c.openvino(path, 320, 2, hint, cache or None)
t1 = time.perf_counter()
run(x)
t2 = time.perf_counter()
print((t1 - t0) * 1e3, (t2 - t1) * 1e3)
"""


def cold(repeats: int) -> dict[str, Any]:
    """Fresh processes: import + open (+ compile) and the first call, median over ``repeats``."""
    code = _COLD.format(here=str(HERE))
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ov cache ") as cache:
        cases = [
            ("litert model_dynamic.tflite", ["litert", "model_dynamic.tflite", "-", ""]),
            ("openvino bf16 model_fp16.tflite, no cache", ["openvino", "model_fp16.tflite", "bf16", ""]),
            ("openvino bf16 model_fp16.tflite, cache warm", ["openvino", "model_fp16.tflite", "bf16", cache]),
        ]
        # One untimed run fills the cache the last case reads.
        subprocess.run([sys.executable, "-c", code, *cases[2][1]], check=True, capture_output=True, timeout=600)
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in cases}
        for _ in range(repeats):
            for name, args in cases:
                done = subprocess.run(
                    [sys.executable, "-c", code, *args], check=True, capture_output=True, text=True, timeout=600
                )
                open_ms, first_ms = (float(v) for v in done.stdout.split()[-2:])
                samples[name].append((open_ms, first_ms))
        for name, values in samples.items():
            rows[name] = {
                "open_ms_median": round(statistics.median(v[0] for v in values), 1),
                "first_call_ms_median": round(statistics.median(v[1] for v in values), 1),
                "runs": len(values),
            }
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from bcedge.bench.machine import library_versions, machine_info, source_state

    data = np.load(BUNDLE / "acceptance.npz")
    image = data["images"][0].astype(np.float32) / 255.0
    doc: dict[str, Any] = {
        "script": "benchmarks/openvino_check.py",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "source": source_state(ROOT),
        "bundle": str(BUNDLE.relative_to(ROOT)),
        "input": "the bundle's first acceptance image; its first `width` columns for the block rows",
        "timings": [],
    }
    for threads in (2, 1):
        for width in WIDTHS:
            x = np.ascontiguousarray(image[None, :, :width, None])
            doc["timings"].append(timings(width, threads, x, args.runs))
            print(json.dumps(doc["timings"][-1]), flush=True)
    doc["acceptance"] = agreement()
    doc["cold"] = cold(args.cold_runs)
    doc["machine"] = machine_info([1, 2])
    doc["libraries"] = library_versions(("openvino", "ai-edge-litert"))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: doc[k] for k in ("acceptance", "cold")}, indent=1))
    print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
