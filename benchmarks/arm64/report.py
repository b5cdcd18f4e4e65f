"""Collect the logs of ``run_suite.sh`` into one JSON record (``benchmarks/results/arm64_<distro>.json``).

    python report.py --distro debian12 --base ~/.cache/bcedge-arm64/debian12 --bundles B ... --json OUT

Records, per step, its exit code and wall time, the test summary line, what demo and infer
found, the x86-vs-aarch64 comparison of every artifact, the benchmark's Dice per artifact,
the emulated CPU and the host machine. Emulated timings are kept only as
``emulated_seconds`` / ``emulated_latency_ms``: qemu-user translates every aarch64
instruction, so they say nothing about a device's speed and are not speed figures.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # bcedge from this checkout when run with another interpreter

from bcedge.bench import machine_info, source_state  # noqa: E402
from bcedge.imageio import atomic_write  # noqa: E402

NOT_SPEED = (
    "Timings here were measured under qemu-user emulation on an x86 host shared with other jobs: "
    "they are not device timings and must not be read as speed figures."
)
#: Packages whose versions matter on the device (from pip freeze inside the root filesystem).
KEY_PACKAGES = (
    "numpy", "opencv-python-headless", "pydicom", "ai-edge-litert", "onnxruntime", "highdicom", "pynetdicom",
    "pylibjpeg", "pylibjpeg-openjpeg", "pylibjpeg-libjpeg", "bcedge",
)  # fmt: skip


def _kv(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def _summary_line(log: Path) -> str | None:
    """pytest's closing line ('N passed, M skipped in T s'), or None."""
    if not log.is_file():
        return None
    lines = [
        ln.strip("= ") for ln in log.read_text(errors="replace").splitlines() if re.search(r"\d+ (passed|failed)", ln)
    ]
    return lines[-1] if lines else None


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _findings(doc: Any) -> dict[str, Any] | None:
    """Artifact that ran, and per scan its findings count (and failures), from infer/demo ``--json``."""
    if not isinstance(doc, dict):
        return None
    model = doc.get("model") or {}
    return {
        "artifact": model.get("artifact"),
        "precision": model.get("precision"),
        "scans": [
            {"input": Path(str(r.get("input", ""))).name, "findings": len(r.get("findings") or [])}
            for r in doc.get("scans", [])
        ],
        "failures": doc.get("failures", []),
        **({"dice_vs_truth": doc["dice_vs_truth"]} if "dice_vs_truth" in doc else {}),
    }


#: Precisions whose results must equal x86's (the same float kernels' rounding); the others
#: (INT8) are held to mask Dice >= 0.98 against x86 by the artifacts step (segment_all.py).
EXACT_PRECISIONS = ("fp32", "fp16")


def _benchmark(arms: list[Any], x86: Any, bundle: str) -> dict[str, Any]:
    """One bundle's ``bcedge benchmark`` on aarch64 (one run per artifact) beside x86's.

    Args:
        arms: the aarch64 ``--json`` reports, one per artifact (None for a run that did not finish).
        x86: the x86 report of the whole bundle, same options.
        bundle: the bundle's folder, relative to the repository.

    Returns:
        ``{"bundle", "finished", "settings", "rows", "not_finished", "passed"}``; a row per
        aarch64 artifact with its Dice on both machines. ``passed``: every artifact x86 measured
        has an aarch64 row with a Dice, and the FP32/FP16 Dice equal x86's (to 1e-6).
    """
    done = [a for a in arms if isinstance(a, dict)]
    x86_rows = (x86 or {}).get("rows", []) if isinstance(x86, dict) else []
    x86_dice = {r.get("file"): r.get("dice") for r in x86_rows}
    if not done:
        return {"bundle": bundle, "finished": False, "rows": [], "not_finished": sorted(x86_dice), "passed": False}
    rows = []
    for r in (row for a in done for row in a.get("rows", [])):
        dice, ref = r.get("dice"), x86_dice.get(r.get("file"))
        exact = r.get("precision") in EXACT_PRECISIONS
        ok = dice is not None and (not exact or (ref is not None and abs(dice - ref) <= 1e-6))
        rows.append(
            {
                "file": r.get("file"),
                "precision": r.get("precision"),
                "status": r.get("status"),
                "reason": r.get("reason"),
                "dice": dice,
                "dice_x86": ref,
                "dice_minus_x86": None if dice is None or ref is None else round(dice - ref, 6),
                "gate": "Dice equal to x86" if exact else "Dice measured (mask Dice vs x86: artifacts step)",
                "passed": ok,
                "n_images": r.get("n_images"),
                "e2e_images_timed": (r.get("e2e_ms") or {}).get("n"),
                "emulated_latency_ms_p50": (r.get("latency_ms") or {}).get("p50"),
                "emulated_cpu_ms_per_call": r.get("cpu_ms_per_call"),
                "others_cpu_share": r.get("others_cpu_share"),
            }
        )
    missing = sorted(set(x86_dice) - {r["file"] for r in rows})
    return {
        "bundle": bundle,
        "finished": not missing,
        "started": min(str(a.get("created")) for a in done),
        "ended": max(str(a.get("finished")) for a in done),
        "settings": {k: v for k, v in (done[0].get("settings") or {}).items() if k != "formats"},
        "data": (done[0].get("data") or {}).get("kind") or done[0].get("data"),
        "rows": rows,
        "not_finished": missing,
        "passed": bool(rows) and not missing and bool(x86_dice) and all(r["passed"] for r in rows),
    }


#: Fields of the record that a run of only some steps (--steps) leaves empty and that are then
#: kept from the previous record, with the step that made them.
CARRIED = {
    "tests": "tests",
    "serve_round_trip": "serve",
    "demo": "demo",
    "x86_vs_arm64": "compare",
    "acceptance_choice_logic": "choice",
}


def _empty(value: Any) -> bool:
    return value in (None, "not run", {}, []) or (isinstance(value, dict) and all(v is None for v in value.values()))


def merge_previous(report: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    """Keep the previous record's results of the steps this run did not run (``--steps``).

    A step with no status in this run keeps its old status; a field that step fills keeps its
    old value; every kept item is listed under ``kept_from_earlier_run`` with the old run's
    commit, so the file says which results are older than its ``source``.
    """
    if old.get("distro") != report["distro"]:
        return report
    kept: list[str] = []
    for name, entry in (old.get("steps") or {}).items():
        if name not in report["steps"]:
            report["steps"][name] = entry
            kept.append(f"step {name}")
    for field, step in CARRIED.items():
        if _empty(report.get(field)) and not _empty(old.get(field)) and step not in report.get("ran_now", []):
            report[field] = old[field]
            kept.append(field)
    for bundle, value in (old.get("infer") or {}).items():
        if report["infer"].get(bundle) is None and value is not None and "infer" not in report["ran_now"]:
            report["infer"][bundle] = value
            kept.append(f"infer {bundle}")
    old_bench = old.get("benchmark")
    if isinstance(old_bench, dict) and "benchmark" not in report["ran_now"]:
        for bundle, value in old_bench.items():
            if bundle not in report["benchmark"]:
                report["benchmark"][bundle] = value
                kept.append(f"benchmark {bundle}")
    report["bundles"] = sorted(set(report["bundles"]) | set(old.get("bundles") or []))
    if kept:
        earlier = old.get("kept_from_earlier_run") or {}
        report["kept_from_earlier_run"] = {
            "items": kept,
            "source": earlier.get("source") or old.get("source"),
            # The root the kept results ran on (a record before roots were named: unknown).
            "rootfs": earlier.get("rootfs") or old.get("rootfs") or {"built_by": "unknown (not recorded)"},
        }
    return report


def rootfs_info(base: Path) -> dict[str, str]:
    """How the root filesystem under ``base`` was built, from make_rootfs.sh's stamp.

    Returns ``{"built_by", "built_at", "suite"}`` as the stamp says (``key=value`` lines); a
    stamp from before the build method was recorded (an empty file) or none gives
    ``{"built_by": "unknown ..."}``, so a record never claims a root it cannot name.
    """
    info = _kv(base / "root" / ".bcedge-rootfs-done")
    if not info.get("built_by"):
        return {"built_by": "unknown (root built before make_rootfs.sh recorded its build method)"}
    return info


def _qemu_version() -> str | None:
    try:
        out = subprocess.run(["qemu-aarch64-static", "--version"], capture_output=True, text=True, timeout=30).stdout
    except OSError:
        return None
    return out.splitlines()[0] if out else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distro", required=True)
    parser.add_argument("--base", type=Path, required=True, help="<cache>/<distro> of make_rootfs.sh")
    parser.add_argument("--bundles", nargs="+", required=True)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--note", action="append", default=[], help="a line for the record (repeatable)")
    args = parser.parse_args()
    suite = args.base / "out" / "suite"
    status = {k: int(v) for k, v in _kv(suite / "status.txt").items()}
    seconds = {k: float(v) for k, v in _kv(suite / "timings.txt").items()}
    freeze = (args.base / "pip-freeze.txt").read_text().splitlines() if (args.base / "pip-freeze.txt").is_file() else []
    wanted = {k.replace("-", "_") for k in KEY_PACKAGES}
    pairs = [line.split("==", 1) for line in freeze if "==" in line]
    versions = {n: v for n, v in pairs if n.lower().replace("-", "_") in wanted}
    compare = _json(suite / "compare.json") or {}
    report: dict[str, Any] = {
        "kind": "arm64-emulated-suite",
        "note": NOT_SPEED,
        "distro": args.distro,
        "emulator": _qemu_version(),
        "emulated_cpu": _json(suite / "cpu.log"),
        "host": machine_info(),
        "source": source_state(REPO),
        "rootfs": rootfs_info(args.base),
        "packages": versions,
        "bundles": args.bundles,
        "steps": {
            name: {"rc": rc, "passed": rc == 0, "emulated_seconds": seconds.get(name)} for name, rc in status.items()
        },
        "rootfs_build_emulated_seconds": {k: float(v) for k, v in _kv(args.base / "timings.txt").items()},
        "tests": _summary_line(suite / "tests.log"),
        "serve_round_trip": _summary_line(suite / "serve.log"),
        "demo": _findings(_json(suite / "demo.json")),
        "infer": {b: _findings(_json(suite / f"infer-{Path(b).name}.json")) for b in args.bundles},
        "x86_vs_arm64": compare,
        "benchmark": {
            b: _benchmark(
                [_json(f) for f in sorted(suite.glob(f"benchmark-{Path(b).name}-*.json"))],
                _json(suite / f"benchmark-x86-{Path(b).name}.json"),
                b,
            )
            for b in args.bundles
            if "benchmark" in status
        },
        # The choice and acceptance tests run as their own step (run_suite.sh: choice).
        "acceptance_choice_logic": _summary_line(suite / "choice.log") or "not run",
        "notes": args.note,
        # The steps whose status is this run's (the others, if any, are kept from the last record).
        "ran_now": sorted(status),
    }
    if args.json.is_file():
        report = merge_previous(report, _json(args.json) or {})
    compare = report.get("x86_vs_arm64") or {}
    report["passed"] = (
        bool(report["steps"])
        and all(step.get("rc") == 0 for step in report["steps"].values())
        and bool(compare.get("passed"))
        and bool(compare.get("complete"))
        and all(b.get("passed") for b in report["benchmark"].values())
    )
    atomic_write(args.json, lambda tmp: tmp.write_text(json.dumps(report, indent=1) + "\n"))
    print(f"wrote {args.json}: passed={report['passed']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
