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


def _benchmark(doc: Any) -> list[dict[str, Any]]:
    if not isinstance(doc, dict):
        return []
    rows = []
    for r in doc.get("rows", []):
        rows.append(
            {
                "bundle": r.get("bundle"),
                "file": r.get("file"),
                "precision": r.get("precision"),
                "status": r.get("status"),
                "dice": r.get("dice"),
                "n_images": r.get("n_images"),
                "emulated_latency_ms_p50": (r.get("latency_ms") or {}).get("p50"),
            }
        )
    return rows


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
        "benchmark": _benchmark(_json(args.base / "out" / "benchmark.json")),
        # The choice and acceptance tests run as their own step (run_suite.sh: choice).
        "acceptance_choice_logic": _summary_line(suite / "choice.log") or "not run",
        "notes": args.note,
        "passed": bool(status)
        and all(rc == 0 for rc in status.values())
        and bool(compare.get("passed"))
        and bool(compare.get("complete")),
    }
    atomic_write(args.json, lambda tmp: tmp.write_text(json.dumps(report, indent=1) + "\n"))
    print(f"wrote {args.json}: passed={report['passed']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
