"""Where the non-model time of one full-field scan goes (issue #14 item 6), and preprocessing 1 vs 2.

One thread (OpenCV, OpenMP and BLAS limited to 1), process CPU time (``time.process_time``), on the
FFDM phantom of ``bench_speed_done_when.py`` (``bcedge.phantom`` seed 21, left CC, 70 um, 12 bits,
MONOCHROME2, cropped to 2944x1920, uncompressed) and the bundle's preprocessing config
(``bcedge/mass_model`` unless ``--model``). Sections:

* ``primitives``: each full-resolution operation alone, interleaved round by round (the display
  table lookup, the float ``INTER_AREA`` resizes version 1 does, the stored-value halvings version 2
  does, one pass over the stored values as the floor's pixel part);
* ``stages``: decode (``read_mammogram``), preprocess, decode + preprocess for version 1 and
  version 2, alternating run by run (A/B); for version 1 the displayed float image is made inside
  decode + preprocess (on first access of ``Mammogram.pixels``), as ``bcedge infer`` pays it;
* ``postprocess``: ``bcedge.postprocess.postprocess`` on the bundle's probability map for the scan
  (one model call with the bundle's FP16 artifact, not timed), and the writing of the mask;
* ``profile``: the top functions by own time (``cProfile``) of decode + preprocess (each version)
  and of postprocess.

Every section records the load of other processes (:class:`bcedge.bench.load.LoadMeter`): the
figures are CPU times of this process, which other processes inflate less than wall time but do
not leave alone (shared caches and memory bandwidth); a row measured while others used the CPUs is
labelled by its ``others_cpu_share``. Compare within one run, not across runs.

    python benchmarks/profile_full_field.py [--runs 15] [--model bcedge/mass_model] [--json PATH]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import cProfile  # noqa: E402
import dataclasses  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import pstats  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results" / "profile_full_field.json"
SIZE = (2944, 1920)


def cpu_ms(fn: Callable[[], Any]) -> float:
    """Process CPU time of one call of ``fn``, ms."""
    t0 = time.process_time()
    fn()
    return (time.process_time() - t0) * 1e3


def interleaved(cases: dict[str, Callable[[], Any]], runs: int) -> dict[str, Any]:
    """Median CPU ms of each case over ``runs`` rounds; each round runs every case once, in rotated order."""
    from bcedge.bench.load import LoadMeter

    names = list(cases)
    for fn in cases.values():  # warm-up: imports, first-touch page faults, OpenCV's tables
        fn()
    rows: dict[str, list[float]] = {n: [] for n in names}
    with LoadMeter() as meter:
        for i in range(runs):
            order = names[i % len(names) :] + names[: i % len(names)]
            for name in order:
                rows[name].append(cpu_ms(cases[name]))
    return {
        "cpu_ms_median": {n: round(statistics.median(v), 3) for n, v in rows.items()},
        "cpu_ms_min": {n: round(min(v), 3) for n, v in rows.items()},
        "runs": runs,
        "load": meter.result,
    }


def top_functions(fn: Callable[[], Any], runs: int, limit: int = 14) -> list[dict[str, Any]]:
    """cProfile of ``runs`` calls of ``fn``: the ``limit`` functions with the most own time, ms per call."""
    prof = cProfile.Profile(time.process_time)  # CPU time: wall time under load counts waiting
    prof.enable()
    for _ in range(runs):
        fn()
    prof.disable()
    stats = pstats.Stats(prof, stream=io.StringIO())
    rows = []
    for (file, line, name), (_, ncalls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = name if file == "~" else f"{Path(file).name}:{line}({name})"
        rows.append(
            {
                "function": where,
                "calls_per_run": round(ncalls / runs, 1),
                "own_ms": round(tottime / runs * 1e3, 3),
                "cum_ms": round(cumtime / runs * 1e3, 3),
            }
        )
    rows.sort(key=lambda r: -r["own_ms"])
    return rows[:limit]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--model", default=str(ROOT / "bcedge" / "mass_model"))
    parser.add_argument("--json", default=str(RESULTS))
    args = parser.parse_args(argv)

    import cv2

    cv2.setNumThreads(1)
    from bench_infer import make_scans

    from bcedge.bench.machine import machine_info
    from bcedge.bundle import load_bundle
    from bcedge.dicom import read_mammogram
    from bcedge.outputs import write_outputs
    from bcedge.pipeline import Segmenter
    from bcedge.postprocess import postprocess
    from bcedge.preprocess import preprocess

    bundle = load_bundle(args.model)
    config_v1 = dataclasses.replace(bundle.preprocess_config(), version=1)
    config_v2 = dataclasses.replace(config_v1, version=2)
    doc: dict[str, Any] = {
        "script": "benchmarks/profile_full_field.py",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip(),
        "label": "measured under load: CPU times of one thread while other processes used the CPUs "
        "(each section's load says how much)",
        "scan": "bcedge.phantom seed 21, L CC, 70 um, 12 bits, MONOCHROME2, cropped to 2944x1920, uncompressed",
        "model": str(args.model),
        "preprocess": config_v1.to_dict() | {"version": "1 and 2"},
        "threads": 1,
        "machine": machine_info(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        scan = next(p for p, info in make_scans(folder) if (info["rows"], info["columns"]) == SIZE)
        mammo = read_mammogram(scan)
        stored = mammo.stored
        assert stored is not None
        values = stored.values
        pixels = stored.display()
        _, g1 = preprocess(mammo, config_v1)
        top, left, bottom, right = g1.crop
        _, _, ch, cw = g1.content
        h, w = values.shape
        wh, ww = round(h * config_v1.work_size / max(h, w)), round(w * config_v1.work_size / max(h, w))
        print("primitives ...", file=sys.stderr)
        doc["primitives"] = interleaved(
            {
                "one pass over the stored values (max)": lambda: values.max(),
                "display table lookup, full size (v1: Mammogram.pixels)": lambda: stored.display_uncached(),
                "float INTER_AREA full -> working size (v1)": lambda: cv2.resize(
                    pixels, (ww, wh), interpolation=cv2.INTER_AREA
                ),
                "float INTER_AREA crop -> model grid (v1)": lambda: cv2.resize(
                    pixels[top:bottom, left:right], (cw, ch), interpolation=cv2.INTER_AREA
                ),
                "uint16 INTER_AREA full -> working size (non-integer factor)": lambda: cv2.resize(
                    values, (ww, wh), interpolation=cv2.INTER_AREA
                ),
                "uint16 4x4 block average, one call": lambda: cv2.resize(
                    values, (w // 4, h // 4), interpolation=cv2.INTER_AREA
                ),
                "uint16 two 2x2 halvings (v2)": lambda: cv2.resize(
                    cv2.resize(values, (w // 2, h // 2), interpolation=cv2.INTER_AREA),
                    (w // 4, h // 4),
                    interpolation=cv2.INTER_AREA,
                ),
            },
            args.runs,
        )

        def decode_pre(config: Any) -> Callable[[], Any]:
            return lambda: preprocess(read_mammogram(scan), config)

        print("stages ...", file=sys.stderr)
        m_read = read_mammogram(scan)
        doc["stages"] = interleaved(
            {
                "decode (read_mammogram, no float image)": lambda: read_mammogram(scan),
                "decode + preprocess, version 1": decode_pre(config_v1),
                "decode + preprocess, version 2": decode_pre(config_v2),
                "preprocess v1 (float image already made)": lambda: preprocess(mammo, config_v1),
                "preprocess v2": lambda: preprocess(m_read, config_v2),
            },
            args.runs,
        )

        print("postprocess ...", file=sys.stderr)
        with Segmenter(bundle, backend="tflite", artifact="model_fp16.tflite", threads=1) as seg:
            result = seg.segment(scan)
        spacing = result.mammogram.meta.pixel_spacing_mm

        def post() -> Any:
            return postprocess(result.probability, result.geometry, threshold=result.threshold, spacing_mm=spacing)

        out_dir = folder / "out"

        def write() -> Any:
            return write_outputs(result, out_dir, ["json", "mask"], bundle=bundle, artifact=seg.artifact)

        mask, findings = post()
        doc["postprocess"] = interleaved({"postprocess": post, "write json,mask": write}, args.runs)
        doc["postprocess"]["findings"] = [{"area_px": f.area_px, "bbox_px": list(f.bbox_px)} for f in findings]
        doc["postprocess"]["mask_pixels"] = int(mask.sum())
        print("profile ...", file=sys.stderr)
        doc["profile"] = {
            "decode + preprocess, version 1": top_functions(decode_pre(config_v1), args.runs),
            "decode + preprocess, version 2": top_functions(decode_pre(config_v2), args.runs),
            "postprocess": top_functions(post, args.runs),
        }
    Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    for section in ("primitives", "stages", "postprocess"):
        print(f"{section} (others' CPU share {doc[section]['load'].get('others_cpu_share')}):")
        for name, ms in doc[section]["cpu_ms_median"].items():
            print(f"  {ms:8.2f} ms  {name}")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
