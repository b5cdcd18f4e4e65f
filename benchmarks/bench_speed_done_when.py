"""Issue #14 "done when", measured side by side in one run on this machine, each target judged.

The scan is the FFDM phantom of ``bench_infer.py`` (``bcedge.phantom`` seed 21, left CC, 70 um,
12 bits, MONOCHROME2, cropped to 2944x1920), uncompressed; the model is ``bcedge infer``'s default
(the bundled real-data model, ``--backend auto``, every usable CPU, the default threshold and
``--batch-size``); the naive script (``benchmarks/naive_infer.py``: pydicom + OpenCV + LiteRT)
runs the artifact bcedge picked (when bcedge picked another runtime, the LiteRT artifact its measured
choice timed fastest here) at the same thread count. Targets (issue #14, "Done when"):

1. ``warm_end_to_end``: ``bcedge infer --outputs json,mask`` on a warm process (the scan job,
   :func:`bcedge.scanjob.run_scan`, wall time around it) <= 0.5x the naive script's
   ``segment`` on a warm interpreter; the two alternate, run after run.
2. ``non_model_vs_floor``: bcedge's non-model stages (decode + preprocess + postprocess + write,
   per run, from the same runs) <= 2x the floor: reading the file (``Path.read_bytes``) plus
   one pass over its pixels (``max`` of the stored values, read in place from the bytes).
3. ``jpeg_ls_decode``: the scan compressed with dcmcjpls (lossless JPEG-LS); bcedge's decode
   (pydicom with the plugin :func:`bcedge.decoders.decoding_plugin` picks, as
   :mod:`bcedge.dicom` calls it) <= 1.2x CharLS alone (``jpeg_ls.decode_from_buffer`` on the
   frame). bcedge's whole decode stage (``read_dicom``: file, header, decode, checks) is reported too.
4. ``throughput_16_scans``: 16 copies of the scan in one call of the scan job
   (:func:`bcedge.scanjob.process_scans`, pipelined, default batch size, ``json,mask``) >= 90 %
   of the model-only throughput (the same model calls on preprocessed tensors, same batch size).
   The serial path (``pipelined=False``) is reported beside it.
5. ``cold_start``: a fresh ``bcedge infer SCAN --outputs json,mask`` process vs a fresh naive
   script process (median wall of alternating runs, after an untimed one of each:
   ``bench_cold_start.run_once``) <= 1.0.

The Segmenter of targets 1, 2 and 4 is opened like ``bcedge serve`` and ``bcedge batch`` open theirs (no
``scans``: the choice ranks time per call); a one-scan ``bcedge infer`` counts each candidate's start-up too
and may run another artifact (LiteRT where OpenVINO's compile does not pay for one scan): target 5 runs
that, and when it differs, ``warm_one_scan_choice`` repeats target 1 with it (not judged).

Beside the targets (context, not judged): targets 1 and 2 again on a **real-content** scan of the same
size (:func:`make_real_content_scan`: a real low-energy CDD-CESM mammogram with a mass, upscaled from
its 512x512 image to 2944x1920 and stored as 12 bits). On the phantom the shipped real-data model marks
a ~6000 mm² region (it has never seen such images), and postprocessing's cost grows with what is
marked; the real-content row shows what the model marks on a real breast. Its texture is the
source's, upscaled: real in content, not in detail. Also the 16-scan pipeline on the Segmenter's one
interpreter and the model alone at one thread (what a second core could hide the other stages behind).

Like ``bcedge infer``, the script applies the scan job's malloc settings (:mod:`bcedge.allocator`)
before it imports NumPy; the JSON records them (``allocator``). Every timed row records this process's
CPU time and the share of the machine's CPUs other processes used meanwhile
(:class:`bcedge.bench.load.LoadMeter`; child processes: ``wait4``). A section is flagged ``busy`` (its
verdict not trusted) when others used more than 10 % of the CPUs over the whole section, or, for the
cold start, when more than a quarter of its runs were busy. Writes
``benchmarks/results/speed_done_when.json`` with the machine's CPU flags and load.

    python benchmarks/bench_speed_done_when.py [--runs 15] [--cold-runs 10] [--json PATH]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

# What `bcedge infer` does first (bcedge.cli.main): the scan job's malloc settings, before any thread
# allocates, so before NumPy (bcedge.allocator); only when run as the benchmark, not when a test or
# another script imports this module. The naive script's warm runs share this process.
if __name__ == "__main__":
    from bcedge.allocator import tune_for_scans

    ALLOCATOR = tune_for_scans()
else:
    ALLOCATOR = {"skipped": "imported as a module"}

import numpy as np  # noqa: E402

RESULTS = HERE / "results" / "speed_done_when.json"
SIZE = (2944, 1920)
TARGETS = {
    "warm_end_to_end": ("bcedge / naive, warm, median wall", "<=", 0.5),
    "non_model_vs_floor": ("bcedge non-model stages / floor, medians", "<=", 2.0),
    "jpeg_ls_decode": ("bcedge's JPEG-LS decode / CharLS alone, medians", "<=", 1.2),
    "throughput_16_scans": ("16 scans in one call / model-only throughput", ">=", 0.9),
    "cold_start": ("bcedge infer / naive script, fresh processes, median wall", "<=", 1.0),
}


def med(values: list[float]) -> float:
    return round(float(statistics.median(values)), 2)


def timed(fn: Callable[[], Any]) -> tuple[dict[str, Any], Any]:
    """One call of ``fn`` inside a LoadMeter: wall/CPU ms, others' CPU share, busy flag; and its result."""
    from bcedge.bench.load import LoadMeter

    with LoadMeter() as meter:
        result = fn()
    return meter.result, result


def measured(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one section inside a LoadMeter: its ``busy`` verdict is the others' CPU share over the whole
    section (seconds), not any one row's: /proc/stat ticks at 100 Hz, so a 3 ms row that sees one tick
    of another process reads "100 % busy". The per-row shares stay in the rows."""
    from bcedge.bench.load import LoadMeter

    print(f"{name} ...", file=sys.stderr)
    with LoadMeter() as meter:
        doc = fn()
    doc["section_load"] = meter.result
    doc["busy"] = bool(meter.result.get("busy"))
    return doc


# --------------------------------------------------------------------------- the scans


#: The real-content scan's source: of the 9 low-energy (DM) views of the validation split of
#: benchmarks/splits/combined-v2.json (never the test split), the one with the median lesion share
#: of the image (4.1 %; the nine range 0.2-16.9 %). ``flipped_`` copies are upside down.
REAL_CONTENT_VIEW = "cdd-cesm/setA/images/flipped_P137_L_DM_MLO.jpg"


def make_real_content_scan(folder: Path, data_root: Path) -> Path | None:
    """A 2944x1920, 12-bit, MONOCHROME2 DICOM of a real mammogram (None when the data are missing).

    The 512x512 8-bit image is turned right side up, upscaled (bicubic) to the benchmark size and
    stored as ``8-bit value * 16 + 8`` (12 bits) under a full-range window, 0.1 mm pixels, left MLO.
    """
    import cv2

    from bcedge.dicom_write import MGTags, write_mg_dicom

    source = data_root / REAL_CONTENT_VIEW
    image = cv2.imread(str(source), cv2.IMREAD_GRAYSCALE) if source.is_file() else None
    if image is None:
        return None
    big = cv2.resize(image[::-1], (SIZE[1], SIZE[0]), interpolation=cv2.INTER_CUBIC)
    tags = MGTags(
        bits_stored=12,
        windows=[(2048.0, 4096.0)],
        laterality="L",
        view="MLO",
        pixel_spacing_mm=(0.1, 0.1),
        manufacturer="bcedge benchmark: CDD-CESM P137_L_DM_MLO upscaled",
        patient_id="CDD-CESM-P137",
    )
    return write_mg_dicom(folder / "real content 2944x1920.dcm", big.astype(np.uint16) * 16 + 8, tags)


def make_files(folder: Path) -> dict[str, Path]:
    """The uncompressed FFDM, its JPEG-LS copy (when dcmcjpls is installed) and 16 copies for the batch."""
    from bench_infer import make_scans

    plain = next(p for p, info in make_scans(folder) if (info["rows"], info["columns"]) == SIZE)
    files = {"plain": plain}
    if shutil.which("dcmcjpls"):
        jls = folder / "scan jpeg-ls.dcm"
        subprocess.run(["dcmcjpls", str(plain), str(jls)], check=True, capture_output=True, timeout=300)
        files["jpeg_ls"] = jls
    many = folder / "sixteen"
    many.mkdir()
    for i in range(16):
        shutil.copyfile(plain, many / f"scan{i:02d}.dcm")
    return files


# --------------------------------------------------------------------------- 1 + 2: warm end to end, floor


def floor_once(path: Path, rows: int, cols: int) -> int:
    """Read the file and pass once over its stored values (the pixel data are its last rows*cols*2 bytes)."""
    data = path.read_bytes()
    n = rows * cols
    pixels = np.frombuffer(data, "<u2", count=n, offset=len(data) - 2 * n)
    return int(pixels.max())


def bench_warm(seg: Any, interpreter: Any, path: Path, out: Path, runs: int, warmup: int) -> dict[str, Any]:
    """Alternating warm runs of bcedge's scan job and the naive script's segment(); then the floor."""
    import naive_infer

    from bcedge.pipeline import ScanFailure
    from bcedge.scanjob import run_scan

    def job(segmenter: Any, folder: str) -> Callable[[], Any]:
        def run() -> Any:
            result = run_scan(segmenter, path, out / folder, ["json", "mask"])
            if isinstance(result, ScanFailure):
                raise SystemExit(f"error: {result.error}")
            return result

        return run

    def naive() -> dict[str, float]:
        return naive_infer.segment(interpreter, path, out / "naive", seg.threshold)

    fns: list[tuple[str, Callable[[], Any]]] = [("bcedge", job(seg, "bcedge")), ("naive", naive)]
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in fns}
    for i in range(warmup + runs):
        order = fns if i % 2 == 0 else fns[::-1]
        for name, fn in order:
            meter, result = timed(fn)
            if i < warmup:
                continue
            if name.startswith("bcedge"):
                stages = {k: round(v, 2) for k, v in result.timing_ms.items()}
                non_model = sum(stages[k] for k in ("decode", "preprocess", "postprocess", "write"))
                rows[name].append({**meter, "stages_ms": stages, "non_model_ms": round(non_model, 2)})
            else:
                rows[name].append({**meter, "model_ms": round(result["invoke_ms"], 2)})
    # The floor: the same file, read and passed over once, as many times.
    import pydicom

    rows_n, cols_n = SIZE
    reference = pydicom.dcmread(path).pixel_array
    if floor_once(path, rows_n, cols_n) != int(reference.max()):
        raise SystemExit("the floor's pixel offset is wrong: its maximum differs from pydicom's")
    floor = [timed(lambda: floor_once(path, rows_n, cols_n))[0] for _ in range(warmup + runs)][warmup:]
    b_wall = med([r["wall_ms"] for r in rows["bcedge"]])
    n_wall = med([r["wall_ms"] for r in rows["naive"]])
    non_model = med([r["non_model_ms"] for r in rows["bcedge"]])
    floor_ms = med([r["wall_ms"] for r in floor])
    stage_names = rows["bcedge"][0]["stages_ms"].keys()

    def ours(name: str) -> dict[str, Any]:
        return {
            "wall_ms_median": med([r["wall_ms"] for r in rows[name]]),
            "cpu_ms_median": med([r["cpu_ms"] for r in rows[name]]),
            "stages_ms_median": {k: med([r["stages_ms"][k] for r in rows[name]]) for k in stage_names},
            "non_model_ms_median": med([r["non_model_ms"] for r in rows[name]]),
            "runs": rows[name],
        }

    return {
        "scan": path.name,
        "bcedge": ours("bcedge"),
        "naive": {
            "wall_ms_median": n_wall,
            "cpu_ms_median": med([r["cpu_ms"] for r in rows["naive"]]),
            "model_ms_median": med([r["model_ms"] for r in rows["naive"]]),
            "non_model_ms_median": med([r["wall_ms"] - r["model_ms"] for r in rows["naive"]]),
            "runs": rows["naive"],
        },
        "floor": {
            "what": "Path.read_bytes() + max() over the stored uint16 values in place",
            "wall_ms_median": floor_ms,
            "runs": floor,
        },
        "ratio_warm": round(b_wall / n_wall, 3),
        "ratio_non_model_floor": round(non_model / floor_ms, 3),
    }


# --------------------------------------------------------------------------- 3: JPEG-LS


def bench_jpeg_ls(path: Path, plain: Path, runs: int) -> dict[str, Any]:
    """bcedge's JPEG-LS decode (its plugin through pydicom) and its read_dicom vs CharLS alone."""
    import pydicom
    from pydicom.encaps import generate_frames
    from pydicom.pixels import get_decoder

    from bcedge.decoders import decoding_plugin
    from bcedge.dicom import read_dicom

    try:
        import jpeg_ls
    except ImportError:
        return {"skipped": "pyjpegls (CharLS) is not installed"}
    ds = pydicom.dcmread(path)
    ts = str(ds.file_meta.TransferSyntaxUID)
    plugin = decoding_plugin(ts)
    decoder = get_decoder(ds.file_meta.TransferSyntaxUID)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    reference = pydicom.dcmread(plain).pixel_array

    def bcedge_decode() -> np.ndarray:
        return decoder.as_array(ds, decoding_plugin=plugin or "")[0]

    def charls() -> np.ndarray:
        out = jpeg_ls.decode_from_buffer(frame)
        return (
            np.frombuffer(out, reference.dtype).reshape(reference.shape) if isinstance(out, bytes | bytearray) else out
        )

    rows: dict[str, list[dict[str, Any]]] = {"bcedge_decode": [], "charls_alone": [], "bcedge_read_dicom": []}
    identical = {}
    fns = {"bcedge_decode": bcedge_decode, "charls_alone": charls, "bcedge_read_dicom": lambda: read_dicom(path)}
    for i in range(runs + 2):
        for name, fn in fns.items():
            meter, result = timed(fn)
            if i >= 2:
                rows[name].append(meter)
            if name != "bcedge_read_dicom" and name not in identical:
                identical[name] = bool(np.array_equal(result, reference))
    medians = {name: med([r["wall_ms"] for r in v]) for name, v in rows.items()}
    return {
        "plugin": plugin,
        "file_bytes": path.stat().st_size,
        "identical_to_uncompressed": identical,
        "wall_ms_median": medians,
        "cpu_ms_median": {name: med([r["cpu_ms"] for r in v]) for name, v in rows.items()},
        "ratio_decode": round(medians["bcedge_decode"] / medians["charls_alone"], 3),
        "ratio_read_dicom": round(medians["bcedge_read_dicom"] / medians["charls_alone"], 3),
        "runs": rows,
    }


# --------------------------------------------------------------------------- 4: 16 scans


def bench_throughput(seg: Any, folder: Path, out: Path, batch_size: int, reps: int) -> dict[str, Any]:
    """16 scans through the scan job (pipelined and serial) vs the model alone on their tensors; beside them
    (not judged) the pipeline on the Segmenter's one interpreter (as before the two lent interpreters) and
    the model alone at one thread."""
    from bcedge.pipeline import ScanFailure
    from bcedge.scanjob import _Pipeline, process_scans, unique_stems

    paths = sorted(folder.glob("*.dcm"))
    tensor = seg._prepare(0, paths[0]).tensor
    batches = [np.concatenate([tensor] * min(batch_size, len(paths) - s)) for s in range(0, len(paths), batch_size)]
    one_thread = seg.bundle.open(seg.artifact, threads=1)

    def model_only() -> None:
        for batch in batches:
            seg._infer(batch)

    def model_only_1_thread() -> None:
        for batch in batches:
            one_thread.predict(batch)

    def job(pipelined: bool) -> Callable[[], None]:
        def run() -> None:
            items = list(process_scans(seg, paths, out, ["json", "mask"], batch_size=batch_size, pipelined=pipelined))
            bad = [i for i in items if isinstance(i, ScanFailure)]
            if bad or len(items) != len(paths):
                raise SystemExit(f"error: {bad[0].error if bad else 'scans missing'}")

        return run

    def one_interpreter() -> None:
        # The pipelined job without the lent interpreters (its code path before issue #14's pool).
        run = _Pipeline(seg, paths, out, ["json", "mask"], unique_stems(paths), batch_size, 3 * batch_size)
        if len([i for i in run.run() if not isinstance(i, ScanFailure)]) != len(paths):
            raise SystemExit("error: scans missing or failed")

    # The interpreters the scan job borrows (opened here, untimed, as the main one was at Segmenter()).
    pool = seg._model_pool()
    for backend in pool:
        for batch in batches:
            backend.predict(batch)
    fns = {
        "model_only": model_only,
        "pipelined": job(True),
        "serial": job(False),
        "model_only_1_thread": model_only_1_thread,
        "pipelined_one_interpreter": one_interpreter,
    }
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in fns}
    model_only()  # untimed: every batch shape seen once
    model_only_1_thread()
    for _ in range(reps):
        for name, fn in fns.items():
            meter, _ = timed(fn)
            rows[name].append({**meter, "scans_per_s": round(len(paths) / (meter["wall_ms"] / 1e3), 3)})
    rate = {name: med([r["scans_per_s"] for r in v]) for name, v in rows.items()}
    cpu_per_scan = {name: med([r["cpu_ms"] / len(paths) for r in v]) for name, v in rows.items()}
    # What the CPUs allow at best: every core busy with the serial path's work per scan (model and
    # non-model stages), never faster than the model alone. Context for the ratio, not a target.
    cpus = len(os.sched_getaffinity(0))
    bound = min(rate["model_only"], cpus * 1e3 / cpu_per_scan["serial"])
    one_thread.close()
    extra = {
        f"ratio_{name}": round(rate[name] / rate["model_only"], 3)
        for name in fns
        if name not in ("model_only", "pipelined", "serial")
    }
    return {
        "not_judged": {
            "what": "ratios to model_only (2 threads) of the pipeline on the one 2-thread interpreter and of "
            "the model alone at one thread",
            **extra,
        },
        "scans": len(paths),
        "batch_size": batch_size,
        "pipelined_interpreter_threads": [b.threads for b in pool] or [seg.backend.threads],
        "scans_per_s_median": rate,
        "cpu_ms_per_scan_median": cpu_per_scan,
        "cpu_bound_scans_per_s": round(bound, 3),
        "cpu_bound_ratio_to_model_only": round(bound / rate["model_only"], 3),
        "pipelined_share_of_cpu_bound": round(rate["pipelined"] / bound, 3),
        "ratio_pipelined": round(rate["pipelined"] / rate["model_only"], 3),
        "ratio_serial": round(rate["serial"] / rate["model_only"], 3),
        "runs": rows,
    }


# --------------------------------------------------------------------------- 5: cold start


def bench_cold(scan: Path, artifact: Path, threads: int, threshold: float, out: Path, runs: int) -> dict[str, Any]:
    """Fresh processes, alternating, after an untimed run of each (``bench_cold_start``'s launcher)."""
    from bench_cold_start import run_once, summarise

    exe = Path(sys.executable).with_name("bcedge")
    bcedge_cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "bcedge"]
    ours = [*bcedge_cmd, "infer", str(scan), "--outputs", "json,mask", "--out", str(out / "bcedge")]
    naive = [sys.executable, str(HERE / "naive_infer.py"), str(scan), str(artifact), str(out / "naive")]
    naive += ["--threads", str(threads), "--threshold", str(threshold)]
    rows: dict[str, list[dict[str, Any]]] = {"bcedge": [], "naive": []}
    for cmd in (ours, naive):
        run_once(cmd, 0.1)  # untimed: page cache, bytecode, bcedge's choice cache
    for i in range(runs):
        for name, cmd in (("bcedge", ours), ("naive", naive)) if i % 2 == 0 else (("naive", naive), ("bcedge", ours)):
            rows[name].append(run_once(cmd, 0.1))
    summary = {name: summarise(v) for name, v in rows.items()}
    return {
        "commands": {"bcedge": ours, "naive": naive},
        "summary": summary,
        "ratio_wall_median": round(summary["bcedge"]["wall_ms_median"] / summary["naive"]["wall_ms_median"], 3),
        "runs": rows,
    }


# --------------------------------------------------------------------------- main


def naive_artifact(seg: Any) -> Path:
    """The LiteRT artifact the naive script runs: bcedge's own when LiteRT runs it; else the LiteRT
    artifact bcedge's measured choice timed fastest here (OpenVINO runs a ``.tflite`` file too, and
    the file it runs, FP16, is not LiteRT's fastest); else the one ``--backend tflite`` picks."""
    if seg.artifact.backend == "tflite":
        return seg.bundle.dir / seg.artifact.file
    timed = [
        c
        for c in seg.choice.get("candidates", [])
        if c["backend"] == "tflite" and c["status"] == "accepted" and c.get("ms") is not None
    ]
    if timed:
        return seg.bundle.dir / min(timed, key=lambda c: c["ms"])["file"]
    from bcedge.backends import BACKENDS, auto_backend_names
    from bcedge.formats import choose_artifact

    record = choose_artifact(seg.bundle, "tflite", auto_backend_names, known=BACKENDS).record
    return seg.bundle.dir / record.file


def verdicts(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Measured value, target and pass/fail per target (None when not measured)."""
    s = doc["sections"]
    values = {
        "warm_end_to_end": (s["warm"]["ratio_warm"], s["warm"]["busy"]),
        "non_model_vs_floor": (s["warm"]["ratio_non_model_floor"], s["warm"]["busy"]),
        "jpeg_ls_decode": (s["jpeg_ls"].get("ratio_decode"), s["jpeg_ls"].get("busy")),
        "throughput_16_scans": (s["throughput"]["ratio_pipelined"], s["throughput"]["busy"]),
        "cold_start": (s["cold"]["ratio_wall_median"], s["cold"]["busy"]),
    }
    out = {}
    for key, (what, op, target) in TARGETS.items():
        value, busy = values[key]
        passed = None if value is None else (value <= target if op == "<=" else value >= target)
        out[key] = {"what": what, "measured": value, "target": f"{op} {target}", "pass": passed, "busy": busy}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="timed warm runs per measurement")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--reps", type=int, default=3, help="repetitions of the 16-scan measurements")
    parser.add_argument("--cold-runs", type=int, default=10, help="fresh processes of each command")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("BCEDGE_DATA", ROOT.parent / "shared" / "data")),
        help="data folder holding cdd-cesm/ (the real-content scan; default $BCEDGE_DATA)",
    )
    args = parser.parse_args(argv)

    import naive_infer

    from bcedge.bench.machine import library_versions, machine_info, source_state
    from bcedge.cli.infer import infer_command
    from bcedge.cpus import default_threads
    from bcedge.formats import candidate_key
    from bcedge.pipeline import Segmenter, default_bundle_path

    threads = default_threads()  # bcedge infer's default: every usable CPU
    batch_size = inspect.signature(infer_command).parameters["batch_size"].default
    load_before = os.getloadavg()
    doc: dict[str, Any] = {
        "script": "benchmarks/bench_speed_done_when.py",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "source": source_state(ROOT),
        "scan": "bcedge.phantom seed 21, L CC, 70 um, 12 bits, MONOCHROME2, cropped to 2944x1920, uncompressed",
        "threads": threads,
        "batch_size": batch_size,
        "allocator": ALLOCATOR,
        "outputs": ["json", "mask"],
        "sections": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench done when ") as tmp:
        folder = Path(tmp)
        files = make_files(folder)
        with Segmenter(default_bundle_path(), "auto", threads=threads) as seg:
            doc["model"] = seg.model_info
            artifact = naive_artifact(seg)
            doc["naive_artifact"] = artifact.name
            interpreter = naive_infer.load(artifact, threads)
            doc["sections"]["warm"] = measured(
                "warm end to end and the floor",
                lambda: bench_warm(seg, interpreter, files["plain"], folder, args.runs, args.warmup),
            )
            # What a one-scan `bcedge infer` process runs: the choice then counts each candidate's start-up
            # (bcedge.choice, scans=1), so a runtime that compiles slowly (OpenVINO) may lose to LiteRT there.
            with Segmenter(default_bundle_path(), "auto", threads=threads, scans=1) as one:
                doc["one_scan_model"] = one.model_info
                if candidate_key(one.artifact) != candidate_key(seg.artifact):
                    doc["sections"]["warm_one_scan_choice"] = measured(
                        "warm end to end, the artifact a one-scan bcedge infer runs (not judged)",
                        lambda: bench_warm(one, interpreter, files["plain"], folder, args.runs, args.warmup),
                    )
            real = make_real_content_scan(folder, args.data)
            doc["sections"]["warm_real_content"] = (
                measured(
                    "warm end to end and the floor, real-content scan (not judged)",
                    lambda: bench_warm(seg, interpreter, real, folder, args.runs, args.warmup),
                )
                if real is not None
                else {"skipped": f"{args.data / REAL_CONTENT_VIEW} is missing"}
            )
            doc["sections"]["jpeg_ls"] = (
                measured("JPEG-LS", lambda: bench_jpeg_ls(files["jpeg_ls"], files["plain"], args.runs))
                if "jpeg_ls" in files
                else {"skipped": "dcmcjpls (dcmtk) is not installed"}
            )
            doc["sections"]["throughput"] = measured(
                "16 scans",
                lambda: bench_throughput(seg, folder / "sixteen", folder / "out16", batch_size, args.reps),
            )
            threshold = seg.threshold
        # The children's CPU is not this process's: the section's others-share counts them, so the cold
        # section's busy verdict is its runs' own (bench_cold_start.run_once subtracts each child's CPU).
        doc["sections"]["cold"] = bench_cold(files["plain"], artifact, threads, threshold, folder, args.cold_runs)
        runs_busy = [r["busy"] for v in doc["sections"]["cold"]["runs"].values() for r in v]
        doc["sections"]["cold"]["busy_runs"] = sum(runs_busy)
        doc["sections"]["cold"]["busy"] = sum(runs_busy) > len(runs_busy) // 4
    doc["machine"] = {
        **machine_info([threads]),
        "load_avg_before": [round(v, 2) for v in load_before],
        "load_avg_after": [round(v, 2) for v in os.getloadavg()],
    }
    doc["libraries"] = library_versions(("pyjpegls", "highdicom"))
    doc["verdicts"] = verdicts(doc)
    doc["measured_on_a_busy_machine"] = any(v["busy"] for v in doc["verdicts"].values())
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print_report(doc)
    print(f"\nwritten: {args.json}")
    return 0


def print_report(doc: dict[str, Any]) -> None:
    """The figures and one line per target: measured, target, pass/fail (and busy)."""
    m, s = doc["machine"], doc["sections"]
    print(
        f"\n{m['cpu_model']} ({m['arch']}), {m['usable_cpus']} usable CPUs, flags {' '.join(m['cpu_flags'])}; "
        f"threads {doc['threads']}, batch size {doc['batch_size']}; model {doc['model']['artifact']} "
        f"({doc['model']['backend']}); naive runs {doc['naive_artifact']}; load {m['load_avg_before']} -> "
        f"{m['load_avg_after']}"
    )
    w = s["warm"]
    print(
        f"warm: bcedge {w['bcedge']['wall_ms_median']} ms (non-model {w['bcedge']['non_model_ms_median']}, stages "
        f"{w['bcedge']['stages_ms_median']}), naive {w['naive']['wall_ms_median']} ms (model "
        f"{w['naive']['model_ms_median']}), floor {w['floor']['wall_ms_median']} ms"
    )
    one_scan = doc.get("one_scan_model", {}).get("artifact")
    extras = (
        ("warm_one_scan_choice", f"what a one-scan bcedge infer runs ({one_scan})"),
        ("warm_real_content", "real-content scan"),
    )
    for key, what in extras:
        r = s.get(key, {})
        if "bcedge" in r:
            print(
                f"warm, {what} (not judged): bcedge {r['bcedge']['wall_ms_median']} ms (non-model "
                f"{r['bcedge']['non_model_ms_median']}, stages {r['bcedge']['stages_ms_median']}), naive "
                f"{r['naive']['wall_ms_median']} ms; ratio {r['ratio_warm']}, "
                f"non-model / floor {r['ratio_non_model_floor']}"
            )
    if "ratio_decode" in s["jpeg_ls"]:
        print(f"JPEG-LS ({s['jpeg_ls']['plugin']}): {s['jpeg_ls']['wall_ms_median']}")
    t = s["throughput"]
    print(
        f"16 scans, scans/s: {t['scans_per_s_median']}; CPU ms per scan {t['cpu_ms_per_scan_median']}; "
        f"CPU bound {t['cpu_bound_scans_per_s']} scans/s ({t['cpu_bound_ratio_to_model_only']} of model-only)"
    )
    print(f"  not judged: {t.get('not_judged')}")
    c = s["cold"]["summary"]
    print(f"cold: bcedge {c['bcedge']['wall_ms_median']} ms, naive {c['naive']['wall_ms_median']} ms")
    for key, v in doc["verdicts"].items():
        verdict = {True: "PASS", False: "FAIL", None: "not measured"}[v["pass"]]
        busy = " (busy machine: not trusted)" if v["busy"] else ""
        print(f"  {key:22s} {v['measured']!s:>7} target {v['target']:7s} {verdict}{busy}")


if __name__ == "__main__":
    raise SystemExit(main())
