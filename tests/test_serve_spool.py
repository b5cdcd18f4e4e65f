"""Spool and worker without a network: order, durability steps, crash recovery, quarantine, poison scans."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from serve_support import FakeSeg, fake_seg_uid, sop_uid, write_mg

from bcedge.errors import BundleError
from bcedge.serve.fsutil import read_json
from bcedge.serve.spool import Layout, Spool, SpoolFullError, item_name, parse_seq, recover, uid_hash
from bcedge.serve.state import NodeState, read_status
from bcedge.serve.worker import Worker


@pytest.fixture
def layout(spaced_dir: Path) -> Layout:
    return Layout(spaced_dir / "node").create()


def _spool_scans(spool: Spool, folder: Path, n: int, **tags: object) -> list[str]:
    uids = []
    for i in range(n):
        path = write_mg(folder / f"scan{i}.dcm", seed=i, **tags)
        uids.append(sop_uid(path))
        spool.put(path.read_bytes(), uids[-1])
    return uids


def test_names_carry_order_and_a_uid_hash_only() -> None:
    name = item_name(42, "1.2.3.4")
    assert name == f"000000000042_{uid_hash('1.2.3.4')}"
    assert parse_seq(name) == 42 and parse_seq(name + ".dcm") == 42
    assert parse_seq("notes.txt") is None and parse_seq("42_abc") is None


def test_put_is_ordered_and_unique_across_threads(layout: Layout) -> None:
    spool = Spool(layout)
    errors: list[BaseException] = []

    def put_many(k: int) -> None:
        try:
            for i in range(10):
                spool.put(b"x" * 100, f"1.2.{k}.{i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=put_many, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    pending = spool.pending()
    assert [parse_seq(p.name) for p in pending] == list(range(40))
    assert not list(layout.incoming.iterdir())  # no temp files left
    # a new Spool (a restart) continues the numbering after the highest seq on disk
    assert parse_seq(Spool(layout).put(b"y", "9.9").name) == 40


def test_put_refuses_when_the_disk_would_get_too_full(layout: Layout) -> None:
    spool = Spool(layout, min_free_bytes=2**62)
    with pytest.raises(SpoolFullError, match="MiB free"):
        spool.put(b"x", "1.2.3")
    assert spool.pending() == [] and not list(layout.incoming.iterdir())


def test_recover_deletes_partial_uploads_and_rolls_back_half_built_items(layout: Layout) -> None:
    (layout.incoming / "abc.part").write_bytes(b"half a scan")
    half = layout.work / item_name(7, "1.2.7")
    half.mkdir()
    (half / "source.dcm").write_bytes(b"the scan")
    (half / "x_seg.dcm").write_bytes(b"half a seg")
    stale = layout.work / item_name(8, "1.2.8")
    stale.mkdir()
    report = recover(layout)
    assert report == {"partial_uploads": 1, "rolled_back": 1, "work_deleted": 1}
    assert [p.name for p in Spool(layout).pending()] == [f"{item_name(7, '1.2.7')}.dcm"]
    assert not list(layout.work.iterdir()) and not list(layout.incoming.iterdir())


def test_worker_moves_scans_in_arrival_order_to_the_outbox(layout: Layout, spaced_dir: Path) -> None:
    spool = Spool(layout)
    uids = _spool_scans(spool, spaced_dir / "in", 3)
    fake = FakeSeg()
    woken: list[int] = []
    worker = Worker(layout, spool, fake, NodeState(layout), on_item=lambda: woken.append(1))
    while worker.step():
        pass
    assert [p.stem for p in fake.calls] == [item_name(i, u) for i, u in enumerate(uids)]
    items = layout.items(layout.outbox)
    assert len(items) == 3 and len(woken) == 3 and spool.pending() == []
    for item, uid in zip(items, uids, strict=True):
        record = json.loads((item / "item.json").read_text())
        assert record["source_sop_instance_uid"] == uid
        assert record["seg_sop_instance_uid"] == fake_seg_uid(uid)
        assert (item / "source.dcm").is_file() and (item / record["outputs"]["seg"]).is_file()
        assert record["received_at"] <= record["processed_at"]
    assert worker.state.totals["processed"] == 3


def test_after_a_crash_the_backlog_is_taken_oldest_receipt_first(layout: Layout, spaced_dir: Path) -> None:
    # A kill -9 with two workers busy leaves their scans in work/ and the rest in the spool; after the
    # restart, rolled-back and waiting scans alike go before what arrives later, earliest receipt
    # first, so the oldest receipts (the nearest to their latency bound) are not starved.
    spool = Spool(layout)
    uids = _spool_scans(spool, spaced_dir / "in", 5)
    names = [item_name(i, u) for i, u in enumerate(uids)]
    for name in names[1:3]:  # two scans in flight when the node died (not the oldest: any order is possible)
        (layout.work / name).mkdir()
        (layout.spool / f"{name}.dcm").rename(layout.work / name / "source.dcm")
    assert recover(layout)["rolled_back"] == 2
    restarted = Spool(layout)
    later = _spool_scans(restarted, spaced_dir / "later", 2)  # sent again by the modality after the restart
    names += [item_name(5 + i, u) for i, u in enumerate(later)]
    fake = FakeSeg()
    state = NodeState(layout)
    first = Worker(layout, restarted, fake, state)
    second = Worker(layout, restarted, fake, state, queue=first.queue)  # two workers share one queue
    taken = True
    while taken:
        taken = first.step() | second.step()
    assert [p.stem for p in fake.calls] == names
    assert restarted.pending() == [] and len(layout.items(layout.outbox)) == 7


def test_running_worker_processes_the_next_scan_while_the_last_one_commits(
    layout: Layout, spaced_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The commit (fsyncs and renames) of one scan overlaps the processing of the next: the worker's
    # process is not idle while the disk syncs. Each commit is slowed to >= 2 s here, so a worker
    # that committed before taking the next scan would find the previous item in the outbox.
    import bcedge.serve.worker as worker_module

    real_move = worker_module.move_durable

    def slow_move(src: Path, dst: Path) -> Path:
        if dst.parent == layout.outbox:
            time.sleep(2.0)
        return real_move(src, dst)

    monkeypatch.setattr(worker_module, "move_durable", slow_move)
    spool = Spool(layout)
    uids = _spool_scans(spool, spaced_dir / "in", 3)
    fake = FakeSeg()
    outbox_when_called: list[int] = []
    attempts_when_called: list[dict[str, int]] = []

    def process(source: Path, out_dir: Path) -> dict[str, Path]:
        outbox_when_called.append(len(layout.items(layout.outbox)))
        attempts_when_called.append(read_json(layout.attempts_file, {}))
        return dict(fake(source, out_dir))

    woken: list[int] = []
    worker = Worker(layout, spool, process, NodeState(layout), on_item=lambda: woken.append(1))
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while len(layout.items(layout.outbox)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop()
        worker.join(30)
    assert not worker.is_alive()
    # scans 2 and 3 were taken while the previous scan's commit was still running
    assert outbox_when_called == [0, 0, 1]
    # only the scan being processed has an attempt on disk: a scan whose processing returned does
    # not count against the poison limit if the node is killed while it commits
    names = [item_name(i, u) for i, u in enumerate(uids)]
    assert attempts_when_called == [{names[0]: 1}, {names[1]: 1}, {names[2]: 1}]
    items = layout.items(layout.outbox)
    assert [json.loads((i / "item.json").read_text())["source_sop_instance_uid"] for i in items] == uids
    assert spool.pending() == [] and len(woken) == 3 and read_json(layout.attempts_file, {}) == {}
    assert worker.state.totals["processed"] == 3


def test_bad_input_is_quarantined_and_the_worker_goes_on(layout: Layout, spaced_dir: Path) -> None:
    spool = Spool(layout)
    _spool_scans(spool, spaced_dir / "bad", 1, Manufacturer="BAD")
    good = _spool_scans(spool, spaced_dir / "good", 1)
    worker = Worker(layout, spool, FakeSeg(), NodeState(layout))
    while worker.step():
        pass
    (quarantined,) = layout.items(layout.quarantine)
    assert "Manufacturer (0008,0070)" in (quarantined / "reason.txt").read_text()
    assert (quarantined / "source.dcm").is_file()
    (item,) = layout.items(layout.outbox)
    assert json.loads((item / "item.json").read_text())["source_sop_instance_uid"] == good[0]
    status = read_status(layout.root)
    assert status["quarantined_items"][0]["item"] == quarantined.name


def test_a_scan_that_keeps_failing_is_quarantined_after_max_attempts(layout: Layout, spaced_dir: Path) -> None:
    spool = Spool(layout)
    _spool_scans(spool, spaced_dir / "in", 1)
    calls = []

    def broken(source: Path, out_dir: Path) -> dict[str, Path]:
        calls.append(source)
        raise BundleError("backend failed (simulated)")  # not the scan's fault: retried first

    worker = Worker(layout, spool, broken, NodeState(layout), max_attempts=2, retry_pause_s=0.0)
    assert worker.step() and worker.step()
    assert len(calls) == 2 and len(spool.pending()) == 1
    assert read_json(layout.attempts_file) == {spool.pending()[0].stem: 2}
    # a restart (new worker) sees the count on disk: a scan that crashed the node twice is set aside
    worker2 = Worker(layout, spool, broken, NodeState(layout), max_attempts=2, retry_pause_s=0.0)
    assert worker2.step()
    assert len(calls) == 2 and spool.pending() == []
    (item,) = layout.items(layout.quarantine)
    assert "2 times" in (item / "reason.txt").read_text()
    assert read_json(layout.attempts_file) == {}


def test_state_file_counts_and_queues(layout: Layout, spaced_dir: Path) -> None:
    spool = Spool(layout)
    _spool_scans(spool, spaced_dir / "in", 2)
    state = NodeState(layout, info={"config": "x"})
    state.count("received", 2)
    state.error("scp", "something happened")
    state.set_status("running")
    state.save()
    saved = read_json(layout.state_file)
    assert saved["totals"]["received"] == 2 and saved["queues"]["spool"] == 2
    assert saved["last_errors"][0]["message"] == "something happened"
    # totals carry over a restart; this_run starts again
    state2 = NodeState(layout)
    state2.count("received")
    assert state2.totals["received"] == 3 and state2.this_run["received"] == 1
