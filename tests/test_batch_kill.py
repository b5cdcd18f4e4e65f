"""``bcedge batch`` killed with SIGKILL halfway, then run again: every scan exactly once in the table.

The driver runs as a real ``python -m bcedge batch`` process (its own local Ray), one scan per
committed part, and is killed (``kill -9``) once two parts are committed. The same command is then
run to the end. Checked: each scan's key once in the table, every scan done, the second run skipped
what the first committed, and every output file under its final name is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="Ray is not installed (pip install 'bcedge[batch]')")
pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install 'bcedge[batch]')")

from bcedge.batch.ledger import read_table

pytestmark = pytest.mark.slow
#: Upper bound of each wait: Ray's start and the first scans take tens of seconds on a busy 2-core machine.
TIMEOUT = 600


def _command(src: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "bcedge", "batch", str(src), "--out", str(out), "--workers", "1", "--block-size", "1",
            "--outputs", "mask,json", "--json"]  # fmt: skip


def test_kill_9_halfway_then_rerun_gives_every_scan_once(tmp_path: Path) -> None:
    from bcedge.phantom import generate

    n = 8
    src = tmp_path / "scans in"
    generate(src, count=n, scale=0.15)
    images = src / "images"
    out = tmp_path / "out"
    parts = out / "results" / "scans"
    log = tmp_path / "first run.log"  # a file, not a pipe: nobody reads while it runs
    with open(log, "wb") as sink:
        proc = subprocess.Popen(_command(images, out), stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while len(list(parts.glob("part-*.parquet"))) < 2:
            if proc.poll() is not None:
                text = log.read_text(errors="replace")
                if proc.returncode == 4 and "cannot start or reach Ray" in text:
                    pytest.skip("a local Ray did not start here (Ray's fixed start-up timeouts; machine overloaded?)")
                raise AssertionError(text[-3000:])
            assert time.monotonic() < deadline, "no two parts committed in time"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)  # the driver only: its Ray processes are left to notice
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        time.sleep(2)
        # Whatever Ray processes the killed driver left behind are this test's to stop.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    committed = read_table(out)[0].num_rows
    assert 2 <= committed < n, f"the kill came too late to test anything ({committed} of {n} committed)"

    rerun = subprocess.run(_command(images, out), capture_output=True, text=True, timeout=TIMEOUT)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout)
    assert summary["found"] == n and summary["skipped"] == committed and summary["processed"] == n - committed

    scans, _ = read_table(out)
    keys = scans.column("key").to_pylist()
    assert len(keys) == n and len(set(keys)) == n, Counter(keys).most_common(2)
    assert set(scans.column("status").to_pylist()) == {"done"}
    import cv2

    for row in scans.to_pylist():
        assert json.loads(Path(row["json_path"]).read_text())["input"] == row["path"]
        mask = cv2.imread(row["mask_path"], cv2.IMREAD_GRAYSCALE)
        assert mask is not None and mask.shape == (row["rows"], row["columns"])


def _ray_map_workers(sid: int) -> list[int]:
    """Pids of the Ray actor processes running ScanWorker in session ``sid`` (their title is ``ray::MapWorker...``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[3]) == sid and "MapWorker" in cmdline:
            pids.append(int(entry.name))
    return pids


def test_kill_9_of_a_worker_is_survived(tmp_path: Path) -> None:
    """A worker (Ray actor) killed mid-run: Ray restarts it, its block is redone, the run ends with every scan once."""
    from bcedge.phantom import generate

    n = 6
    generate(tmp_path / "src", count=n, scale=0.15)
    out = tmp_path / "out"
    parts = out / "results" / "scans"
    log, answer = tmp_path / "run.log", tmp_path / "summary.json"
    with open(log, "wb") as sink, open(answer, "wb") as summary_out:
        proc = subprocess.Popen(
            _command(tmp_path / "src" / "images", out), stdout=summary_out, stderr=sink, start_new_session=True
        )
    try:
        deadline = time.monotonic() + TIMEOUT
        killed = None
        while killed is None:
            if proc.poll() is not None:
                text = log.read_text(errors="replace")
                if proc.returncode == 4 and "cannot start or reach Ray" in text:
                    pytest.skip("a local Ray did not start here (Ray's fixed start-up timeouts; machine overloaded?)")
                raise AssertionError(f"the run ended before a worker could be killed: {text[-2000:]}")
            assert time.monotonic() < deadline, "no worker and first part in time"
            workers = _ray_map_workers(proc.pid)
            if workers and list(parts.glob("part-*.parquet")):
                os.kill(workers[0], signal.SIGKILL)
                killed = workers[0]
            time.sleep(0.1)
        proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, log.read_text(errors="replace")[-3000:]
    summary = json.loads(answer.read_text())
    assert (summary["found"], summary["done"], summary["failed"]) == (n, n, 0)
    scans, _ = read_table(out)
    keys = scans.column("key").to_pylist()
    assert len(keys) == n and len(set(keys)) == n, Counter(keys).most_common(2)
    pids = {int(w.rsplit(":", 1)[1]) for w in scans.column("worker").to_pylist()}
    assert killed in pids and len(pids) >= 2, pids  # the killed actor did the first part, a new one the rest
