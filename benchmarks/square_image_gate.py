"""Switch a bundle to ``square_image`` preprocessing only where its own images cannot tell (issue #12).

``PreprocessConfig.square_image`` lays a scan out as if the whole image had been resized to a square
first, as CDD-CESM's source did to every file the mass model was trained on. On a square image it is
a no-op by construction; this script proves that on a bundle's data, without the model: for every
image of the given split subsets it compares the model input and geometry with the option off and on
(bit for bit). When every one is identical, the gate's Dice (and every figure measured on those
images) cannot move, and ``--set`` rewrites the bundle's manifest (its preprocessing config and hash
only; the artifacts, gates and acceptance data are untouched). Appends (or replaces) the bundle's
entry in ``benchmarks/results/square_image_gate.json``.

    BCEDGE_DATA=../shared/data python benchmarks/square_image_gate.py --bundle bcedge/mass_model \\
        --data combined-v2 --split benchmarks/splits/combined-v2.json --subsets train val test [--set]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results" / "square_image_gate.json"


def compare(config: Any, data: str, root: str, split: str, subset: str) -> dict[str, Any]:
    """Model inputs with ``square_image`` off and on for every image of ``subset``: how many are identical."""
    from preprocess_v2_gate import compare_configs

    from bcedge.datasets.registry import open_dataset
    from bcedge.datasets.splits import filter_samples, load_split

    samples = filter_samples(open_dataset(data, root).samples(), load_split(split), subset)
    off, on = dataclasses.replace(config, square_image=False), dataclasses.replace(config, square_image=True)
    identical, differ, shapes = compare_configs(samples, off, on, lambda mammo: "x".join(map(str, mammo.shape)))
    return {"images": len(samples), "identical": identical, "differ": differ, "image_shapes": shapes}


def set_square_image(bundle: Path) -> None:
    """Rewrite ``bundle``'s manifest (atomically) with ``square_image`` on: its config and hash only."""
    from bcedge.imageio import atomic_write_bytes
    from bcedge.preprocess import PreprocessConfig

    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    config = dataclasses.replace(PreprocessConfig.from_dict(manifest["preprocess"]), square_image=True)
    manifest.update(preprocess=config.to_dict(), preprocess_hash=config.hash())
    atomic_write_bytes(path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, type=Path)
    parser.add_argument("--data", required=True)
    parser.add_argument("--root", default=os.environ.get("BCEDGE_DATA"))
    parser.add_argument("--split", required=True)
    parser.add_argument("--subsets", nargs="+", default=["val"])
    parser.add_argument("--set", action="store_true", help="rewrite the manifest when every input is identical")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not args.root:
        parser.error("--root (or BCEDGE_DATA) is needed")

    from bcedge.bundle import load_bundle
    from bcedge.imageio import atomic_write_bytes

    config = load_bundle(args.bundle).preprocess_config()
    subsets = {name: compare(config, args.data, args.root, args.split, name) for name in args.subsets}
    same = all(r["identical"] == r["images"] for r in subsets.values())
    for name, r in subsets.items():
        print(f"{args.bundle} {name}: {r['identical']} of {r['images']} model inputs identical", file=sys.stderr)
    switched = bool(args.set and same)
    if switched:
        set_square_image(args.bundle)
        print(f"{args.bundle}: manifest set to square_image", file=sys.stderr)
    entry = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "bundle": str(args.bundle),
        "data": args.data,
        "split": args.split,
        "subsets": subsets,
        "all_identical": same,
        "switched": switched,
    }
    doc = json.loads(args.json.read_text()) if args.json.is_file() else {"what": __doc__.splitlines()[0], "bundles": {}}
    doc["bundles"][str(args.bundle)] = entry
    atomic_write_bytes(args.json, (json.dumps(doc, indent=2) + "\n").encode())
    return 0 if same or not args.set else 1


if __name__ == "__main__":
    raise SystemExit(main())
