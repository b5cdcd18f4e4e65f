"""The node on the wire, driven by dcmtk: echoscu/storescu send, storescp plays PACS (127.0.0.1 only).

The processing step is :class:`serve_support.FakeSeg` (no model), so these tests are about the
DICOM side, access control, bad input and delivery; test_serve_e2e.py runs the real Segmenter.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from serve_support import (
    FakeSeg,
    Storescp,
    acknowledged,
    config_text,
    detach_logging,
    echoscu,
    fake_seg_uid,
    free_port,
    have_dcmtk,
    received_segs,
    sop_uid,
    storescu,
    storescu_command,
    wait_for,
    write_mg,
)

from bcedge.cli import main
from bcedge.serve.config import ServeConfig, load_config
from bcedge.serve.node import Node, configure_logging
from bcedge.serve.spool import Layout

pytestmark = pytest.mark.skipif(not have_dcmtk(), reason="dcmtk (echoscu, storescu, storescp) is not installed")


@pytest.fixture
def pacs(spaced_dir: Path) -> Iterator[Storescp]:
    server = Storescp(spaced_dir / "pacs", free_port()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_node(spaced_dir: Path) -> Iterator[Callable[..., tuple[Node, int, Path]]]:
    """``start_node(dest_port, **config_text kwargs) -> (node, port, config path)``; stopped after the test."""
    nodes: list[Node] = []

    def _start(dest_port: int, **kwargs: Any) -> tuple[Node, int, Path]:
        path = spaced_dir / f"serve{len(nodes)}.toml"
        text = config_text(spaced_dir / "node", 0, dest_port, **kwargs)
        path.write_text(text + f'\n[logging]\nlevel = "DEBUG"\nfile = "{spaced_dir / "node.log"}"\n')
        cfg: ServeConfig = load_config(path)
        configure_logging(cfg.logging)
        node = Node(cfg, process=FakeSeg())
        nodes.append(node)
        _host, port = node.start()
        return node, port, path

    try:
        yield _start
    finally:
        for node in nodes:
            node.stop(timeout=10)
        detach_logging()


def _outbox_and_spool_empty(layout: Layout) -> bool:
    counts = layout.counts()
    return counts["spool"] == 0 and counts["outbox"] == 0


def test_scan_in_seg_out_referencing_it(spaced_dir: Path, pacs: Storescp, start_node: Callable, capsys) -> None:
    node, port, config = start_node(pacs.port)
    assert echoscu(port).returncode == 0
    scan = write_mg(spaced_dir / "in" / "scan.dcm")
    sent = storescu(port, [scan])
    assert sent.returncode == 0, sent.stderr
    assert acknowledged(sent.stderr + sent.stdout) == [str(scan)]
    segs = wait_for(lambda: received_segs(pacs.folder), what="a SEG at the fake PACS")
    assert segs == [(fake_seg_uid(sop_uid(scan)), sop_uid(scan))]
    wait_for(lambda: node.layout.counts()["done"] == 1, what="the item in done/")
    # the counter follows the move into done/ (a moment later, in the sender's thread)
    wait_for(lambda: node.state is not None and node.state.totals["delivered"] == 1, what="the delivery counted")
    (item,) = node.layout.items(node.layout.done)
    delivery = json.loads((item / "delivery.json").read_text())
    assert delivery["status"] == "delivered" and delivery["status_code"] == "0x0000"
    assert (item / "source.dcm").read_bytes()[128:132] == b"DICM"
    # the spooled file is the dataset as sent, with its pixels
    assert pydicom.dcmread(item / "source.dcm").pixel_array.shape == pydicom.dcmread(scan).pixel_array.shape
    node.state.save()
    assert main(["serve", "status", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "node: running" in out and "done 1" in out and "delivered 1" in out


def test_unknown_callers_are_refused_at_association(spaced_dir: Path, start_node: Callable) -> None:
    node, port, _ = start_node(free_port())
    stranger = echoscu(port, aet="STRANGER")
    assert stranger.returncode != 0 and "Calling AE Title Not Recognized" in stranger.stderr + stranger.stdout
    wrong_called = echoscu(port, aec="NOT_ME")
    assert wrong_called.returncode != 0
    assert "Called AE Title Not Recognized" in wrong_called.stderr + wrong_called.stdout
    sent = storescu(port, [write_mg(spaced_dir / "in" / "scan.dcm")], aet="STRANGER")
    assert sent.returncode != 0 and acknowledged(sent.stderr + sent.stdout) == []
    assert node.state.totals["associations_rejected"] == 3 and node.state.totals["received"] == 0
    assert node.layout.counts()["spool"] == 0 and node.layout.counts()["outbox"] == 0
    assert "calling AE title not in [node] allowed_calling_ae_titles" in node.state.errors[0]["message"]


def test_address_allow_list(start_node: Callable) -> None:
    node, port, _ = start_node(free_port(), node={"allowed_addresses": ["10.255.0.0/16"]})
    refused = echoscu(port)
    assert refused.returncode != 0
    assert node.state.totals["echoes"] == 0 and node.state.totals["associations_rejected"] == 1
    node.stop(timeout=10)
    _node2, port2, _ = start_node(free_port(), node={"allowed_addresses": ["127.0.0.0/8", "::1"]})
    assert echoscu(port2).returncode == 0


def test_non_mammograms_are_refused(spaced_dir: Path, start_node: Callable) -> None:
    node, port, _ = start_node(free_port())
    ct = write_mg(spaced_dir / "in" / "ct.dcm")
    ds = pydicom.dcmread(ct)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    ds.Modality = "CT"
    ds.save_as(ct)
    sent = storescu(port, [ct])
    # the CT presentation context is rejected at association: the C-STORE never starts
    log = sent.stderr + sent.stdout
    assert "No presentation context for: (CT)" in log and acknowledged(log) == []
    # an MG SOP class that says it is something else, and one without pixels: 0xA900
    wrong_modality = write_mg(spaced_dir / "in" / "mr.dcm", seed=1, Modality="MR")
    no_pixels = write_mg(spaced_dir / "in" / "nopix.dcm", seed=2)
    ds = pydicom.dcmread(no_pixels)
    del ds.PixelData
    ds.save_as(no_pixels)
    sent = storescu(port, [wrong_modality, no_pixels])
    log = sent.stderr + sent.stdout
    assert log.count("DataSetDoesNotMatchSOPClass") == 2 and acknowledged(log) == []
    assert node.state.totals["refused"] == 2 and node.state.totals["received"] == 0
    assert node.layout.counts()["spool"] == 0
    messages = " | ".join(e["message"] for e in node.state.errors)
    assert "Modality (0008,0060) is 'MR'" in messages and "no Pixel Data (7FE0,0010)" in messages


def test_bad_dataset_is_quarantined_and_the_node_goes_on(spaced_dir: Path, pacs: Storescp, start_node) -> None:
    node, port, config = start_node(pacs.port)
    bad = write_mg(spaced_dir / "in" / "bad.dcm", Manufacturer="BAD")  # accepted, then fails processing
    good = write_mg(spaced_dir / "in" / "good.dcm", seed=1)
    sent = storescu(port, [bad, good])
    assert acknowledged(sent.stderr + sent.stdout) == [str(bad), str(good)]
    segs = wait_for(lambda: received_segs(pacs.folder), what="the good scan's SEG")
    assert [ref for _uid, ref in segs] == [sop_uid(good)]
    wait_for(lambda: node.layout.counts()["quarantine"] == 1, what="the bad scan in quarantine")
    assert echoscu(port).returncode == 0  # still serving
    data = json.loads(_status_json(config))
    assert data["quarantined_items"] and "Manufacturer (0008,0070)" in data["quarantined_items"][0]["reason"]


def _status_json(config: Path) -> str:
    proc = subprocess.run(
        [*_bcedge(), "serve", "status", "--config", str(config), "--json"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode in (0, 4), proc.stderr
    return proc.stdout


def _bcedge() -> list[str]:
    import sys

    return [sys.executable, "-m", "bcedge.cli"]


def test_destination_down_retries_then_delivers(spaced_dir: Path, start_node: Callable) -> None:
    pacs = Storescp(spaced_dir / "late pacs", free_port())
    node, port, config = start_node(pacs.port, destination={"max_attempts": 3})
    scan = write_mg(spaced_dir / "in" / "scan.dcm")
    assert storescu(port, [scan]).returncode == 0
    item = wait_for(lambda: node.layout.items(node.layout.outbox), what="an outbox item")[0]
    # 0.2 s, 0.4 s, then marked failed: reason.txt, status exit code 4
    wait_for(lambda: (item / "reason.txt").exists(), what="reason.txt after 3 failed attempts")
    assert "not delivered after 3 attempts" in (item / "reason.txt").read_text()
    assert "cannot connect" in json.loads((item / "delivery.json").read_text())["last_error"]
    node.state.save()
    assert main(["serve", "status", "--config", str(config)]) == 4
    try:
        pacs.start()  # PACS is back: the failed item is retried (retry_failed_every_s = 1 s)
        segs = wait_for(lambda: received_segs(pacs.folder), what="delivery once PACS is back")
        assert segs == [(fake_seg_uid(sop_uid(scan)), sop_uid(scan))]
        wait_for(lambda: _outbox_and_spool_empty(node.layout), what="an empty outbox")
        (done,) = node.layout.items(node.layout.done)
        assert not (done / "reason.txt").exists()
        assert json.loads((done / "delivery.json").read_text())["attempts"] >= 4
    finally:
        pacs.stop()


def test_several_associations_at_once(spaced_dir: Path, pacs: Storescp, start_node: Callable) -> None:
    node, port, _ = start_node(pacs.port)
    batches = [[write_mg(spaced_dir / f"in{k}" / f"s{i}.dcm", seed=10 * k + i) for i in range(4)] for k in range(3)]
    procs = [
        subprocess.Popen(
            storescu_command(port, b),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for b in batches
    ]
    try:
        logs = [p.communicate(timeout=30)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(len(acknowledged(log)) == 4 for log in logs)
    wait_for(lambda: len(received_segs(pacs.folder)) == 12, what="12 SEGs")
    refs = sorted(ref for _uid, ref in received_segs(pacs.folder))
    assert refs == sorted(sop_uid(f) for b in batches for f in b)
    assert node.state.totals["associations_accepted"] >= 3


def test_logs_and_state_carry_no_patient_data(spaced_dir: Path, pacs: Storescp, start_node: Callable) -> None:
    node, port, _ = start_node(pacs.port)  # logging at DEBUG, pynetdicom's trace included
    secret = {"patient_name": "Doe^Jane", "patient_id": "PID-SECRET-4711"}
    files = [
        write_mg(spaced_dir / "in" / "ok.dcm", **secret),
        write_mg(spaced_dir / "in" / "bad.dcm", seed=1, Manufacturer="BAD", **secret),
        write_mg(spaced_dir / "in" / "mr.dcm", seed=2, Modality="MR", **secret),
    ]
    storescu(port, files)
    wait_for(lambda: node.layout.counts()["done"] == 1 and node.layout.counts()["quarantine"] == 1, what="1 done")
    node.state.save()
    node.stop(timeout=10)
    texts = [(spaced_dir / "node.log").read_text()]
    texts += [p.read_text() for p in node.layout.root.rglob("*") if p.suffix in (".json", ".txt")]
    blob = "\n".join(texts)
    assert "received" in blob and "quarantined" in blob and "0xA900" in blob  # the log is not empty
    for needle in ("Doe", "Jane", "PID-SECRET"):
        assert needle not in blob
    assert not [p for p in node.layout.root.rglob("*") if "Doe" in p.name or "PID" in p.name]


def test_out_of_resources_when_the_scan_cannot_be_stored(spaced_dir: Path, start_node: Callable) -> None:
    node, port, _ = start_node(free_port(), storage={"min_free_mb": 2**40})  # more than any disk has
    sent = storescu(port, [write_mg(spaced_dir / "in" / "scan.dcm")])
    log = sent.stderr + sent.stdout
    assert "OutOfResources" in log and acknowledged(log) == []
    assert node.layout.counts()["spool"] == 0 and not list(node.layout.incoming.iterdir())
    assert "0xA700" in node.state.errors[-1]["message"]


def test_undecodable_dataset_is_answered_cannot_understand(start_node: Callable) -> None:
    """storescu will not send a broken file, so the handler is called with one directly."""
    from types import SimpleNamespace

    node, _port, _ = start_node(free_port())

    class Broken:
        @property
        def dataset(self) -> None:
            raise ValueError("truncated element")

        assoc = SimpleNamespace(requestor=SimpleNamespace(ae_title="MODALITY", address="127.0.0.1"))
        context = SimpleNamespace(abstract_syntax="1.2.840.10008.5.1.4.1.1.1.2")

    status = node.scp._on_store(Broken())
    assert status.Status == 0xC210 and "cannot be decoded" in status.ErrorComment
    assert node.state.totals["refused"] == 1 and node.layout.counts()["spool"] == 0
