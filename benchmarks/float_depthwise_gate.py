"""A bundle's dynamic-range TFLite artifact with float depthwise weights: gated, timed, optionally installed.

``bcedge export`` now writes dynamic-range artifacts whose depthwise convolutions keep float weights
(:func:`export.tflite_rewrite.float_depthwise_weights`: LiteRT's XNNPACK has no kernel for an int8-weight
depthwise convolution on float activations). A bundle exported before holds the old artifact; this
script makes the new one from it (the same op-for-op conversion: every other weight and op is kept)
and measures, on this machine:

1. **gate**: both artifacts scored on the bundle's validation split exactly as ``bcedge export`` scores
   them (:func:`export.verify.measure`, the run's preprocessing, the bundle threshold), each against the
   reference Dice the manifest records, with the artifact's recorded tolerance. The old artifact's score
   must reproduce its recorded one (else the script stops: the data or preprocessing differ).
2. **acceptance baselines**: every artifact's agreement with the bundle's acceptance reference
   (:func:`export.acceptance.baselines`), as ``bcedge export`` records them, here.
3. **speed**: the two artifacts on the FFDM phantom's model input (``bench_speed_done_when.py``'s scan,
   2944x1920, its breast's columns), interleaved, at 1 thread and at every usable CPU: median wall ms per
   call and process CPU ms; the section's load (others' CPU share) and the machine's CPU flags.

With ``--set`` (and a passed gate) the new artifact replaces the old one in the bundle and the manifest's
record (sha256, size, metrics, details) and acceptance baselines are rewritten; the old artifact's record
is kept in the JSON. The run folder supplies the split and preprocessing (for a bundle without its run:
``python -m training.rebuild_from_bundle BUNDLE RUN``; its Keras model is not used).

    python benchmarks/float_depthwise_gate.py --run RUN --bundle bcedge/mass_model --root ../shared/data \\
        [--cache DIR] [--set] [--json benchmarks/results/float_depthwise_gate.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results" / "float_depthwise_gate.json"


def dynamic_record(bundle: Any) -> Any:
    """The bundle's dynamic-range TFLite artifact record (ConfigError when it has none)."""
    from bcedge.errors import ConfigError

    for record in bundle.manifest.artifacts:
        if record.format == "tflite" and record.precision == "dynamic":
            return record
    raise ConfigError(f"{bundle.dir} has no dynamic-range TFLite artifact")


def validation_set(run_dir: Path, root: Path | None, cache: Path) -> tuple[Any, str]:
    """The run's validation split, preprocessed as the export gate preprocesses it: (ArraySet, split file)."""
    from export.calibration import split_sets
    from training.run import load_run

    sets, meta = split_sets(load_run(run_dir), cache, root=root)
    return sets["val"], str(meta.get("split"))


def gate_both(val: Any, split: str, old: Path, new: Path, record: Any, threshold: float) -> dict[str, Any]:
    """Score the old and new artifact on ``val`` (:func:`validation_set`) as ``bcedge export`` does
    (:func:`export.verify.measure`), against the recorded reference Dice and tolerance, and compare
    their probabilities."""
    from export.verify import measure

    reference = {"dice": float(record.metrics["reference_dice"])}
    out: dict[str, Any] = {}
    probs = {}
    for name, path in (("old", old), ("new", new)):
        m = measure(
            "tflite",
            path,
            val.images,
            val.masks,
            reference=reference,
            tolerance=record.tolerance,
            threshold=threshold,
            threads=1,
            keep_probabilities=True,
        )
        probs[name] = m.probabilities
        out[name] = {
            "gate": m.gate,
            "metrics": m.metrics,
            "ms_per_image_1_thread": round(m.ms_per_image or 0.0, 3),
            "runtime": m.details,
        }
    out["identical_probabilities"] = bool(np.array_equal(probs["old"], probs["new"]))
    out["max_abs_probability_diff"] = float(np.max(np.abs(probs["old"] - probs["new"])))
    out["split"] = split
    out["n_images"] = len(val.images)
    return out


def scan_tensor(folder: Path) -> np.ndarray:
    """The FFDM phantom's (1, 512, 512, 1) model input through the bundle's preprocessing."""
    import bench_speed_done_when as done_when

    from bcedge.pipeline import Segmenter, default_bundle_path

    files = done_when.make_files(folder)
    with Segmenter(default_bundle_path(), "tflite", threads=1) as seg:
        return seg._prepare(0, files["plain"]).tensor


def time_pair(old: Path, new: Path, tensor: np.ndarray, threads: int, rounds: int) -> dict[str, Any]:
    """Interleaved calls (order alternating) of the two artifacts at ``threads``: medians of wall and CPU ms."""
    from bcedge.backends import open_backend
    from bcedge.bench.load import LoadMeter

    models = {"old": open_backend("tflite", old, threads=threads), "new": open_backend("tflite", new, threads=threads)}
    rows: dict[str, list[tuple[float, float]]] = {k: [] for k in models}
    try:
        for model in models.values():
            for _ in range(3):
                model.predict(tensor)  # warm-up: delegate plan, allocation
        with LoadMeter() as meter:
            for i in range(rounds):
                for name in ("old", "new") if i % 2 == 0 else ("new", "old"):
                    w0, c0 = time.perf_counter(), time.process_time()
                    models[name].predict(tensor)
                    rows[name].append(((time.perf_counter() - w0) * 1e3, (time.process_time() - c0) * 1e3))
        width = getattr(models["new"], "_width", None)  # the columns the any-width model ran
    finally:
        for model in models.values():
            model.close()
    wall = {k: round(statistics.median(r[0] for r in v), 2) for k, v in rows.items()}
    return {
        "threads": threads,
        "rounds": rounds,
        "input_width": width,
        "wall_ms_median": wall,
        "cpu_ms_median": {k: round(statistics.median(r[1] for r in v), 2) for k, v in rows.items()},
        "speed_up": round(wall["old"] / wall["new"], 3),
        "load": meter.result,
        "busy": bool(meter.result.get("busy")),
    }


def speed_line(row: dict[str, Any]) -> str:
    """One :func:`time_pair` row as a line: threads, columns, old and new median ms, the speed-up, BUSY."""
    wall = row["wall_ms_median"]
    busy = " BUSY" if row["busy"] else ""
    return (
        f"FFDM phantom, {row['threads']} thread(s), {row['input_width']} columns: old {wall['old']} ms, "
        f"new {wall['new']} ms ({row['speed_up']}x){busy}"
    )


def install(
    bundle: Any, record: Any, new_path: Path, gate: dict[str, Any], baselines: dict[str, Any], note: dict[str, Any]
) -> None:
    """Put the new artifact in the bundle (atomically) and rewrite its record and the acceptance baselines.

    ``gate``: :func:`gate_both`'s (``gate["new"]`` becomes the record's metrics and gate); ``note``: merged
    into the record's ``details`` (what was rewritten, from which sha256, how).
    """
    from bcedge.bundle import ArtifactRecord, write_manifest
    from bcedge.imageio import atomic_write_bytes
    from export.acceptance import machine_label
    from export.tflite import hybrid_ops

    content = new_path.read_bytes()
    atomic_write_bytes(bundle.dir / record.file, content)
    details = dict(record.details)
    details["runtime"] = gate["new"]["runtime"]
    details["ms_per_image"] = gate["new"]["ms_per_image_1_thread"]
    if record.precision == "dynamic":
        details["hybrid_ops"] = hybrid_ops(content)
    details.update(note)
    fresh = ArtifactRecord.from_file(
        bundle.dir,
        record.file,
        format=record.format,
        precision=record.precision,
        backend=record.backend,
        metrics=gate["new"]["metrics"],
        gate=gate["new"]["gate"],
        tolerance=record.tolerance,
        details=details,
    )
    bundle.manifest.artifacts = [fresh if r.file == record.file else r for r in bundle.manifest.artifacts]
    if bundle.manifest.acceptance:
        entry = dict(bundle.manifest.acceptance)
        entry["baseline"] = baselines
        entry["baseline_machine"] = machine_label()
        bundle.manifest.acceptance = entry
    write_manifest(bundle.dir, bundle.manifest)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options this script shares with ``depth_to_space_check.py``: run, bundle, data root, cache, rounds."""
    parser.add_argument("--run", type=Path, required=True, help="the bundle's run folder (split, preprocessing)")
    parser.add_argument("--bundle", type=Path, default=Path("bcedge/mass_model"))
    parser.add_argument("--root", type=Path, default=None, help="data root (default: the run's)")
    parser.add_argument("--cache", type=Path, default=Path(".bcedge-cache"))
    parser.add_argument("--rounds", type=int, default=20, help="interleaved timed calls per artifact and thread count")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--set", action="store_true", help="install the new artifact when its gate passes")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from bcedge.bench import machine_info
    from bcedge.bundle import load_bundle
    from export.acceptance import baselines, machine_label
    from export.tflite import hybrid_ops
    from export.tflite_rewrite import float_depthwise_weights

    bundle = load_bundle(args.bundle)
    record = dynamic_record(bundle)
    old_bytes = bundle.artifact_path(record).read_bytes()
    new_bytes, n = float_depthwise_weights(old_bytes)
    if n == 0:
        print(f"{bundle.dir / record.file}: no hybrid depthwise convolution; nothing to do")
        return 0
    with tempfile.TemporaryDirectory(prefix="float-dw-") as tmp:
        work = Path(tmp)
        old, new = work / "old" / record.file, work / "new" / record.file
        for path, data in ((old, old_bytes), (new, new_bytes)):
            path.parent.mkdir()
            path.write_bytes(data)
        gate = gate_both(*validation_set(args.run, args.root, args.cache), old, new, record, bundle.threshold)
        recorded = float(record.metrics["dice"])
        if abs(gate["old"]["metrics"]["dice"] - recorded) > 1e-9:
            raise SystemExit(
                f"error: the old artifact scores {gate['old']['metrics']['dice']:.6f} here against its recorded "
                f"{recorded:.6f}: not the export's data or preprocessing"
            )
        # Acceptance baselines of every artifact here, the new dynamic one in place of the old.
        staged = work / "staged"
        shutil.copytree(bundle.dir, staged)
        (staged / record.file).write_bytes(new_bytes)
        staged_bundle = load_bundle(staged)
        from bcedge.bundle import ArtifactRecord

        staged_records = [
            ArtifactRecord.from_file(staged, r.file, format=r.format, precision=r.precision, backend=r.backend)
            for r in staged_bundle.manifest.artifacts
        ]
        acceptance_bytes = (staged / bundle.manifest.acceptance["file"]).read_bytes()
        base = baselines(staged, staged_records, acceptance_bytes, bundle.threshold)
        tensor = scan_tensor(work / "scan")
        cpus = len(os.sched_getaffinity(0))
        speed = [time_pair(old, new, tensor, t, args.rounds) for t in sorted({1, cpus})]
        doc = {
            "script": "benchmarks/float_depthwise_gate.py",
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "bundle": str(args.bundle),
            "artifact": record.file,
            "weights_dequantised": n,
            "sizes_bytes": {"old": len(old_bytes), "new": len(new_bytes)},
            "hybrid_ops": {"old": hybrid_ops(old_bytes), "new": hybrid_ops(new_bytes)},
            "sha256": {"old": record.sha256, "new": next(r.sha256 for r in staged_records if r.file == record.file)},
            "gate": {
                **gate,
                "tolerance": record.tolerance,
                "reference_dice": float(record.metrics["reference_dice"]),
                "old_recorded_dice": recorded,
            },
            "acceptance_baselines_here": base,
            "acceptance_baselines_recorded": (bundle.manifest.acceptance or {}).get("baseline"),
            "baseline_machine_recorded": (bundle.manifest.acceptance or {}).get("baseline_machine"),
            "speed_ffdm_phantom": speed,
            "machine": machine_info(sorted({1, cpus})),
            "machine_label": machine_label(),
            "installed": False,
        }
        if args.set:
            if gate["new"]["gate"] != "passed":
                delta = gate["new"]["metrics"]["delta_dice"]
                print(f"error: the new artifact failed its gate ({delta:+.4f}); not installed")
            else:
                note = {
                    "float_depthwise": {
                        "weights_dequantised": n,
                        "from_sha256": record.sha256,
                        "how": "export.tflite_rewrite.float_depthwise_weights applied to the earlier dynamic-range "
                        "artifact (benchmarks/float_depthwise_gate.py)",
                    }
                }
                install(bundle, record, new, gate, base, note)
                doc["installed"] = True
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    g = doc["gate"]
    print(
        f"{record.file}: {n} depthwise weight tensors to float, {len(old_bytes)} -> {len(new_bytes)} bytes\n"
        f"gate on {g['n_images']} val images (reference {g['reference_dice']:.4f}, tolerance {g['tolerance']}): "
        f"old {g['old']['metrics']['dice']:.4f} ({g['old']['gate']}), new {g['new']['metrics']['dice']:.4f} "
        f"({g['new']['metrics']['delta_dice']:+.4f}, {g['new']['gate']})"
    )
    for row in speed:
        print(speed_line(row))
    print(f"written: {args.json}{' (installed in ' + str(args.bundle) + ')' if doc['installed'] else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
