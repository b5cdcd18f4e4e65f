"""Delivery details: a PACS that refuses one SEG does not hold back the others, retention, DICOM TLS both ways."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from serve_support import (
    FakeSeg,
    Storescp,
    acknowledged,
    config_text,
    dcmtk,
    fake_seg_uid,
    free_port,
    have_dcmtk,
    port_open,
    received_segs,
    sop_uid,
    storescu,
    wait_for,
    write_mg,
)

from bcedge.serve.config import DestinationConfig, parse_config
from bcedge.serve.node import Node
from bcedge.serve.sender import Sender
from bcedge.serve.spool import Layout, Spool
from bcedge.serve.state import NodeState
from bcedge.serve.worker import Worker


def _outbox_items(layout: Layout, folder: Path, n: int) -> list[str]:
    """Spool and process ``n`` small scans into the outbox; returns their SOP Instance UIDs in order."""
    spool = Spool(layout)
    uids = []
    for i in range(n):
        path = write_mg(folder / f"s{i}.dcm", seed=i)
        uids.append(sop_uid(path))
        spool.put(path.read_bytes(), uids[-1])
    worker = Worker(layout, spool, FakeSeg(), NodeState(layout))
    while worker.step():
        pass
    return uids


def test_a_refused_seg_does_not_hold_back_the_others(spaced_dir: Path) -> None:
    from pynetdicom import AE, evt

    layout = Layout(spaced_dir / "node").create()
    uids = _outbox_items(layout, spaced_dir / "in", 3)
    refuse_uid = fake_seg_uid(uids[0])
    seen: list[tuple[str, int]] = []
    lock = threading.Lock()

    def on_store(event: evt.Event) -> int:
        uid = str(event.dataset.SOPInstanceUID)
        with lock:
            refusals = sum(1 for u, code in seen if u == uid and code)
            code = 0xA700 if uid == refuse_uid and refusals < 2 else 0x0000
            seen.append((uid, code))
        return code

    pacs_ae = AE(ae_title="PACS")
    pacs_ae.add_supported_context("1.2.840.10008.5.1.4.1.1.66.4")
    port = free_port()
    server = pacs_ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    dest = DestinationConfig(port=port, max_attempts=5, backoff_initial_s=0.3, backoff_max_s=1.0, timeout_s=5)
    sender = Sender(layout, dest, "BCEDGE", NodeState(layout))
    try:
        deadline = time.monotonic() + 20
        while layout.counts()["done"] < 3 and time.monotonic() < deadline:
            if not sender.step():
                time.sleep(0.05)
    finally:
        server.shutdown()
    assert layout.counts()["done"] == 3 and layout.counts()["outbox"] == 0
    order = [uid for uid, code in seen if code == 0]
    # the two others went through while the refused one waited out its backoff
    assert order[-1] == refuse_uid and set(order) == {fake_seg_uid(u) for u in uids}
    assert [code for uid, code in seen if uid == refuse_uid] == [0xA700, 0xA700, 0]
    first = layout.done / sorted(p.name for p in layout.items(layout.done))[0]
    assert json.loads((first / "delivery.json").read_text())["attempts"] == 3


def test_retention_keeps_the_newest_and_drops_the_old(spaced_dir: Path) -> None:
    layout = Layout(spaced_dir / "node").create()
    for seq in range(5):
        (layout.done / f"{seq:012d}_{'a' * 10}").mkdir()
    old = layout.done / f"{0:012d}_{'a' * 10}"
    stamp = time.time() - 3 * 86400
    import os

    os.utime(old, (stamp, stamp))
    sender = Sender(layout, DestinationConfig(), "BCEDGE", NodeState(layout), retention_days=2, retention_items=3)
    assert sender.prune_done() == 2
    assert [p.name[:12] for p in layout.items(layout.done)] == ["000000000002", "000000000003", "000000000004"]
    by_age = Sender(layout, DestinationConfig(), "BCEDGE", NodeState(layout), retention_days=2)
    stamp = time.time() - 5 * 86400
    os.utime(layout.done / f"{2:012d}_{'a' * 10}", (stamp, stamp))
    assert by_age.prune_done() == 1 and layout.counts()["done"] == 2


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test CA and certificates for the node, a modality and PACS (EC P-256, made with the openssl CLI)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    folder = tmp_path_factory.mktemp("with space") / "certs"
    folder.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *args: subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=30)  # noqa: E731
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=bcedge test CA")
    (folder / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("node", "modality", "pacs"):
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", "/CN=localhost")
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        )
    return folder


@pytest.mark.skipif(not have_dcmtk(), reason="dcmtk (echoscu, storescu, storescp) is not installed")
def test_dicom_tls_in_and_out(spaced_dir: Path, certs: Path) -> None:
    c = certs
    pacs_port, port = free_port(), free_port()
    pacs_dir = spaced_dir / "pacs"
    pacs_dir.mkdir()
    # storescp with TLS as PACS: it requires the node's client certificate, signed by the test CA
    pacs = subprocess.Popen(
        [
            dcmtk("storescp"),
            "-aet",
            "PACS",
            "-od",
            str(pacs_dir),
            "+uf",
            "+tls",
            str(c / "pacs.key"),
            str(c / "pacs.pem"),
            "+cf",
            str(c / "ca.pem"),
            "-ts",
            "20",
            "-ta",
            "10",
            str(pacs_port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    tls = (
        f'[tls]\nenabled = true\ncert = "{c / "node.pem"}"\nkey = "{c / "node.key"}"\nca = "{c / "ca.pem"}"\n'
        f'[destination.tls]\nenabled = true\nca = "{c / "ca.pem"}"\n'
        f'cert = "{c / "node.pem"}"\nkey = "{c / "node.key"}"\n'
    )
    cfg = parse_config(config_text(spaced_dir / "node", port, pacs_port, extra=tls))
    node = Node(cfg, process=FakeSeg())
    try:
        wait_for(lambda: port_open(pacs_port), what="storescp with TLS")
        node.start()
        # a caller that connects and says nothing must not hold up the others (TLS handshake per connection)
        silent = socket.create_connection(("127.0.0.1", port), timeout=5)
        scan = write_mg(spaced_dir / "in" / "scan.dcm")
        tls_args = ["+tls", str(c / "modality.key"), str(c / "modality.pem"), "+cf", str(c / "ca.pem")]
        sent = storescu(port, [scan], extra=tls_args)
        assert acknowledged(sent.stdout + sent.stderr) == [str(scan)], sent.stdout + sent.stderr
        segs = wait_for(lambda: received_segs(pacs_dir), what="the SEG over TLS")
        assert segs == [(fake_seg_uid(sop_uid(scan)), sop_uid(scan))]
        # without TLS, or with TLS but no client certificate, nothing gets in
        plain = storescu(port, [scan], timeout=30)
        anonymous = storescu(port, [scan], extra=["+tla", "+cf", str(c / "ca.pem")], timeout=30)
        assert (
            acknowledged(plain.stdout + plain.stderr) == [] and acknowledged(anonymous.stdout + anonymous.stderr) == []
        )
        assert node.state.totals["received"] == 1
        silent.close()
    finally:
        node.stop(timeout=10)
        pacs.kill()
        pacs.wait(timeout=10)


@pytest.mark.skipif(not have_dcmtk(), reason="dcmtk (echoscu, storescu, storescp) is not installed")
def test_storage_root_is_locked_against_a_second_node(spaced_dir: Path) -> None:
    from bcedge.errors import ConfigError

    pacs = Storescp(spaced_dir / "pacs", free_port())
    first = Node(parse_config(config_text(spaced_dir / "node", 0, pacs.port)), process=FakeSeg())
    first.start()
    try:
        second = Node(parse_config(config_text(spaced_dir / "node", 0, pacs.port)), process=FakeSeg())
        with pytest.raises(ConfigError, match="another bcedge serve"):
            second.start()
    finally:
        first.stop(timeout=10)


def test_a_port_in_use_is_a_config_error(spaced_dir: Path) -> None:
    from bcedge.errors import ConfigError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = Node(parse_config(config_text(spaced_dir / "node", port, free_port())), process=FakeSeg())
        with pytest.raises(ConfigError, match=f"port {port}: cannot listen"):
            node.start()
    assert not (node.worker and node.worker.is_alive()) and not (node.sender and node.sender.is_alive())
    # the storage root is free again for the next start
    node2 = Node(parse_config(config_text(spaced_dir / "node", 0, free_port())), process=FakeSeg())
    node2.start()
    node2.stop(timeout=10)
