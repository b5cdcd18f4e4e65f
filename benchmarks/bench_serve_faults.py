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

Where the time goes (``timeline`` per round, from the node's own records, not estimates): per
good scan, seconds after the round began at which it was received, taken by a worker, processed
and delivered (``item.json``'s ``received_at``/``started_at``/``processed_at``, ``delivery.json``),
the worker's stage times (decode, preprocess, infer, postprocess, write); the node's start steps
from its log (``starting``, each worker ``ready``, ``listening``); and per round the CPU seconds of
the node process, of its child processes (the workers and the fork server they are forked from),
and of this harness's own process (``harness_s``: its polling, which shares the 2 cores), the
machine's busy share, which says whether the 2 cores were saturated, and the share of the
machine's CPU time used by processes outside the benchmark (``others_cpu_share``: 0 when the
round ran alone) (``cpu``). The node runs with bytecode caching on (an installed node
has its ``.pyc`` files; see ``node_env``).

Usage::

    python benchmarks/bench_serve_faults.py [--good 20] [--scale 0.5] [--bundle DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
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
from bcedge.serve.isolation import START_METHOD_ENV, status_mb

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


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds ``pid`` has used so far (``/proc/<pid>/stat``); None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # after the command name: state is field 3, utime 14 and stime 15 (1-based) -> 11, 12 here
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from the first line of ``/proc/stat``."""
    with open("/proc/stat", encoding="ascii") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(values) - idle) / tick, sum(values) / tick


def children(pid: int) -> list[int]:
    """Every descendant of ``pid``: the node's workers are forked by its fork server, not by the node."""
    out: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            with open(f"/proc/{parent}/task/{parent}/children", encoding="ascii") as f:
                found = [int(p) for p in f.read().split()]
        except OSError:
            continue
        out += found
        todo += found
    return out


def others_cpu() -> dict[int, float]:
    """CPU seconds so far of every process outside this harness's tree (the harness, its node,
    workers, storescu/storescp/echoscu are left out): what else ran on the machine meanwhile."""
    ours = {os.getpid(), *children(os.getpid())}
    out: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) not in ours:
            used = cpu_seconds(int(entry.name))
            if used is not None:
                out[int(entry.name)] = used
    return out


def own_cpu_seconds() -> float:
    """CPU seconds of this harness process so far (its polling threads; not storescu/echoscu)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write_node_config(
    path: Path, port: int, root: Path, bundle: Path, pacs_port: int, log: Path, *, retry: bool = False
) -> None:
    """The node's TOML config for these benchmarks: loopback, 2 worker processes (20 s limit),
    PACS destination on ``pacs_port``; ``retry`` adds short delivery backoffs (the fault rounds)."""
    path.write_text(
        '[node]\nae_title = "BCEDGE"\nbind = "127.0.0.1"\n'
        f'port = {port}\nallowed_calling_ae_titles = ["MODALITY"]\n\n'
        f'[storage]\nroot = "{root}"\nmin_free_mb = 1\n\n'
        "[worker]\nprocesses = 2\ntimeout_s = 20\n\n"
        f'[model]\nbundle = "{bundle}"\n\n'
        f'[destination]\nae_title = "PACS"\nhost = "127.0.0.1"\nport = {pacs_port}\n'
        + ("backoff_initial_s = 0.5\nbackoff_max_s = 2\ntimeout_s = 10\n" if retry else "")
        + f'\n[logging]\nlevel = "INFO"\nfile = "{log}"\n'
    )


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
        files["bad"].append(hostile.save_unvalidated(ds, folder / f"bad {name}.dcm"))
    for i in range(good):
        ds = fresh(i)
        if i < len(SANITISE):
            for keyword, value in SANITISE[i][1].items():
                setattr(ds, keyword, value)
        files["good"].append(hostile.save_unvalidated(ds, folder / f"good{i:02d}.dcm"))
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
        #: Last CPU seconds seen per pid, for the node processes and their worker processes.
        self.node_cpu: dict[int, float] = {}
        self.worker_cpu: dict[int, float] = {}
        #: CPU seconds of the processes already running when the watch began (not this round's).
        self._cpu_before: dict[int, float] = {}
        self.machine_start = machine_busy()
        self.harness_start = own_cpu_seconds()
        self.others_start = others_cpu()
        self.halt = threading.Event()

    def cpu(self) -> dict[str, float]:
        """CPU seconds used since the watch began: the node, its workers, and the whole machine's share busy."""
        busy0, total0 = self.machine_start
        busy1, total1 = machine_busy()
        # Processes alive at both ends: their CPU in between; started meanwhile: all of theirs.
        others1 = others_cpu()
        others_s = sum(v - self.others_start.get(pid, 0.0) for pid, v in others1.items())
        return {
            "node_s": round(sum(self.node_cpu.values()), 2),
            # the node's child processes: its workers and the fork server they are forked from
            "workers_s": round(sum(self.worker_cpu.values()), 2),
            "harness_s": round(own_cpu_seconds() - self.harness_start, 2),
            "machine_busy_fraction": round((busy1 - busy0) / max(1e-9, total1 - total0), 3),
            # Other processes' share of the machine's CPU time meanwhile (0.0: the round ran alone).
            "others_cpu_share": round(max(0.0, others_s) / max(1e-9, total1 - total0), 3),
        }

    def run(self) -> None:
        last_echo = 0.0
        if self.pid is not None:
            for proc in (self.pid, *children(self.pid)):
                self._cpu_before[proc] = cpu_seconds(proc) or 0.0
        while not self.halt.is_set():
            pid = self.pid
            if pid is not None:
                self.node_rss = max(self.node_rss, rss_mb(pid))
                below = children(pid)
                self.worker_rss = max([self.worker_rss, *(rss_mb(c) for c in below)])
                for proc, seen in ((pid, self.node_cpu), *((c, self.worker_cpu) for c in below)):
                    used = cpu_seconds(proc)
                    if used is not None:
                        seen[proc] = used - self._cpu_before.get(proc, 0.0)
                try:
                    counts = json.loads(self.attempts_file.read_text())
                    self.max_attempts = max([self.max_attempts, *counts.values()])
                except (OSError, ValueError, TypeError):
                    pass
                # No port probe first: each probe was a TCP connection the node held open for its
                # 5 s handshake timeout; pid is set only while the node listens (None across a kill).
                if time.monotonic() - last_echo >= 0.5:
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


#: (path, size, mtime_ns) -> (source SOP Instance UID, SEG SOP Instance UID) of SEGs already read.
_SEG_CACHE: dict[tuple[str, int, int], tuple[str, str]] = {}


def seg_sources(pacs: Path) -> dict[str, set[str]]:
    """Source SOP Instance UID -> SEG SOP Instance UIDs received by PACS.

    Polled every 0.1 s while a round runs; each SEG's header is read once (cached by size and
    mtime): reading all of them at each poll cost this harness ~0.8 ms CPU per file, up to 40 files
    per poll, CPU taken from the node it measures on the 2-core machine.
    """
    out: dict[str, set[str]] = {}
    for entry in os.scandir(pacs):
        try:
            st = entry.stat()
        except OSError:
            continue
        key = (entry.path, st.st_size, st.st_mtime_ns)
        uids = _SEG_CACHE.get(key)
        if uids is None:
            try:
                ds = pydicom.dcmread(entry.path, stop_before_pixels=True)
                src = str(ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID)
            except Exception:  # storescp writes in place: a file being written is read next time
                continue
            uids = _SEG_CACHE[key] = (src, str(ds.SOPInstanceUID))
        out.setdefault(uids[0], set()).add(uids[1])
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
        "cpu": watch.cpu(),
        "node_rss_peak_mb": round(watch.node_rss, 1),
        "worker_rss_peak_mb": round(watch.worker_rss, 1),
        "max_attempts_seen": watch.max_attempts,
    }


_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) \S+ bcedge\.serve: (.*)$")
#: Node log lines that mark a step of a (re)start: (label, pattern).
_EVENTS = (
    ("node_starting", re.compile(r"^starting: ")),
    ("worker_ready", re.compile(r"^worker-\d+: pid \d+ ready")),
    ("listening", re.compile(r"^listening as ")),
)


def log_events(log: Path, since: float) -> dict[str, list[float]]:
    """Wall times (epoch seconds) of the node's start steps logged at or after ``since``, per label."""
    out: dict[str, list[float]] = {label: [] for label, _ in _EVENTS}
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        m = _LOG_TIME.match(line)
        if not m:
            continue
        # asctime is local time with milliseconds
        t = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000.0
        if t < since - 0.001:
            continue
        for label, pattern in _EVENTS:
            if pattern.match(m.group(3)):
                out[label].append(t)
    return out


def timeline(root: Path, sources: set[str], t0: float, log: Path) -> dict[str, Any]:
    """Where each good scan's receipt -> delivery time went, from the node's own records.

    Per good scan (seconds after the round started, from ``item.json`` and ``delivery.json``):
    received, processing started and ended, delivered, and the worker's stage times; and the
    node's start steps after ``t0`` (from its log), so that a restart's share is visible.
    """
    scans = []
    for item in sorted((root / "done").iterdir()):
        record = json.loads((item / "item.json").read_text())
        if record["source_sop_instance_uid"] not in sources:
            continue
        delivered = json.loads((item / "delivery.json").read_text())["delivered_at"]
        started = record.get("started_at", record["processed_at"] - record["process_ms"] / 1000.0)
        scans.append(
            {
                "seq": record["seq"],
                "received": round(record["received_at"] - t0, 2),
                "started": round(started - t0, 2),
                "processed": round(record["processed_at"] - t0, 2),
                "delivered": round(delivered - t0, 2),
                "stages_ms": record.get("stages_ms", {}),
            }
        )
    scans.sort(key=lambda s: s["received"])

    def spread(key: str) -> dict[str, float] | None:
        values = [s[key] for s in scans]
        if not values:
            return None
        return {"mean": round(sum(values) / len(values), 2), "max": round(max(values), 2)}

    for s in scans:
        s["queued_s"] = round(s["started"] - s["received"], 2)
        s["processing_s"] = round(s["processed"] - s["started"], 2)
        s["to_pacs_s"] = round(s["delivered"] - s["processed"], 2)
    stage_names = sorted({k for s in scans for k in s["stages_ms"]})
    stages = {k: round(sum(s["stages_ms"].get(k, 0.0) for s in scans) / len(scans), 1) for k in stage_names if scans}
    events = {k: [round(t - t0, 2) for t in v] for k, v in log_events(log, t0).items()}
    return {
        "queued_s": spread("queued_s"),
        "processing_s": spread("processing_s"),
        "to_pacs_s": spread("to_pacs_s"),
        "mean_stage_ms": stages,
        "node_start_events_s": events,
        "scans": scans,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--good", type=int, default=20)
    parser.add_argument("--scale", type=float, default=0.5, help="phantom scale (1.0: full field, ~17 MB)")
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for each round")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy the node's log and stderr here")
    args = parser.parse_args(argv)
    if not all(shutil.which(t) for t in ("storescu", "storescp", "echoscu")):
        raise SystemExit("dcmtk (storescu, storescp, echoscu) is needed: apt-get install dcmtk")
    bundle = args.bundle or next((b for b in BUNDLES if (b / "manifest.json").is_file()), None)
    if bundle is None:
        raise SystemExit("no model bundle: pass --bundle")
    # The node reads a relative path in its config from the config's folder (a temporary one here).
    bundle = bundle.resolve()
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
        write_node_config(config, port, root, bundle, pacs_port, work / "node.log", retry=True)
        stderr_log = work / "node.stderr"

        # Bytecode caching on for the node and its workers (as benchmarks/bench_cold_start.py):
        # with PYTHONDONTWRITEBYTECODE set in this shell, every bcedge module without a current
        # .pyc would be compiled again at each (re)start, which an installed node never does.
        node_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

        def start_node() -> subprocess.Popen[bytes]:
            with stderr_log.open("ab") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "bcedge", "serve", "--config", str(config)],
                    stdout=err,
                    stderr=subprocess.STDOUT,
                    cwd=ROOT,
                    env=node_env,
                )
            wait(lambda: port_open(port) or proc.poll() is not None, "the node to listen", 300)
            if proc.poll() is not None:
                raise SystemExit(f"the node did not start:\n{stderr_log.read_text()[-3000:]}")
            return proc

        rounds: dict[str, Any] = {}
        try:
            node = start_node()
        except BaseException:  # the node did not start: stop the fake PACS too, not leave it running
            pacs.kill()
            pacs.wait(10)
            raise
        try:
            for name in ("round1", "round2_kill9"):
                files = make_round(work / name, originals, args.good)
                good = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files["good"]}
                quarantined_before = len(list((root / "quarantine").iterdir()))
                watch = Watch(port, root / "spool" / ".attempts.json")
                watch.pid = node.pid
                watch.start()
                t0 = time.monotonic()
                t0_wall = time.time()
                half = len(files["good"]) // 2
                senders = [
                    storescu(port, files["bomb"], ["-xt"]),
                    storescu(port, files["bad"] + files["good"][:half], []),
                    storescu(port, files["good"][half:], []),
                ]
                killed = restarted = listening = None
                resent = 0
                if name == "round2_kill9":
                    wait(lambda g=good: any(s in g for s in seg_sources(pacs_dir)), "a first SEG", args.timeout)
                    watch.pid = None
                    node.send_signal(signal.SIGKILL)
                    node.wait(30)
                    killed = round(time.monotonic() - t0, 2)
                    outputs = [s.communicate(timeout=300)[0] for s in senders]
                    restarted = round(time.monotonic() - t0, 2)
                    node = start_node()
                    listening = round(time.monotonic() - t0, 2)
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
                    "restarted_at_s": restarted,
                    "port_open_at_s": listening,
                    "resent_unacknowledged": resent,
                    **round_figures(root, good, watch, pacs_dir),
                    "quarantined": len(reasons),
                    "quarantine_reasons": reasons,
                    "timeline": timeline(root, good, t0_wall, work / "node.log"),
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
        if args.keep_logs is not None:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in (stderr_log, work / "node.log"):
                if log.is_file():
                    shutil.copy2(log, args.keep_logs / log.name)
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
            "worker": {
                "processes": 2,
                "timeout_s": 20,
                "memory_mb": "default",
                # how the node starts its workers (bcedge.serve.isolation.worker_context)
                "start_method": os.environ.get(START_METHOD_ENV, "").strip().lower() or "forkserver",
            },
            "node_bytecode_cache": True,
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
