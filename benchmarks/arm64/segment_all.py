"""Run every artifact of every bundle on a list of scans and keep the masks, or compare two such runs.

The x86-vs-aarch64 check of ``run_suite.sh``: the same command runs on the host (x86)
and inside the arm64 root filesystem (qemu), then ``compare`` puts the two side by side.

    python segment_all.py run --out DIR --bundle B [--bundle B ...] SCAN [SCAN ...]
    python segment_all.py compare X86_DIR ARM_DIR [--json OUT] [--min-dice 0.98]

``run`` writes ``DIR/results.json`` (per bundle/artifact/scan: findings, mask pixel count,
image shape, wall time) and ``DIR/arrays.npz`` (per row: the (H, W) uint8 mask on the
original grid, bit-packed, and the (S, S) float32 probability map on the model grid).
Every artifact whose backend library is installed runs (one thread, so that the
comparison does not depend on how work is split between threads).

``compare`` gates: float32 artifacts must give identical masks and identical findings
(bounding box, area, centroid; probabilities within 1e-3); reduced-precision artifacts
(INT8, FP16) need mask Dice >= ``--min-dice`` against x86 on every scan (ARM NEON and x86
AVX2 kernels round differently). Rows run on x86 only (an aarch64 run cut short) are
listed as ``not_run_on_arm``. Exit 0 when every compared row passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

#: Float artifacts whose masks and findings must match x86 exactly.
EXACT_PRECISIONS = ("fp32",)
#: Finding probabilities may differ in the last digits between NEON and AVX2 float kernels.
PROB_TOL = 1e-3


def _key(bundle: str, artifact: str, scan: str) -> str:
    return f"{bundle}|{artifact}|{scan}"


def run(out: Path, bundles: list[Path], scans: list[Path]) -> int:
    """Segment ``scans`` with every runnable artifact of ``bundles``; write results.json + arrays.npz under ``out``."""
    from bcedge.backends import available_backends
    from bcedge.bundle import load_bundle
    from bcedge.pipeline import Segmenter

    have = {name for name, (ok, _why) in available_backends().items() if ok}
    rows: list[dict[str, Any]] = []
    arrays: dict[str, np.ndarray] = {}
    failed = 0
    for bundle_dir in bundles:
        bundle = load_bundle(bundle_dir)
        name = bundle.dir.name
        for record in bundle.manifest.artifacts:
            base = {"bundle": name, "artifact": record.file, "precision": record.precision, "backend": record.backend}
            if record.backend not in have:
                rows.append({**base, "skipped": f"backend {record.backend} not installed"})
                continue
            with Segmenter(bundle, artifact=record, threads=1) as seg:
                for scan in scans:
                    t0 = time.perf_counter()
                    try:
                        result = seg.segment(scan)
                    except Exception as exc:  # recorded, not raised: the comparison reports it
                        failed += 1
                        rows.append({**base, "scan": scan.name, "error": f"{type(exc).__name__}: {exc}"})
                        continue
                    key = _key(name, record.file, scan.name)
                    arrays[key + "|mask"] = np.packbits(result.mask.astype(bool))
                    arrays[key + "|probability"] = result.probability.astype(np.float32)
                    rows.append(
                        {
                            **base,
                            "scan": scan.name,
                            "shape": list(result.mask.shape),
                            "mask_pixels": int(np.count_nonzero(result.mask)),
                            "findings": [f.to_dict() for f in result.findings],
                            "seconds": round(time.perf_counter() - t0, 3),
                        }
                    )
                    print(f"{name}/{record.file} {scan.name}: {len(result.findings)} finding(s)", flush=True)
            # Saved after every artifact: under emulation a run may be cut short, and what it
            # finished is still compared.
            _save(out, rows, arrays)
    _save(out, rows, arrays)
    return 1 if failed else 0


def _save(out: Path, rows: list[dict[str, Any]], arrays: dict[str, np.ndarray]) -> None:
    from bcedge.imageio import atomic_write, json_default

    out.mkdir(parents=True, exist_ok=True)
    report = {"machine": platform.machine(), "python": platform.python_version(), "rows": rows}
    atomic_write(out / "arrays.npz", lambda tmp: _savez(tmp, arrays))
    atomic_write(out / "results.json", lambda tmp: tmp.write_text(json.dumps(report, indent=1, default=json_default)))


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def _findings_match(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """Same components (box, area, centroid) in the same order; probabilities within PROB_TOL."""
    if len(a) != len(b):
        return False
    for fa, fb in zip(a, b, strict=True):
        for k in ("bbox_px", "area_px", "centroid_px", "area_mm2"):
            if fa.get(k) != fb.get(k):
                return False
        for k in ("max_probability", "mean_probability"):
            if abs(float(fa[k]) - float(fb[k])) > PROB_TOL:
                return False
    return True


def compare(x86_dir: Path, arm_dir: Path, min_dice: float) -> dict[str, Any]:
    """Row-by-row comparison of two ``run`` outputs (see the module doc for the gates)."""
    from bcedge.metrics import dice

    res = {d: json.loads((d / "results.json").read_text()) for d in (x86_dir, arm_dir)}
    arr = {d: np.load(d / "arrays.npz") for d in (x86_dir, arm_dir)}
    x86_rows = {_key(r["bundle"], r["artifact"], r["scan"]): r for r in res[x86_dir]["rows"] if "scan" in r}
    rows = []
    for r in res[arm_dir]["rows"]:
        if "scan" not in r:
            rows.append({**r, "passed": False})
            continue
        key = _key(r["bundle"], r["artifact"], r["scan"])
        x = x86_rows.get(key)
        row: dict[str, Any] = {k: r[k] for k in ("bundle", "artifact", "precision", "scan")}
        if x is None or "error" in r or "error" in x:
            row.update(passed=False, error=r.get("error") or (x or {}).get("error") or "no x86 row")
            rows.append(row)
            continue
        shape = tuple(r["shape"])
        n = int(np.prod(shape))
        mask_arm = np.unpackbits(arr[arm_dir][key + "|mask"], count=n).reshape(shape)
        mask_x86 = np.unpackbits(arr[x86_dir][key + "|mask"], count=n).reshape(shape)
        prob_diff = float(np.max(np.abs(arr[arm_dir][key + "|probability"] - arr[x86_dir][key + "|probability"])))
        exact = r["precision"] in EXACT_PRECISIONS
        row.update(
            mask_pixels_arm=r["mask_pixels"],
            mask_pixels_x86=x["mask_pixels"],
            pixels_differing=int(np.count_nonzero(mask_arm != mask_x86)),
            dice_vs_x86=round(dice(mask_arm, mask_x86), 6),
            max_abs_probability_diff=prob_diff,
            findings_arm=len(r["findings"]),
            findings_x86=len(x["findings"]),
            findings_match=_findings_match(r["findings"], x["findings"]),
            gate="identical mask and findings" if exact else f"mask Dice >= {min_dice}",
        )
        if exact:
            row["passed"] = row["pixels_differing"] == 0 and row["findings_match"]
        else:
            row["passed"] = row["dice_vs_x86"] >= min_dice
        rows.append(row)
    arm_keys = {_key(r["bundle"], r["artifact"], r["scan"]) for r in res[arm_dir]["rows"] if "scan" in r}
    missing = sorted(k for k in x86_rows if k not in arm_keys)
    return {
        "x86": {k: res[x86_dir][k] for k in ("machine", "python")},
        "arm": {k: res[arm_dir][k] for k in ("machine", "python")},
        "rows": rows,
        # Run on x86 but not (or not yet: a run cut short by its time limit) on aarch64.
        "not_run_on_arm": missing,
        "complete": not missing,
        "passed": bool(rows) and all(r["passed"] for r in rows),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="segment scans with every artifact")
    p_run.add_argument("--out", type=Path, required=True)
    p_run.add_argument("--bundle", type=Path, action="append", required=True)
    p_run.add_argument("scans", type=Path, nargs="+")
    p_cmp = sub.add_parser("compare", help="compare an x86 run with an arm64 run")
    p_cmp.add_argument("x86_dir", type=Path)
    p_cmp.add_argument("arm_dir", type=Path)
    p_cmp.add_argument("--json", type=Path, help="write the comparison here")
    p_cmp.add_argument("--min-dice", type=float, default=0.98)
    args = parser.parse_args(argv)
    if args.cmd == "run":
        return run(args.out, args.bundle, args.scans)
    report = compare(args.x86_dir, args.arm_dir, args.min_dice)
    for r in report["rows"]:
        status = "ok  " if r["passed"] else "FAIL"
        detail = r.get("error") or (
            f"differing px {r['pixels_differing']}, Dice {r['dice_vs_x86']:.4f}, "
            f"max |dp| {r['max_abs_probability_diff']:.2e}, findings {r['findings_arm']}/{r['findings_x86']}"
            f"{'' if r['findings_match'] else ' (differ)'}"
        )
        print(f"{status} {r['bundle']}/{r['artifact']} {r.get('scan', '')}: {detail}")
    for key in report["not_run_on_arm"]:
        print(f"not run on aarch64: {key.replace('|', ' ')}")
    if args.json:
        from bcedge.imageio import atomic_write

        atomic_write(args.json, lambda tmp: tmp.write_text(json.dumps(report, indent=1) + "\n"))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
