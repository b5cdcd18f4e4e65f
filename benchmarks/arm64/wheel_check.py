"""Which of bcedge's dependencies have aarch64 wheels, per device OS/Python (no emulation needed).

For each device target (Python version + glibc of its OS) and each requirement of
bcedge's core and device extras, asks pip to resolve and download it *as wheels only*
for that platform (``pip download --only-binary=:all: --platform ... --python-version ...``,
with its dependencies), and records the versions it got or pip's reason for failing.
This covers the targets that cannot be emulated here (JetPack 6 = Ubuntu 22.04 arm64 is
on ports.ubuntu.com, which this machine cannot reach; JetPack 5 = Python 3.8).

    python benchmarks/arm64/wheel_check.py [--json benchmarks/results/arm64_wheels.json]

Downloads go to ``${BCEDGE_ARM64_CACHE:-~/.cache/bcedge-arm64}/wheelcheck`` (pip's cache
makes a second run fast). A resolution answer, not a run: the emulated runs are
``make_rootfs.sh`` + ``run_suite.sh``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]

#: (name, Python version, glibc minor version of the OS, what it is).
TARGETS = (
    ("jetpack6-ubuntu2204", "3.10", 35, "JetPack 6 (Ubuntu 22.04, Python 3.10, glibc 2.35)"),
    ("debian12-rpi5", "3.11", 36, "Raspberry Pi OS / Debian 12 (Python 3.11, glibc 2.36)"),
    ("jetpack5-ubuntu2004", "3.8", 31, "JetPack 5 (Ubuntu 20.04, Python 3.8, glibc 2.31)"),
    ("jetpack5-python310", "3.10", 31, "JetPack 5 with a Python 3.10 installed beside the system's (glibc 2.31)"),
)
#: Extras a device installs (train and plot stay on the workstation).
DEVICE_EXTRAS = ("dicom", "fast", "tflite", "onnx", "seg", "serve", "tensorrt")
#: What JetPack 5 would need instead of the pinned runtime (bcedge itself needs Python >= 3.10).
JETPACK5_ALTERNATIVES = ("tflite-runtime", "numpy<2")


def requirements() -> list[tuple[str, str]]:
    """(requirement, extra or 'core') for the core dependencies and the device extras, from pyproject.toml."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [(r, "core") for r in project["dependencies"]]
    for extra in DEVICE_EXTRAS:
        reqs += [(r, extra) for r in project["optional-dependencies"].get(extra, [])]
    return reqs


def platform_tags(glibc_minor: int) -> list[str]:
    """Every manylinux aarch64 tag a system with glibc 2.<glibc_minor> accepts (pip does not expand one tag)."""
    return ["manylinux2014_aarch64"] + [f"manylinux_2_{m}_aarch64" for m in range(17, glibc_minor + 1)]


def check(requirement: str, python: str, glibc_minor: int, dest: Path) -> dict[str, Any]:
    """Resolve ``requirement`` (with its dependencies) as wheels for (python, glibc); ok + new wheels, or error."""
    dest.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in dest.iterdir()}
    platforms = [arg for tag in platform_tags(glibc_minor) for arg in ("--platform", tag)]
    cmd = [
        sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", *platforms,
        "--python-version", python, "--implementation", "cp", "-d", str(dest), requirement,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    got = sorted({p.name for p in dest.iterdir()} - before)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip().startswith("ERROR")]
        return {"ok": False, "error": " ".join(lines)[:400] or proc.stderr.strip()[-400:]}
    # All wheels of this requirement's tree (also those downloaded earlier by another requirement).
    return {"ok": True, "new_wheels": got}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the table as JSON here (temporary file, then rename)")
    parser.add_argument("--only", choices=[t[0] for t in TARGETS], help="check this target only")
    args = parser.parse_args()
    cache = Path(os.environ.get("BCEDGE_ARM64_CACHE", Path.home() / ".cache" / "bcedge-arm64")) / "wheelcheck"
    report: dict[str, Any] = {"what": __doc__.splitlines()[0], "targets": []}
    for name, python, glibc_minor, label in TARGETS:
        if args.only and name != args.only:
            continue
        dest = cache / name
        rows = []
        reqs = requirements()
        if name == "jetpack5-ubuntu2004":
            reqs += [(r, "jetpack5-alternative") for r in JETPACK5_ALTERNATIVES]
        for req, extra in reqs:
            # Markers such as "python_version < '3.11'" are evaluated by pip for the target Python.
            row = {"requirement": req, "extra": extra, **check(req, python, glibc_minor, dest)}
            rows.append(row)
            print(f"{name:22} {'ok      ' if row['ok'] else 'NO WHEEL'} {req:40} {extra}", flush=True)
        versions = sorted(
            f"{m.group(1)}=={m.group(2)}" for p in dest.glob("*.whl") if (m := re.match(r"([^-]+)-([^-]+)-", p.name))
        )
        report["targets"].append(
            {
                "name": name,
                "python": python,
                "glibc": f"2.{glibc_minor}",
                "label": label,
                "rows": rows,
                "wheels": versions,
            }
        )
    if args.json:
        from bcedge.imageio import atomic_write

        atomic_write(args.json, lambda tmp: tmp.write_text(json.dumps(report, indent=2) + "\n"))
    return 0 if all(r["ok"] for t in report["targets"] for r in t["rows"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
