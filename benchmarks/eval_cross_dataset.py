"""Cross-dataset evaluation: each bundle on every image set given, original grid, bootstrap 95 % intervals.

For the generalisation figures of issue #12 (a model on data it was not trained on, e.g.
trained without MIAS, tested on every MIAS image). Every set goes through
:func:`bcedge.evaluation.evaluate_sets` (the ``bcedge evaluate --model`` path: Segmenter on the
original grid, per source and kind: the study's table, lesions found, false-positive
components per image). Writes ``OUT.json`` (every report, what each bundle was trained on
according to its manifest, git state) and ``OUT.md`` (one table pair per bundle and set).

    python benchmarks/eval_cross_dataset.py --model models/unet-mobilenetv2-combined256 \\
        --set "combined test" combined ../shared/data benchmarks/splits/combined.json test \\
        --set "mini-MIAS, every image" mini-mias ../shared/data/mini-mias \\
        --set "CDD-CESM CM views" cdd-cesm ../shared/data/cdd-cesm kind=CM \\
        --out benchmarks/results/cross_dataset

``--set LABEL DATASET ROOT [SPLIT [SUBSET]] [KEY=VALUE ...]``: without a split every image
of the dataset is scored; ``SUBSET`` defaults to ``test``; ``KEY=VALUE`` are reader options.
Each set reports ``training_overlap``: how many of its images the bundle's training split (from
its manifest) lists under train or val, by image id: 0 is necessary for a generalisation figure,
not sufficient (other views of a training patient have other ids).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "cross_dataset"


def parse_set(tokens: list[str]) -> tuple[str, dict]:
    """``[LABEL, DATASET, ROOT, (SPLIT, (SUBSET)), KEY=VALUE...]`` -> (label, BenchData.from_split kwargs)."""
    if len(tokens) < 3:
        raise SystemExit(f"error: --set needs LABEL DATASET ROOT [SPLIT [SUBSET]] [KEY=VALUE...]; got {tokens}")
    label, dataset, root, *rest = tokens
    positional = [t for t in rest if "=" not in t]
    options = [t for t in rest if "=" in t]
    if len(positional) > 2:
        raise SystemExit(f"error: --set {label!r}: too many values {positional}; expected [SPLIT [SUBSET]]")
    split = positional[0] if positional else None
    subset = positional[1] if len(positional) > 1 else "test"
    return label, {"dataset": dataset, "root": root, "split": split, "split_name": subset, "options": options}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", type=Path, required=True, help="bundle folder (repeatable)")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        nargs="+",
        required=True,
        metavar="TOKEN",
        help="LABEL DATASET ROOT [SPLIT [SUBSET]] [KEY=VALUE ...] (repeatable)",
    )
    parser.add_argument("--artifact", default=None, help="artifact file in every bundle (default: backend's choice)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--threshold", type=float, default=None, help="probability threshold (default: bundle's)")
    parser.add_argument("--min-area", type=float, default=None, help="minimum component area, mm² (as bcedge infer)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images of each set (smoke runs)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output stem: writes STEM.json and STEM.md")
    return parser.parse_args(argv)


def to_markdown(doc: dict) -> str:
    """One section per bundle, one table pair per set."""
    from bcedge.evaluation import to_markdown as report_markdown

    lines = ["# Cross-dataset evaluation (original grid, `bcedge evaluate --model` path)", ""]
    for run in doc["runs"]:
        model = run["model"] or {}
        lines += [f"## {model.get('name')} ({model.get('artifact')}), bundle `{run['bundle']}`", ""]
        lines += [f"Trained on: `{json.dumps(run['trained_on'])}`", ""]
        for label, report in run["sets"].items():
            lines += [f"### {label}: {report['data']['label']}", ""]
            overlap = report.get("training_overlap")
            if overlap is not None:
                lines += [
                    f"Images listed under train/val in `{overlap['split']}`: {overlap['images']} of {overlap['n']}"
                    " (by image id; other views of a training patient are not counted).",
                    "",
                ]
            lines += [report_markdown(report).rstrip(), ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from bcedge.bench import BenchData, source_state
    from bcedge.errors import BcedgeError
    from bcedge.evaluation import evaluate_sets
    from bcedge.imageio import atomic_write_bytes, json_default

    try:
        sets = {}
        for tokens in args.sets:
            label, spec = parse_set(tokens)
            sets[label] = BenchData.from_command_line(**spec, limit=args.limit)
        runs = []
        for bundle in args.model:
            result = evaluate_sets(
                bundle,
                sets,
                backend=args.backend,
                artifact=args.artifact,
                threshold=args.threshold,
                min_area_mm2=args.min_area,
                progress=lambda line, b=bundle: print(f"{b}: {line}", file=sys.stderr, flush=True),
            )
            runs.append({"bundle": str(bundle), **result})
    except BcedgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    doc = {"kind": "bcedge.cross_dataset", "version": 1, "source": source_state(ROOT), "runs": runs}
    text = json.dumps(doc, indent=2, default=json_default, allow_nan=False) + "\n"
    atomic_write_bytes(args.out.with_suffix(".json"), text.encode("utf-8"))
    md = to_markdown(doc)
    atomic_write_bytes(args.out.with_suffix(".md"), md.encode("utf-8"))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
