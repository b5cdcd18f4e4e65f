"""A/B: does the Segmenter's warm-up thread shorten a cold ``bcedge infer``? (issue #14 item 8)

Fresh processes of ``bcedge infer SCAN --outputs json,mask`` (the FFDM phantom of
``bench_infer.py``, default model and options), alternating two variants after one untimed run
of each: ``thread`` (as shipped: the reader's imports on a thread while the model loads) and
``serial`` (the same warm-up, ``bcedge.pipeline._warm_up``, run first on the calling thread; the
Segmenter's thread then has nothing left to do). Both start through ``python -c`` so they differ only in
that. Per run: wall, the child's CPU time and the others' CPU share (``bench_cold_start.run_once``).

    python benchmarks/ab_warm_up_thread.py [--runs 8] [--json benchmarks/results/ab_warm_up_thread.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

_RUN = """
import sys
import bcedge.pipeline as pipeline
if sys.argv[1] == "serial":  # the same warm-up, done first on this thread; the Segmenter's thread then has none
    pipeline._warm_up()
    pipeline._warm_up = lambda errors=None: None
from bcedge.cli import main
sys.exit(main(sys.argv[2:]))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from bench_cold_start import run_once, summarise
    from bench_infer import make_scans

    from bcedge.bench.machine import machine_info, source_state

    with tempfile.TemporaryDirectory(prefix="ab warm up ") as tmp:
        folder = Path(tmp)
        scan = next(p for p, info in make_scans(folder) if (info["rows"], info["columns"]) == (2944, 1920))
        infer = ["infer", str(scan), "--outputs", "json,mask", "--out", str(folder / "out")]
        commands = {name: [sys.executable, "-c", _RUN, name, *infer] for name in ("thread", "serial")}
        for cmd in commands.values():
            run_once(cmd, 0.1)  # untimed: page cache, bytecode, the choice cache
        runs: dict[str, list[dict[str, Any]]] = {"thread": [], "serial": []}
        for i in range(args.runs):
            for name in ("thread", "serial") if i % 2 == 0 else ("serial", "thread"):
                runs[name].append(run_once(commands[name], 0.1))
    summary = {name: summarise(rows) for name, rows in runs.items()}
    doc = {
        "script": "benchmarks/ab_warm_up_thread.py",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "source": source_state(HERE.parent),
        "summary": summary,
        "thread_minus_serial_wall_ms_median": round(
            summary["thread"]["wall_ms_median"] - summary["serial"]["wall_ms_median"], 1
        ),
        "measured_on_a_busy_machine": any(r["busy"] for rows in runs.values() for r in rows),
        "machine": machine_info(),
        "runs": runs,
    }
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: doc[k] for k in ("summary", "thread_minus_serial_wall_ms_median")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
