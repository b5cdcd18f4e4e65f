"""A bundle's any-width TFLite artifacts with their upsampling as CONCATENATION + DEPTH_TO_SPACE: checked, timed.

Any-width exports upsample with a RESIZE_NEAREST_NEIGHBOR whose size is computed at run time, which
LiteRT's XNNPACK does not take; :func:`export.tflite_rewrite.depth_to_space_upsampling` rewrites those ops
(bit-identical outputs by construction) into ops XNNPACK runs, at the cost of copying each upsampled
input four times. Whether that pays depends on the CPU and the thread count, so it is not applied by
``bcedge export``: run this on the device. For every TFLite artifact of the bundle it changes, this
script measures on this machine:

1. **identity and gate**: old and new on the bundle's validation split, scored as ``bcedge export`` scores
   them (``benchmarks/float_depthwise_gate.py``'s :func:`gate_both`): the probabilities must be equal, bit
   for bit (else the script stops), so the recorded gate metrics must be reproduced too;
2. **acceptance baselines** of every artifact here, the new ones in place;
3. **speed**: old and new interleaved on the FFDM phantom's model input at 1 thread and every usable CPU.

With ``--set`` the new artifacts replace the old ones in the bundle and their records (sha256, size,
details) and the acceptance baselines are rewritten: only where the speed rows say it pays (at the thread
counts the device runs: ``bcedge infer`` uses every usable CPU on one scan, one thread per interpreter in
a many-scan job).

    python benchmarks/depth_to_space_check.py --run RUN --bundle bcedge/mass_model --root ../shared/data \\
        [--cache DIR] [--artifact FILE ...] [--set] [--json benchmarks/results/depth_to_space_check.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results" / "depth_to_space_check.json"


def main(argv: list[str] | None = None) -> int:
    from float_depthwise_gate import (
        add_common_arguments,
        gate_both,
        install,
        scan_tensor,
        speed_line,
        time_pair,
        validation_set,
    )

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument(
        "--artifact", action="append", default=None, help="only this artifact file (repeatable; default: every one)"
    )
    parser.add_argument("--set", action="store_true", help="install the rewritten artifacts")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from bcedge.bench import machine_info
    from bcedge.bundle import ArtifactRecord, load_bundle
    from export.acceptance import baselines, machine_label
    from export.tflite_rewrite import depth_to_space_upsampling

    bundle = load_bundle(args.bundle)
    changed = []
    for record in bundle.manifest.artifacts:
        if record.format != "tflite" or (args.artifact and record.file not in args.artifact):
            continue
        old_bytes = bundle.artifact_path(record).read_bytes()
        new_bytes, n = depth_to_space_upsampling(old_bytes)
        if n:
            changed.append((record, old_bytes, new_bytes, n))
    if not changed:
        print(f"{bundle.dir}: no TFLite artifact upsamples by a computed-size resize; nothing to do")
        return 0
    cpus = len(os.sched_getaffinity(0))
    doc: dict = {
        "script": "benchmarks/depth_to_space_check.py",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "bundle": str(args.bundle),
        "artifacts": {},
    }
    with tempfile.TemporaryDirectory(prefix="depth-to-space-") as tmp:
        work = Path(tmp)
        staged = work / "staged"
        shutil.copytree(bundle.dir, staged)
        tensor = scan_tensor(work / "scan")
        val = validation_set(args.run, args.root, args.cache)  # once, for every artifact
        paths = {}
        for record, old_bytes, new_bytes, n in changed:
            old, new = work / "old" / record.file, work / "new" / record.file
            for path, data in ((old, old_bytes), (new, new_bytes)):
                path.parent.mkdir(exist_ok=True)
                path.write_bytes(data)
            (staged / record.file).write_bytes(new_bytes)
            gate = gate_both(*val, old, new, record, bundle.threshold)
            if not gate["identical_probabilities"]:
                raise SystemExit(
                    f"error: {record.file}: the rewritten model's probabilities differ from the original's "
                    f"(max {gate['max_abs_probability_diff']:.3g}) on the validation images; not installed"
                )
            recorded = float(record.metrics["dice"])
            if abs(gate["old"]["metrics"]["dice"] - recorded) > 1e-9:
                raise SystemExit(
                    f"error: {record.file} scores {gate['old']['metrics']['dice']:.6f} here against its recorded "
                    f"{recorded:.6f}: not the export's data or preprocessing"
                )
            speed = [time_pair(old, new, tensor, t, args.rounds) for t in sorted({1, cpus})]
            paths[record.file] = new
            doc["artifacts"][record.file] = {
                "resizes_rewritten": n,
                "sizes_bytes": {"old": len(old_bytes), "new": len(new_bytes)},
                "sha256": {"old": record.sha256},
                "gate": {**gate, "tolerance": record.tolerance, "old_recorded_dice": recorded},
                "speed_ffdm_phantom": speed,
            }
        staged_records = [
            ArtifactRecord.from_file(staged, r.file, format=r.format, precision=r.precision, backend=r.backend)
            for r in load_bundle(staged).manifest.artifacts
        ]
        for r in staged_records:
            if r.file in doc["artifacts"]:
                doc["artifacts"][r.file]["sha256"]["new"] = r.sha256
        acceptance_bytes = (staged / bundle.manifest.acceptance["file"]).read_bytes()
        base = baselines(staged, staged_records, acceptance_bytes, bundle.threshold)
        doc.update(
            {
                "acceptance_baselines_here": base,
                "acceptance_baselines_recorded": (bundle.manifest.acceptance or {}).get("baseline"),
                "baseline_machine_recorded": (bundle.manifest.acceptance or {}).get("baseline_machine"),
                "machine": machine_info(sorted({1, cpus})),
                "machine_label": machine_label(),
                "installed": False,
            }
        )
        if args.set:
            for record, _, _, n in changed:
                entry = doc["artifacts"][record.file]
                note = {
                    "depth_to_space_upsampling": {
                        "resizes_rewritten": n,
                        "from_sha256": record.sha256,
                        "how": "export.tflite_rewrite.depth_to_space_upsampling (bit-identical outputs; "
                        "benchmarks/depth_to_space_check.py)",
                    }
                }
                install(load_bundle(args.bundle), record, paths[record.file], entry["gate"], base, note)
            doc["installed"] = True
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    for file, entry in doc["artifacts"].items():
        g = entry["gate"]
        print(
            f"{file}: {entry['resizes_rewritten']} resizes rewritten; on {g['n_images']} val images probabilities "
            f"identical, Dice {g['new']['metrics']['dice']:.4f} (recorded {g['old_recorded_dice']:.4f})"
        )
        for row in entry["speed_ffdm_phantom"]:
            print("  " + speed_line(row))
    print(f"written: {args.json}{' (installed in ' + str(args.bundle) + ')' if doc['installed'] else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
