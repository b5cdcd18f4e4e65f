"""Reproduce the committed model comparison: every CPU artifact of the real models, 1 and 2 threads.

Runs ``bcedge benchmark`` (:func:`bcedge.bench.run_benchmark`) on the bundles given, on
the committed real-data test split (``benchmarks/splits/combined.json``: CDD-CESM DM
images with pixel masks + mini-MIAS films with circle masks, 52 images, 12 with a
lesion), reading the data from ``--root`` or ``$BCEDGE_DATA``, and writes
``OUT.json``, ``OUT.md`` and ``OUT.png`` (default ``benchmarks/results/benchmark_real``).

    BCEDGE_DATA=../shared/data python benchmarks/bench_models.py \\
        bundles/unet bundles/unet-mobilenetv2 bundles/unet-vgg19 --threads 1,2 --profile-ops

Every row runs in a fresh process (its peak RSS is its own). Keras rows are the
reference model run eagerly (threads are not applied to Keras); ``--formats`` narrows
the artifacts (e.g. ``tflite,onnx``). Run it on a quiet machine: the JSON records the
load average at the start, the git commit and any uncommitted ``bcedge/`` file.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPLIT = ROOT / "benchmarks" / "splits" / "combined.json"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "benchmark_real"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", nargs="+", type=Path, help="bundle folders (one per model)")
    parser.add_argument(
        "--root", type=Path, default=None, help="data folder holding mini-mias/ and cdd-cesm/ (default: $BCEDGE_DATA)"
    )
    parser.add_argument("--dataset", default="combined", help="registered dataset name (default: combined)")
    parser.add_argument("--split", type=Path, default=DEFAULT_SPLIT, help="split file (default: the committed one)")
    parser.add_argument("--split-name", default="test")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images (smoke runs)")
    parser.add_argument("--formats", default=None, help="comma-separated artifact filter (default: every artifact)")
    parser.add_argument("--threads", default="1,2", help="thread counts, comma-separated (default: 1,2)")
    parser.add_argument("--runs", type=int, default=30, help="timed model calls per row (default: 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before them (default: 3)")
    parser.add_argument("--profile-ops", action="store_true", help="per-op time breakdown of TFLite rows")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per row (default: 1800)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output stem: writes STEM.json/.md/.png")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from bcedge.bench import BenchData, BenchOptions, run_benchmark, source_state
    from bcedge.bench.report import int8_speedups, plot_pareto, print_table, write_json, write_markdown
    from bcedge.errors import BcedgeError

    root = args.root or (Path(os.environ["BCEDGE_DATA"]) if os.environ.get("BCEDGE_DATA") else None)
    if root is None:
        print("error: give --root or set BCEDGE_DATA to the data folder", file=sys.stderr)
        return 2
    try:
        threads = tuple(int(t) for t in args.threads.split(",") if t.strip())
        data = BenchData.from_split(args.dataset, root, args.split, args.split_name, limit=args.limit)
        options = BenchOptions(
            runs=args.runs,
            warmup=args.warmup,
            threads=threads,
            isolate=True,
            profile_ops=args.profile_ops,
            timeout_s=args.timeout,
        )
        formats = [f for f in args.formats.split(",") if f.strip()] if args.formats else None
        doc = run_benchmark(
            [str(b) for b in args.bundles],
            data,
            options,
            formats=formats,
            progress=lambda msg: print(msg, file=sys.stderr, flush=True),
        )
    except (BcedgeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    doc["source"] = source_state(ROOT)
    # The data folder is machine-local: record it as the variable the script reads.
    if args.root is None:
        doc["data"]["root"] = "$BCEDGE_DATA"
    doc["data"]["split"] = os.path.relpath(args.split, ROOT) if args.split.is_relative_to(ROOT) else str(args.split)
    for row in doc["rows"]:
        bundle = Path(row["bundle"]).resolve()
        row["bundle"] = os.path.relpath(bundle, ROOT) if bundle.is_relative_to(ROOT) else bundle.name
    doc["int8_speedups"] = int8_speedups(doc)
    print_table(doc)
    out = args.out
    write_json(doc, out.with_suffix(".json"))
    write_markdown(doc, out.with_suffix(".md"), title="bcedge benchmark: the three real models")
    if not args.no_plot:
        plot_pareto(doc, out.with_suffix(".png"))
    print(f"wrote {out}.json, {out}.md" + ("" if args.no_plot else f", {out}.png"), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
