"""Fault figure of ``bcedge serve`` (issue #18, "done when"): bad scans among good ones, then ``kill -9``.

What runs (all on 127.0.0.1, in a temporary folder whose name has a space):

- the fake PACS: dcmtk ``storescp``; the node: ``python -m bcedge serve`` (the real CLI, worker
  processes with the demo bundle or ``--bundle``), its stderr and log file kept for the log check;
- per round, sent together by three dcmtk ``storescu`` processes: the freezing file of the issue
  (a 48x40 MG whose JPEG-LS frame header claims 65535x65535), 3 scans whose headers cannot be
  referenced by a SEG or read (no Study Instance UID; an invalid SOP Instance UID; Rows twice the
  Pixel Data), and ``--good`` (20) phantom scans, 5 of which carry headers the SEG writer must
  sanitise (Study Date ``0``, Patient's Birth Date ``19991399``, one-value Pixel Spacing, an unknown
  Specific Character Set, control characters in the Patient's Name);
- a C-ECHO every 0.5 s throughout, the node's RSS (its own process, and its workers apart) every
  0.2 s, and the spool's attempt counts every 0.1 s.

Round 1 runs to the end. Round 2 sends the same mix with fresh UIDs and ``kill -9``s the node as
soon as the first SEG of the round reaches PACS, then restarts it. Reported per round: SEGs at
PACS, quarantined items and their reasons, receipt -> delivery seconds per good scan
(``item.json`` ``received_at`` to ``delivery.json`` ``delivered_at``), C-ECHOs answered and their
slowest time, peak RSS of the node process and of its workers, the highest attempt count any item
reached; and for the whole run whether any patient name, birth date or raw control character
reached the node's log or stderr. Results go to ``benchmarks/results/serve_faults.json`` with
the machine (CPU flags), its load before and after, and the git state.

Usage::

    python benchmarks/bench_serve_faults.py [--good 20] [--scale 0.5] [--bundle DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import JPEGLSLossless, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hostile
from bench_serve import BUNDLES, dcmtk_version, free_port, make_scans, percentile, port_open, wait

from bcedge.bench import library_versions, machine_info, source_state
from bcedge.bundle import utc_now
from bcedge.serve.isolation import status_mb

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "serve_faults.json"
#: Values put into headers that must never appear in a log line.
LEAKS = ("Secretname", "19991399", "SECRETPID")
SANITISE = (
    ("study date 0", {"StudyDate": "0"}),
    ("birth date 19991399", {"PatientBirthDate": "19991399"}),
    ("one-value pixel spacing", {"PixelSpacing": ["0.1"]}),
    ("unknown character set", {"SpecificCharacterSet": "ISO_IR 999"}),
    ("control characters in name", {"PatientName": "Secretname\x07^Jane\x1b[31m", "PatientID": "SECRETPID"}),
)


def rss_mb(pid: int) -> float:
    return status_mb("VmRSS", pid)


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _save(ds: pydicom.Dataset, path: Path) -> Path:
    from pydicom import config

    saved = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        ds.save_as(path, enforce_file_format=True)
    finally:
        config.settings.writing_validation_mode = saved
    return path


def make_round(folder: Path, originals: list[Path], good: int) -> dict[str, list[Path]]:
    """The files of one round, with fresh UIDs: {"bomb": [...], "bad": [...], "good": [...]}."""
    folder.mkdir(parents=True)
    files: dict[str, list[Path]] = {"bomb": [], "bad": [], "good": []}
    bomb = hostile.patch_jpeg_frame(hostile.encode(hostile.mg_dataset(), JPEGLSLossless), b"\xff\xf7", 65535, 65535)
    (folder / "bomb.dcm").write_bytes(bomb)
    files["bomb"].append(folder / "bomb.dcm")

    def fresh(i: int) -> pydicom.Dataset:
        ds = pydicom.dcmread(originals[i % len(originals)])
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        return ds

    for name, edit in (
        ("no study uid", lambda ds: delattr(ds, "StudyInstanceUID")),
        ("invalid sop uid", lambda ds: setattr(ds, "SOPInstanceUID", "abc.def.ghi")),
        ("rows twice the pixel data", lambda ds: setattr(ds, "Rows", int(ds.Rows) * 2)),
    ):
        ds = fresh(len(files["bad"]))
        edit(ds)
        if "SOPInstanceUID" in ds:
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        files["bad"].append(_save(ds, folder / f"bad {name}.dcm"))
    for i in range(good):
        ds = fresh(i)
        if i < len(SANITISE):
            for keyword, value in SANITISE[i][1].items():
                setattr(ds, keyword, value)
        files["good"].append(_save(ds, folder / f"good{i:02d}.dcm"))
    return files


class Watch(threading.Thread):
    """C-ECHO every 0.5 s, RSS every 0.2 s, attempt counts every 0.1 s, while ``node`` says it is up."""

    def __init__(self, port: int, attempts_file: Path) -> None:
        super().__init__(daemon=True)
        self.port, self.attempts_file = port, attempts_file
        self.pid: int | None = None
        self.echoes: list[tuple[float, bool]] = []
        self.node_rss = self.worker_rss = 0.0
        self.max_attempts = 0
        self.halt = threading.Event()

    def run(self) -> None:
        last_echo = 0.0
        while not self.halt.is_set():
            pid = self.pid
            if pid is not None:
                self.node_rss = max(self.node_rss, rss_mb(pid))
                self.worker_rss = max([self.worker_rss, *(rss_mb(c) for c in children(pid))])
                try:
                    counts = json.loads(self.attempts_file.read_text())
                    self.max_attempts = max([self.max_attempts, *counts.values()])
                except (OSError, ValueError, TypeError):
                    pass
                if time.monotonic() - last_echo >= 0.5 and port_open(self.port):
                    last_echo = time.monotonic()
                    t0 = time.monotonic()
                    cmd = ["echoscu", "-aet", "MODALITY", "-aec", "BCEDGE", "-to", "10", "127.0.0.1", str(self.port)]
                    ok = subprocess.run(cmd, capture_output=True, timeout=60).returncode == 0
                    if self.pid == pid:  # not across a kill
                        self.echoes.append((time.monotonic() - t0, ok))
            self.halt.wait(0.1)


def storescu(port: int, files: list[Path], extra: list[str]) -> subprocess.Popen[str]:
    cmd = ["storescu", "-v", "-nh", "-aet", "MODALITY", "-aec", "BCEDGE", "-to", "10", "-td", "60", *extra]
    return subprocess.Popen(
        [*cmd, "127.0.0.1", str(port), *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def acknowledged(output: str) -> int:
    return output.count("Received Store Response (Success)")


def _acked_lines(output: str) -> list[str]:
    """The ``Sending file:`` lines of storescu's log that got a success response."""
    out, current = [], None
    for line in output.splitlines():
        if "Sending file:" in line:
            current = line
        elif "Received Store Response (Success)" in line and current:
            out.append(current)
            current = None
    return out


def seg_sources(pacs: Path) -> dict[str, set[str]]:
    """Source SOP Instance UID -> SEG SOP Instance UIDs received by PACS."""
    out: dict[str, set[str]] = {}
    for path in pacs.iterdir():
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            src = str(ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID)
        except Exception:  # storescp writes in place: a file being written is read next time
            continue
        out.setdefault(src, set()).add(str(ds.SOPInstanceUID))
    return out


def round_figures(root: Path, sources: set[str], watch: Watch, pacs: Path) -> dict[str, Any]:
    done = root / "done"
    delays = []
    for item in sorted(done.iterdir()):
        record = json.loads((item / "item.json").read_text())
        if record["source_sop_instance_uid"] in sources:
            delivered = json.loads((item / "delivery.json").read_text())["delivered_at"]
            delays.append(delivered - record["received_at"])
    segs = seg_sources(pacs)
    echo_times = [t for t, _ in watch.echoes]
    return {
        "segs_at_pacs": sum(1 for s in sources if s in segs),
        "duplicate_seg_uids": sum(1 for s in sources if len(segs.get(s, ())) > 1),
        "receipt_to_delivery_s": {
            "n": len(delays),
            "p50": round(percentile(delays, 0.5), 2) if delays else None,
            "p95": round(percentile(delays, 0.95), 2) if delays else None,
            "max": round(max(delays), 2) if delays else None,
            "within_5s": sum(1 for d in delays if d <= 5.0),
        },
        "echoes": {
            "sent": len(watch.echoes),
            "answered": sum(1 for _, ok in watch.echoes if ok),
            "slowest_s": round(max(echo_times), 2) if echo_times else None,
        },
        "node_rss_peak_mb": round(watch.node_rss, 1),
        "worker_rss_peak_mb": round(watch.worker_rss, 1),
        "max_attempts_seen": watch.max_attempts,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--good", type=int, default=20)
    parser.add_argument("--scale", type=float, default=0.5, help="phantom scale (1.0: full field, ~17 MB)")
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for each round")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not all(shutil.which(t) for t in ("storescu", "storescp", "echoscu")):
        raise SystemExit("dcmtk (storescu, storescp, echoscu) is needed: apt-get install dcmtk")
    bundle = args.bundle or next((b for b in BUNDLES if (b / "manifest.json").is_file()), None)
    if bundle is None:
        raise SystemExit("no model bundle: pass --bundle")
    load_before = [round(v, 2) for v in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="bcedge serve faults ") as tmp:
        work = Path(tmp)
        originals = make_scans(work / "phantoms", args.good, min(args.good, 10), args.scale, seed=18)
        pacs_dir = work / "pacs"
        pacs_dir.mkdir()
        pacs_port, port = free_port(), free_port()
        pacs = subprocess.Popen(
            ["storescp", "-aet", "PACS", "-od", str(pacs_dir), "+uf", str(pacs_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        root = work / "node"
        config = work / "serve.toml"
        config.write_text(
            '[node]\nae_title = "BCEDGE"\nbind = "127.0.0.1"\n'
            f'port = {port}\nallowed_calling_ae_titles = ["MODALITY"]\n\n'
            f'[storage]\nroot = "{root}"\nmin_free_mb = 1\n\n'
            "[worker]\nprocesses = 2\ntimeout_s = 20\n\n"
            f'[model]\nbundle = "{bundle}"\n\n'
            f'[destination]\nae_title = "PACS"\nhost = "127.0.0.1"\nport = {pacs_port}\n'
            "backoff_initial_s = 0.5\nbackoff_max_s = 2\ntimeout_s = 10\n\n"
            f'[logging]\nlevel = "INFO"\nfile = "{work / "node.log"}"\n'
        )
        stderr_log = work / "node.stderr"

        def start_node() -> subprocess.Popen[bytes]:
            with stderr_log.open("ab") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "bcedge", "serve", "--config", str(config)],
                    stdout=err,
                    stderr=subprocess.STDOUT,
                    cwd=ROOT,
                )
            wait(lambda: port_open(port) or proc.poll() is not None, "the node to listen", 300)
            if proc.poll() is not None:
                raise SystemExit(f"the node did not start:\n{stderr_log.read_text()[-3000:]}")
            return proc

        rounds: dict[str, Any] = {}
        node = start_node()
        try:
            for name in ("round1", "round2_kill9"):
                files = make_round(work / name, originals, args.good)
                good = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files["good"]}
                quarantined_before = len(list((root / "quarantine").iterdir()))
                watch = Watch(port, root / "spool" / ".attempts.json")
                watch.pid = node.pid
                watch.start()
                t0 = time.monotonic()
                half = len(files["good"]) // 2
                senders = [
                    storescu(port, files["bomb"], ["-xt"]),
                    storescu(port, files["bad"] + files["good"][:half], []),
                    storescu(port, files["good"][half:], []),
                ]
                killed = None
                resent = 0
                if name == "round2_kill9":
                    wait(lambda g=good: any(s in g for s in seg_sources(pacs_dir)), "a first SEG", args.timeout)
                    watch.pid = None
                    node.send_signal(signal.SIGKILL)
                    node.wait(30)
                    killed = round(time.monotonic() - t0, 2)
                    outputs = [s.communicate(timeout=300)[0] for s in senders]
                    node = start_node()
                    watch.pid = node.pid
                    # As a modality does: what got no success status is sent again.
                    done = {line.split("Sending file:", 1)[1].strip() for o in outputs for line in _acked_lines(o)}
                    again = [p for group in files.values() for p in group if str(p) not in done]
                    resent = len(again)
                    bomb_again = [p for p in again if p in files["bomb"]]
                    senders = [storescu(port, bomb_again, ["-xt"])] if bomb_again else []
                    rest = [p for p in again if p not in files["bomb"]]
                    senders += [storescu(port, rest, [])] if rest else []
                    outputs += [s.communicate(timeout=300)[0] for s in senders]
                else:
                    outputs = [s.communicate(timeout=300)[0] for s in senders]
                acks = sum(acknowledged(o) for o in outputs)
                sent = [p for group in files.values() for p in group]

                def finished(g: set[str] = good, q0: int = quarantined_before) -> bool:
                    segs = seg_sources(pacs_dir)
                    quarantined = len(list((root / "quarantine").iterdir())) - q0
                    return all(s in segs for s in g) and quarantined >= 4 and not any((root / "outbox").iterdir())

                complete = True
                try:
                    wait(finished, f"{name} to finish", args.timeout)
                except SystemExit:
                    complete = False
                elapsed = round(time.monotonic() - t0, 2)
                watch.halt.set()
                watch.join(30)
                reasons = sorted(
                    (item / "reason.txt").read_text().strip()
                    for item in sorted((root / "quarantine").iterdir())[quarantined_before:]
                )
                rounds[name] = {
                    "sent": len(sent),
                    "acknowledged": acks,
                    "good_sent": len(good),
                    "complete": complete,
                    "elapsed_s": elapsed,
                    "killed_at_s": killed,
                    "resent_unacknowledged": resent,
                    **round_figures(root, good, watch, pacs_dir),
                    "quarantined": len(reasons),
                    "quarantine_reasons": reasons,
                }
                print(json.dumps({name: rounds[name]}, indent=2))
        finally:
            if node.poll() is None:
                node.terminate()
                try:
                    node.wait(30)
                except subprocess.TimeoutExpired:
                    node.kill()
            pacs.kill()
            pacs.wait(10)
        logs = stderr_log.read_text(errors="replace") + (work / "node.log").read_text(errors="replace")
        leaks = {
            "patient_values_in_logs": [v for v in LEAKS if v in logs],
            "raw_control_characters_in_logs": len(re.findall(r"[\x00-\x08\x0b-\x1f\x7f]", logs)),
            "log_bytes": len(logs),
        }
    report = {
        "benchmark": "bcedge serve faults (issue #18)",
        "created": utc_now(),
        "machine": machine_info(),
        "load_before": load_before,
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "libraries": library_versions(extra=("pynetdicom", "highdicom", "pydicom")),
        "dcmtk": dcmtk_version(),
        "source": source_state(ROOT),
        "settings": {
            "good_per_round": args.good,
            "scale": args.scale,
            "bundle": str(bundle.relative_to(ROOT)) if bundle.is_relative_to(ROOT) else str(bundle),
            "worker": {"processes": 2, "timeout_s": 20, "memory_mb": "default"},
            "bad_per_round": ["jpeg-ls frame header 65535x65535", "no study uid", "invalid sop uid", "rows x2"],
            "sanitised_headers_among_good": [name for name, _ in SANITISE],
        },
        "rounds": rounds,
        "logs": leaks,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(leaks, indent=2))
    print(f"wrote {args.out}")
    return 0 if all(r["complete"] for r in rounds.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
