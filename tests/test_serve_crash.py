"""``kill -9`` during a burst, then restart: every acknowledged scan delivered, never two SEG UIDs for one scan.

The node runs in a subprocess (``tests/serve_support.py CONFIG --delay S``: the real node code with
the fake processing step, slowed down so the kill finds scans in every stage: spool, work, outbox).
dcmtk storescu sends, dcmtk storescp plays PACS and keeps one file per C-STORE it received.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_support import (
    Storescp,
    acknowledged,
    config_text,
    echoscu,
    free_port,
    have_dcmtk,
    port_open,
    received_segs,
    sop_uid,
    storescu,
    storescu_command,
    wait_for,
    write_mg,
)

from bcedge.serve.fsutil import read_json
from bcedge.serve.spool import Layout

pytestmark = pytest.mark.skipif(not have_dcmtk(), reason="dcmtk (echoscu, storescu, storescp) is not installed")

SUPPORT = Path(__file__).resolve().parent / "serve_support.py"


class NodeProcess:
    """The node in a subprocess, so it can be killed with SIGKILL."""

    def __init__(self, config: Path, port: int, log: Path, delay: float) -> None:
        self.config, self.port, self.log, self.delay = config, port, log, delay
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> NodeProcess:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(SUPPORT), str(self.config), "--delay", str(self.delay)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=SUPPORT.parent.parent,
            )
        wait_for(lambda: port_open(self.port) or self.proc.poll() is not None, what="the node to listen", timeout=30)
        assert self.proc.poll() is None, self.log.read_text()[-2000:]
        return self

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill9()
        return self.proc.returncode if self.proc else None


@pytest.fixture
def cluster(spaced_dir: Path) -> Iterator[tuple[NodeProcess, Storescp, Layout]]:
    pacs = Storescp(spaced_dir / "pacs", free_port()).start()
    port = free_port()
    config = spaced_dir / "serve.toml"
    config.write_text(config_text(spaced_dir / "node", port, pacs.port))
    node = NodeProcess(config, port, spaced_dir / "node.log", delay=0.05)
    try:
        yield node, pacs, Layout(spaced_dir / "node")
    finally:
        node.kill9()
        pacs.stop()


def _check_delivery(pacs: Storescp, must_have: set[str]) -> dict[str, set[str]]:
    seg_uids: dict[str, set[str]] = defaultdict(set)
    for seg_uid, source_uid in received_segs(pacs.folder):
        seg_uids[source_uid].add(seg_uid)
    missing = must_have - set(seg_uids)
    assert not missing, f"{len(missing)} acknowledged scans never reached PACS"
    twice = {src: uids for src, uids in seg_uids.items() if len(uids) > 1}
    assert not twice, f"scans delivered under different SEG UIDs: {twice}"
    return seg_uids


def test_kill9_during_a_burst_loses_nothing(spaced_dir: Path, cluster: tuple[NodeProcess, Storescp, Layout]) -> None:
    node, pacs, layout = cluster
    scans = [write_mg(spaced_dir / "in" / f"s{i:02d}.dcm", seed=i, shape=(256, 200)) for i in range(40)]
    uid_of = {str(p): sop_uid(p) for p in scans}
    node.start()
    sender = subprocess.Popen(
        storescu_command(node.port, scans, dimse_timeout=10),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # kill when some scans are delivered and others are still waiting in the spool/outbox
        wait_for(lambda: layout.counts()["done"] >= 2 and layout.counts()["spool"] >= 2, what="a backlog", timeout=30)
        node.kill9()
        first_log = sender.communicate(timeout=30)[0]
    finally:
        sender.kill()
    acked = {uid_of[f] for f in acknowledged(first_log)}
    counts = layout.counts()
    assert len(acked) >= 3, first_log[-1500:]  # the last spooled one may have died before its response
    assert counts["spool"] + counts["outbox"] > 0  # the kill left acknowledged work behind

    # restart, and kill again while it is catching up -- but not while a scan that was mid-processing
    # at the first kill is being processed again: a scan cut short by two kills in a row is quarantined
    # by design (max_process_attempts = 2; tests/test_serve_isolation.py tests exactly that), and
    # whether the second kill lands on one depends only on timing.
    cut_short = set(read_json(layout.attempts_file, {}))
    node.start()
    wait_for(
        lambda: layout.counts()["done"] > counts["done"] and not cut_short & set(read_json(layout.attempts_file, {})),
        what="progress after the restart",
        timeout=30,
    )
    node.kill9()
    node.start()
    # the modality resends what it did not get a success for (it may already be on the node: duplicates)
    resent = storescu(node.port, [p for p in scans if uid_of[str(p)] not in acked])
    acked |= {uid_of[f] for f in acknowledged(resent.stdout + resent.stderr)}
    assert acked == set(uid_of.values())
    wait_for(lambda: layout.counts()["spool"] + layout.counts()["outbox"] == 0, what="empty queues", timeout=40)
    assert echoscu(node.port).returncode == 0
    assert node.terminate() == 0  # SIGTERM: clean stop

    seg_uids = _check_delivery(pacs, acked)
    assert set(seg_uids) == acked  # nothing that was never sent
    state = json.loads(layout.state_file.read_text())
    assert state["status"] == "stopped" and state["queues"]["quarantine"] == 0


def test_resend_after_crash_between_send_and_move_keeps_the_uid(
    spaced_dir: Path, cluster: tuple[NodeProcess, Storescp, Layout]
) -> None:
    """The one duplicate the design allows: PACS stored the SEG, the node died before moving it to done/."""
    node, pacs, layout = cluster
    node.start()
    scan = write_mg(spaced_dir / "in" / "scan.dcm")
    assert storescu(node.port, [scan]).returncode == 0
    wait_for(lambda: layout.counts()["done"] == 1, what="delivery")
    node.kill9()
    # put the state back to "sent but not yet moved": the item is in the outbox again
    (item,) = layout.items(layout.done)
    (item / "delivery.json").unlink()
    os.rename(item, layout.outbox / item.name)
    node.start()
    wait_for(lambda: layout.counts()["done"] == 1 and len(received_segs(pacs.folder)) == 2, what="the resend")
    (first, second) = received_segs(pacs.folder)
    assert first == second  # same SEG SOP Instance UID, same source: PACS keeps one instance
    node.terminate()
