"""Preprocessing version 2 against version 1 on each shipped bundle's gate (issue #14 item 6).

For a bundle, ``bcedge evaluate --model BUNDLE`` scores its gate split twice through the ``bcedge
infer`` path (original grid, the bundle's threshold and minimum area): once as shipped (the
preprocessing version its manifest records) and once from a copy of the bundle whose manifest
says the other version (config and hash edited, nothing else). The gate metric is the bundle's
own (``dice_lesion_images``: mean Dice over the images with a lesion); the switch to version 2 is
allowed when it moves by <= 0.005 (``TOLERANCE``). Before the model runs, the two versions' model
inputs of every gate image are compared (``model_inputs_v1_vs_v2``: how many are bit-identical):
on 8-bit rasters version 2 resamples the displayed floats as version 1 does, so only the crop
box's snapping onto 2x2 blocks and the two-stage resize can differ.

    python benchmarks/preprocess_v2_gate.py --bundle bcedge/mass_model --data combined-v2 \\
        --root $BCEDGE_DATA --split benchmarks/splits/combined-v2.json --subset val \\
        --artifact model_fp16.tflite [--reuse V1.json V2.json] [--json OUT]

``--reuse`` summarises two ``bcedge evaluate --json`` reports already made with those commands
instead of running them; ``--switch`` then rewrites the bundle's manifest to version 2 when the
gate stayed within the tolerance. Appends (or replaces) the bundle's entry in
``benchmarks/results/preprocess_v2_gate.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "preprocess_v2_gate.json"
#: Largest allowed move of the gate metric when a shipped bundle switches preprocessing version.
TOLERANCE = 0.005


def set_version(bundle: Path, version: int) -> None:
    """Rewrite ``bundle``'s manifest (in place, atomically) to preprocessing ``version``: its config and
    hash only; the artifacts, their gates and the acceptance data are untouched."""
    from bcedge.imageio import atomic_write_bytes
    from bcedge.preprocess import PreprocessConfig

    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    config = dataclasses.replace(PreprocessConfig.from_dict(manifest["preprocess"]), version=version)
    manifest.update(preprocess=config.to_dict(), preprocess_hash=config.hash())
    atomic_write_bytes(path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())


def with_version(bundle: Path, version: int, out: Path) -> Path:
    """A copy of ``bundle`` at ``out`` whose manifest records preprocessing ``version`` (config and hash)."""
    shutil.copytree(bundle, out)
    set_version(out, version)
    return out


def gate_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """``dice_lesion_images`` (mean Dice over images with a lesion), Dice over all images, counts."""
    images = report["images"]
    lesion = [r["dice"] for r in images if r.get("lesions", 0) > 0]
    return {
        "dice_lesion_images": sum(lesion) / len(lesion) if lesion else None,
        "dice_all_images": sum(r["dice"] for r in images) / len(images),
        "n_images": len(images),
        "n_lesion_images": len(lesion),
        "lesions_found": sum(r.get("found", 0) for r in images),
        "false_components": sum(r.get("false_components", 0) for r in images),
    }


def compare_tensors(args: argparse.Namespace, config: Any) -> dict[str, Any]:
    """Version 1 and version 2 model inputs of every gate image, without the model.

    Returns:
        how many are bit-identical (tensor and geometry), and the mean |difference| of the others.
    """
    from bcedge.datasets.registry import open_dataset
    from bcedge.datasets.splits import filter_samples, load_split

    samples = filter_samples(open_dataset(args.data, args.root).samples(), load_split(args.split), args.subset)
    v1 = dataclasses.replace(config, version=1)
    v2 = dataclasses.replace(config, version=2)

    def kind(mammo: Any) -> str:
        stored = mammo.stored
        return "float" if stored is None else f"{stored.values.dtype.itemsize * 8}-bit stored"

    identical, differ, kinds = compare_configs(samples, v1, v2, kind)
    others = "mean_abs_difference_of_the_others"
    return {"images": len(samples), "identical": identical, others: differ, "inputs": kinds}


def compare_configs(
    samples: Iterable[Any], first: Any, second: Any, describe: Callable[[Any], str]
) -> tuple[int, dict[str, float], dict[str, int]]:
    """Each sample's model input under two preprocessing configs, without the model.

    Returns:
        (how many give bit-identical tensors and equal geometries, {id: mean |difference|} of the
        others, {describe(mammogram): count}).
    """
    from bcedge.preprocess import preprocess

    identical, differ, kinds = 0, {}, {}
    for sample in samples:  # e.g. bcedge.datasets Samples; ``describe`` groups them (dtype, shape)
        mammo = sample.load_image()
        key = describe(mammo)
        kinds[key] = kinds.get(key, 0) + 1
        (t1, g1), (t2, g2) = preprocess(mammo, first), preprocess(mammo, second)
        if g1 == g2 and np.array_equal(t1, t2):
            identical += 1
        else:
            differ[sample.id] = round(float(np.abs(t1 - t2).mean()), 5)
    return identical, differ, kinds


def evaluate(bundle: Path, args: argparse.Namespace, out_json: Path) -> list[str]:
    """Run ``bcedge evaluate`` on ``bundle`` into ``out_json``; returns the command."""
    cmd = [
        str(Path(sys.executable).parent / "bcedge"),
        "evaluate",
        "--model",
        str(bundle),
        "--data",
        args.data,
        "--root",
        args.root,
        "--split",
        args.split,
        "--subset",
        args.subset,
        "--threads",
        "1",
        "--json",
        str(out_json),
    ]
    if args.artifact:
        cmd += ["--artifact", args.artifact]
    subprocess.run(cmd, check=True)
    return cmd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data")
    parser.add_argument("--root")
    parser.add_argument("--split")
    parser.add_argument("--subset", default="val")
    parser.add_argument("--artifact", default=None)
    parser.add_argument(
        "--set-version",
        type=int,
        choices=(1, 2),
        help="only rewrite BUNDLE's manifest to this version, no evaluation (a recipe applying a decision "
        "this script's gate already backed, e.g. training/make_mass_model.sh)",
    )
    parser.add_argument("--reuse", nargs=2, metavar=("V1_JSON", "V2_JSON"), default=None)
    parser.add_argument("--note", default="", help="How the evaluations were run (kept in the JSON).")
    parser.add_argument("--json", default=str(RESULTS))
    parser.add_argument(
        "--switch",
        action="store_true",
        help="When the gate moved by <= TOLERANCE, rewrite BUNDLE's manifest to preprocessing version 2.",
    )
    args = parser.parse_args(argv)
    if args.set_version is not None:
        set_version(Path(args.bundle), args.set_version)
        print(f"{args.bundle}: manifest set to preprocessing version {args.set_version}", file=sys.stderr)
        return 0
    if not (args.data and args.root and args.split):
        parser.error("--data, --root and --split are needed to run the gate")

    from bcedge.bundle import load_bundle

    bundle = Path(args.bundle)
    config = load_bundle(bundle).preprocess_config()
    shipped = config.version
    tensors = compare_tensors(args, config)
    print(f"{args.bundle}: model inputs: {tensors['identical']} of {tensors['images']} bit-identical", file=sys.stderr)
    reports: dict[int, dict[str, Any]] = {}
    commands: dict[int, list[str] | str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for version in (1, 2):
            if args.reuse:
                reports[version] = json.loads(Path(args.reuse[version - 1]).read_text())
                commands[version] = f"reused {args.reuse[version - 1]}"
                continue
            target = bundle if version == shipped else with_version(bundle, version, Path(tmp) / f"v{version}")
            out = Path(tmp) / f"v{version}.json"
            commands[version] = evaluate(target, args, out)
            reports[version] = json.loads(out.read_text())
    before, after = gate_metrics(reports[1]), gate_metrics(reports[2])
    delta = after["dice_lesion_images"] - before["dice_lesion_images"]
    per_image = {
        r1["id"]: round(r2["dice"] - r1["dice"], 4)
        for r1, r2 in zip(reports[1]["images"], reports[2]["images"], strict=True)
        if r1["id"] == r2["id"] and abs(r2["dice"] - r1["dice"]) >= 0.001
    }
    entry = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "bundle": str(args.bundle),
        "shipped_version_when_measured": shipped,
        "gate": {"data": args.data, "split": args.split, "subset": args.subset, "artifact": args.artifact},
        "model_inputs_v1_vs_v2": tensors,
        "version_1": before,
        "version_2": after,
        "delta_dice_lesion_images": round(delta, 5),
        "tolerance": TOLERANCE,
        "within_tolerance": abs(delta) <= TOLERANCE,
        "images_whose_dice_moved_by_0.001_or_more": per_image,
        "model": reports[1].get("model"),
        "commands": {f"version_{v}": c for v, c in commands.items()},
        "note": args.note,
    }
    path = Path(args.json)
    doc = json.loads(path.read_text()) if path.exists() else {"what": __doc__.splitlines()[0], "bundles": {}}
    doc["bundles"][str(args.bundle)] = entry
    path.write_text(json.dumps(doc, indent=1) + "\n")
    if args.switch and entry["within_tolerance"] and shipped != 2:
        set_version(bundle, 2)
        print(f"{args.bundle}: manifest switched to preprocessing version 2", file=sys.stderr)
    print(
        f"{args.bundle}: gate Dice v1 {before['dice_lesion_images']:.4f}, v2 {after['dice_lesion_images']:.4f}, "
        f"delta {delta:+.4f} ({'within' if entry['within_tolerance'] else 'OUTSIDE'} +-{TOLERANCE})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
