"""What ``--backend auto`` picks on this machine, and whether a longer timing agrees (issue #14 items 1-2).

For each bundle (default: the shipped ``bcedge/mass_model`` and ``bcedge/demo_model``), at the
thread count ``bcedge infer`` uses by default (every usable CPU) unless ``--threads`` says otherwise:

1. ``first_use``: the choice as a first run on this machine makes it (a fresh cache folder, the
   default timing budget): the candidates, their acceptance verdicts, their median milliseconds per
   image, the chosen artifact, why, and the seconds spent measuring;
2. ``cached``: the same call again (warm cache): what a later start pays for the choice;
3. ``confirmation``: a fresh cache, a budget large enough and 5 s of timed calls per candidate (at
   most ``bcedge.choice.MAX_RUNS`` = 30): does the short timing pick what a long one picks?

Each section is measured under :class:`bcedge.bench.load.LoadMeter` (this process's CPU time, the
share of the CPUs other processes used, the ``busy`` flag); the machine's CPU model and flags come
from :func:`bcedge.bench.machine_info`. Run it on a quiet machine; the JSON says whether it was.

    python benchmarks/bench_auto_choice.py [--bundle DIR ...] [--threads N] [--json benchmarks/results/auto_choice.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _resolve(
    bundle_dir: Path, threads: int, cache: Path, budget: float | None, min_timed_s: float | None = None
) -> dict[str, Any]:
    """One choice with the cache in ``cache`` (and ``budget`` seconds when given), timed and load-metered.

    ``min_timed_s``: seconds of timed calls per candidate (default: bcedge.choice.MIN_TIMED_S), for the
    long confirmation timing.
    """
    import bcedge.choice as choice
    from bcedge.bench.load import LoadMeter
    from bcedge.bundle import load_bundle
    from bcedge.choice import BUDGET_ENV, MODE_ENV, resolve

    saved = {k: os.environ.get(k) for k in ("XDG_CACHE_HOME", BUDGET_ENV, MODE_ENV)}
    os.environ["XDG_CACHE_HOME"] = str(cache)
    os.environ[MODE_ENV] = "measure"
    if budget is None:
        os.environ.pop(BUDGET_ENV, None)
    else:
        os.environ[BUDGET_ENV] = str(budget)
    default_min = choice.MIN_TIMED_S
    if min_timed_s is not None:
        choice.MIN_TIMED_S = min_timed_s
    try:
        bundle = load_bundle(bundle_dir)
        with LoadMeter() as meter:
            t0 = time.perf_counter()
            record, report = resolve(bundle, "auto", threads=threads)
            wall = time.perf_counter() - t0
    finally:
        choice.MIN_TIMED_S = default_min
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return {
        "chosen": record.file,
        "wall_s": round(wall, 3),
        "load": meter.result,
        "warnings": report.warnings,
        **report.to_dict(),
    }


def main(argv: list[str] | None = None) -> int:
    """Measure and write the JSON (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--bundle", type=Path, action="append", help="bundle folder (repeatable; default: the two shipped ones)"
    )
    parser.add_argument("--threads", type=int, default=None, help="thread count (default: every usable CPU)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)

    from bcedge.bench import machine_info
    from bcedge.bundle import utc_now
    from bcedge.choice import MAX_RUNS, machine_fingerprint, runtime_versions
    from bcedge.cpus import default_threads

    threads = default_threads(args.threads)
    bundles = args.bundle or [ROOT / "bcedge" / "mass_model", ROOT / "bcedge" / "demo_model"]
    started = utc_now()
    results = []
    for bundle_dir in bundles:
        with tempfile.TemporaryDirectory(prefix="bcedge-choice ") as tmp:
            first = _resolve(bundle_dir, threads, Path(tmp) / "a", None)
            cached = _resolve(bundle_dir, threads, Path(tmp) / "a", None)
            # MAX_RUNS calls of every candidate (unless they take over 5 s in all): the long timing the
            # short one should agree with.
            confirmation = _resolve(bundle_dir, threads, Path(tmp) / "b", 600.0, min_timed_s=5.0)
        row = {
            "bundle": str(bundle_dir.relative_to(ROOT) if bundle_dir.is_relative_to(ROOT) else bundle_dir),
            "threads": threads,
            "first_use": first,
            "cached": cached,
            "confirmation": confirmation,
            "short_timing_agrees": first["chosen"] == confirmation["chosen"],
        }
        results.append(row)
        print(
            f"{row['bundle']}: auto picks {first['chosen']} ({first['why']}); measuring took {first['seconds']:.2f} s, "
            f"cached {cached['wall_s'] * 1000:.1f} ms; "
            f"the long timing (up to {MAX_RUNS} runs) picks {confirmation['chosen']}"
        )
        for line in first["warnings"]:
            print(f"  warning: {line}")
        for c in confirmation["candidates"]:
            print(f"  {c['file']}: {c['status']}, {c['ms']} ms/image over {c['runs']} runs (long timing)")
    doc = {
        "kind": "bcedge.auto_choice",
        "created": started,
        "finished": utc_now(),
        "machine": machine_info([threads]),
        "fingerprint": machine_fingerprint(with_gpu=True),
        "runtimes": runtime_versions(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "results": results,
        "busy": any(r[s]["load"].get("busy") for r in results for s in ("first_use", "confirmation")),
    }
    if args.json is not None:
        from bcedge.imageio import atomic_write_bytes

        atomic_write_bytes(args.json, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
