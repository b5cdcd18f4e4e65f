"""Load figure of ``bcedge serve``: 200 phantom scans from 4 concurrent dcmtk ``storescu`` processes.

What runs (all on 127.0.0.1, in a temporary folder whose name has a space):

- the fake PACS: dcmtk ``storescp`` (AE ``PACS``, one file per received C-STORE: ``+uf``);
- the node: ``python -m bcedge serve --config serve.toml`` (the real CLI, the real Segmenter and
  DICOM SEG writer) with the demo bundle (``bcedge/demo_model``) or ``--bundle``;
- the senders: ``--senders`` (4) ``storescu`` processes started together, each with its share of
  ``--scans`` (200) MG DICOM files.

The scans are ``--distinct`` (20) phantoms from :func:`bcedge.phantom.generate` at ``--scale``
(1.0: full field, up to 3328x2560, 16-bit, about 17 MB each), each copied with fresh Study/Series/SOP
Instance UIDs until there are ``--scans`` different instances (the copies cost the node exactly
what a new image of that size costs; generating 200 phantoms would take minutes of CPU).

Reported: scans acknowledged by storescu, scans the node received, SEGs stored by the fake PACS
(must all be equal), throughput in scans per minute (from the first C-STORE sent to the last
SEG delivered), and receipt -> delivery time per scan (``item.json`` ``received_at``: the scan is
durable in the spool; ``delivery.json`` ``delivered_at``: PACS answered success) as p50/p95/max,
with the processing time per scan. Results go to ``benchmarks/results/serve_load.json`` with the
machine, its load average before and after, and the git state.

Usage::

    python benchmarks/bench_serve.py [--scans 200] [--senders 4] [--distinct 20] [--scale 1.0] [--bundle DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from bcedge.bench import library_versions, machine_info, source_state
from bcedge.bundle import utc_now

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "serve_load.json"
BUNDLES = (ROOT / "bcedge" / "demo_model", ROOT / "models" / "unet-mobilenetv2-combined256")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait(check: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def dcmtk_version() -> str:
    lines = subprocess.run(["storescu", "--version"], capture_output=True, text=True).stdout.splitlines()
    return lines[0].strip("$ ") if lines else "unknown"


def make_scans(folder: Path, count: int, distinct: int, scale: float, seed: int) -> list[Path]:
    """``count`` MG files: ``distinct`` phantoms, copied with fresh UIDs (new study per copy)."""
    from bcedge.phantom import generate

    originals = generate(folder / "phantoms", count=distinct, seed=seed, scale=scale)
    out = folder / "scans"
    out.mkdir()
    paths = []
    for i in range(count):
        ds = pydicom.dcmread(originals[i % distinct])
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = out / f"scan{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=200)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--distinct", type=int, default=20)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds for the whole run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: install dcmtk (apt-get install dcmtk)")
    bundle = args.bundle or next((b for b in BUNDLES if (b / "manifest.json").is_file()), None)
    if bundle is None:
        raise SystemExit("no bundle: pass --bundle DIR (bcedge/demo_model is not in this checkout)")

    with tempfile.TemporaryDirectory(prefix="bench serve ") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        scans = make_scans(work, args.scans, min(args.distinct, args.scans), args.scale, args.seed)
        sizes = [p.stat().st_size for p in scans]
        print(
            f"made {len(scans)} scans ({statistics.mean(sizes) / 2**20:.1f} MiB each)"
            f" in {time.perf_counter() - t0:.0f} s"
        )
        pacs_dir, node_root = work / "pacs", work / "node"
        pacs_dir.mkdir()
        pacs_port, port = free_port(), free_port()
        config = work / "serve.toml"
        config.write_text(
            "[node]\n"
            f'ae_title = "BCEDGE"\nbind = "127.0.0.1"\nport = {port}\n'
            f'allowed_calling_ae_titles = ["MODALITY"]\nmax_associations = {max(8, args.senders + 2)}\n'
            f'[storage]\nroot = "{node_root}"\nmin_free_mb = 200\n'
            f'[model]\nbundle = "{bundle}"\nbackend = "{args.backend}"\noutputs = ["seg"]\n'
            f'[destination]\nae_title = "PACS"\nhost = "127.0.0.1"\nport = {pacs_port}\n'
            f"backoff_initial_s = 0.5\nbackoff_max_s = 5\ntimeout_s = 30\n"
            f'[logging]\nlevel = "INFO"\nfile = "{work / "node.log"}"\n'
        )
        pacs = subprocess.Popen(
            ["storescp", "-aet", "PACS", "-od", str(pacs_dir), "+uf", str(pacs_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        node = subprocess.Popen(
            [sys.executable, "-m", "bcedge", "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        senders: list[subprocess.Popen[str]] = []
        try:
            wait(lambda: port_open(pacs_port), "storescp", 30)
            wait(lambda: port_open(port) or node.poll() is not None, "bcedge serve", 120)
            if node.poll() is not None:
                raise SystemExit("bcedge serve stopped:\n" + (work / "node.log").read_text()[-3000:])
            load_before = [round(v, 2) for v in os.getloadavg()]
            shares = [scans[k :: args.senders] for k in range(args.senders)]
            start_wall = time.time()
            for k, share in enumerate(shares):
                senders.append(
                    subprocess.Popen(
                        [
                            "storescu",
                            "-v",
                            "-nh",
                            "-aet",
                            "MODALITY",
                            "-aec",
                            "BCEDGE",
                            "-to",
                            "30",
                            "-ta",
                            "30",
                            "127.0.0.1",
                            str(port),
                            *map(str, share),
                        ],
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        text=True,
                    )
                )
                print(f"sender {k}: {len(share)} scans")
            logs = [s.communicate(timeout=args.timeout)[0] for s in senders]
            sent_done_wall = time.time()
            acked = sum(log.count("Received Store Response (Success)") for log in logs)

            def finished() -> bool:
                done = node_root / "done"
                return done.is_dir() and sum(1 for _ in done.iterdir()) >= acked

            wait(finished, f"{acked} deliveries", args.timeout)
            load_after = [round(v, 2) for v in os.getloadavg()]
        finally:
            for s in senders:
                if s.poll() is None:
                    s.kill()
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)
                try:
                    node.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    node.kill()
            pacs.kill()
            pacs.wait(timeout=10)
        state = json.loads((node_root / "state.json").read_text())
        received = state["totals"]["received"]
        pacs_files = [p for p in pacs_dir.iterdir() if p.is_file()]
        seg_refs = set()
        for p in pacs_files:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            seg_refs.add(str(ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID))
        sent_uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in scans}
        latencies, process_ms, received_at, delivered_at = [], [], [], []
        for item in sorted((node_root / "done").iterdir()):
            rec = json.loads((item / "item.json").read_text())
            dlv = json.loads((item / "delivery.json").read_text())
            latencies.append(dlv["delivered_at"] - rec["received_at"])
            process_ms.append(rec["process_ms"])
            received_at.append(rec["received_at"])
            delivered_at.append(dlv["delivered_at"])
        span = max(delivered_at) - start_wall
        result = {
            "what": "bcedge serve under load: storescu x senders -> bcedge serve -> storescp",
            "scans": args.scans,
            "senders": args.senders,
            "distinct_phantoms": min(args.distinct, args.scans),
            "scale": args.scale,
            "scan_mib_mean": round(statistics.mean(sizes) / 2**20, 2),
            "bundle": str(bundle.relative_to(ROOT) if bundle.is_relative_to(ROOT) else bundle),
            "model": state.get("model"),
            "acknowledged_by_node": acked,
            "received_by_node": received,
            "segs_delivered_to_pacs": len(pacs_files),
            "distinct_sources_in_pacs_segs": len(seg_refs),
            "all_sent_scans_have_a_seg": seg_refs == sent_uids,
            "send_seconds": round(sent_done_wall - start_wall, 2),
            "first_send_to_last_delivery_s": round(span, 2),
            "throughput_scans_per_min": round(len(latencies) / span * 60.0, 1),
            "receipt_to_delivery_s": {
                "p50": round(percentile(latencies, 0.5), 3),
                "p95": round(percentile(latencies, 0.95), 3),
                "max": round(max(latencies), 3),
            },
            "process_ms": {"p50": round(percentile(process_ms, 0.5), 1), "p95": round(percentile(process_ms, 0.95), 1)},
            "load_average_before": load_before,
            "load_average_after": load_after,
            "created": utc_now(),
            "machine": machine_info(),
            "libraries": {**library_versions(extra=("pynetdicom", "highdicom")), "dcmtk": dcmtk_version()},
            **source_state(ROOT),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("machine", "libraries")}, indent=2))
    ok = acked == received == len(pacs_files) == args.scans and result["all_sent_scans_have_a_seg"]
    print("OK: every scan in, one SEG out" if ok else "MISMATCH: see the counts above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
