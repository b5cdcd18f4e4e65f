"""Where the time goes in a ``.tflite`` model: every op timed on its own (LiteRT, XNNPACK).

LiteRT's Python interpreter has no per-op profiler, so each op is cut out of the
flatbuffer as a one-op model (with its constants) and timed alone
(:func:`bcedge.bench.profile_tflite_ops`); the whole model is timed too, so the
table says how much of it the ops account for.

    python benchmarks/profile_tflite.py models/unet-mobilenetv2-combined256/model_int8.tflite --threads 1

Per op type: count, summed median ms, share, GFLOP/s (2 x MACs / time) and the input
types (a float32 activation beside int8 weights is a dynamic-range "hybrid" kernel);
then the slowest single ops.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help=".tflite file")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=20, help="timed invocations per op (median kept)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--top", type=int, default=12, help="how many of the slowest ops to list")
    parser.add_argument("--no-xnnpack", action="store_true", help="builtin kernels instead of XNNPACK")
    parser.add_argument("--json", type=Path, default=None, help="write every op's timing as JSON")
    args = parser.parse_args(argv)

    import numpy as np

    from bcedge.backends import open_backend
    from bcedge.bench import latency_stats, profile_tflite_ops, summarise_ops, time_calls

    with open_backend("tflite", args.model, threads=args.threads, xnnpack=not args.no_xnnpack) as model:
        size = model.input_size
        rng = np.random.default_rng(0)
        inputs = [rng.random((1, size, size, 1), dtype=np.float32) for _ in range(4)]
        whole = latency_stats(time_calls(model.predict, inputs, args.runs, args.warmup))["p50"]
    ops = profile_tflite_ops(
        args.model, threads=args.threads, runs=args.runs, warmup=args.warmup, xnnpack=not args.no_xnnpack
    )
    summary = summarise_ops(ops, model_p50_ms=whole, top=args.top)
    delegate = "builtin kernels" if args.no_xnnpack else "XNNPACK"
    print(f"{args.model}: {len(ops)} ops, {args.threads} thread(s), {delegate}")
    print(f"whole model p50 {whole:.2f} ms; ops timed alone sum to {summary['sum_ms']:.2f} ms\n")
    print(f"{'op':<22}{'count':>6}{'ms':>10}{'share':>8}{'GFLOP/s':>10}  input types")
    for t in summary["by_type"]:
        rate = "-" if t["gflops_per_s"] is None else f"{t['gflops_per_s']:.1f}"
        types = ", ".join(t["input_types"])
        print(f"{t['op']:<22}{t['count']:>6}{t['ms']:>10.3f}{100 * t['share']:>7.1f}%{rate:>10}  {types}")
    print(f"\nslowest {args.top} ops:")
    for o in summary["slowest"]:
        types = ", ".join(o["input_types"])
        print(f"  #{o['index']:<4} {o['op']:<20} {o['ms']:8.3f} ms  {o['macs'] / 1e6:9.1f} MMAC  {types}")
    for o in summary["failed"]:
        print(f"  #{o['index']} {o['op']}: {o['note']}", file=sys.stderr)
    if args.json:
        from bcedge.imageio import atomic_write_bytes

        doc = {
            "model": str(args.model),
            "threads": args.threads,
            "xnnpack": not args.no_xnnpack,
            "model_p50_ms": whole,
            "summary": summary,
            "ops": [asdict(o) for o in ops],
        }
        atomic_write_bytes(args.json, json.dumps(doc, indent=2).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
